"""``DatasetClient``: the typed client of ``tuneline.dataset.v1.DatasetService``.

Uploads stream a file (or any iterable of bytes) in chunks after a header; a progress callback
sees bytes and lines sent so far. Resources are named in full (``datasets/reviews``,
``datasets/reviews/versions/v1``); only :meth:`DatasetClient.create_dataset` takes a bare id,
as its RPC does. :func:`dataset_name` builds a name from an id.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import grpc

from shared.grpc import ClientSecurity
from shared.names import DATASET
from shared.protobuf import enum_to_proto
from shared.task_types import TASK_TYPE_PREFIX, TaskType
from tuneline.client.base import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_POLL_SECONDS,
    DEFAULT_WAIT_TIMEOUT,
    DeprecatedAlias,
    ServiceClient,
)
from tuneline.client.errors import TunelineError, from_rpc_error
from tuneline.client.names import qualified
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import resources_pb2, service_pb2, service_pb2_grpc

#: Chunk size of uploads: the contract recommends 64 KiB to 1 MiB.
DEFAULT_CHUNK_BYTES = 1024 * 1024
#: Deadline of an upload or import unless the caller sets one (large files take minutes).
DEFAULT_INGEST_TIMEOUT = 3600.0

SEVERITIES: Mapping[str, resources_pb2.ValidationSeverity.ValueType] = {
    "error": resources_pb2.VALIDATION_SEVERITY_ERROR,
    "warning": resources_pb2.VALIDATION_SEVERITY_WARNING,
    "info": resources_pb2.VALIDATION_SEVERITY_INFO,
}
OUTCOMES: Mapping[str, resources_pb2.ValidationOutcome.ValueType] = {
    "accepted": resources_pb2.VALIDATION_OUTCOME_ACCEPTED,
    "rejected": resources_pb2.VALIDATION_OUTCOME_REJECTED,
}

#: ``progress(bytes_sent, lines_sent)``, called after every chunk.
Progress = Callable[[int, int], None]

#: An audit with one of these verdicts has finished; PENDING (and UNSPECIFIED) have not.
_AUDIT_FINISHED = (
    resources_pb2.LABEL_AUDIT_VERDICT_PASSED,
    resources_pb2.LABEL_AUDIT_VERDICT_WARNED,
    resources_pb2.LABEL_AUDIT_VERDICT_BLOCKED,
    resources_pb2.LABEL_AUDIT_VERDICT_SKIPPED,
    resources_pb2.LABEL_AUDIT_VERDICT_FAILED,
)


def dataset_name(dataset: str) -> str:
    """``reviews`` → ``datasets/reviews``; a full name is returned as is."""
    return qualified(DATASET, dataset)


def _task_type(value: str | int) -> common_pb2.TaskType.ValueType:
    """A task type by name (a :class:`~shared.task_types.TaskType`, or ``causal_lm`` in either
    case) or by proto number."""
    if isinstance(value, str):
        try:
            task = TaskType(value)
        except ValueError:
            choices = ", ".join(known.value.lower() for known in TaskType)
            raise ValueError(f"task type must be one of {choices}") from None
        return enum_to_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, task)
    return common_pb2.TaskType.ValueType(value)


def _file_chunks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            yield chunk


def _split(data: bytes, chunk_bytes: int) -> Iterator[bytes]:
    for start in range(0, len(data), chunk_bytes):
        yield data[start : start + chunk_bytes]


class UploadInProgress:
    """A running upload: wait for its :meth:`result`, or :meth:`cancel` it."""

    def __init__(self, call: grpc.Future) -> None:
        self._call = call

    def result(self, timeout: float | None = None) -> service_pb2.UploadDatasetVersionResponse:
        """The response; a rejected upload raises ``InvalidArgumentError`` (see its
        ``violations`` and ``metadata["report"]``)."""
        try:
            return self._call.result(timeout=timeout)
        except grpc.FutureCancelledError:
            raise TunelineError(grpc.StatusCode.CANCELLED, "the upload was cancelled") from None
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def cancel(self) -> bool:
        """Abandon the upload; the service stores nothing of it."""
        return bool(self._call.cancel())

    def done(self) -> bool:
        return bool(self._call.done())


class DatasetClient(ServiceClient):
    """Datasets, their versions and validation reports. See ``ServiceClient`` for channels."""

    service = service_pb2.DESCRIPTOR.services_by_name["DatasetService"]

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = 10.0,
        security: ClientSecurity | None = None,
    ) -> None:
        super().__init__(target, channel=channel, timeout=timeout, security=security)
        self._stub = service_pb2_grpc.DatasetServiceStub(self.channel)

    # -- datasets ---------------------------------------------------------------------------

    def create_dataset(
        self,
        dataset_id: str,
        task_type: str | int,
        *,
        label_set: Iterable[str] = (),
        max_text_length: int = 0,
        min_rows_per_class: int = 0,
        max_imbalance_ratio: float = 0.0,
        rule_severities: Mapping[str, str] | None = None,
        display_name: str = "",
        description: str = "",
        owner: common_pb2.Owner | None = None,
        label_audit_action: str = "",
        max_label_noise_rate: float = 0.0,
        max_label_churn: float = 0.0,
        min_shared_rows_for_churn: int = 0,
    ) -> resources_pb2.Dataset:
        """Create a dataset; zeros take the server defaults. ``rule_severities`` maps rule ids
        to ``error``/``warning``/``info``; ``owner`` (see :func:`tuneline.client.ownership.owner`)
        says who answers for its data. ``label_audit_action`` (``report``/``warn``/``block``)
        is what the label audit does above ``max_label_noise_rate`` estimated noise;
        ``max_label_churn`` the share of rows shared with the parent that may change label
        (when at least ``min_shared_rows_for_churn`` are shared) before ``label_churn`` takes
        its severity."""
        policy = resources_pb2.SchemaPolicy(
            label_set=list(label_set),
            max_text_length=max_text_length,
            min_rows_per_class=min_rows_per_class,
            max_imbalance_ratio=max_imbalance_ratio,
            rule_severities={
                rule: SEVERITIES[severity.lower()]
                for rule, severity in (rule_severities or {}).items()
            },
            label_audit_action=resources_pb2.LabelAuditAction.Value(
                f"LABEL_AUDIT_ACTION_{label_audit_action.upper() or 'UNSPECIFIED'}"
            ),
            max_label_noise_rate=max_label_noise_rate,
            max_label_churn=max_label_churn,
            min_shared_rows_for_churn=min_shared_rows_for_churn,
        )
        request = service_pb2.CreateDatasetRequest(
            dataset_id=dataset_id,
            dataset=resources_pb2.Dataset(
                task_type=_task_type(task_type),
                schema_policy=policy,
                display_name=display_name,
                description=description,
                owner=owner,
            ),
        )
        return self._call(self._stub.CreateDataset, request).dataset

    def get_dataset(self, name: str) -> resources_pb2.Dataset:
        """The dataset ``datasets/{d}``."""
        request = service_pb2.GetDatasetRequest(name=name)
        return self._call(self._stub.GetDataset, request).dataset

    def list_datasets(
        self, *, task_type: str | int | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[resources_pb2.Dataset]:
        request = service_pb2.ListDatasetsRequest()
        if task_type is not None:
            request.task_type = _task_type(task_type)
        return self._paginate(self._stub.ListDatasets, request, "datasets", page_size=page_size)

    # -- uploads and imports ----------------------------------------------------------------

    def start_upload_dataset_version(
        self,
        dataset: str,
        content: Path | str | bytes | Iterable[bytes],
        *,
        filename: str | None = None,
        parent_version: str = "",
        uploader: str = "",
        validate_only: bool = False,
        label_churn_override: str = "",
        content_length: int | None = None,
        content_sha256: str = "",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        progress: Progress | None = None,
        timeout: float = DEFAULT_INGEST_TIMEOUT,
        metadata: Iterable[tuple[str, str]] = (),
    ) -> UploadInProgress:
        """Start streaming ``content`` (a file path, bytes, or an iterable of byte chunks) as a
        new version of ``dataset`` (``datasets/{d}``).

        For a path, ``filename`` and ``content_length`` default to the file's name and size;
        for bytes, to nothing and their length. The chunks are read lazily as gRPC sends them.
        ``label_churn_override``: why this version may relabel many of its parent's rows; with
        it, ``label_churn`` is a warning instead of a refusal, and the reason is kept in the
        version's lineage.

        The stream ends with an ``end`` message (bytes and SHA-256 of what was sent), which
        the header announces: a stream cut short (a cancel) can never be taken for a whole
        upload, and one damaged on the way is refused.
        """
        chunks: Iterable[bytes]
        if isinstance(content, str | os.PathLike):
            path = Path(content)
            filename = path.name if filename is None else filename
            content_length = path.stat().st_size if content_length is None else content_length
            chunks = _file_chunks(path, chunk_bytes)
        elif isinstance(content, bytes):
            content_length = len(content) if content_length is None else content_length
            chunks = _split(content, chunk_bytes)
        else:
            chunks = content
        header = service_pb2.UploadDatasetVersionHeader(
            dataset=dataset,
            format=resources_pb2.DATA_FORMAT_JSONL,
            parent_version=parent_version,
            uploader=uploader,
            filename=filename or "",
            content_length=content_length or 0,
            content_sha256=content_sha256,
            validate_only=validate_only,
            allow_label_churn=bool(label_churn_override),
            label_churn_reason=label_churn_override,
            end_follows=True,
        )

        def requests() -> Iterator[service_pb2.UploadDatasetVersionRequest]:
            yield service_pb2.UploadDatasetVersionRequest(header=header)
            sent_bytes = sent_lines = 0
            digest = hashlib.sha256()
            for chunk in chunks:
                yield service_pb2.UploadDatasetVersionRequest(chunk=chunk)
                sent_bytes += len(chunk)
                digest.update(chunk)
                if progress is not None:
                    sent_lines += chunk.count(b"\n")
                    progress(sent_bytes, sent_lines)
            # only a stream that gets here is whole: a cancelled one never says so
            yield service_pb2.UploadDatasetVersionRequest(
                end=service_pb2.UploadDatasetVersionEnd(
                    content_length=sent_bytes, content_sha256=digest.hexdigest()
                )
            )

        call = self._stub.UploadDatasetVersion.future(
            requests(), timeout=timeout, metadata=tuple(metadata)
        )
        return UploadInProgress(call)

    def upload_dataset_version(
        self,
        dataset: str,
        content: Path | str | bytes | Iterable[bytes],
        *,
        filename: str | None = None,
        parent_version: str = "",
        uploader: str = "",
        validate_only: bool = False,
        label_churn_override: str = "",
        content_length: int | None = None,
        content_sha256: str = "",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        progress: Progress | None = None,
        timeout: float = DEFAULT_INGEST_TIMEOUT,
        metadata: Iterable[tuple[str, str]] = (),
    ) -> service_pb2.UploadDatasetVersionResponse:
        """Upload and wait for the answer (see :meth:`start_upload_dataset_version`);
        interrupting the wait (Ctrl-C) cancels the upload. A rejected upload raises
        ``InvalidArgumentError``."""
        upload = self.start_upload_dataset_version(
            dataset,
            content,
            filename=filename,
            parent_version=parent_version,
            uploader=uploader,
            validate_only=validate_only,
            label_churn_override=label_churn_override,
            content_length=content_length,
            content_sha256=content_sha256,
            chunk_bytes=chunk_bytes,
            progress=progress,
            timeout=timeout,
            metadata=metadata,
        )
        try:
            return upload.result()
        except KeyboardInterrupt:
            upload.cancel()
            raise

    def import_dataset_version(
        self,
        dataset: str,
        source_uri: str,
        *,
        parent_version: str = "",
        uploader: str = "",
        content_sha256: str = "",
        validate_only: bool = False,
        label_churn_override: str = "",
        timeout: float = DEFAULT_INGEST_TIMEOUT,
    ) -> service_pb2.ImportDatasetVersionResponse:
        """Import a new version of ``dataset`` (``datasets/{d}``) from an artifact URI;
        ``label_churn_override`` as for :meth:`start_upload_dataset_version`."""
        request = service_pb2.ImportDatasetVersionRequest(
            dataset=dataset,
            source_uri=source_uri,
            format=resources_pb2.DATA_FORMAT_JSONL,
            parent_version=parent_version,
            uploader=uploader,
            content_sha256=content_sha256,
            validate_only=validate_only,
            allow_label_churn=bool(label_churn_override),
            label_churn_reason=label_churn_override,
        )
        return self._call(self._stub.ImportDatasetVersion, request, timeout=timeout)

    # -- versions and reports ---------------------------------------------------------------

    def get_dataset_version(self, name: str) -> resources_pb2.DatasetVersion:
        """The version ``datasets/{d}/versions/{v}``."""
        request = service_pb2.GetDatasetVersionRequest(name=name)
        return self._call(self._stub.GetDatasetVersion, request).dataset_version

    def list_dataset_versions(
        self, dataset: str, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[resources_pb2.DatasetVersion]:
        """Every version of ``dataset`` (``datasets/{d}``), fetched page by page."""
        request = service_pb2.ListDatasetVersionsRequest(parent=dataset)
        return self._paginate(
            self._stub.ListDatasetVersions, request, "dataset_versions", page_size=page_size
        )

    def get_dataset_audit(self, version: str, *, max_rows: int = 0) -> resources_pb2.DatasetAudit:
        """The label audit of ``version`` (``datasets/{d}/versions/{v}``, or the audit's own
        name ``…/audit``); PENDING until it finishes. ``max_rows`` > 0 caps the suspected rows."""
        name = version if version.endswith("/audit") else f"{version}/audit"
        request = service_pb2.GetDatasetAuditRequest(name=name, max_rows=max_rows)
        return self._call(self._stub.GetDatasetAudit, request).dataset_audit

    def wait(
        self,
        name: str,
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> resources_pb2.DatasetAudit:
        """Poll the audit of ``name`` (a version, or its ``…/audit``) until it has a verdict
        other than PENDING; ``TimeoutError`` after ``timeout`` seconds."""
        return self._wait_until_terminal(
            self.get_dataset_audit,
            name,
            _AUDIT_FINISHED,
            timeout=timeout,
            poll_seconds=poll_seconds,
            state_field="verdict",
        )

    def get_validation_report(self, name: str) -> resources_pb2.ValidationReport:
        """The report ``datasets/{d}/reports/{r}``."""
        request = service_pb2.GetValidationReportRequest(name=name)
        return self._call(self._stub.GetValidationReport, request).validation_report

    def list_validation_reports(
        self, dataset: str, *, outcome: str | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[resources_pb2.ValidationReport]:
        """Every validation report of ``dataset`` (``datasets/{d}``), accepted or rejected."""
        request = service_pb2.ListValidationReportsRequest(parent=dataset)
        if outcome:
            request.outcome = OUTCOMES[outcome.lower()]
        return self._paginate(
            self._stub.ListValidationReports, request, "validation_reports", page_size=page_size
        )

    # -- names of an earlier SDK ----------------------------------------------------------------

    start_upload = DeprecatedAlias("start_upload_dataset_version")
    upload_version = DeprecatedAlias("upload_dataset_version")
    import_version = DeprecatedAlias("import_dataset_version")
    get_version = DeprecatedAlias("get_dataset_version")
    list_versions = DeprecatedAlias("list_dataset_versions")
    get_audit = DeprecatedAlias("get_dataset_audit")
    get_report = DeprecatedAlias("get_validation_report")
    list_reports = DeprecatedAlias("list_validation_reports")
