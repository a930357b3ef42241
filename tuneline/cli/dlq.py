"""``tuneline dlq``: Dead-letter queues: list, show and replay what a consumer gave up on."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from rich.markup import escape
from rich.table import Table

from shared.events import KafkaEventPublisher
from shared.events.dead_letters import DeadLetter, original_topic, read_dead_letters, replay
from shared.events.security import kafka_client_security
from shared.settings import CommonSettings
from tuneline.cli.output import console, err_console

# The event types, so a dead letter's payload can be shown decoded.
from tuneline.dataset.v1 import events_pb2 as _dataset_events  # noqa: F401
from tuneline.evaluator.v1 import events_pb2 as _evaluator_events  # noqa: F401
from tuneline.registry.v1 import events_pb2 as _registry_events  # noqa: F401
from tuneline.splitter.v1 import events_pb2 as _splitter_events  # noqa: F401
from tuneline.trainer.v1 import events_pb2 as _trainer_events  # noqa: F401

app = typer.Typer(
    help="Dead-letter queues: list, show and replay what a consumer gave up on.",
    no_args_is_help=True,
)

TopicArg = Annotated[
    str,
    typer.Argument(
        help="The event topic (tuneline.registry.v1.ModelPromoted) or its .dlq twin.",
        show_default=False,
    ),
]
BootstrapOpt = Annotated[
    str,
    typer.Option(
        "--bootstrap",
        envvar="TUNELINE_KAFKA_BOOTSTRAP",
        help="Kafka bootstrap servers.",
    ),
]
_DEFAULT_BOOTSTRAP = CommonSettings.model_fields["kafka_bootstrap"].default


def _kafka_security() -> dict[str, object]:
    """The command's Kafka credentials, from the same ``TUNELINE_KAFKA_*`` variables as a
    service's (an operator's own SCRAM user, allowed to read and replay dead letters)."""
    return kafka_client_security(CommonSettings())


def _read(bootstrap: str, topic: str, group: str = "") -> list[DeadLetter]:
    try:
        letters = read_dead_letters(bootstrap, topic, security=_kafka_security())
    except Exception as error:  # noqa: BLE001 - any broker failure ends the command the same way
        err_console.print(
            f"[red]error:[/red] cannot read {escape(topic)}.dlq: {escape(str(error))}"
        )
        raise typer.Exit(1) from None
    return [
        letter for letter in letters if not group or letter.header("dlq_consumer_group") == group
    ]


def _find(letters: list[DeadLetter], positions: list[str]) -> list[DeadLetter]:
    by_position = {letter.position: letter for letter in letters}
    missing = [p for p in positions if p not in by_position]
    if missing:
        err_console.print(f"[red]error:[/red] no dead letter at {', '.join(missing)}")
        raise typer.Exit(1)
    return [by_position[p] for p in positions]


def _decoded(letter: DeadLetter) -> object:
    """The payload as proto JSON when its ``ce_type`` is a known event, else its size."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(letter.header("ce_type"))
        message: Message = GetMessageClass(descriptor)()
        message.ParseFromString(letter.value or b"")
    except Exception:  # noqa: BLE001 - an unknown type or undecodable bytes: show the size
        return {"undecodable_bytes": len(letter.value or b"")}
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@app.command("list")
def list_(
    topic: TopicArg,
    group: Annotated[str, typer.Option(help="Only what this consumer group dead-lettered.")] = "",
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
    bootstrap: BootstrapOpt = _DEFAULT_BOOTSTRAP,
) -> None:
    """The dead letters of a topic, oldest first: where, which event, which group, why."""
    letters = _read(bootstrap, topic, group)
    table = Table()
    for column in ("position", "ce_id", "group", "attempts", "from", "error"):
        table.add_column(column, overflow="fold")
    for letter in letters[:limit]:
        failure = letter.failure
        table.add_row(
            letter.position,
            escape(letter.header("ce_id") or "-"),
            escape(failure.get("consumer_group", "-")),
            failure.get("attempts", "-"),
            f"{failure.get('partition', '?')}:{failure.get('offset', '?')}",
            escape(failure.get("error", "")[:200]),
        )
    console.print(table)
    console.print(f"{len(letters)} dead letter(s) on {escape(original_topic(topic))}.dlq")


@app.command()
def show(
    topic: TopicArg,
    position: Annotated[str, typer.Argument(help="partition:offset on the .dlq topic.")],
    bootstrap: BootstrapOpt = _DEFAULT_BOOTSTRAP,
) -> None:
    """One dead letter in full: every header, and the payload decoded when the type is known."""
    [letter] = _find(_read(bootstrap, topic), [position])
    console.print_json(
        json.dumps(
            {
                "position": letter.position,
                "key": (letter.key or b"").decode("utf-8", errors="replace"),
                "headers": {k: letter.header(k) for k, _ in letter.original_headers},
                "dlq": letter.failure,
                "payload": _decoded(letter),
            }
        )
    )


@app.command("replay")
def replay_(
    topic: TopicArg,
    positions: Annotated[
        list[str] | None,
        typer.Argument(help="partition:offset of each dead letter to replay.", show_default=False),
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter shown by list.")
    ] = False,
    group: Annotated[str, typer.Option(help="With --all: only this group's dead letters.")] = "",
    bootstrap: BootstrapOpt = _DEFAULT_BOOTSTRAP,
) -> None:
    """Publish dead letters again to their original topic, with their original headers.

    Safe to repeat: consumers skip an event id they applied, so only the group that gave up
    on it applies it (once), after the cause is fixed.
    """
    if bool(positions) == all_:
        err_console.print("[red]error:[/red] name dead letters by partition:offset, or pass --all")
        raise typer.Exit(2)
    letters = _read(bootstrap, topic, group)
    chosen = letters if all_ else _find(letters, positions or [])
    publisher = KafkaEventPublisher(
        bootstrap, client_id="tuneline-cli-dlq-replay", security=_kafka_security()
    )
    try:
        sent = replay(publisher, topic, chosen)
    except Exception as error:  # noqa: BLE001 - report and fail, nothing half-done is hidden
        err_console.print(f"[red]error:[/red] replay failed: {escape(str(error))}")
        raise typer.Exit(1) from None
    finally:
        publisher.close()
    console.print(f"replayed {sent} dead letter(s) to {escape(original_topic(topic))}")
