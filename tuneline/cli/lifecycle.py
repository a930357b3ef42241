"""``tuneline promote|approve|reject|rollback``: moving a model's production alias."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the alias-moving commands at the top level of ``app``."""
