"""``tuneline evals``: show and list evaluations (verdicts, metrics, comparisons with baselines)."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from typing import Annotated

import typer
from google.protobuf import json_format
from rich.table import Table

from shared.names import EVALUATION, MODEL
from tuneline.cli.endpoints import target
from tuneline.cli.output import console, print_message, reported_errors
from tuneline.client.evaluator import EvaluatorClient
from tuneline.client.names import id_of, qualified
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.evaluator.v1 import resources_pb2

app = typer.Typer(help="Evaluations: show, list.", no_args_is_help=True)


_VERDICT_STYLES = {
    common_pb2.EVALUATION_VERDICT_PASSED: "green",
    common_pb2.EVALUATION_VERDICT_REGRESSED: "red",
    common_pb2.EVALUATION_VERDICT_INSUFFICIENT_DATA: "yellow",
    common_pb2.EVALUATION_VERDICT_FAILED: "red",
}


class VerdictChoice(StrEnum):
    """The verdicts ``evals list --verdict`` accepts."""

    passed = "passed"
    regressed = "regressed"
    insufficient_data = "insufficient-data"
    failed = "failed"


_VERDICT_FILTERS = {
    VerdictChoice.passed: common_pb2.EVALUATION_VERDICT_PASSED,
    VerdictChoice.regressed: common_pb2.EVALUATION_VERDICT_REGRESSED,
    VerdictChoice.insufficient_data: common_pb2.EVALUATION_VERDICT_INSUFFICIENT_DATA,
    VerdictChoice.failed: common_pb2.EVALUATION_VERDICT_FAILED,
}


def _client() -> EvaluatorClient:
    return EvaluatorClient(target("evaluator"))


def _evaluation(name: str) -> str:
    """``abc`` or ``evaluations/abc`` → ``evaluations/abc``."""
    return qualified(EVALUATION, name)


def _model(name: str) -> str:
    return qualified(MODEL, name) if name else name


def verdict_text(evaluation: resources_pb2.Evaluation) -> str:
    """The verdict (or the state, before there is one), coloured for the console."""
    if evaluation.verdict == common_pb2.EVALUATION_VERDICT_UNSPECIFIED:
        return resources_pb2.EvaluationState.Name(evaluation.state).removeprefix(
            "EVALUATION_STATE_"
        )
    name = common_pb2.EvaluationVerdict.Name(evaluation.verdict).removeprefix("EVALUATION_VERDICT_")
    return f"[{_VERDICT_STYLES.get(evaluation.verdict, 'white')}]{name}[/]"


def _number(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4f}"


def comparisons_table(evaluation: resources_pb2.Evaluation) -> Table:
    """Candidate versus baseline per metric and slice, with the interval and the outcome."""
    table = Table(
        "set", "slice", "metric", "baseline", "candidate", "delta", "95% CI", "p", "n", "outcome"
    )
    outcome_styles = {
        common_pb2.COMPARISON_OUTCOME_REGRESSED: "red",
        common_pb2.COMPARISON_OUTCOME_INSUFFICIENT_DATA: "yellow",
        common_pb2.COMPARISON_OUTCOME_WITHIN_TOLERANCE: "green",
    }
    for c in evaluation.comparisons:
        outcome = common_pb2.ComparisonOutcome.Name(c.outcome).removeprefix("COMPARISON_OUTCOME_")
        style = outcome_styles.get(c.outcome, "dim")
        table.add_row(
            c.evaluation_set or "primary",
            c.slice or "(all)",
            c.metric,
            _number(c.baseline),
            _number(c.candidate),
            f"{c.delta:+.4f}" if not math.isnan(c.delta) else "—",
            f"[{_number(c.delta_ci_lower)}, {_number(c.delta_ci_upper)}]",
            f"{c.p_value:.3g}",
            str(c.example_count),
            f"[{style}]{outcome.lower()}[/]",
        )
    return table


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="evaluations/{evaluation} (or just its id)")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole resource as JSON.")
    ] = False,
) -> None:
    """Show an evaluation: verdict, baseline, and every comparison with its interval."""
    with reported_errors(), _client() as client:
        evaluation = client.get_evaluation(_evaluation(name))
    if as_json:
        print_message(evaluation)
        return
    baseline = evaluation.baseline
    kind = resources_pb2.BaselineKind.Name(baseline.kind).removeprefix("BASELINE_KIND_")
    console.print(f"[bold]{evaluation.name}[/bold]  {verdict_text(evaluation)}")
    console.print(
        f"checkpoint  {evaluation.checkpoint}  (sha256 {evaluation.checkpoint_sha256[:12]})"
    )
    console.print(f"model       {evaluation.model}")
    evaluation_set = evaluation.evaluation_set
    shown_set = evaluation_set.split or evaluation_set.dataset_version
    console.print(f"set         {shown_set}  ({evaluation.example_count} examples)")
    if evaluation.HasField("baseline"):
        reused = "stored, reused" if baseline.reused else "computed now"
        console.print(f"baseline    {kind.lower()} {baseline.checkpoint}  ({reused})")
    if evaluation.failure_message:
        reason = resources_pb2.EvaluationFailureReason.Name(evaluation.failure_reason)
        console.print(f"[red]failed[/red]      {reason}: {evaluation.failure_message}")
    if evaluation.comparisons:
        console.print(comparisons_table(evaluation))
    regressed = [
        c for c in evaluation.comparisons if c.outcome == common_pb2.COMPARISON_OUTCOME_REGRESSED
    ]
    for c in regressed:
        where = f"{c.evaluation_set or 'primary'}/{c.slice or 'all'}"
        console.print(
            f"[red]regressed[/red] {c.metric} on {where}: {c.baseline:.4f} → {c.candidate:.4f} "
            f"(delta {c.delta:+.4f}, {c.confidence_level:.0%} CI "
            f"[{c.delta_ci_lower:+.4f}, {c.delta_ci_upper:+.4f}], p {c.p_value:.2g}, "
            f"tolerance {c.tolerance:g})"
        )
    if evaluation.HasField("data_checks"):
        print_data_checks(evaluation.data_checks)


_CHECK_STYLES = {
    resources_pb2.DATA_CHECK_STATUS_PASSED: "green",
    resources_pb2.DATA_CHECK_STATUS_FLAGGED: "yellow",
    resources_pb2.DATA_CHECK_STATUS_SKIPPED: "dim",
}


def print_data_checks(checks: resources_pb2.EvaluationDataChecks) -> None:
    """Contamination, coverage and shift of the evaluation set against the training rows."""
    console.print(f"data checks against {checks.training_split or 'no training split'}")
    for title, check in (
        ("contamination", checks.contamination),
        ("coverage", checks.coverage),
        ("shift", checks.shift),
    ):
        status = resources_pb2.DataCheckStatus.Name(check.status).removeprefix("DATA_CHECK_STATUS_")
        style = _CHECK_STYLES.get(check.status, "white")
        console.print(f"  {title:<14}[{style}]{status}[/]  {check.reason}")
    if checks.contamination.evaluation_row_ids:
        console.print(f"  contaminated rows: {', '.join(checks.contamination.evaluation_row_ids)}")
    if checks.coverage.labels or checks.coverage.slices:
        table = Table("label / slice", "training rows", "evaluation rows")
        for kind, counts in (("label", checks.coverage.labels), ("slice", checks.coverage.slices)):
            for count in counts:
                untested = count.training_rows and not count.evaluation_rows
                shown = (
                    f"[yellow]{count.evaluation_rows}[/]"
                    if untested
                    else str(count.evaluation_rows)
                )
                table.add_row(f"{kind} {count.value}", str(count.training_rows), shown)
        console.print(table)
    if checks.verdict_effect:
        console.print(f"[yellow]verdict[/yellow]  {checks.verdict_effect}")


@app.command("list")
def list_evaluations(
    model: Annotated[str, typer.Option("--model", help="Only this model's evaluations.")] = "",
    checkpoint: Annotated[
        str,
        typer.Option(
            "--checkpoint", help="Only this checkpoint's (trainingJobs/{j}/checkpoints/{c})."
        ),
    ] = "",
    verdict: Annotated[
        VerdictChoice | None, typer.Option("--verdict", help="Only this verdict.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many.")] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON array of the resources instead of a table.")
    ] = False,
) -> None:
    """List evaluations, newest first, with their verdict and headline accuracy or loss."""
    table = Table("evaluation", "checkpoint", "model", "verdict", "headline", "baseline", "created")
    wanted = _VERDICT_FILTERS[verdict] if verdict else common_pb2.EVALUATION_VERDICT_UNSPECIFIED
    found: list[dict[str, object]] = []
    with reported_errors(), _client() as client:
        for index, evaluation in enumerate(
            client.list_evaluations(
                model=_model(model),
                checkpoint=checkpoint,
                verdict=wanted,
                page_size=min(limit, 100),
            )
        ):
            if index == limit:
                break
            if as_json:
                found.append(
                    json_format.MessageToDict(evaluation, preserving_proto_field_name=True)
                )
                continue
            table.add_row(
                evaluation.name.removeprefix("evaluations/"),
                evaluation.checkpoint,
                id_of(MODEL, evaluation.model),
                verdict_text(evaluation),
                _headline(evaluation),
                _headline(evaluation, baseline=True),
                evaluation.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            )
    if as_json:
        console.print_json(json.dumps(found))
    else:
        console.print(table)


def _headline(evaluation: resources_pb2.Evaluation, *, baseline: bool = False) -> str:
    """``accuracy 0.8123`` (classification) or ``loss 1.2345``: the overall primary metric."""
    values = evaluation.baseline.metrics if baseline else evaluation.metrics
    overall = {m.metric: m.value for m in values if not m.slice and not m.evaluation_set}
    for metric in ("accuracy", "token_accuracy", "loss"):
        if metric in overall:
            return f"{metric} {overall[metric]:.4f}"
    return "—"
