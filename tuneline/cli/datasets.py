"""``tuneline datasets``: Datasets: create, push (upload with progress), show, list, report."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Datasets: create, push (upload with progress), show, list, report.", no_args_is_help=True
)
