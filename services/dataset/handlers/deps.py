"""What the dataset handlers need besides their arguments: :class:`DatasetDeps`, wired by the
bootstrap (and by tests, with real SQLite), and the :class:`LabelAuditor` port."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from services.dataset.adapters.metrics import DatasetMetrics
from services.dataset.adapters.sources import ImportSources
from services.dataset.adapters.workers import ValidationWorkers
from services.dataset.domain.label_audit import LabelAuditFindings
from services.dataset.domain.near_duplicate_rows import (
    DEFAULT_MAX_ROWS as DEFAULT_NEAR_DUPLICATE_MAX_ROWS,
)
from services.dataset.domain.parent_shift import ParentShiftPolicy
from services.dataset.domain.policy import DEFAULT_VALUE_BOUNDS, ValueBounds
from shared.artifacts import ArtifactStore
from shared.near_duplicates import DEFAULT_THRESHOLD as DEFAULT_NEAR_DUPLICATE_THRESHOLD
from shared.stats.two_sample import TwoSampleResult


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class IngestLimits:
    max_upload_bytes: int
    max_line_bytes: int
    report_line_numbers: int = 20
    value_bounds: ValueBounds = DEFAULT_VALUE_BOUNDS
    #: The ``near_duplicates`` check's similarity threshold (0: the check is off) and the
    #: most rows it runs on.
    near_duplicate_threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD
    near_duplicate_max_rows: int = DEFAULT_NEAR_DUPLICATE_MAX_ROWS


@dataclass(frozen=True)
class DatasetDeps:
    """Everything the handlers use, wired by the bootstrap (and by tests, with real SQLite)."""

    sessions: sessionmaker[Session]
    store: ArtifactStore
    metrics: DatasetMetrics
    limits: IngestLimits
    workers: ValidationWorkers
    import_sources: ImportSources
    event_source: str
    clock: Callable[[], datetime] = field(default=_now)
    #: Called after a version's transaction committed, so its event goes out at once.
    relay_wake: Callable[[], None] = field(default=lambda: None)
    #: Called after a version's transaction committed, so its label audit starts at once.
    audit_wake: Callable[[], None] = field(default=lambda: None)
    #: When the audit flags a version's texts as shifted from its parent's (report only).
    parent_shift: ParentShiftPolicy = field(default_factory=ParentShiftPolicy)


class LabelAuditor(Protocol):
    """Audits one version's labels (a worker process in the service; a stub in tests)."""

    @property
    def encoder(self) -> str: ...

    def audit(self, texts: Sequence[str], labels: Sequence[str]) -> LabelAuditFindings:
        """Raises :class:`NotAuditable` (SKIPPED) or :class:`AuditFailed` (FAILED)."""
        ...

    def parent_shift(
        self,
        version_texts: Sequence[str],
        parent_texts: Sequence[str],
        *,
        permutations: int,
        max_rows: int,
    ) -> TwoSampleResult:
        """The two-sample test of the parent's texts against the version's (embedded with
        :attr:`encoder`). Raises :class:`AuditFailed`."""
        ...
