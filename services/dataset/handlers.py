"""One function per dataset command, taking its dependencies (:class:`DatasetDeps`) as a parameter.

Ingestion (:func:`upload_version`, :func:`import_version`) is where the guarantees live:

* the content streams through :class:`~services.dataset.validation.StreamingValidator` into an
  artifact *spool* (a temp file in the artifact store), because the version's key derives from
  the hash of everything written and is only known at the end;
* rejected (or ``validate_only``) content stores its report and nothing else — the spool is
  removed when its block ends, whatever the reason, so a client that disconnects mid-stream
  leaves nothing at all;
* accepted content is committed under the dataset's write lock: if the same content is already
  a version, that version is returned and no event is staged; otherwise the spool is renamed
  into place, and the version, the dataset's new state, the report and ``DatasetVersioned``
  commit in one transaction (the outbox).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from services.dataset.adapters.label_auditor import AuditFailed
from services.dataset.adapters.messages import dataset_audited, dataset_versioned
from services.dataset.adapters.repository import DatasetRepository
from services.dataset.adapters.sources import ImportSources
from services.dataset.adapters.workers import ValidationWorkers
from services.dataset.churn import ParentLabels
from services.dataset.domain import (
    DEFAULT_VALUE_BOUNDS,
    Dataset,
    DatasetVersion,
    Finding,
    Lineage,
    Outcome,
    Rule,
    SchemaPolicy,
    Severity,
    SourceKind,
    TaskType,
    UploadInterrupted,
    ValidationReport,
    ValueBounds,
    artifact_key,
    is_sha256_hex,
    label_churn_finding,
    ordered_findings,
    version_id_for,
)
from services.dataset.label_audit import (
    DatasetAudit,
    LabelAuditFindings,
    LabelAuditVerdict,
    NotAuditable,
)
from services.dataset.metrics import DatasetMetrics
from services.dataset.near_duplicate_rows import DEFAULT_MAX_ROWS as DEFAULT_NEAR_DUPLICATE_MAX_ROWS
from services.dataset.parent_shift import (
    MIN_ROWS as MIN_PARENT_SHIFT_ROWS,
)
from services.dataset.parent_shift import (
    ParentShift,
    ParentShiftPolicy,
    judge_parent_shift,
    skipped_shift,
)
from services.dataset.validation import StreamingValidator, ValidationResult
from shared import names
from shared.artifacts import ArtifactSpool, ArtifactStore
from shared.canonical_jsonl import CanonicalJsonlReader
from shared.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from shared.events import stage_event
from shared.input_text import normalize_input_text, row_text
from shared.near_duplicates import DEFAULT_THRESHOLD as DEFAULT_NEAR_DUPLICATE_THRESHOLD
from shared.ownership import Owner
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size
from shared.stats.two_sample import TwoSampleResult

#: Line numbers quoted in one violation of a rejected upload's error.
_LINES_IN_VIOLATION = 10


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


# -- datasets ----------------------------------------------------------------------------------


def create_dataset(
    deps: DatasetDeps,
    *,
    dataset_id: str,
    task_type: TaskType,
    policy: SchemaPolicy,
    display_name: str = "",
    description: str = "",
    owner: Owner | None = None,
) -> Dataset:
    names.check_resource_id(dataset_id, field="dataset_id")
    owner = owner or Owner()
    violations = owner.problems("dataset.owner")
    if len(display_name) > 200:
        violations.append(
            FieldViolation("dataset.display_name", "at most 200 characters", "TOO_LONG")
        )
    if len(description) > 4000:
        violations.append(
            FieldViolation("dataset.description", "at most 4000 characters", "TOO_LONG")
        )
    if violations:
        raise InvalidArgument("invalid dataset", violations)
    now = deps.clock()
    dataset = Dataset(
        dataset_id=dataset_id,
        task_type=task_type,
        policy=policy.resolved(task_type),
        display_name=display_name,
        description=description,
        create_time=now,
        update_time=now,
        owner=owner,
    )
    with deps.sessions.begin() as session:
        repo = DatasetRepository(session)
        if repo.get_dataset(dataset_id) is not None:
            raise AlreadyExists("dataset", dataset.name)
        repo.add_dataset(dataset)
    return dataset


def get_dataset(deps: DatasetDeps, name: str) -> Dataset:
    dataset_id = names.DATASET.parse(name)["dataset"]
    with deps.sessions() as session:
        dataset = DatasetRepository(session).get_dataset(dataset_id)
    if dataset is None:
        raise NotFound("dataset", name)
    return dataset


def list_datasets(
    deps: DatasetDeps, *, page_size: int, page_token: str, task_type: TaskType | None
) -> tuple[list[Dataset], str]:
    limit = resolve_page_size(page_size)
    query = {"task_type": task_type.value if task_type else ""}
    position = decode_page_token(page_token, query)
    with deps.sessions() as session:
        datasets = DatasetRepository(session).list_datasets(
            task_type=task_type, after_id=str(position[0]) if position else None, limit=limit + 1
        )
    if len(datasets) <= limit:
        return datasets, ""
    page = datasets[:limit]
    return page, encode_page_token(query, [page[-1].dataset_id])


# -- versions and reports ----------------------------------------------------------------------


def get_version(deps: DatasetDeps, name: str) -> DatasetVersion:
    dataset_id, version_id = names.DATASET_VERSION.ids(name)
    with deps.sessions() as session:
        version = DatasetRepository(session).get_version(dataset_id, version_id)
    if version is None:
        raise NotFound("dataset version", name)
    return version


def list_versions(
    deps: DatasetDeps, *, parent: str, page_size: int, page_token: str
) -> tuple[list[DatasetVersion], str]:
    dataset_id = names.DATASET.parse(parent, field="parent")["dataset"]
    limit = resolve_page_size(page_size)
    query = {"parent": parent}
    position = decode_page_token(page_token, query)
    with deps.sessions() as session:
        repo = DatasetRepository(session)
        if repo.get_dataset(dataset_id) is None:
            raise NotFound("dataset", parent)
        rows = repo.list_versions(
            dataset_id, before_seq=int(position[0]) if position else None, limit=limit + 1
        )
    if len(rows) <= limit:
        return [version for _, version in rows], ""
    page = rows[:limit]
    return [version for _, version in page], encode_page_token(query, [page[-1][0]])


def get_report(deps: DatasetDeps, name: str) -> ValidationReport:
    dataset_id, report_id = names.VALIDATION_REPORT.ids(name)
    with deps.sessions() as session:
        report = DatasetRepository(session).get_report(dataset_id, report_id)
    if report is None:
        raise NotFound("validation report", name)
    return report


def list_reports(
    deps: DatasetDeps, *, parent: str, page_size: int, page_token: str, outcome: Outcome | None
) -> tuple[list[ValidationReport], str]:
    dataset_id = names.DATASET.parse(parent, field="parent")["dataset"]
    limit = resolve_page_size(page_size)
    query = {"parent": parent, "outcome": outcome.value if outcome else ""}
    position = decode_page_token(page_token, query)
    with deps.sessions() as session:
        repo = DatasetRepository(session)
        if repo.get_dataset(dataset_id) is None:
            raise NotFound("dataset", parent)
        rows = repo.list_reports(
            dataset_id,
            outcome=outcome,
            before_seq=int(position[0]) if position else None,
            limit=limit + 1,
        )
    if len(rows) <= limit:
        return [report for _, report in rows], ""
    page = rows[:limit]
    return [report for _, report in page], encode_page_token(query, [page[-1][0]])


# -- ingestion ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestRequest:
    """An upload's header or an import request, in domain terms."""

    dataset: str
    source_kind: SourceKind
    #: The client's file name (upload) or the URI read (import).
    source: str = ""
    parent_version: str = ""
    uploader: str = ""
    content_length: int = 0
    content_sha256: str = ""
    validate_only: bool = False
    #: Accept label churn against the parent beyond the policy; needs ``label_churn_reason``,
    #: which the lineage records.
    allow_label_churn: bool = False
    label_churn_reason: str = ""


