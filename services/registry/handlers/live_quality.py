"""Live quality: ReportLiveQuality counts serving's outcomes and judges them against the rule."""

from __future__ import annotations

import math
from datetime import datetime

from sqlalchemy.orm import Session

from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.tables import LiveCountsRow, LiveQualityRow, ModelRow
from services.registry.domain import (
    LiveQuality,
    LiveQualityRule,
    higher_is_better,
    is_past_floor,
    judge_live_quality,
    parse_checkpoint_name,
    parse_model_name,
)
from services.registry.handlers._requests import _optional_text, _raise_if, _require_text
from services.registry.handlers._rows import _checkpoint_in, _locked_model
from services.registry.handlers.deps import RegistryDeps
from services.registry.validation import floor_of
from shared.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
)
from shared.protobuf import datetime_from_timestamp, set_timestamp
from tuneline.registry.v1 import resources_pb2, service_pb2


def _check_live_quality_request(
    request: service_pb2.ReportLiveQualityRequest, model_id: str
) -> None:
    problems = _require_text(request.metric, "metric", limit=120)
    problems += _optional_text(request.slice, "slice", limit=200)
    problems += _optional_text(request.source, "source", limit=200)
    problems += _optional_text(request.request_id, "request_id", limit=200)
    if not math.isfinite(request.value):
        problems.append(FieldViolation("value", "must be a finite number", "NOT_FINITE"))
    if request.example_count < 0:
        problems.append(FieldViolation("example_count", "must be >= 0", "OUT_OF_RANGE"))
    if request.trials < 0:
        problems.append(FieldViolation("trials", "must be >= 0", "OUT_OF_RANGE"))
    elif not 0 <= request.successes <= request.trials:
        problems.append(
            FieldViolation(
                "successes", f"must be in [0, trials = {request.trials}]", "OUT_OF_RANGE"
            )
        )
    elif request.trials > 0:
        if not higher_is_better(request.metric):
            problems.append(
                FieldViolation(
                    "trials",
                    f"counts are for success rates; {request.metric!r} is lower-is-better: "
                    "report a bare value",
                    "NOT_A_RATE",
                )
            )
        if request.value != 0 and abs(request.value - request.successes / request.trials) > 1e-6:
            problems.append(
                FieldViolation(
                    "value", "must be 0 or successes / trials when counts are given", "MISMATCH"
                )
            )
    if request.HasField("window") and request.window.ToTimedelta().total_seconds() < 0:
        problems.append(FieldViolation("window", "must not be negative", "OUT_OF_RANGE"))
    if request.checkpoint:
        try:
            checkpoint_model, _ = parse_checkpoint_name(request.checkpoint, field="checkpoint")
        except InvalidArgument as error:
            problems += error.violations
        else:
            if checkpoint_model != model_id:
                problems.append(
                    FieldViolation(
                        "checkpoint", f"not a checkpoint of {request.model}", "WRONG_MODEL"
                    )
                )
    _raise_if(problems, "the live quality report is invalid")


def _counted_live_quality(
    repo: RegistryRepository,
    model: ModelRow,
    checkpoint: str,
    request: service_pb2.ReportLiveQualityRequest,
    *,
    floor: float | None,
    rule: LiveQualityRule,
    now: datetime,
) -> LiveQuality:
    """Add the report's counts to the checkpoint's totals (once per request id) and judge them."""
    counts = repo.live_counts(model.name, checkpoint, request.metric, request.slice)
    successes = counts.successes if counts is not None else 0
    trials = counts.trials if counts is not None else 0
    key = f"live:{request.request_id}" if request.request_id else ""
    if not key or repo.trigger_key(model.name, key) is None:
        successes += request.successes
        trials += request.trials
        if key:
            repo.record_trigger_key(model.name, key, outcome="counted", move=None, now=now)
    quality = judge_live_quality(successes, trials, floor, rule)
    repo.upsert_live_counts(
        LiveCountsRow(
            model=model.name,
            checkpoint=checkpoint,
            metric=request.metric,
            slice=request.slice,
            successes=successes,
            trials=trials,
            lower_bound=quality.lower_bound,
            upper_bound=quality.upper_bound,
            update_time=now,
        )
    )
    return quality


def report_live_quality(
    session: Session, deps: RegistryDeps, request: service_pb2.ReportLiveQualityRequest
) -> resources_pb2.LiveQualityReport:
    """ReportLiveQuality: record a live measurement of the production checkpoint.

    A report about a checkpoint that is not production is refused (FAILED_PRECONDITION naming
    the current one): the gauges the alert rules read only ever describe what serves traffic.
    A counted report (``trials`` > 0) adds to the checkpoint's totals, and the checkpoint is
    below its floor when their confidence sequence says so (:func:`judge_live_quality`); a bare
    ``value`` is compared with the floor as it is.
    """
    model_id = parse_model_name(request.model, field="model")
    _check_live_quality_request(request, model_id)
    repo = RegistryRepository(session)
    counted = request.trials > 0
    # counts are read, added to and written back: one report of a model at a time
    model = _locked_model(repo, request.model) if counted else repo.get_model(request.model)
    if model is None:
        raise NotFound("model", request.model)
    production = repo.production_checkpoint(model.name)
    if not production:
        raise FailedPrecondition(
            f"{model.name} has nothing in production to report live quality for",
            [PreconditionViolation("NO_PRODUCTION", model.name, "production was never set")],
        )
    checkpoint = request.checkpoint or production
    if checkpoint != production:
        _checkpoint_in(repo, checkpoint)
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
    definition = resources_pb2.Model.FromString(model.definition)
    floor = floor_of(definition, request.metric)
    report_time = datetime_from_timestamp(request, "report_time") or deps.clock()
    quality = (
        _counted_live_quality(
            repo,
            model,
            checkpoint,
            request,
            floor=floor,
            rule=deps.live_quality,
            now=deps.clock(),
        )
        if counted
        else None
    )
    value = quality.rate if quality is not None else request.value
    example_count = quality.trials if quality is not None else request.example_count
    below = (
        quality.below_floor
        if quality is not None
        else is_past_floor(request.metric, request.value, floor)
    )
    repo.upsert_live_quality(
        LiveQualityRow(
            model=model.name,
            checkpoint=checkpoint,
            metric=request.metric,
            slice=request.slice,
            value=value,
            example_count=example_count,
            window_seconds=request.window.ToTimedelta().total_seconds()
            if request.HasField("window")
            else None,
            floor=floor,
            below_floor=below,
            source=request.source,
            report_time=report_time,
        )
    )
    report = resources_pb2.LiveQualityReport(
        model=model.name,
        checkpoint=checkpoint,
        metric=request.metric,
        slice=request.slice,
        value=value,
        example_count=example_count,
        below_floor=below,
        source=request.source,
    )
    if quality is not None:
        report.total_successes = quality.successes
        report.total_trials = quality.trials
        report.lower_bound = quality.lower_bound
        report.upper_bound = quality.upper_bound
        report.confidence_level = quality.confidence_level
    set_timestamp(report.report_time, report_time)
    if request.HasField("window"):
        report.window.CopyFrom(request.window)
    if floor is not None:
        report.floor = floor
    return report
