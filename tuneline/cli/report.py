"""``tuneline report MODEL``: the model's scorecard as tables with sparklines, JSON or HTML."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tuneline.cli.endpoints import target
from tuneline.cli.output import console, err_console, reported_errors
from tuneline.client.dataset import DatasetClient
from tuneline.client.evaluator import EvaluatorClient
from tuneline.client.registry import RegistryClient, model_name
from tuneline.client.trainer import TrainerClient
from tuneline.report import page
from tuneline.report.collector import Sources, collect
from tuneline.report.scorecard import (
    RunCost,
    Scorecard,
    budget_text,
    build_scorecard,
    human_duration,
)

_BLOCKS = "▁▂▃▄▅▆▇█"
_VERDICT_STYLES = {
    "PASSED": "green",
    "REGRESSED": "red",
    "INSUFFICIENT_DATA": "yellow",
    "FAILED": "red",
}


def sparkline(values: Sequence[float | None]) -> str:
    """``[1, 2, 3]`` → ``▁▄█``; a missing value is a space."""
    known = [v for v in values if v is not None]
    if not known:
        return ""
    low, high = min(known), max(known)
    span = (high - low) or 1.0
    return "".join(
        " " if v is None else _BLOCKS[round((v - low) / span * (len(_BLOCKS) - 1))] for v in values
    )


def scorecard_json(card: Scorecard) -> dict[str, Any]:
    """The scorecard as plain JSON values (times in ISO 8601, UTC)."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    result: dict[str, Any] = plain(dataclasses.asdict(card))
    return result


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _summary_table(card: Scorecard) -> Table:
    window = card.window
    rate = window.regression_rate
    trend = window.cost_per_run
    currency = next((r.currency for r in card.runs if r.currency), "")
    table = Table("figure", "value", "trend", title=f"{card.model} · scorecard")
    table.add_row(
        "regression rate",
        f"{rate.estimate:.2f} ({window.regressed}/{window.evaluated}; "
        f"{rate.level:.0%} CI [{rate.lower:.2f}, {rate.upper:.2f}])"
        if rate
        else "— (nothing evaluated)",
        sparkline([p.rate.estimate for p in card.regression_history]),
    )
    table.add_row("rollbacks", str(window.rollbacks), "")
    table.add_row("mean time to rollback", human_duration(window.mean_time_to_rollback_seconds), "")
    table.add_row(
        "cost per run",
        f"mean {trend.mean:.4f} {currency} over {window.runs} runs, {trend.slope:+.4f}/run"
        if trend
        else "— (no runs)",
        sparkline([r.amount for r in card.runs]),
    )
    gated = [c.gated.candidate for c in card.checkpoints if c.gated]
    table.add_row(
        card.primary_metric,
        f"latest {gated[-1]:.4f}" if gated else "—",
        sparkline(gated),
    )
    error = window.mean_absolute_estimate_error
    table.add_row(
        "cost estimate error",
        "—" if error is None else f"mean |error| {error:.0%}",
        sparkline([r.estimate_error.cost if r.estimate_error else None for r in card.runs]),
    )
    table.add_row("budget", escape(budget_text(card.budget)), "")
    owner = card.owner
    table.add_row(
        "owner",
        escape(" · ".join(part for part in (owner.team or "unowned", owner.contact) if part)),
        "",
    )
    table.add_row("runbook", escape(owner.runbook_uri or "—"), "")
    return table


def _checkpoints_table(card: Scorecard) -> Table:
    table = Table(
        "checkpoint",
        "data",
        "verdict",
        card.primary_metric,
        "vs baseline \\[interval]",
        "slices",
        "loss",
        "device-s",
        "cost",
        "eval",
        "data→prod",
        "production",
        title="checkpoints",
    )
    for c in card.checkpoints:
        g = c.gated
        style = _VERDICT_STYLES.get(c.verdict, "white")
        table.add_row(
            escape(_short(c.checkpoint)),
            escape(_short(c.dataset_version)),
            f"[{style}]{c.verdict}[/]",
            f"{g.candidate:.4f}" if g else "—",
            escape(
                f"{g.delta:+.4f} [{g.delta_lower:+.4f}, {g.delta_upper:+.4f}] vs {g.baseline:.4f}"
            )
            if g
            else "—",
            escape(", ".join(f"{s.slice} {s.value:.3f}" for s in c.slices)) or "—",
            sparkline([p.train_loss for p in c.loss_curve]),
            f"{c.training_cost.device_seconds:.1f}",
            f"{c.training_cost.amount:.4f}",
            human_duration(c.evaluation_seconds),
            human_duration(c.data_to_production_seconds),
            "[red]rolled back[/]"
            if c.rolled_back_time
            else ("[green]promoted[/]" if c.promoted_time else ""),
        )
    return table


