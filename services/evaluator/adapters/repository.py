"""The evaluator's SQL repository: every query the service makes, on a caller's session.

Callers own the transaction: the consumer loop passes the session an event is applied in, the
gRPC handlers and the supervisor open their own and commit. A row never leaves this module;
callers get domain objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.evaluator.adapters import protos
from services.evaluator.adapters.tables import (
    CheckpointRow,
    DatasetVersionLocationRow,
    EvaluationPolicyRequestRow,
    EvaluationPolicyRow,
    EvaluationRow,
    ScoredOutcomesRow,
    SplitLocationRow,
)
from services.evaluator.domain.evaluation import (
    CheckpointRef,
    CheckpointSelection,
    Evaluation,
    EvaluationPolicy,
    EvaluationState,
    evaluation_sets_key,
)
from services.evaluator.domain.events import (
    DatasetVersionLocation,
    ReadyCheckpoint,
    SplitLocation,
)
from services.evaluator.domain.gate import Verdict
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events_pb2

CHECKPOINT_READY_KEY = "checkpoint-ready:"
REQUEST_KEY = "request:"


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; every time the service stores is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class StoredOutcomes:
    """A stored outcomes artifact (see :class:`ScoredOutcomesRow`)."""

    subject_key: str
    set_key: str
    scoring_fingerprint: str
    artifact_uri: str
    artifact_sha256: str
    example_count: int
    computed_by: str


class EvaluatorRepository:
    """Queries of the evaluator's tables within one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- what other services announced ---------------------------------------------------------

    def record_checkpoint(self, ready: ReadyCheckpoint) -> CheckpointRef:
        """Remember (or refresh) a checkpoint the trainer announced."""
        checkpoint = ready.checkpoint
        row = self.session.get(CheckpointRow, checkpoint.name)
        if row is None:
            row = CheckpointRow(name=checkpoint.name)
            self.session.add(row)
        row.sha256 = checkpoint.sha256
        row.target_model = checkpoint.target_model
        row.is_best = checkpoint.is_best
        row.is_final = checkpoint.is_final
        row.event = ready.event
        return checkpoint

    def final_checkpoint_of(self, training_job: str) -> CheckpointRef | None:
        """The final checkpoint announced for ``training_job`` (``None`` while it runs)."""
        row = self.session.scalars(
            select(CheckpointRow)
            .where(CheckpointRow.name.startswith(f"{training_job}/checkpoints/", autoescape=True))
            .where(CheckpointRow.is_final.is_(True))
            .order_by(CheckpointRow.name)
            .limit(1)
        ).first()
        if row is None:
            return None
        return protos.checkpoint_ref_from_event(
            trainer_events_pb2.CheckpointReady.FromString(row.event)
        )

    def checkpoint(self, name: str) -> CheckpointRef | None:
        row = self.session.get(CheckpointRow, name)
        if row is None:
            return None
        return protos.checkpoint_ref_from_event(
            trainer_events_pb2.CheckpointReady.FromString(row.event)
        )

    def record_split(self, location: SplitLocation) -> None:
        row = self.session.get(SplitLocationRow, location.split) or SplitLocationRow(
            split=location.split
        )
        row.dataset_version = location.dataset_version
        row.manifest_uri = location.manifest_uri
        row.manifest_sha256 = location.manifest_sha256
        row.dataset_artifact_uri = location.dataset_artifact_uri
        row.dataset_content_sha256 = location.dataset_content_sha256
        self.session.merge(row)

    def split_location(self, split: str) -> SplitLocation | None:
        row = self.session.get(SplitLocationRow, split)
        if row is None:
            return None
        return SplitLocation(
            row.split,
            row.dataset_version,
            row.manifest_uri,
            row.manifest_sha256,
            row.dataset_artifact_uri,
            row.dataset_content_sha256,
        )

    def record_dataset_version(self, location: DatasetVersionLocation) -> None:
        self.session.merge(
            DatasetVersionLocationRow(
                dataset_version=location.dataset_version,
                artifact_uri=location.artifact_uri,
                content_sha256=location.content_sha256,
            )
        )

    def dataset_version_location(self, dataset_version: str) -> DatasetVersionLocation | None:
        row = self.session.get(DatasetVersionLocationRow, dataset_version)
        if row is None:
            return None
        return DatasetVersionLocation(row.dataset_version, row.artifact_uri, row.content_sha256)

    # -- evaluations -----------------------------------------------------------------------

    def _to_domain(self, row: EvaluationRow) -> Evaluation:
        checkpoint = self.checkpoint(row.checkpoint)
        if checkpoint is None:
            raise LookupError(f"{row.name} refers to unknown checkpoint {row.checkpoint}")
        request_id = ""
        if row.dedupe_key and row.dedupe_key.startswith(REQUEST_KEY):
            request_id = row.dedupe_key.removeprefix(REQUEST_KEY)
        return protos.evaluation_from_proto(
            evaluator_pb2.Evaluation.FromString(row.resource),
            checkpoint,
            requested_baseline=row.requested_baseline,
            request_id=request_id,
        )

    def add_evaluation(self, evaluation: Evaluation, *, dedupe_key: str | None) -> None:
        """Insert a new evaluation (the caller checked ``dedupe_key`` is free)."""
        self.session.add(
            EvaluationRow(
                name=evaluation.name,
                checkpoint=evaluation.checkpoint.name,
                checkpoint_sha256=evaluation.checkpoint.sha256,
                model=evaluation.model,
                state=evaluation.state.value,
                verdict=evaluation.verdict.value if evaluation.verdict else "",
                sets_key=evaluation_sets_key(evaluation.evaluation_sets),
                dedupe_key=dedupe_key,
                requested_baseline=evaluation.requested_baseline,
                create_time=evaluation.create_time,
                not_before=evaluation.create_time,
                resource=protos.evaluation_to_proto(evaluation).SerializeToString(),
            )
        )
        self.session.flush()

    def _row(self, name: str) -> EvaluationRow:
        return self.session.scalars(select(EvaluationRow).where(EvaluationRow.name == name)).one()

    def save(self, evaluation: Evaluation) -> None:
        """Store the new state of an existing evaluation (a terminal one waits no more)."""
        row = self._row(evaluation.name)
        row.state = evaluation.state.value
        row.verdict = evaluation.verdict.value if evaluation.verdict else ""
        row.sets_key = evaluation_sets_key(evaluation.evaluation_sets)
        row.resource = protos.evaluation_to_proto(evaluation).SerializeToString()
        if evaluation.state.terminal:
            row.waiting_since = None

    def defer(self, evaluation: Evaluation, *, until: datetime, waiting_since: datetime) -> None:
        """Store a queued evaluation that waits for a dependency until ``until``."""
        self.save(evaluation)
        row = self._row(evaluation.name)
        row.not_before = until
        row.waiting_since = waiting_since

    def waiting_since(self, name: str) -> datetime | None:
        value = self._row(name).waiting_since
        return _utc(value) if value is not None else None

    def evaluation(self, name: str) -> Evaluation | None:
        row = self.session.scalars(select(EvaluationRow).where(EvaluationRow.name == name)).first()
        return self._to_domain(row) if row else None

    def by_dedupe_key(self, dedupe_key: str) -> Evaluation | None:
        row = self.session.scalars(
            select(EvaluationRow).where(EvaluationRow.dedupe_key == dedupe_key)
        ).first()
        return self._to_domain(row) if row else None

    def same_evaluation(
        self, checkpoint_sha256: str, model: str, sets_key: str
    ) -> Evaluation | None:
        """The newest evaluation of the same checkpoint for the same model on the same set
        versions that has not failed; a queued one whose sets are not pinned yet counts (it
        will run on the model's current sets)."""
        row = self.session.scalars(
            select(EvaluationRow)
            .where(
                EvaluationRow.checkpoint_sha256 == checkpoint_sha256,
                EvaluationRow.model == model,
                EvaluationRow.state != EvaluationState.FAILED.value,
                (EvaluationRow.sets_key == sets_key) | (EvaluationRow.sets_key == ""),
            )
            .order_by(EvaluationRow.seq.desc())
        ).first()
        return self._to_domain(row) if row else None

    def list_evaluations(
        self,
        *,
        model: str = "",
        checkpoint: str = "",
        verdict: Verdict | None = None,
        before_seq: int | None = None,
        limit: int,
    ) -> list[tuple[int, Evaluation]]:
        """Evaluations newest first, after the keyset position ``before_seq``."""
        query = select(EvaluationRow).order_by(EvaluationRow.seq.desc()).limit(limit)
        if model:
            query = query.where(EvaluationRow.model == model)
        if checkpoint:
            query = query.where(EvaluationRow.checkpoint == checkpoint)
        if verdict is not None:
            query = query.where(EvaluationRow.verdict == verdict.value)
        if before_seq is not None:
            query = query.where(EvaluationRow.seq < before_seq)
        return [(row.seq, self._to_domain(row)) for row in self.session.scalars(query)]

    def next_queued(self, now: datetime) -> Evaluation | None:
        """The oldest queued evaluation that is not waiting for a dependency.

        On PostgreSQL the row stays locked until the transaction ends and rows locked by
        another transaction are skipped, so two replicas claiming at once take different
        evaluations (SQLite has one writer at a time and ignores the clause).
        """
        row = self.session.scalars(
            select(EvaluationRow)
            .where(
                EvaluationRow.state == EvaluationState.QUEUED.value,
                EvaluationRow.not_before <= now,
            )
            .order_by(EvaluationRow.seq)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        return self._to_domain(row) if row else None

    def running(self) -> list[Evaluation]:
        rows = self.session.scalars(
            select(EvaluationRow).where(EvaluationRow.state == EvaluationState.RUNNING.value)
        )
        return [self._to_domain(row) for row in rows]

    def backlog(self) -> int:
        """Evaluations queued or running."""
        count = self.session.scalar(
            select(func.count())
            .select_from(EvaluationRow)
            .where(
                EvaluationRow.state.in_(
                    [EvaluationState.QUEUED.value, EvaluationState.RUNNING.value]
                )
            )
        )
        return int(count or 0)

    # -- policies --------------------------------------------------------------------------

    def policy(self, model: str) -> EvaluationPolicy | None:
        row = self.session.get(EvaluationPolicyRow, model)
        if row is None:
            return None
        return EvaluationPolicy(
            model=row.model,
            checkpoint_selection=CheckpointSelection(row.checkpoint_selection),
            max_generation_examples=row.max_generation_examples,
            max_new_tokens=row.max_new_tokens,
            batch_size=row.batch_size,
            update_time=_utc(row.update_time),
        )

    def set_policy(self, policy: EvaluationPolicy) -> None:
        assert policy.update_time is not None
        self.session.merge(
            EvaluationPolicyRow(
                model=policy.model,
                checkpoint_selection=policy.checkpoint_selection.value,
                max_generation_examples=policy.max_generation_examples,
                max_new_tokens=policy.max_new_tokens,
                batch_size=policy.batch_size,
                update_time=policy.update_time,
            )
        )

    def policy_request(self, request_id: str) -> str | None:
        """The policy a SetEvaluationPolicy with ``request_id`` was applied to, if any."""
        row = self.session.get(EvaluationPolicyRequestRow, request_id)
        return None if row is None else row.policy

    def record_policy_request(self, request_id: str, policy: str, now: datetime) -> None:
        self.session.add(
            EvaluationPolicyRequestRow(request_id=request_id, policy=policy, create_time=now)
        )

    # -- stored outcomes -------------------------------------------------------------------

    def stored_outcomes(
        self, subject_key: str, set_key: str, scoring_fingerprint: str
    ) -> StoredOutcomes | None:
        row = self.session.scalars(
            select(ScoredOutcomesRow).where(
                ScoredOutcomesRow.subject_key == subject_key,
                ScoredOutcomesRow.set_key == set_key,
                ScoredOutcomesRow.scoring_fingerprint == scoring_fingerprint,
            )
        ).first()
        if row is None:
            return None
        return StoredOutcomes(
            row.subject_key,
            row.set_key,
            row.scoring_fingerprint,
            row.artifact_uri,
            row.artifact_sha256,
            row.example_count,
            row.computed_by,
        )

    def add_outcomes(self, stored: StoredOutcomes, *, task_type: str, now: datetime) -> None:
        """Record stored outcomes; an equal key recorded meanwhile wins (same numbers)."""
        if self.stored_outcomes(stored.subject_key, stored.set_key, stored.scoring_fingerprint):
            return
        self.session.add(
            ScoredOutcomesRow(
                subject_key=stored.subject_key,
                set_key=stored.set_key,
                scoring_fingerprint=stored.scoring_fingerprint,
                task_type=task_type,
                artifact_uri=stored.artifact_uri,
                artifact_sha256=stored.artifact_sha256,
                example_count=stored.example_count,
                computed_by=stored.computed_by,
                create_time=now,
            )
        )
