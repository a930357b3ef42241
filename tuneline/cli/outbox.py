"""``tuneline outbox``: a service's parked outbox events: list them, re-queue them.

It works on the service's database directly (the same ``TUNELINE_<SERVICE>_DATABASE_URL``, or
SQLite file under the data directory, the service reads), so it works while Kafka or the
service is down; the running service's relay sends re-queued events at its next pass.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from pydantic_settings import SettingsConfigDict
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.db import create_database_engine, create_session_factory
from shared.events.parked import NotParked, parked_events, requeue_parked
from shared.service_ports import SERVICE_NAMES
from shared.settings import CommonSettings, ServiceSettings
from tuneline.cli.output import console, err_console
from tuneline.devtools.stack import stack_home

app = typer.Typer(
    help="A service's parked outbox events (ones Kafka refused): list and re-queue them.",
    no_args_is_help=True,
)

ServiceOpt = Annotated[
    str,
    typer.Option(
        "--service", help=f"Whose outbox: one of {', '.join(SERVICE_NAMES)}.", show_default=False
    ),
]
DatabaseOpt = Annotated[
    str,
    typer.Option(
        "--database-url",
        help=(
            "The service's SQLAlchemy URL; default: what the service reads "
            "(TUNELINE_<SERVICE>_DATABASE_URL, else the SQLite file under the data directory)."
        ),
    ),
]


def service_database_url(service: str) -> str:
    """The database ``service`` uses, resolved from the environment as the service does."""
    settings_type = type(
        f"{service.title()}DatabaseSettings",
        (ServiceSettings,),
        {
            "service_name": service,
            "model_config": SettingsConfigDict(
                env_prefix=f"TUNELINE_{service.upper()}_", extra="ignore", frozen=True
            ),
        },
    )
    common = CommonSettings()
    if "TUNELINE_DATA_DIR" not in os.environ:  # a `tuneline up` home keeps its data under it
        common = common.model_copy(update={"data_dir": stack_home(os.environ) / "data"})
    return str(settings_type().resolved_database_url(common))


def _sessions(service: str, database_url: str) -> sessionmaker[Session]:
    if service not in SERVICE_NAMES:
        err_console.print(
            f"[red]error:[/red] unknown service {escape(service)!r}; "
            f"one of {', '.join(SERVICE_NAMES)}"
        )
        raise typer.Exit(2)
    return create_session_factory(
        create_database_engine(database_url or service_database_url(service))
    )


@app.command("list")
def list_(service: ServiceOpt, database_url: DatabaseOpt = "") -> None:
    """The service's parked outbox events, oldest first, with the error that parked them."""
    try:
        with _sessions(service, database_url)() as session:
            parked = parked_events(session)
    except SQLAlchemyError as error:
        err_console.print(f"[red]error:[/red] cannot read the outbox: {escape(str(error))}")
        raise typer.Exit(1) from None
    table = Table()
    for column in ("id", "topic", "subject", "attempts", "bytes", "parked at", "error"):
        table.add_column(column, overflow="fold")
    for event in parked:
        table.add_row(
            str(event.seq),
            escape(event.topic),
            escape(event.subject),
            str(event.attempts),
            str(event.size_bytes),
            event.parked_at.isoformat(timespec="seconds"),
            escape(event.last_error[:200]),
        )
    console.print(table)
    console.print(f"{len(parked)} parked outbox event(s) in {escape(service)}")


@app.command()
def requeue(
    service: ServiceOpt,
    ids: Annotated[
        list[int] | None,
        typer.Option("--id", help="A parked event's id (from list); repeat for several."),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Re-queue every parked event.")] = False,
    database_url: DatabaseOpt = "",
) -> None:
    """Put parked outbox events back in line once their cause is fixed.

    All or nothing: an id that is not parked changes nothing. The service's relay sends them
    at its next pass; consumers skip an event id they applied, so a repeat is harmless.
    """
    if bool(ids) == all_:
        err_console.print("[red]error:[/red] name parked events with --id, or pass --all")
        raise typer.Exit(2)
    try:
        with _sessions(service, database_url)() as session, session.begin():
            requeued = requeue_parked(session, None if all_ else ids)
    except NotParked as error:
        err_console.print(
            f"[red]error:[/red] not parked in {escape(service)}'s outbox (nothing re-queued): "
            f"{', '.join(str(s) for s in error.seqs)}"
        )
        raise typer.Exit(1) from None
    except SQLAlchemyError as error:
        err_console.print(f"[red]error:[/red] cannot update the outbox: {escape(str(error))}")
        raise typer.Exit(1) from None
    listed = ", ".join(str(seq) for seq in requeued) or "none"
    console.print(f"re-queued {len(requeued)} outbox event(s) in {escape(service)}: {listed}")
