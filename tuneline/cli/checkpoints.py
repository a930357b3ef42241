"""``tuneline checkpoints``: Registered checkpoints: show, list."""

from __future__ import annotations

import typer

app = typer.Typer(help="Registered checkpoints: show, list.", no_args_is_help=True)
