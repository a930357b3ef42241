"""``tuneline aliases``: Aliases: show, history, watch."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tuneline.cli.endpoints import target
from tuneline.cli.output import console, print_message, reported_errors
from tuneline.client.registry import RegistryClient, alias_name
from tuneline.registry.v1 import resources_pb2

app = typer.Typer(help="Aliases: show, history, watch.", no_args_is_help=True)


ModelArg = Annotated[str, typer.Argument(help="sentiment, models/sentiment, or a full alias name.")]
AliasOpt = Annotated[str, typer.Option("--alias", help="The alias id.")]


def _client() -> RegistryClient:
    return RegistryClient(target("registry"))


def _trigger(value: int) -> str:
    return resources_pb2.AliasMoveTrigger.Name(value).removeprefix("ALIAS_MOVE_TRIGGER_").lower()  # type: ignore[arg-type]


def _when(move: resources_pb2.AliasMove) -> str:
    return move.move_time.ToDatetime().isoformat(timespec="milliseconds") + "Z"


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1] if name else "-"


@app.command()
def show(model: ModelArg, alias: AliasOpt = "production") -> None:
    """Show an alias: the checkpoint it points at, what to load, and its last move."""
    with reported_errors(), _client() as client:
        print_message(client.get_alias(alias_name(model, alias)))


@app.command()
def history(
    model: ModelArg,
    alias: Annotated[
        str, typer.Option("--alias", help="The alias id, or - for every alias of the model.")
    ] = "-",
) -> None:
    """Every move, oldest first: from, to, trigger, actor, reason, time."""
    table = Table()
    for column in ("alias", "rev", "from", "to", "trigger", "actor", "reason", "moved"):
        table.add_column(column, overflow="fold")  # ids and reasons are read, never elided
    with reported_errors(), _client() as client:
        for move in client.list_alias_history(alias_name(model, alias)):
            table.add_row(
                *(
                    escape(cell)  # actors and reasons are free text, not rich markup
                    for cell in (
                        _short(move.alias),
                        str(move.revision),
                        _short(move.from_checkpoint),
                        _short(move.to_checkpoint),
                        _trigger(move.trigger),
                        move.actor,
                        move.reason,
                        _when(move),
                    )
                )
            )
    console.print(table)


@app.command()
def watch(
    model: ModelArg,
    alias: AliasOpt = "production",
    after_revision: Annotated[
        int, typer.Option(help="Replay the moves after this revision first (0: current state).")
    ] = 0,
) -> None:
    """Stream an alias: its current target, then every move as it happens (Ctrl-C stops)."""
    name = alias_name(model, alias)
    try:
        with reported_errors(), _client() as client:
            for update in client.watch_alias(name, after_revision=after_revision):
                target_name = _short(update.alias.checkpoint)
                if not update.HasField("move"):
                    console.print(
                        f"{name} → {target_name} (revision {update.alias.revision}); watching…",
                        markup=False,
                    )
                    continue
                move = update.move
                console.print(
                    f"{_when(move)} rev {move.revision}: {_short(move.from_checkpoint)} → "
                    f"{target_name} [{_trigger(move.trigger)}] by {move.actor}: {move.reason}",
                    markup=False,  # the trigger's brackets and free-text reasons print as is
                )
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    console.print("the registry closed the stream (it is shutting down)")