@dataclass(frozen=True)
class IngestResult:
    report: ValidationReport
    #: The version the content is; ``None`` for ``validate_only``.
    version: DatasetVersion | None
    created: bool


def upload_version(
    deps: DatasetDeps,
    request: IngestRequest,
    chunks: Iterable[bytes],
    still_connected: Callable[[], bool] = lambda: True,
) -> IngestResult:
    """Validate and version streamed content. ``chunks`` raises ``UploadInterrupted`` if the
    client goes away; nothing is stored then. ``still_connected`` is asked once more after
    the content is validated, before anything is stored: a stream can end as if finished
    before the transport says the client cancelled it, and half an upload must not become a
    rejected report (or a version)."""
    return _ingest(deps, request, chunks, still_connected)


def import_version(deps: DatasetDeps, request: IngestRequest) -> IngestResult:
    """Validate and version the file behind ``request.source`` (a ``file://`` URI)."""
    handle = deps.import_sources.open(request.source)
    return _ingest(deps, request, ImportSources.chunks(handle))


def _check_request(request: IngestRequest, prefix: str) -> None:
    violations = []
    if request.content_length < 0:
        violations.append(
            FieldViolation(f"{prefix}content_length", "must be >= 0 (0: unknown)", "NEGATIVE")
        )
    sha = request.content_sha256
    if sha and not is_sha256_hex(sha):
        violations.append(
            FieldViolation(
                f"{prefix}content_sha256", "64 lowercase hexadecimal digits", "INVALID_SHA256"
            )
        )
    if len(request.uploader) > 255:
        violations.append(FieldViolation(f"{prefix}uploader", "at most 255 characters", "TOO_LONG"))
    if request.allow_label_churn and not request.label_churn_reason.strip():
        violations.append(
            FieldViolation(
                f"{prefix}label_churn_reason",
                "required with allow_label_churn: why the labels may change",
                "REQUIRED",
            )
        )
    if len(request.label_churn_reason) > 1024:
        violations.append(
            FieldViolation(f"{prefix}label_churn_reason", "at most 1024 characters", "TOO_LONG")
        )
    if len(request.source) > 1024:
        field = f"{prefix}filename" if request.source_kind is SourceKind.UPLOAD else "source_uri"
        violations.append(FieldViolation(field, "at most 1024 characters", "TOO_LONG"))
    if violations:
        raise InvalidArgument("invalid request", violations)


