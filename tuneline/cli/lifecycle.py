"""``tuneline promote|approve|reject|rollback``: moving a model's production alias."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from tuneline.cli.endpoints import target
from tuneline.cli.output import console, err_console, print_message, reported_errors
from tuneline.client.registry import RegistryClient, checkpoint_name, model_name

CheckpointArg = Annotated[
    str, typer.Argument(help="models/{m}/checkpoints/{c}, or the id {c} with --model.")
]
ModelOpt = Annotated[str, typer.Option(help="The model, when CHECKPOINT is a bare id.")]
ReasonOpt = Annotated[str, typer.Option(help="Why (kept in the alias history).")]
ExpectedRevisionOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Only move if the alias is still at this revision (as `tuneline aliases show` "
        "showed it); otherwise fail with ABORTED and move nothing.",
    ),
]


def _client() -> RegistryClient:
    return RegistryClient(target("registry"))


def _me() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def promote(
    checkpoint: CheckpointArg,
    model: ModelOpt = "",
    alias: Annotated[str, typer.Option(help="The alias to move.")] = "production",
    reason: ReasonOpt = "",
    actor: Annotated[str, typer.Option(help="Who is moving it (default: you).")] = "",
    request_id: Annotated[
        str,
        typer.Option(
            help="Idempotency key (default: a new one per command); repeat a command with the "
            "same key and it moves once."
        ),
    ] = "",
    expected_revision: ExpectedRevisionOpt = None,
) -> None:
    """Move an alias (default production) to a checkpoint whose latest evaluation passed."""
    with reported_errors(), _client() as client:
        response = client.promote_checkpoint(
            checkpoint_name(checkpoint, model),
            alias=alias,
            actor=actor or _me(),
            reason=reason,
            request_id=request_id,
            expected_revision=expected_revision,
        )
    if response.HasField("move"):
        err_console.print(
            f"[green]moved[/green] {response.alias.name} (rev {response.move.revision})"
        )
    else:
        err_console.print(f"{response.alias.name} already points there; nothing moved")
    print_message(response.alias)


def approve(
    checkpoint: CheckpointArg,
    reason: Annotated[str, typer.Option(help="Why it may go to production.")],
    model: ModelOpt = "",
    reviewer: Annotated[str, typer.Option(help="Who approves (default: you).")] = "",
    expected_revision: ExpectedRevisionOpt = None,
) -> None:
    """Approve a checkpoint pending review: it becomes production."""
    with reported_errors(), _client() as client:
        response = client.approve_checkpoint(
            checkpoint_name(checkpoint, model),
            reviewer=reviewer or _me(),
            reason=reason,
            expected_revision=expected_revision,
        )
    err_console.print(f"[green]approved[/green]; production → {response.alias.checkpoint}")
    print_message(response.alias)


def reject(
    checkpoint: CheckpointArg,
    reason: Annotated[str, typer.Option(help="Why it must not go to production.")],
    model: ModelOpt = "",
    reviewer: Annotated[str, typer.Option(help="Who rejects (default: you).")] = "",
) -> None:
    """Reject a checkpoint pending review; aliases do not move."""
    with reported_errors(), _client() as client:
        rejected = client.reject_checkpoint(
            checkpoint_name(checkpoint, model), reviewer=reviewer or _me(), reason=reason
        )
    console.print(f"rejected {rejected.name}")


def rollback(
    model: Annotated[str, typer.Argument(help="sentiment or models/sentiment")],
    reason: Annotated[str, typer.Option(help="Why (required).")],
    to: Annotated[
        str, typer.Option("--to", help="An explicit earlier production checkpoint (name or id).")
    ] = "",
    actor: Annotated[str, typer.Option(help="Who is rolling back (default: you).")] = "",
    request_id: Annotated[
        str,
        typer.Option(
            help="Idempotency key (default: a new one per command); repeat a command with the "
            "same key and it rolls back once."
        ),
    ] = "",
    expected_revision: ExpectedRevisionOpt = None,
) -> None:
    """Roll production back to the last good checkpoint (or --to an earlier one)."""
    with reported_errors(), _client() as client:
        response = client.rollback_model(
            model_name(model),
            reason=reason,
            target_checkpoint=checkpoint_name(to, model) if to else "",
            actor=actor or _me(),
            request_id=request_id,
            expected_revision=expected_revision,
        )
    if response.HasField("move"):
        move = response.move
        err_console.print(
            f"[yellow]rolled back[/yellow] {move.from_checkpoint} → {move.to_checkpoint}"
        )
    else:
        err_console.print("this request was applied before; nothing moved")
    print_message(response.alias)


def register(app: typer.Typer) -> None:
    """Add the alias-moving commands at the top level of ``app``."""
    app.command()(promote)
    app.command()(approve)
    app.command()(reject)
    app.command()(rollback)
