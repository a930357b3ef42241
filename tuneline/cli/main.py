"""Entry point of the ``tuneline`` console command."""

from __future__ import annotations

import typer

from tuneline.cli import (
    aliases,
    base_models,
    checkpoints,
    datasets,
    demo,
    dev,
    dlq,
    evals,
    jobs,
    lifecycle,
    models,
    outbox,
    policies,
    report,
    security,
    serving,
    splits,
    stack,
)

app = typer.Typer(
    name="tuneline",
    help="Tuneline: turn a labelled dataset into a promoted, reversible fine-tuned adapter.",
    no_args_is_help=True,
)
app.callback()(security.connection_options)
app.command()(stack.up)
app.command()(stack.down)
app.command()(demo.demo)
app.command()(report.report)
app.add_typer(datasets.app, name="datasets")
app.add_typer(splits.app, name="splits")
app.add_typer(jobs.app, name="jobs")
app.add_typer(policies.app, name="policies")
models.app.command("prepare")(base_models.prepare)
app.add_typer(models.app, name="models")
app.add_typer(checkpoints.app, name="checkpoints")
app.add_typer(evals.app, name="evals")
app.add_typer(aliases.app, name="aliases")
lifecycle.register(app)
serving.register(app)
app.add_typer(dlq.app, name="dlq")
app.add_typer(outbox.app, name="outbox")
app.add_typer(dev.app, name="dev")

if __name__ == "__main__":  # pragma: no cover
    app()
