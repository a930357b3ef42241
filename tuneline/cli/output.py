"""How every CLI command talks to people: rich consoles and one way to report errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console

from tuneline.client.errors import TunelineError

#: Piped output (a script, grep, CI) keeps whole resource names: rich would otherwise lay
#: tables out for 80 columns and cut names people need to copy.
_PIPED_WIDTH = None if sys.stdout.isatty() else 200

console = Console(highlight=False, soft_wrap=True, width=_PIPED_WIDTH)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, width=_PIPED_WIDTH)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a client error into a red one-line message (plus violations) and exit 1."""
    try:
        yield
    except TunelineError as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None


def print_message(message: Message) -> None:
    """Show a resource as JSON (the proto3 JSON mapping, field names as in the proto)."""
    console.print_json(
        json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)
    )