def _ingest(
    deps: DatasetDeps,
    request: IngestRequest,
    chunks: Iterable[bytes],
    still_connected: Callable[[], bool] = lambda: True,
) -> IngestResult:
    """Check the request, validate the content into a spool, then store the report (rejected,
    validate-only) or commit the version; see the module docstring."""
    started = time.perf_counter()
    prefix = "header." if request.source_kind is SourceKind.UPLOAD else ""
    source_label = request.source_kind.value
    dataset_id = names.DATASET.parse(request.dataset, field=f"{prefix}dataset")["dataset"]
    _check_request(request, prefix)
    with deps.sessions() as session:
        repo = DatasetRepository(session)
        dataset = repo.get_dataset(dataset_id)
        if dataset is None:
            raise NotFound("dataset", request.dataset)
        parent: DatasetVersion | None = None
        if request.parent_version:
            parent_dataset, parent_id = names.DATASET_VERSION.ids(
                request.parent_version, field=f"{prefix}parent_version"
            )
            if parent_dataset == dataset_id:
                parent = repo.get_version(dataset_id, parent_id)
            if parent is None:
                raise NotFound("dataset version", request.parent_version)
        elif dataset.latest_version:
            parent = repo.get_version(*names.DATASET_VERSION.ids(dataset.latest_version))
    override = request.label_churn_reason.strip() if request.allow_label_churn else ""
    try:
        with deps.store.open_spool() as spool:
            result, extra = _validate(
                deps, dataset, request, chunks, spool, _parent_labels(deps, dataset, parent)
            )
            if result.label_churn is not None:
                churn = label_churn_finding(
                    result.label_churn, dataset.policy, override_reason=override
                )
                extra.extend([churn] if churn is not None else [])
            findings = ordered_findings([*result.findings, *extra])
            report = ValidationReport(
                dataset_id=dataset_id,
                report_id="r-" + secrets.token_hex(8),
                findings=findings,
                lines_read=result.lines_read,
                bytes_read=result.bytes_read,
                lineage=Lineage(
                    parent_version=request.parent_version or dataset.latest_version,
                    uploader=request.uploader,
                    source_kind=request.source_kind,
                    source=request.source,
                    source_sha256=result.source_sha256,
                    label_churn_override=override,
                ),
                validate_only=request.validate_only,
                create_time=deps.clock(),
            )
            if not still_connected():
                raise UploadInterrupted("the client went away before the upload was stored")
            if report.summary.outcome is Outcome.REJECTED or request.validate_only:
                outcome = _store_report(deps, report)
            else:
                outcome = _commit_version(
                    deps, dataset, report, result, spool, request.parent_version
                )
    except UploadInterrupted:
        deps.metrics.ingests.labels(source_label, "aborted").inc()
        raise
    deps.metrics.ingested(
        source=source_label,
        outcome=outcome.label,
        rows=result.row_count,
        findings=outcome.report.findings,
        seconds=time.perf_counter() - started,
    )
    if outcome.report.summary.outcome is Outcome.REJECTED:
        raise rejection(outcome.report)
    return IngestResult(outcome.report, outcome.version, outcome.label == "created")


