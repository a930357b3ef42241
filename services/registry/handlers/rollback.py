"""Rollback and the automation freeze: RollbackModel, RegressionDetected and Alertmanager alerts
roll production back (within the rollback breaker's budget); UnfreezeAutomation."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from services.registry.adapters import protos
from services.registry.adapters.commit_hooks import after_commit
from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.stored_resources import alias_move_of
from services.registry.adapters.tables import (
    AliasMoveRow,
    CheckpointRow,
    ModelRow,
    RegressionRow,
    RollbackBreakerRow,
)
from services.registry.domain.alerts import AlertNotice, alert_concerns_production
from services.registry.domain.commands import RollbackModel, UnfreezeAutomation
from services.registry.domain.model import (
    ALERTMANAGER_ACTOR,
    PRODUCTION,
    SERVICE_ACTOR,
    MoveTrigger,
    model_name,
    parse_checkpoint_name,
    parse_model_name,
)
from services.registry.domain.resources import Alias, AliasMove, Model
from services.registry.domain.rollback import Regression, choose_rollback_target
from services.registry.handlers.deps import RegistryDeps
from services.registry.handlers.request_checks import (
    check_alias_revision,
    earlier_request,
    optional_text,
    raise_if,
    request_key,
    require_text,
    revision_problems,
)
from services.registry.handlers.rows import (
    alias_state,
    checkpoint_in,
    locked_model,
    model_resource,
    notify_moved,
)
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument
from shared.events import stage_event

log = logging.getLogger(__name__)


def _automation_frozen(
    repo: RegistryRepository, deps: RegistryDeps, model: ModelRow, cause: str
) -> bool:
    """Whether an automatic rollback of ``model`` must be refused by the circuit breaker.

    True when the model is frozen already, or when this rollback would exceed the breaker's
    limit (counting automatic rollbacks in the window since the last unfreeze and since a person
    last moved production): then the model freezes now (the caller holds its lock), which the
    ``tuneline_model_automation_frozen`` gauge and its alert show to a person.
    """
    state = repo.rollback_breaker(model.name)
    if state is not None and state.frozen:
        return True
    now = deps.clock()
    breaker = deps.rollback_breaker
    # rollbacks before an unfreeze, or before a person last moved production, were looked at
    since = max(
        moment
        for moment in (
            breaker.window_start(now),
            state.counted_since if state is not None else None,
            repo.last_move_by_a_person(model.name),
        )
        if moment is not None
    )
    recent = repo.automatic_rollbacks_since(model.name, since)
    if not breaker.trips(recent):
        return False
    repo.save_rollback_breaker(
        RollbackBreakerRow(
            model=model.name,
            frozen=True,
            freeze_time=now,
            reason=breaker.reason(recent),
            cause=cause[:300],
            automatic_rollbacks=recent,
            counted_since=state.counted_since if state is not None else None,
        )
    )
    log.error(
        "rollback circuit breaker tripped: automation frozen",
        extra={"model": model.name, "cause": cause, "automatic_rollbacks": recent},
    )
    return True


def unfreeze_automation(session: Session, deps: RegistryDeps, command: UnfreezeAutomation) -> Model:
    """UnfreezeAutomation: automation may move the model's production again (no-op when it is
    not frozen). Automatic rollbacks are counted afresh from now on."""
    parse_model_name(command.model, field="model")
    problems = require_text(command.reason, "reason")
    problems += optional_text(command.actor, "actor", limit=200)
    problems += optional_text(command.request_id, "request_id", limit=200)
    raise_if(problems, "the unfreeze request is invalid")
    repo = RegistryRepository(session)
    model = locked_model(repo, command.model)
    key = request_key("unfreeze", command.request_id)
    if earlier_request(repo, model.name, key, model.name) is None:
        state = repo.rollback_breaker(model.name)
        if state is not None and state.frozen:
            was = state.reason
            state.frozen = False
            state.counted_since = deps.clock()
            log.warning(
                "automation unfrozen",
                extra={
                    "model": model.name,
                    "actor": command.actor or "unknown",
                    "reason": command.reason,
                    "was": was,
                },
            )
        if key:
            repo.record_trigger_key(
                model.name, key, outcome=model.name, move=None, now=deps.clock()
            )
    session.flush()
    return model_resource(repo, model)


@dataclass(frozen=True)
class RollbackTrigger:
    """Who or what asks for a rollback, and how to recognise the same request again."""

    trigger: MoveTrigger
    actor: str
    reason: str
    cause: str
    trigger_time: datetime
    #: Stored once acted on; a trigger with a stored key rolls back nothing.
    idempotency_key: str
    explicit_target: str = ""


def _roll_back(
    repo: RegistryRepository, deps: RegistryDeps, model: ModelRow, request: RollbackTrigger
) -> AliasMoveRow:
    """Move production back (caller holds the lock and checked the key); ModelRolledBack."""
    target_name = choose_rollback_target(
        repo.production_moves(model.name),
        model=model.name,
        rolled_back=repo.rolled_back_checkpoints(model.name),
        ever_production=repo.ever_production_checkpoints(model.name),
        explicit_target=request.explicit_target,
    )
    target = checkpoint_in(repo, target_name)
    now = deps.clock()
    move = repo.move_alias(
        model=model.name,
        alias=PRODUCTION,
        to_checkpoint=target,
        trigger=request.trigger,
        actor=request.actor,
        reason=request.reason,
        cause=request.cause,
        trigger_time=request.trigger_time,
        now=now,
    )
    stage_event(
        repo.session,
        protos.model_rolled_back(model, target, move),
        source=deps.source,
        subject=model.name,
    )
    repo.record_trigger_key(
        model.name,
        request.idempotency_key,
        outcome=f"rolled back to {target.name}",
        move=move,
        now=now,
    )
    notify_moved(repo.session, deps)
    if deps.metrics:
        metrics = deps.metrics
        seconds = (now - request.trigger_time).total_seconds()
        label = request.trigger.metric_label
        after_commit(repo.session, lambda: metrics.record_rollback(model.name, label, seconds))
    log.warning(
        "production rolled back",
        extra={
            "model": model.name,
            "from": move.from_checkpoint,
            "to": move.to_checkpoint,
            "trigger": request.trigger.value,
            "cause": request.cause,
        },
    )
    return move


def rollback_model(
    session: Session, deps: RegistryDeps, command: RollbackModel
) -> tuple[Alias, AliasMove | None]:
    """RollbackModel: roll production back; FAILED_PRECONDITION (nothing changes) without target."""
    model_id = parse_model_name(command.model, field="model")
    problems = require_text(command.reason, "reason")
    problems += optional_text(command.actor, "actor", limit=200)
    problems += optional_text(command.request_id, "request_id", limit=200)
    problems += revision_problems(command.expected_alias_revision)
    if command.target_checkpoint:
        try:
            target_model, _ = parse_checkpoint_name(
                command.target_checkpoint, field="target_checkpoint"
            )
        except InvalidArgument as error:
            problems += error.violations
        else:
            if target_model != model_id:
                problems.append(
                    FieldViolation(
                        "target_checkpoint", f"not a checkpoint of {command.model}", "WRONG_MODEL"
                    )
                )
    raise_if(problems, "the rollback request is invalid")
    repo = RegistryRepository(session)
    model = locked_model(repo, command.model)
    now = deps.clock()
    key = f"rpc:{command.request_id}" if command.request_id else f"rpc:{uuid.uuid4()}"
    if repo.trigger_key(model.name, key) is not None:
        return alias_state(repo, model.name, PRODUCTION), None
    check_alias_revision(repo, model.name, PRODUCTION, command.expected_alias_revision)
    move = _roll_back(
        repo,
        deps,
        model,
        RollbackTrigger(
            trigger=MoveTrigger.ROLLBACK_MANUAL,
            actor=command.actor or "unknown",
            reason=command.reason,
            cause=command.request_id or key.removeprefix("rpc:"),
            trigger_time=now,
            idempotency_key=key,
            explicit_target=command.target_checkpoint,
        ),
    )
    return alias_state(repo, model.name, PRODUCTION), alias_move_of(move)


def _production_row(repo: RegistryRepository, model: str) -> CheckpointRow | None:
    name = repo.production_checkpoint(model)
    return repo.get_checkpoint(name) if name else None


def on_regression_detected(session: Session, deps: RegistryDeps, regression: Regression) -> str:
    """Roll back when the regressed checkpoint is production; otherwise just record it.

    Returns the outcome (also the metric label): ``rolled_back``, ``not_production``,
    ``no_rollback_target``, ``unknown_model``, ``duplicate`` or ``frozen`` (the rollback
    circuit breaker refused it).
    """
    repo = RegistryRepository(session)
    now = deps.clock()
    key = f"regression:{regression.evaluation}"
    model = repo.lock_model(regression.model)
    outcome, detail = "", ""
    if model is None:
        outcome, detail = "unknown_model", "the model is not registered"
    elif repo.trigger_key(model.name, key) is not None or repo.get_regression(
        regression.evaluation
    ):
        outcome = "duplicate"
    else:
        production = _production_row(repo, model.name)
        about_production = production is not None and (
            production.source_checkpoint == regression.checkpoint
            or (
                bool(regression.checkpoint_sha256)
                and production.sha256 == regression.checkpoint_sha256
            )
        )
        if not about_production:
            outcome, detail = "not_production", "the regressed checkpoint is not production"
            repo.record_trigger_key(model.name, key, outcome=detail, move=None, now=now)
        elif _automation_frozen(repo, deps, model, cause=regression.evaluation):
            outcome, detail = "frozen", "automation frozen by the rollback circuit breaker"
        else:
            where = f" in slice {regression.slice!r}" if regression.slice else ""
            reason = (
                f"{regression.metric}{where} regressed by {regression.delta:+.4f} "
                f"(baseline {regression.baseline:.4f}, candidate {regression.candidate:.4f}, "
                f"p={regression.p_value:.3g}) in {regression.evaluation}"
            )
            trigger_time = regression.event_time or now
            try:  # a refused rollback raises before writing anything
                move = _roll_back(
                    repo,
                    deps,
                    model,
                    RollbackTrigger(
                        trigger=MoveTrigger.ROLLBACK_REGRESSION,
                        actor=SERVICE_ACTOR,
                        reason=reason,
                        cause=regression.evaluation,
                        trigger_time=trigger_time,
                        idempotency_key=key,
                    ),
                )
                outcome, detail = "rolled_back", f"rolled back to {move.to_checkpoint}"
            except FailedPrecondition as error:
                outcome, detail = "no_rollback_target", error.message
                log.error(
                    "regression in production but nothing to roll back to",
                    extra={"model": model.name, "evaluation": regression.evaluation},
                )
    if outcome != "duplicate" and repo.get_regression(regression.evaluation) is None:
        repo.add_regression(
            RegressionRow(
                evaluation=regression.evaluation,
                model=regression.model,
                source_checkpoint=regression.checkpoint,
                metric=regression.metric,
                slice=regression.slice,
                delta=regression.delta,
                p_value=regression.p_value,
                outcome=f"{outcome}: {detail}" if detail else outcome,
                received_at=now,
            )
        )
    if deps.metrics:
        metrics, label = deps.metrics, regression.model.removeprefix("models/")
        after_commit(session, lambda: metrics.regressions.labels(label, outcome).inc())
    return outcome


def on_alert(session: Session, deps: RegistryDeps, notice: AlertNotice) -> str:  # noqa: PLR0911
    """Act on one alert of an Alertmanager notification; returns the outcome.

    Outcomes: ``rolled_back``, ``resolved`` (resolved alerts do nothing), ``no_model_label``,
    ``unknown_model``, ``duplicate`` (this incident rolled back already), ``not_production``
    (the alert is about a checkpoint that is no longer production), ``no_rollback_target``,
    ``frozen`` (the rollback circuit breaker refused it; see :func:`_automation_frozen`),
    ``ignored`` (not labelled ``action="rollback"``, or not on the allow-list: nothing done).
    """
    if not notice.firing:
        return "resolved"
    ignored = deps.rollback_alerts.why_ignored(notice)
    if ignored:
        log.warning(
            "alert ignored: it may not roll back",
            extra={
                "fingerprint": notice.fingerprint,
                "alertname": notice.alertname,
                "model": notice.model_id,
                "why": ignored,
            },
        )
        return "ignored"
    if not notice.model_id:
        return "no_model_label"
    repo = RegistryRepository(session)
    model = repo.lock_model(model_name(notice.model_id))
    if model is None:
        return "unknown_model"
    if repo.trigger_key(model.name, notice.idempotency_key) is not None:
        return "duplicate"
    production = repo.get_alias(model.name, PRODUCTION)
    concerns, why = alert_concerns_production(
        notice,
        production_checkpoint_id=production.checkpoint.rsplit("/", 1)[-1] if production else "",
        production_since=production.update_time if production else None,
    )
    if not concerns:
        repo.record_trigger_key(
            model.name, notice.idempotency_key, outcome=why, move=None, now=deps.clock()
        )
        return "not_production"
    if _automation_frozen(repo, deps, model, cause=notice.cause):
        # no key recorded: once a person unfreezes, a still firing alert acts again
        return "frozen"
    try:  # a refused rollback raises before writing anything
        _roll_back(
            repo,
            deps,
            model,
            RollbackTrigger(
                trigger=MoveTrigger.ROLLBACK_ALERT,
                actor=ALERTMANAGER_ACTOR,
                reason=notice.reason,
                cause=notice.cause,
                trigger_time=notice.starts_at,
                idempotency_key=notice.idempotency_key,
            ),
        )
    except FailedPrecondition as error:
        log.error(
            "alert about production but nothing to roll back to",
            extra={"model": model.name, "fingerprint": notice.fingerprint, "why": error.message},
        )
        return "no_rollback_target"
    return "rolled_back"
