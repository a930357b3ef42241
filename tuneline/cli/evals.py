"""``tuneline evals``: Evaluations: show, list."""

from __future__ import annotations

import typer

app = typer.Typer(help="Evaluations: show, list.", no_args_is_help=True)
