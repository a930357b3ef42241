"""The splitter's SQL repository: domain objects in, domain objects out, in a caller's session.

The caller owns the transaction (a gRPC handler's, or the consumer loop's for an event), so a
split, the dataset version that caused it and the staged SplitCreated commit together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.splitter.adapters.tables import (
    DatasetVersionRecord,
    SplitPolicyRecord,
    SplitPolicyRequestRecord,
    SplitRecord,
)
from services.splitter.domain import (
    DatasetVersionRef,
    Part,
    PartStats,
    Split,
    SplitPolicy,
    SplitRatios,
    SplitSpec,
    SplitStrategy,
)
from shared.task_types import TaskType


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time stored here was UTC
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _spec(record: SplitRecord | SplitPolicyRecord) -> SplitSpec:
    return SplitSpec(
        strategy=SplitStrategy(record.strategy),
        ratios=SplitRatios(record.ratio_train, record.ratio_validation, record.ratio_test),
        seed=record.seed,
    )


def _split(record: SplitRecord) -> Split:
    return Split(
        name=record.name,
        dataset=record.dataset,
        dataset_version=record.dataset_version,
        dataset_content_sha256=record.dataset_content_sha256,
        dataset_artifact_uri=record.dataset_artifact_uri,
        task_type=TaskType(record.task_type),
        spec=_spec(record),
        manifest_uri=record.manifest_uri,
        manifest_sha256=record.manifest_sha256,
        part_stats=tuple(
            PartStats(Part(s["part"]), s["rows"], s["groups"], dict(s["labels"]))
            for s in json.loads(record.part_stats)
        ),
        overlap_count=record.overlap_count,
        group_count=record.group_count,
        create_time=_utc(record.create_time),
    )


class ConflictingDatasetVersion(RuntimeError):
    """Two events described one content-addressed version differently: a broken producer."""


@dataclass(frozen=True)
class SplitPage:
    """One page of splits, newest first, and where the next page starts (if any)."""

    splits: list[Split]
    #: The ``seq`` of the last split on this page when more follow, else ``None``.
    last_seq: int | None


class SplitterRepository:
    """Splits, split policies and known dataset versions, in one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    # -- dataset versions -------------------------------------------------------------------

    def get_dataset_version(self, name: str) -> DatasetVersionRef | None:
        record = self._session.get(DatasetVersionRecord, name)
        if record is None:
            return None
        return DatasetVersionRef(
            name=record.name,
            dataset=record.dataset,
            content_sha256=record.content_sha256,
            artifact_uri=record.artifact_uri,
            task_type=TaskType(record.task_type),
            row_count=record.row_count,
            byte_count=record.byte_count,
        )

    def record_dataset_version(self, version: DatasetVersionRef) -> bool:
        """Remember ``version``; returns False when it was known already (and identical)."""
        known = self.get_dataset_version(version.name)
        if known is not None:
            if known != version:
                raise ConflictingDatasetVersion(
                    f"{version.name} was announced as {known} and now as {version}"
                )
            return False
        self._session.add(
            DatasetVersionRecord(
                name=version.name,
                dataset=version.dataset,
                content_sha256=version.content_sha256,
                artifact_uri=version.artifact_uri,
                task_type=version.task_type.value,
                row_count=version.row_count,
                byte_count=version.byte_count,
                recorded_at=datetime.now(UTC),
            )
        )
        return True

    # -- split policies ---------------------------------------------------------------------

    def get_policy(self, dataset_id: str) -> SplitPolicy | None:
        record = self._session.get(SplitPolicyRecord, dataset_id)
        if record is None:
            return None
        return SplitPolicy(
            dataset_id=record.dataset_id,
            spec=_spec(record),
            auto_split_disabled=record.auto_split_disabled,
            update_time=_utc(record.update_time),
        )

    def put_policy(self, policy: SplitPolicy, *, now: datetime) -> SplitPolicy:
        """Create or replace the dataset's policy; returns it as stored."""
        record = self._session.get(SplitPolicyRecord, policy.dataset_id)
        if record is None:
            record = SplitPolicyRecord(dataset_id=policy.dataset_id)
            self._session.add(record)
        record.strategy = policy.spec.strategy.value
        record.ratio_train = policy.spec.ratios.train
        record.ratio_validation = policy.spec.ratios.validation
        record.ratio_test = policy.spec.ratios.test
        record.seed = policy.spec.seed
        record.auto_split_disabled = policy.auto_split_disabled
        record.update_time = now
        self._session.flush()
        stored = self.get_policy(policy.dataset_id)
        assert stored is not None
        return stored

    def policy_request(self, request_id: str) -> str | None:
        """The dataset id a SetSplitPolicy with ``request_id`` was applied to, if any."""
        record = self._session.get(SplitPolicyRequestRecord, request_id)
        return None if record is None else record.dataset_id

    def record_policy_request(self, request_id: str, dataset_id: str, now: datetime) -> None:
        self._session.add(
            SplitPolicyRequestRecord(request_id=request_id, dataset_id=dataset_id, create_time=now)
        )

    # -- splits -----------------------------------------------------------------------------

    def get_split(self, name: str) -> Split | None:
        record = self._session.scalar(select(SplitRecord).where(SplitRecord.name == name))
        return _split(record) if record else None

    def add_split(self, split: Split) -> None:
        self._session.add(
            SplitRecord(
                name=split.name,
                dataset=split.dataset,
                dataset_version=split.dataset_version,
                dataset_content_sha256=split.dataset_content_sha256,
                dataset_artifact_uri=split.dataset_artifact_uri,
                task_type=split.task_type.value,
                strategy=split.spec.strategy.value,
                ratio_train=split.spec.ratios.train,
                ratio_validation=split.spec.ratios.validation,
                ratio_test=split.spec.ratios.test,
                seed=split.spec.seed,
                manifest_uri=split.manifest_uri,
                manifest_sha256=split.manifest_sha256,
                part_stats=json.dumps(
                    [
                        {
                            "part": s.part.value,
                            "rows": s.rows,
                            "groups": s.groups,
                            "labels": s.labels,
                        }
                        for s in split.part_stats
                    ]
                ),
                overlap_count=split.overlap_count,
                group_count=split.group_count,
                create_time=split.create_time,
            )
        )
        self._session.flush()

    def list_splits(
        self, *, dataset: str, dataset_version: str | None, after_seq: int | None, limit: int
    ) -> SplitPage:
        """Splits of ``dataset`` (one version, or all when ``dataset_version`` is None),
        newest first, starting after the split with ``after_seq``."""
        query = select(SplitRecord).where(SplitRecord.dataset == dataset)
        if dataset_version is not None:
            query = query.where(SplitRecord.dataset_version == dataset_version)
        if after_seq is not None:
            query = query.where(SplitRecord.seq < after_seq)
        # one extra row says whether another page follows, without a count query
        records = self._session.scalars(
            query.order_by(SplitRecord.seq.desc()).limit(limit + 1)
        ).all()
        page = records[:limit]
        return SplitPage(
            splits=[_split(r) for r in page],
            last_seq=page[-1].seq if len(records) > limit else None,
        )
