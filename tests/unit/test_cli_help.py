"""Every command of the ``tuneline`` CLI renders its ``--help``, and rich renders every help
text as written.

Typer shows help through rich markup, so a help text holding ``[/…]`` crashes ``--help`` and
one holding ``[word]`` loses that word silently. Walking the whole click tree catches both for
commands added later too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from rich.text import Text
from typer.main import get_command
from typer.testing import CliRunner

from tuneline.cli.main import app

ROOT = get_command(app)


def _subcommands(command: Any) -> dict[str, Any]:
    # typer builds on its own copy of click: a group is whatever has subcommands
    return dict(getattr(command, "commands", {}))


def _walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted(_subcommands(command).items()):
        yield from _walk(sub, (*path, name))


def _command_at(path: tuple[str, ...]) -> Any:
    command = ROOT
    for name in path:
        command = _subcommands(command)[name]
    return command


PATHS = list(_walk(ROOT))


def test_the_tree_is_walked_whole() -> None:
    assert ("models", "create") in PATHS
    assert ("dev", "kafka", "start") in PATHS
    assert len(PATHS) > 40


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "tuneline")
def test_every_command_renders_its_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, f"{' '.join(path)} --help: {result.exception!r}\n{result.output}"
    assert "Usage:" in result.output


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "tuneline")
def test_help_texts_are_not_read_as_markup(path: tuple[str, ...]) -> None:
    command = _command_at(path)
    texts = [command.help or "", command.short_help or ""]
    texts += [getattr(p, "help", None) or "" for p in command.params]
    for text in texts:
        # what rich shows is what was written (an escaped bracket shows as a bracket)
        assert Text.from_markup(text).plain == text.replace("\\[", "["), text
