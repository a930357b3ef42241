"""Entry point of the ``tuneline`` console command."""

from __future__ import annotations

import typer

from tuneline.cli import dev

app = typer.Typer(
    name="tuneline",
    help="Tuneline: turn a labelled dataset into a promoted, reversible fine-tuned adapter.",
    no_args_is_help=True,
)
app.add_typer(dev.app, name="dev")

if __name__ == "__main__":  # pragma: no cover
    app()
