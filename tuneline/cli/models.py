"""``tuneline models``: Registered models: create, show, list, prepare (packaged base models)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Registered models: create, show, list, prepare (packaged base models).",
    no_args_is_help=True,
)
