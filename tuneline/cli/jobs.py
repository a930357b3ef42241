"""``tuneline jobs``: Training jobs: create, show, list, cancel, watch."""

from __future__ import annotations

import typer

app = typer.Typer(help="Training jobs: create, show, list, cancel, watch.", no_args_is_help=True)
