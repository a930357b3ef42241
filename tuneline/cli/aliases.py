"""``tuneline aliases``: Aliases: show, history, watch."""

from __future__ import annotations

import typer

app = typer.Typer(help="Aliases: show, history, watch.", no_args_is_help=True)
