"""One function per splitter command or event: ``(session, deps, ...)``.

Every handler works in the ``Session`` it is given and never commits: the gRPC servicer runs
each command in its own transaction, the consumer loop runs the event handler in the
transaction that also records the event id as applied. Either way a new split row, its
manifest (written first, atomically, at a deterministic key) and its staged SplitCreated
event become visible together or not at all.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from services.splitter.adapters.artifacts import read_split_rows, write_manifest
from services.splitter.adapters.metrics import SplitterMetrics
from services.splitter.adapters.protos import split_created_event
from services.splitter.adapters.repository import SplitterRepository
from services.splitter.domain import (
    DatasetVersionName,
    DatasetVersionRef,
    Split,
    SplitPolicy,
    SplitSpec,
    UnsplittableVersion,
    split_dataset,
    split_id_for,
    validate_spec,
)
from services.splitter.domain.names import ANY_VERSION
from shared import names
from shared.artifacts import ArtifactStore
from shared.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from shared.events import stage_event
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size
from shared.request_ids import refuse_reused_request_id, request_id_violations

log = logging.getLogger(__name__)


class VersionLookup(Protocol):
    """Asks the dataset service about a version (None: unknown; LookupError: cannot ask)."""

    def fetch(self, name: str) -> DatasetVersionRef | None: ...


@dataclass(frozen=True)
class SplitterDeps:
    """What the servicer and the event subscription share, wired once by the bootstrap."""

    sessions: sessionmaker[Session]
    artifacts: ArtifactStore
    metrics: SplitterMetrics
    #: ``ce_source`` of the SplitCreated events staged.
    source: str
    #: Asks the dataset service about versions no DatasetVersioned event announced yet.
    versions: VersionLookup | None = None


def _split_version(
    session: Session,
    deps: SplitterDeps,
    version: DatasetVersionRef,
    spec: SplitSpec,
    *,
    trigger: str,
) -> tuple[Split, bool]:
    """The split of ``version`` with ``spec``: the existing one, or a new one (manifest written,
    row added and SplitCreated staged in ``session``). Returns it and whether it is new."""
    repository = SplitterRepository(session)
    version_name = DatasetVersionName.parse(version.name, field="dataset_version")
    split_id = split_id_for(version.name, spec)
    existing = repository.get_split(version_name.split(split_id))
    if existing is not None:
        return existing, False

    started = time.perf_counter()
    rows = read_split_rows(deps.artifacts, version)
    manifest = split_dataset(version, rows, spec)
    stored = write_manifest(deps.artifacts, version_name, split_id, manifest)
    split = Split(
        name=version_name.split(split_id),
        dataset=version_name.dataset,
        dataset_version=version.name,
        dataset_content_sha256=version.content_sha256,
        dataset_artifact_uri=version.artifact_uri,
        task_type=version.task_type,
        spec=spec,
        manifest_uri=stored.uri,
        manifest_sha256=stored.sha256,
        part_stats=tuple(s for s in manifest.stats if s.part in spec.parts_in_use),
        overlap_count=manifest.overlap_count,
        group_count=manifest.group_count,
        create_time=datetime.now(UTC),
    )
    repository.add_split(split)
    stage_event(session, split_created_event(split), source=deps.source, subject=split.name)

    seconds, strategy, row_count = time.perf_counter() - started, spec.strategy.value, len(rows)

    def count_and_log(_session: Session) -> None:
        # only once the split is really stored: a transaction lost to a concurrent creator of
        # the same split (IntegrityError) must not count
        metrics = deps.metrics
        metrics.splits_created.labels(strategy, trigger).inc()
        metrics.rows_split.labels(strategy).inc(row_count)
        metrics.split_duration.labels(strategy).observe(seconds)
        log.info(
            "split created",
            extra={
                "split": split.name,
                "trigger": trigger,
                "rows": row_count,
                "groups": manifest.group_count,
                "parts": {s.part.value: s.rows for s in split.part_stats},
            },
        )

    event.listen(session, "after_commit", count_and_log, once=True)
    return split, True


def _find_version(
    session: Session, deps: SplitterDeps, version_name: DatasetVersionName
) -> DatasetVersionRef:
    """The version as DatasetVersioned announced it or, before that event arrives, as the
    dataset service describes it (read-your-writes: a client may split what it just uploaded).

    A version learnt by asking is not recorded: recording is what DatasetVersioned does, and
    its arrival still splits the version by its policy. Raises NotFound when neither knows
    it, Unavailable when the dataset service cannot be asked.
    """
    name = str(version_name)
    known = SplitterRepository(session).get_dataset_version(name)
    if known is not None:
        return known
    versions = deps.versions
    if versions is None:
        raise NotFound("dataset version", name)
    try:
        fetched = versions.fetch(name)
    except LookupError as error:
        raise Unavailable(
            f"dataset version {name!r} is not known to the splitter yet, and {error}"
        ) from error
    if fetched is None:
        raise NotFound("dataset version", name)
    return fetched


def create_split(
    session: Session,
    deps: SplitterDeps,
    version_name: DatasetVersionName,
    spec: SplitSpec | None,
) -> tuple[Split, bool]:
    """CreateSplit: split a version with ``spec`` (``None``: the dataset's policy). A version
    no DatasetVersioned announced yet is asked of the dataset service through
    ``deps.versions``.

    Idempotent: the same version and resolved spec return the existing split and stage nothing.
    When a concurrent call (or the consumer) stores the same split first, the insert fails
    with ``IntegrityError`` (at flush or commit); run in a new transaction, this finds and
    returns the one that stands.
    """
    if spec is not None:
        validate_spec(spec, field_prefix="spec.")
    version = _find_version(session, deps, version_name)
    if spec is None:
        spec = _policy_of(SplitterRepository(session), version_name.dataset_id).spec
    return _split_version(session, deps, version, spec, trigger="rpc")


def on_dataset_versioned(
    session: Session, deps: SplitterDeps, version: DatasetVersionRef
) -> Split | None:
    """DatasetVersioned: remember the version and, the first time, split it by its policy.

    A version announced again (even under a new event id) splits nothing more. A version too
    small for its policy is logged and counted, not retried: retrying cannot make it bigger,
    and CreateSplit with another spec still works.
    """
    repository = SplitterRepository(session)
    version_name = DatasetVersionName.parse(version.name, field="dataset_version")
    if version.dataset != version_name.dataset:
        raise ValueError(f"{version.name} announced as a version of {version.dataset}")
    metrics = deps.metrics
    if not repository.record_dataset_version(version):
        metrics.versions_not_split.labels("already_seen").inc()
        return None
    policy = _policy_of(repository, version_name.dataset_id)
    if policy.auto_split_disabled:
        metrics.versions_not_split.labels("auto_split_disabled").inc()
        log.info("auto split disabled; version recorded only", extra={"version": version.name})
        return None
    try:
        split, _ = _split_version(session, deps, version, policy.spec, trigger="event")
    except UnsplittableVersion as error:
        metrics.versions_not_split.labels("unsplittable").inc()
        log.warning("version not split", extra={"version": version.name, "reason": error.message})
        return None
    return split


def get_split(session: Session, name: str) -> Split:
    split = SplitterRepository(session).get_split(name)
    if split is None:
        raise NotFound("split", name)
    return split


def list_splits(
    session: Session,
    *,
    dataset_id: str,
    version_id: str,
    page_size: int,
    page_token: str,
) -> tuple[list[Split], str]:
    """ListSplits: one page, newest first, and the next page's token ('' on the last page)."""
    parent = f"datasets/{dataset_id}/versions/{version_id}"
    limit = resolve_page_size(page_size)
    query = {"parent": parent}
    position = decode_page_token(page_token, query)
    after_seq: int | None = None
    if position is not None:
        if len(position) != 1 or not isinstance(position[0], int):
            raise InvalidArgument(
                "page_token is not a ListSplits token",
                [FieldViolation("page_token", "not a ListSplits page token", "INVALID_PAGE_TOKEN")],
            )
        after_seq = position[0]
    page = SplitterRepository(session).list_splits(
        dataset=f"datasets/{dataset_id}",
        dataset_version=None if version_id == ANY_VERSION else parent,
        after_seq=after_seq,
        limit=limit,
    )
    token = encode_page_token(query, [page.last_seq]) if page.last_seq is not None else ""
    return page.splits, token


def _policy_of(repository: SplitterRepository, dataset_id: str) -> SplitPolicy:
    return repository.get_policy(dataset_id) or SplitPolicy(dataset_id=dataset_id)


def set_split_policy(session: Session, policy: SplitPolicy, *, request_id: str = "") -> SplitPolicy:
    """SetSplitPolicy: validate, then create or replace. Existing splits stay as they are.

    A repeated ``request_id`` changes nothing (not even a policy someone else set since) and
    returns the policy as stored; the same id about another dataset is refused."""
    if problems := request_id_violations(request_id):
        raise InvalidArgument("request_id is invalid", problems)
    validate_spec(policy.spec, field_prefix="split_policy.spec.")
    repository = SplitterRepository(session)
    if request_id:
        applied_to = repository.policy_request(request_id)
        if applied_to is not None:
            refuse_reused_request_id(
                names.SPLIT_POLICY.format(dataset=applied_to),
                names.SPLIT_POLICY.format(dataset=policy.dataset_id),
            )
            return _policy_of(repository, policy.dataset_id)
    now = datetime.now(UTC)
    if request_id:
        repository.record_policy_request(request_id, policy.dataset_id, now)
    return repository.put_policy(policy, now=now)


def get_split_policy(session: Session, dataset_id: str) -> SplitPolicy:
    """GetSplitPolicy: the stored policy, or the defaults (no ``update_time``)."""
    return _policy_of(SplitterRepository(session), dataset_id)