def _error_text(run: RunCost) -> str:
    """The cost estimate's error; for a run cut short, of the estimate prorated to its steps."""
    error = run.estimate_error
    if error is None or error.cost is None:
        return "—"
    if error.prorated_steps is None:
        return f"{error.cost:+.0%}"
    ran, planned = error.prorated_steps
    return f"{error.cost:+.0%} (prorated to {ran}/{planned} steps)"


def _runs_table(card: Scorecard) -> Table:
    table = Table(
        "run",
        "state",
        "device",
        "tokens (est.)",
        "device-s (est.)",
        "cost (est.)",
        "estimate error",
        "loss",
        title="runs: actual (estimate before the run)",
    )
    for r in card.runs:
        estimate = r.estimate
        state = f"{r.state} ({r.stop_reason})" if r.stop_reason else r.state
        table.add_row(
            escape(_short(r.run)),
            state,
            r.device_type,
            f"{r.tokens} ({estimate.tokens})" if estimate else str(r.tokens),
            f"{r.device_seconds:.1f} ({estimate.device_seconds:.1f})"
            if estimate
            else f"{r.device_seconds:.1f}",
            f"{r.amount:.4f} ({estimate.amount:.4f}) {r.currency}"
            if estimate
            else f"{r.amount:.4f} {r.currency}",
            _error_text(r),
            sparkline([p.train_loss for p in r.loss_curve]),
        )
    return table


def report(
    model: Annotated[str, typer.Argument(help="The model, `sentiment` or `models/sentiment`.")],
    days: Annotated[
        float, typer.Option("--days", help="Window: the last DAYS days.", min=0.0)
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the scorecard as JSON.")] = False,
    html_file: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a self-contained HTML page (plots) to FILE."),
    ] = None,
) -> None:
    """The model's scorecard: accuracy with intervals, loss, regression rate, rollbacks, cost.

    Reads the registry (lineage, verdicts, alias history), the trainer (loss curves, cost),
    the evaluator (intervals, slices) and the dataset service (when data was pushed).
    """
    with reported_errors():
        card = read_scorecard(
            model_name(model),
            days=days,
            registry=target("registry"),
            trainer=target("trainer"),
            evaluator=target("evaluator"),
            dataset=target("dataset"),
        )
    if html_file is not None:
        html_file.write_text(page.render(card), encoding="utf-8")
        err_console.print(f"wrote {html_file}")
    if as_json:
        console.print_json(json.dumps(scorecard_json(card)))
        return
    print_scorecard(card)


def read_scorecard(
    model: str, *, days: float, registry: str, trainer: str, evaluator: str, dataset: str
) -> Scorecard:
    """``models/{model}``'s scorecard over the last ``days``, read from the services at those
    targets (raises ``TunelineError`` when the registry cannot answer)."""
    end = datetime.now(UTC)
    with ExitStack() as clients:
        sources = Sources(
            registry=clients.enter_context(RegistryClient(registry)),
            trainer=clients.enter_context(TrainerClient(trainer)),
            evaluator=clients.enter_context(EvaluatorClient(evaluator)),
            dataset=clients.enter_context(DatasetClient(dataset)),
        )
        history = collect(sources, model)
    return build_scorecard(history, start=end - timedelta(days=days), end=end)


def print_scorecard(card: Scorecard) -> None:
    """The scorecard as ``tuneline report`` prints it: what is missing, then its tables."""
    for gap in card.gaps:
        err_console.print(f"[yellow]missing:[/yellow] {gap}")
    console.print(_summary_table(card))
    console.print(_checkpoints_table(card))
    console.print(_runs_table(card))