def _parent_labels(
    deps: DatasetDeps, dataset: Dataset, parent: DatasetVersion | None
) -> ParentLabels | None:
    """The labels of the parent's inputs, for ``label_churn`` (CLASSIFICATION only)."""
    if parent is None or dataset.task_type is not TaskType.CLASSIFICATION:
        return None
    with deps.store.open(parent.artifact_uri) as handle:
        return ParentLabels.of_rows(parent.name, CanonicalJsonlReader(handle))


def _validate(  # noqa: PLR0917 - one private step of _ingest
    deps: DatasetDeps,
    dataset: Dataset,
    request: IngestRequest,
    chunks: Iterable[bytes],
    spool: ArtifactSpool,
    parent_labels: ParentLabels | None,
) -> tuple[ValidationResult, list[Finding]]:
    """Stream ``chunks`` through the validator into ``spool``; the findings about the transfer
    itself (size, declared length and hash) come second."""
    limits = deps.limits
    validator = StreamingValidator(
        dataset.task_type,
        dataset.policy,
        spool.write,
        max_line_bytes=limits.max_line_bytes,
        max_line_numbers=limits.report_line_numbers,
        executor=deps.workers.executor(),
        max_in_flight=2 * max(1, deps.workers.count),
        bounds=limits.value_bounds,
        parent_labels=parent_labels,
        near_duplicate_threshold=limits.near_duplicate_threshold,
        near_duplicate_max_rows=limits.near_duplicate_max_rows,
    )
    bytes_counter = deps.metrics.bytes.labels(request.source_kind.value)
    extra: list[Finding] = []
    too_large = Finding(
        rule=Rule.UPLOAD_TOO_LARGE,
        severity=Severity.ERROR,
        message=f"the content is larger than this service accepts ({limits.max_upload_bytes} "
        "bytes); reading stopped there",
        count=1,
    )
    try:
        if request.content_length > limits.max_upload_bytes:
            extra.append(too_large)
            return validator.finish(complete=False), extra
        for chunk in chunks:
            if validator.bytes_read + len(chunk) > limits.max_upload_bytes:
                extra.append(too_large)
                return validator.finish(complete=False), extra
            validator.feed(chunk)
            bytes_counter.inc(len(chunk))
        result = validator.finish()
    finally:
        validator.close()
    if request.content_length and result.bytes_read != request.content_length:
        extra.append(
            Finding(
                rule=Rule.CONTENT_LENGTH_MISMATCH,
                severity=Severity.ERROR,
                message=f"received {result.bytes_read} bytes, the header announced "
                f"{request.content_length}",
                count=1,
            )
        )
    if request.content_sha256 and result.source_sha256 != request.content_sha256:
        extra.append(
            Finding(
                rule=Rule.CONTENT_SHA256_MISMATCH,
                severity=Severity.ERROR,
                message=f"received content has sha256 {result.source_sha256}, the request "
                f"announced {request.content_sha256}",
                count=1,
            )
        )
    return result, extra


