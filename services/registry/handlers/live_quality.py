"""Live quality: ReportLiveQuality counts serving's outcomes and judges them against the rule."""

from __future__ import annotations

import math
from datetime import datetime

from sqlalchemy.orm import Session

from services.registry.adapters.model_definition import model_floor
from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.tables import LiveCountsRow, LiveQualityRow, ModelRow
from services.registry.domain.commands import ReportLiveQuality
from services.registry.domain.live_quality import (
    LiveQuality,
    LiveQualityReport,
    LiveQualityRule,
    higher_is_better,
    is_past_floor,
    judge_live_quality,
)
from services.registry.domain.model import parse_checkpoint_name, parse_model_name
from services.registry.handlers.deps import RegistryDeps
from services.registry.handlers.request_checks import optional_text, raise_if, require_text
from services.registry.handlers.rows import checkpoint_in, locked_model
from shared.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
)


def _check_live_quality_request(command: ReportLiveQuality, model_id: str) -> None:
    problems = require_text(command.metric, "metric", limit=120)
    problems += optional_text(command.slice, "slice", limit=200)
    problems += optional_text(command.source, "source", limit=200)
    problems += optional_text(command.request_id, "request_id", limit=200)
    if not math.isfinite(command.value):
        problems.append(FieldViolation("value", "must be a finite number", "NOT_FINITE"))
    if command.example_count < 0:
        problems.append(FieldViolation("example_count", "must be >= 0", "OUT_OF_RANGE"))
    if command.trials < 0:
        problems.append(FieldViolation("trials", "must be >= 0", "OUT_OF_RANGE"))
    elif not 0 <= command.successes <= command.trials:
        problems.append(
            FieldViolation(
                "successes", f"must be in [0, trials = {command.trials}]", "OUT_OF_RANGE"
            )
        )
    elif command.trials > 0:
        if not higher_is_better(command.metric):
            problems.append(
                FieldViolation(
                    "trials",
                    f"counts are for success rates; {command.metric!r} is lower-is-better: "
                    "report a bare value",
                    "NOT_A_RATE",
                )
            )
        if command.value != 0 and abs(command.value - command.successes / command.trials) > 1e-6:
            problems.append(
                FieldViolation(
                    "value", "must be 0 or successes / trials when counts are given", "MISMATCH"
                )
            )
    if command.window is not None and command.window.total_seconds() < 0:
        problems.append(FieldViolation("window", "must not be negative", "OUT_OF_RANGE"))
    if command.checkpoint:
        try:
            checkpoint_model, _ = parse_checkpoint_name(command.checkpoint, field="checkpoint")
        except InvalidArgument as error:
            problems += error.violations
        else:
            if checkpoint_model != model_id:
                problems.append(
                    FieldViolation(
                        "checkpoint", f"not a checkpoint of {command.model}", "WRONG_MODEL"
                    )
                )
    raise_if(problems, "the live quality report is invalid")


def _counted_live_quality(
    repo: RegistryRepository,
    model: ModelRow,
    checkpoint: str,
    command: ReportLiveQuality,
    *,
    floor: float | None,
    rule: LiveQualityRule,
    now: datetime,
) -> LiveQuality:
    """Add the report's counts to the checkpoint's totals (once per request id) and judge them."""
    counts = repo.live_counts(model.name, checkpoint, command.metric, command.slice)
    successes = counts.successes if counts is not None else 0
    trials = counts.trials if counts is not None else 0
    key = f"live:{command.request_id}" if command.request_id else ""
    if not key or repo.trigger_key(model.name, key) is None:
        successes += command.successes
        trials += command.trials
        if key:
            repo.record_trigger_key(model.name, key, outcome="counted", move=None, now=now)
    quality = judge_live_quality(successes, trials, floor, rule)
    repo.upsert_live_counts(
        LiveCountsRow(
            model=model.name,
            checkpoint=checkpoint,
            metric=command.metric,
            slice=command.slice,
            successes=successes,
            trials=trials,
            lower_bound=quality.lower_bound,
            upper_bound=quality.upper_bound,
            update_time=now,
        )
    )
    return quality


def report_live_quality(
    session: Session, deps: RegistryDeps, command: ReportLiveQuality
) -> LiveQualityReport:
    """ReportLiveQuality: record a live measurement of the production checkpoint.

    A report about a checkpoint that is not production is refused (FAILED_PRECONDITION naming
    the current one): the gauges the alert rules read only ever describe what serves traffic.
    A counted report (``trials`` > 0) adds to the checkpoint's totals, and the checkpoint is
    below its floor when their confidence sequence says so (:func:`judge_live_quality`); a bare
    ``value`` is compared with the floor as it is.
    """
    model_id = parse_model_name(command.model, field="model")
    _check_live_quality_request(command, model_id)
    repo = RegistryRepository(session)
    counted = command.trials > 0
    # counts are read, added to and written back: one report of a model at a time
    model = locked_model(repo, command.model) if counted else repo.get_model(command.model)
    if model is None:
        raise NotFound("model", command.model)
    production = repo.production_checkpoint(model.name)
    if not production:
        raise FailedPrecondition(
            f"{model.name} has nothing in production to report live quality for",
            [PreconditionViolation("NO_PRODUCTION", model.name, "production was never set")],
        )
    checkpoint = command.checkpoint or production
    if checkpoint != production:
        checkpoint_in(repo, checkpoint)
        raise FailedPrecondition(
            f"{checkpoint} is not in production (production is {production})",
            [
                PreconditionViolation(
                    "NOT_PRODUCTION",
                    checkpoint,
                    f"live quality is recorded for the production checkpoint, {production}",
                )
            ],
        )
    floor = model_floor(model, command.metric)
    report_time = command.report_time or deps.clock()
    quality = (
        _counted_live_quality(
            repo,
            model,
            checkpoint,
            command,
            floor=floor,
            rule=deps.live_quality,
            now=deps.clock(),
        )
        if counted
        else None
    )
    value = quality.rate if quality is not None else command.value
    example_count = quality.trials if quality is not None else command.example_count
    below = (
        quality.below_floor
        if quality is not None
        else is_past_floor(command.metric, command.value, floor)
    )
    repo.upsert_live_quality(
        LiveQualityRow(
            model=model.name,
            checkpoint=checkpoint,
            metric=command.metric,
            slice=command.slice,
            value=value,
            example_count=example_count,
            window_seconds=command.window.total_seconds() if command.window is not None else None,
            floor=floor,
            below_floor=below,
            source=command.source,
            report_time=report_time,
        )
    )
    return LiveQualityReport(
        model=model.name,
        checkpoint=checkpoint,
        metric=command.metric,
        slice=command.slice,
        value=value,
        example_count=example_count,
        below_floor=below,
        source=command.source,
        report_time=report_time,
        window=command.window,
        floor=floor,
        counted=quality,
    )
