"""Ingestion: UploadDatasetVersion and ImportDatasetVersion (:func:`upload_version`,
:func:`import_version`), where the guarantees live:

* the content streams through
  :class:`~services.dataset.domain.validation.StreamingValidator` into an artifact *spool* (a
  temp file in the artifact store), because the version's key derives from the hash of
  everything written and is only known at the end;
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from services.dataset.adapters.protos import dataset_versioned
from services.dataset.adapters.repository import DatasetRepository
from services.dataset.adapters.sources import ImportSources
from services.dataset.domain.churn import ParentLabels, label_churn_finding
from services.dataset.domain.datasets import (
    Dataset,
    DatasetVersion,
    UploadInterrupted,
    artifact_key,
    is_sha256_hex,
    version_id_for,
)
from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.reports import (
    Finding,
    Lineage,
    Outcome,
    SourceKind,
    ValidationReport,
    ordered_findings,
)
from services.dataset.domain.rules import Rule, Severity
from services.dataset.domain.validation import StreamingValidator, ValidationResult
from services.dataset.handlers.audits import request_audit
from services.dataset.handlers.deps import DatasetDeps
from shared import names
from shared.artifacts import ArtifactSpool
from shared.canonical_jsonl import CanonicalJsonlReader
from shared.errors import FieldViolation, InvalidArgument, NotFound
from shared.events import stage_event
from shared.task_types import TaskType

#: Line numbers quoted in one violation of a rejected upload's error.
_LINES_IN_VIOLATION = 10


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
            request_audit(deps, session, version, policy)
    except BaseException:
        if committed_uri:
            _remove_orphan(deps, dataset_id, version_id, committed_uri)
        raise
    deps.relay_wake()
    deps.audit_wake()
    return _Outcome(report, version, "created")


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