@dataclass(frozen=True)
class _Outcome:
    report: ValidationReport
    version: DatasetVersion | None
    #: The metrics' outcome label.
    label: str


def _store_report(deps: DatasetDeps, report: ValidationReport) -> _Outcome:
    with deps.sessions.begin() as session:
        DatasetRepository(session).add_report(report)
    rejected = report.summary.outcome is Outcome.REJECTED
    return _Outcome(report, None, "rejected" if rejected else "validated")


def _commit_version(  # noqa: PLR0917 - one private step of _ingest
    deps: DatasetDeps,
    dataset: Dataset,
    report: ValidationReport,
    result: ValidationResult,
    spool: ArtifactSpool,
    requested_parent: str,
) -> _Outcome:
    """Make the accepted content a version (or find it is one). The lineage's parent is the
    requested one, else the dataset's latest version at commit time."""
    dataset_id = dataset.dataset_id
    version_id = version_id_for(spool.sha256)
    name = names.DATASET_VERSION.format(dataset=dataset_id, version=version_id)
    committed_uri = ""
    spool.sync()  # the slow part of committing, done before taking the dataset's lock
    try:
        with deps.sessions.begin() as session:
            repo = DatasetRepository(session)
            current = repo.lock_dataset(dataset_id)
            if current is None:  # deleted meanwhile: there is no delete RPC, but be exact
                raise NotFound("dataset", dataset.name)
            existing = repo.get_version(dataset_id, version_id)
            if existing is not None:
                report = replace(report, dataset_version=existing.name)
                repo.add_report(report)
                return _Outcome(report, existing, "unchanged")
            policy = current.policy
            if not dataset.policy.label_set and policy.label_set:
                # a concurrent first version derived the label set after we started: check
                # this content against it with the label counts we have
                late = _labels_outside(policy, result)
                if late is not None:
                    report = replace(report, findings=ordered_findings([*report.findings, late]))
                    repo.add_report(report)
                    return _Outcome(report, None, "rejected")
            if current.task_type is TaskType.CLASSIFICATION and not policy.label_set:
                labels = tuple(label for label, _ in result.label_distribution)
                policy = policy.with_derived_labels(labels)
            committed_uri = spool.commit(artifact_key(dataset_id, version_id)).uri
            now = deps.clock()
            lineage = replace(
                report.lineage, parent_version=requested_parent or current.latest_version
            )
            report = replace(report, dataset_version=name, lineage=lineage)
            version = DatasetVersion(
                dataset_id=dataset_id,
                version_id=version_id,
                content_sha256=spool.sha256,
                row_count=result.row_count,
                byte_count=spool.size_bytes,
                task_type=current.task_type,
                label_distribution=result.label_distribution,
                slice_distribution=result.slice_distribution,
                artifact_uri=committed_uri,
                report=report.name,
                summary=report.summary,
                lineage=lineage,
                create_time=now,
            )
            repo.add_version(version)
            repo.record_new_version(dataset_id, name, policy, now)
            repo.add_report(report)
            stage_event(session, dataset_versioned(version), source=deps.event_source, subject=name)
            _request_audit(deps, session, version, policy)
    except BaseException:
        if committed_uri:
            _remove_orphan(deps, dataset_id, version_id, committed_uri)
        raise
    deps.relay_wake()
    deps.audit_wake()
    return _Outcome(report, version, "created")


def _request_audit(
    deps: DatasetDeps, session: Session, version: DatasetVersion, policy: SchemaPolicy
) -> None:
    """The new version's label audit: PENDING (the audit runner picks it up), or SKIPPED and
    announced at once for a CAUSAL_LM version with nothing to embed: its rows have no labels,
    and without a parent (or with the shift test off) there is no shift to measure either."""
    audit = DatasetAudit(
        dataset_id=version.dataset_id,
        version_id=version.version_id,
        content_sha256=version.content_sha256,
        task_type=version.task_type.value,
        policy=policy.label_audit_policy(),
        row_count=version.row_count,
        create_time=version.create_time or deps.clock(),
    )
    if version.task_type is not TaskType.CLASSIFICATION and not _measures_parent_shift(
        deps, version
    ):
        audit = audit.finished(
            LabelAuditVerdict.SKIPPED,
            f"label_audit: {version.task_type.value} rows have no labels to audit",
            audit.create_time,
        )
        stage_event(
            session, dataset_audited(audit), source=deps.event_source, subject=audit.dataset_version
        )
        deps.metrics.audited(audit)
    DatasetRepository(session).add_audit(audit)


