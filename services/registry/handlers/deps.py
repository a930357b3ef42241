"""What the registry's handlers and entrypoints share: :class:`RegistryDeps`, built once by the
bootstrap."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from services.registry.adapters.artifact_checks import ArtifactVerifier
from services.registry.adapters.metrics import RegistryMetrics
from services.registry.adapters.notifier import AliasMoveNotifier
from services.registry.adapters.verdict_checks import VerdictConfirmer
from services.registry.domain.alerts import RollbackAlertPolicy
from services.registry.domain.live_quality import LiveQualityRule
from services.registry.domain.rollback import RollbackBreaker


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class RegistryDeps:
    """What the handlers need besides the session, and the sessions the entrypoints open it from
    (the servicer, the subscriptions' consumer and the alert webhook own every transaction)."""

    sessions: sessionmaker[Session]
    source: str = "tuneline/registry"
    metrics: RegistryMetrics | None = None
    notifier: AliasMoveNotifier = field(default_factory=AliasMoveNotifier)
    #: Called after a commit that staged events (the outbox relay's ``wake``).
    wake_relay: Callable[[], None] = lambda: None
    clock: Callable[[], datetime] = _utcnow
    #: How counted live quality is judged (TUNELINE_REGISTRY_LIVE_QUALITY_*).
    live_quality: LiveQualityRule = field(default_factory=LiveQualityRule)
    #: Automatic rollbacks allowed per model and window (TUNELINE_REGISTRY_AUTO_ROLLBACK_*).
    rollback_breaker: RollbackBreaker = field(default_factory=RollbackBreaker)
    #: Alerts that may roll back (TUNELINE_REGISTRY_ROLLBACK_ALERT_NAMES).
    rollback_alerts: RollbackAlertPolicy = field(default_factory=RollbackAlertPolicy)
    #: Checks checkpoint artifacts at their source (the trainer's artifact root, a re-hash
    #: before a move); None trusts the events (TUNELINE_REGISTRY_VERIFY_ARTIFACTS=false).
    artifacts: ArtifactVerifier | None = None
    #: Confirms PASSED verdicts with the evaluator (GetEvaluation) before they count; None
    #: takes the events' word (TUNELINE_REGISTRY_EVALUATOR_TARGET unset).
    verdicts: VerdictConfirmer | None = None
    #: Four-eyes approval (TUNELINE_REGISTRY_FOUR_EYES): whoever created a checkpoint's
    #: training job or its model may neither approve it nor promote it to production.
    four_eyes: bool = False
