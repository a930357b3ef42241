"""``tuneline dev``: developer tooling (contract code generation, the local Kafka broker)."""

from __future__ import annotations

import typer

from tuneline.cli import dev_kafka, dev_protos

app = typer.Typer(
    help="Developer tooling: contracts and a local Kafka broker.", no_args_is_help=True
)
app.add_typer(dev_kafka.app, name="kafka")
app.add_typer(dev_protos.app, name="protos")