def _labels_outside(policy: SchemaPolicy, result: ValidationResult) -> Finding | None:
    outside = [
        (label, n) for label, n in result.label_distribution if label not in policy.label_set
    ]
    if not outside:
        return None
    listed = ", ".join(f"{label!r} ({n} rows)" for label, n in outside)
    return Finding(
        rule=Rule.LABEL_NOT_IN_SET,
        severity=policy.severity(Rule.LABEL_NOT_IN_SET),
        message=f"labels outside the label set derived meanwhile: {listed}",
        count=sum(n for _, n in outside),
        field="label",
    )


def _remove_orphan(deps: DatasetDeps, dataset_id: str, version_id: str, uri: str) -> None:
    """The version's transaction failed after its artifact was put in place: remove the
    artifact, unless an identical upload committed the same version meanwhile."""
    with deps.sessions() as session:
        if DatasetRepository(session).get_version(dataset_id, version_id) is None:
            deps.store.delete(uri)


def rejection(report: ValidationReport) -> InvalidArgument:
    """The INVALID_ARGUMENT a rejected upload answers: one violation per error finding.

    ``field`` is the rule id (stable, so clients can match on it), ``description`` the first
    line numbers, the total and the message, ``reason`` the rule id again; the report's name
    is in the ``ErrorInfo`` metadata under ``report``.
    """
    violations = []
    for finding in report.findings:
        if finding.severity is not Severity.ERROR:
            continue
        where = ""
        if finding.line_numbers:
            shown = finding.line_numbers[:_LINES_IN_VIOLATION]
            where = "line " if len(shown) == 1 else "lines "
            where += ", ".join(str(n) for n in shown)
            if finding.count > len(shown):
                where += f" ({finding.count} in total)"
            where += ": "
        violations.append(
            FieldViolation(finding.rule.value, f"{where}{finding.message}", finding.rule.value)
        )
    summary = report.summary
    return InvalidArgument(
        f"content rejected: {summary.error_count} error(s) ({', '.join(summary.error_rules)}); "
        f"see report {report.name}",
        violations,
        metadata={"report": report.name},
    )


# -- label audits ------------------------------------------------------------------------------


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


def get_audit(deps: DatasetDeps, name: str) -> DatasetAudit:
    """GetDatasetAudit: ``name`` is ``datasets/{dataset}/versions/{version}/audit``."""
    version_name_part, _, suffix = name.rpartition("/")
    if suffix != "audit":
        raise InvalidArgument(
            "invalid audit name",
            [
                FieldViolation(
                    "name", "must be datasets/{dataset}/versions/{version}/audit", "INVALID_FORMAT"
                )
            ],
        )
    dataset_id, version_id = names.DATASET_VERSION.ids(version_name_part, field="name")
    with deps.sessions() as session:
        audit = DatasetRepository(session).get_audit(dataset_id, version_id)
    if audit is None:
        raise NotFound("dataset audit", name)
    return audit


def run_pending_audits(deps: DatasetDeps, auditor: LabelAuditor, *, limit: int = 1) -> int:
    """Audit up to ``limit`` PENDING versions, oldest first: store each verdict and stage its
    ``DatasetAudited`` in one transaction. Returns how many were finished."""
    with deps.sessions() as session:
        pending = DatasetRepository(session).pending_audits(limit)
    finished = 0
    for audit in pending:
        done = _audited(deps, auditor, audit)
        with deps.sessions.begin() as session:
            if not DatasetRepository(session).complete_audit(done):
                continue  # another replica finished it first
            stage_event(
                session,
                dataset_audited(done),
                source=deps.event_source,
                subject=done.dataset_version,
            )
        deps.relay_wake()
        deps.metrics.audited(done)
        finished += 1
    return finished


