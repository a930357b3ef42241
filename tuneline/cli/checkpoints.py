"""``tuneline checkpoints``: Registered checkpoints: show, list."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from tuneline.cli.endpoints import target
from tuneline.cli.output import console, print_message, reported_errors
from tuneline.client.registry import RegistryClient, checkpoint_name, model_name
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.registry.v1 import resources_pb2

app = typer.Typer(help="Registered checkpoints: show, list.", no_args_is_help=True)


class VerdictFilter(StrEnum):
    passed = "passed"
    regressed = "regressed"
    insufficient_data = "insufficient_data"
    failed = "failed"


class ReviewFilter(StrEnum):
    not_required = "not_required"
    pending = "pending"
    approved = "approved"
    rejected = "rejected"


def _client() -> RegistryClient:
    return RegistryClient(target("registry"))


def _verdict(value: int) -> str:
    return common_pb2.EvaluationVerdict.Name(value).removeprefix("EVALUATION_VERDICT_").lower()  # type: ignore[arg-type]


@app.command()
def show(
    name: Annotated[
        str, typer.Argument(help="models/{m}/checkpoints/{c}, or the id {c} with --model.")
    ],
    model: Annotated[str, typer.Option(help="The model, when NAME is a bare id.")] = "",
) -> None:
    """Show a checkpoint: lineage, cost, evaluations, review, aliases."""
    with reported_errors(), _client() as client:
        print_message(client.get_checkpoint(checkpoint_name(name, model)))


@app.command("list")
def list_checkpoints(
    model: Annotated[str, typer.Argument(help="sentiment or models/sentiment")],
    verdict: Annotated[VerdictFilter | None, typer.Option(help="Latest verdict.")] = None,
    review: Annotated[ReviewFilter | None, typer.Option(help="Review state.")] = None,
    job: Annotated[str, typer.Option(help="Only this job's, trainingJobs/{job}.")] = "",
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many.")] = 50,
) -> None:
    """List a model's checkpoints, newest first."""
    table = Table("checkpoint", "step", "verdict", "review", "aliases", "val loss", "registered")
    with reported_errors(), _client() as client:
        checkpoints = client.list_checkpoints(
            model_name(model),
            verdict=common_pb2.EvaluationVerdict.Value(
                f"EVALUATION_VERDICT_{verdict.value.upper()}"
            )
            if verdict
            else common_pb2.EVALUATION_VERDICT_UNSPECIFIED,
            review_state=resources_pb2.ReviewState.Value(f"REVIEW_STATE_{review.value.upper()}")
            if review
            else resources_pb2.REVIEW_STATE_UNSPECIFIED,
            training_job=job,
            page_size=min(limit, 100),
        )
        for index, checkpoint in enumerate(checkpoints):
            if index == limit:
                break
            flags = ", ".join(checkpoint.aliases) + (
                " (rolled back)" if checkpoint.rolled_back else ""
            )
            table.add_row(
                checkpoint.name.rsplit("/", 1)[-1],
                str(checkpoint.step),
                _verdict(checkpoint.verdict) if checkpoint.verdict else "-",
                resources_pb2.ReviewState.Name(checkpoint.review_state)
                .removeprefix("REVIEW_STATE_")
                .lower(),
                flags.strip() or "-",
                f"{checkpoint.validation_loss:.4f}"
                if checkpoint.HasField("validation_loss")
                else "-",
                checkpoint.create_time.ToDatetime().isoformat(timespec="seconds") + "Z",
            )
    console.print(table)
