"""``tuneline splits``: Splits: create, show, list."""

from __future__ import annotations

import typer

app = typer.Typer(help="Splits: create, show, list.", no_args_is_help=True)