def _audited(deps: DatasetDeps, auditor: LabelAuditor, audit: DatasetAudit) -> DatasetAudit:
    started = time.perf_counter()
    with deps.sessions() as session:
        version = DatasetRepository(session).get_version(audit.dataset_id, audit.version_id)
    if version is None:  # there is no delete RPC; be exact anyway
        return audit.finished(LabelAuditVerdict.FAILED, "the version is gone", deps.clock())
    if version.task_type is not TaskType.CLASSIFICATION:
        # no labels to audit; the texts still shift against the parent's (report only)
        texts = _version_texts(deps, version)
        shift = _parent_shift(deps, auditor, version, texts)
        deps.metrics.audit_duration.observe(time.perf_counter() - started)
        return audit.finished(
            LabelAuditVerdict.SKIPPED,
            f"label_audit: {version.task_type.value} rows have no labels to audit",
            deps.clock(),
            encoder=auditor.encoder if shift is not None else "",
            parent_shift=shift,
        )
    texts = []
    labels: list[str] = []
    with deps.store.open(version.artifact_uri) as handle:
        for row in CanonicalJsonlReader(handle):
            texts.append(str(row["text"]))
            labels.append(str(row["label"]))
    findings: LabelAuditFindings | None = None
    unaudited: tuple[LabelAuditVerdict, str] | None = None
    try:
        findings = auditor.audit(texts, labels)
    except NotAuditable as reason:
        unaudited = LabelAuditVerdict.SKIPPED, f"label_audit: {reason}"
    except AuditFailed as reason:
        unaudited = LabelAuditVerdict.FAILED, f"label_audit: {reason}"
    finally:
        deps.metrics.audit_duration.observe(time.perf_counter() - started)
    shift = _parent_shift(deps, auditor, version, texts)
    if findings is None:
        assert unaudited is not None
        return audit.finished(*unaudited, deps.clock(), encoder=auditor.encoder, parent_shift=shift)
    return audit.audited(findings, deps.clock(), encoder=auditor.encoder, parent_shift=shift)


def _measures_parent_shift(deps: DatasetDeps, version: DatasetVersion) -> bool:
    return bool(version.lineage.parent_version) and deps.parent_shift.enabled


def _version_texts(deps: DatasetDeps, version: DatasetVersion) -> list[str]:
    """Every row's text as written (:func:`shared.input_text.row_text`), in file order."""
    with deps.store.open(version.artifact_uri) as handle:
        texts = (row_text(row) for row in CanonicalJsonlReader(handle))
        return [text for text in texts if text is not None]


def _parent_shift(
    deps: DatasetDeps, auditor: LabelAuditor, version: DatasetVersion, texts: Sequence[str]
) -> ParentShift | None:
    """The shift of the texts ``version`` adds to its parent against the parent's; None
    without a parent (see :mod:`services.dataset.parent_shift` for why only the added ones)."""
    parent_name = version.lineage.parent_version
    policy = deps.parent_shift
    if not parent_name:
        return None
    if not policy.enabled:
        return skipped_shift(parent_name, policy, "turned off")
    with deps.sessions() as session:
        parent = DatasetRepository(session).get_version(*names.DATASET_VERSION.ids(parent_name))
    if parent is None:  # there is no delete RPC; be exact anyway
        return skipped_shift(parent_name, policy, "the parent version is gone")
    parent_texts = _version_texts(deps, parent)
    inherited = {normalize_input_text(text) for text in parent_texts}
    added = [text for text in texts if normalize_input_text(text) not in inherited]
    if len(added) < MIN_PARENT_SHIFT_ROWS or len(parent_texts) < MIN_PARENT_SHIFT_ROWS:
        return skipped_shift(
            parent_name,
            policy,
            f"{len(added)} rows added to {len(parent_texts)} of the parent; the test needs "
            f"{MIN_PARENT_SHIFT_ROWS} of each",
        )
    try:
        test = auditor.parent_shift(
            added, parent_texts, permutations=policy.permutations, max_rows=policy.max_rows
        )
    except AuditFailed as reason:
        return skipped_shift(parent_name, policy, f"no embeddings: {reason}")
    return judge_parent_shift(parent_name, test, policy)
