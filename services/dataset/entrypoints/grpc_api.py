"""The gRPC face of the dataset service: converts proto to domain, calls a handler.

No logic lives here beyond the transport: reading an upload's header, chunks and end message
off the request stream, checking the end message against what arrived, and turning a client
that went away into ``UploadInterrupted``.

The uploader of a version is the caller the auth interceptor verified (client certificate,
bearer token, or a trusted proxy's ``x-tuneline-principal``; see :mod:`shared.grpc.auth`). Only
a server running without auth (``AUTH_MODE=insecure``) records the uploader the request
declares, else ``anonymous``; metadata a client sets itself is never trusted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import grpc

from services.dataset.adapters.protos import (
    audit_to_proto,
    dataset_to_proto,
    outcome_from_proto,
    owner_from_proto,
    policy_from_proto,
    report_to_proto,
    summary_to_proto,
    task_type_from_proto,
    version_to_proto,
)
from services.dataset.domain.datasets import UploadCutShort, UploadInterrupted, is_sha256_hex
from services.dataset.domain.reports import SourceKind
from services.dataset.handlers.audits import get_audit
from services.dataset.handlers.datasets import create_dataset, get_dataset, list_datasets
from services.dataset.handlers.deps import DatasetDeps
from services.dataset.handlers.ingest import IngestRequest, import_version, upload_version
from services.dataset.handlers.versions import get_report, get_version, list_reports, list_versions
from shared.db import read_snapshot
from shared.errors import FieldViolation, InvalidArgument
from shared.security import caller_name
from tuneline.dataset.v1 import resources_pb2, service_pb2, service_pb2_grpc

ANONYMOUS = "anonymous"

_JSONL_FORMATS = (resources_pb2.DATA_FORMAT_UNSPECIFIED, resources_pb2.DATA_FORMAT_JSONL)


def _uploader(declared: str) -> str:
    return caller_name(declared or ANONYMOUS)


def _check_format(value: int, field: str) -> None:
    if value not in _JSONL_FORMATS:
        raise InvalidArgument(
            f"unsupported data format {value}",
            [FieldViolation(field, "only JSONL is supported", "UNSUPPORTED_FORMAT")],
        )


def _chunks(
    messages: Iterator[service_pb2.UploadDatasetVersionRequest],
    context: grpc.ServicerContext,
    *,
    end_follows: bool,
) -> Iterator[bytes]:
    """The content bytes after the header; ``UploadInterrupted`` if the client goes away.

    A call that ends while its stream is read (the client cancelled, the deadline passed, the
    server cut an idle stream) may end the request iterator as if the client had finished.
    ``context.is_active()`` tells the two apart only once the transport has noticed; the
    client's ``end`` message says so for certain: where the header announced it
    (``end_follows``), a stream that stops without it is cut short (``UploadCutShort``, an
    aborted upload), and an ``end`` whose size or SHA-256 differ from the chunks received is
    refused. Either raises before the handler stores anything.
    """
    received = 0
    digest = hashlib.sha256()
    end: service_pb2.UploadDatasetVersionEnd | None = None
    try:
        for message in messages:
            kind = message.WhichOneof("payload")
            if end is not None:
                raise InvalidArgument(
                    "nothing may follow the end of an upload",
                    [FieldViolation("end", "must be the last message", "AFTER_END")],
                )
            if kind == "end":
                end = message.end
                continue
            if kind != "chunk":
                raise InvalidArgument(
                    "only the first message of an upload carries a header",
                    [
                        FieldViolation(
                            "chunk", "every message after the first is a chunk", "NOT_A_CHUNK"
                        )
                    ],
                )
            chunk = message.chunk  # each read of a bytes field copies it out of the message
            received += len(chunk)
            digest.update(chunk)
            yield chunk
    except grpc.RpcError as error:  # the stream broke: cancelled, deadline, connection lost
        raise UploadInterrupted(str(error)) from error
    if not context.is_active():
        raise UploadInterrupted("the call ended before the upload did")
    if end is not None:
        _check_end(end, received=received, sha256=digest.hexdigest())
    elif end_follows:
        raise UploadCutShort("the upload stopped before the end message its header announced")


def _check_end(end: service_pb2.UploadDatasetVersionEnd, *, received: int, sha256: str) -> None:
    """The client's account of what it sent must match what arrived."""
    violations: list[FieldViolation] = []
    if end.content_length != received:
        violations.append(
            FieldViolation(
                "end.content_length",
                f"received {received} bytes, the end message says {end.content_length}",
                "END_LENGTH_MISMATCH",
            )
        )
    if end.content_sha256 and not is_sha256_hex(end.content_sha256):
        violations.append(
            FieldViolation(
                "end.content_sha256", "64 lowercase hexadecimal digits", "INVALID_SHA256"
            )
        )
    elif end.content_sha256 and end.content_sha256 != sha256:
        violations.append(
            FieldViolation(
                "end.content_sha256",
                f"received content has sha256 {sha256}, the end message says {end.content_sha256}",
                "END_SHA256_MISMATCH",
            )
        )
    if violations:
        raise InvalidArgument(
            "the upload's end message does not match the content received; nothing is stored",
            violations,
        )


class DatasetServicer(service_pb2_grpc.DatasetServiceServicer):
    """``tuneline.dataset.v1.DatasetService``."""

    def __init__(self, deps: DatasetDeps) -> None:
        self._deps = deps

    def CreateDataset(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.CreateDatasetRequest, context: grpc.ServicerContext
    ) -> service_pb2.CreateDatasetResponse:
        task_type = task_type_from_proto(request.dataset.task_type, field="dataset.task_type")
        assert task_type is not None
        policy = policy_from_proto(request.dataset.schema_policy, field="dataset.schema_policy")
        owner = owner_from_proto(request.dataset.owner)
        with self._deps.sessions.begin() as session:
            dataset = create_dataset(
                session,
                self._deps,
                dataset_id=request.dataset_id,
                task_type=task_type,
                policy=policy,
                display_name=request.dataset.display_name,
                description=request.dataset.description,
                owner=owner,
            )
        return service_pb2.CreateDatasetResponse(dataset=dataset_to_proto(dataset))

    def GetDataset(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetDatasetRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetDatasetResponse:
        with read_snapshot(self._deps.sessions) as session:
            dataset = get_dataset(session, request.name)
        return service_pb2.GetDatasetResponse(dataset=dataset_to_proto(dataset))

    def ListDatasets(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListDatasetsResponse:
        task_type = task_type_from_proto(request.task_type, field="task_type", required=False)
        with read_snapshot(self._deps.sessions) as session:
            datasets, token = list_datasets(
                session,
                page_size=request.page_size,
                page_token=request.page_token,
                task_type=task_type,
            )
        return service_pb2.ListDatasetsResponse(
            datasets=[dataset_to_proto(d) for d in datasets], next_page_token=token
        )

    def UploadDatasetVersion(  # noqa: N802 - the generated servicer's method name
        self,
        request_iterator: Iterable[service_pb2.UploadDatasetVersionRequest],
        context: grpc.ServicerContext,
    ) -> service_pb2.UploadDatasetVersionResponse:
        messages = iter(request_iterator)
        try:
            first = next(messages, None)
        except grpc.RpcError:
            return service_pb2.UploadDatasetVersionResponse()  # gone before saying anything
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument(
                "the first message of an upload must carry the header",
                [FieldViolation("header", "required in the first message", "MISSING_HEADER")],
            )
        header = first.header
        _check_format(header.format, "header.format")
        request = IngestRequest(
            dataset=header.dataset,
            source_kind=SourceKind.UPLOAD,
            source=header.filename,
            parent_version=header.parent_version,
            uploader=_uploader(header.uploader),
            content_length=header.content_length,
            content_sha256=header.content_sha256,
            validate_only=header.validate_only,
            allow_label_churn=header.allow_label_churn,
            label_churn_reason=header.label_churn_reason,
        )
        try:
            result = upload_version(
                self._deps,
                request,
                _chunks(messages, context, end_follows=header.end_follows),
                still_connected=context.is_active,
            )
        except UploadCutShort as cut:  # most likely nobody is listening; if someone is:
            raise InvalidArgument(
                f"{cut}: it was cut short and nothing is stored",
                [
                    FieldViolation(
                        "end", "required as the last message (end_follows)", "MISSING_END"
                    )
                ],
            ) from cut
        except UploadInterrupted:
            return service_pb2.UploadDatasetVersionResponse()  # nobody is listening any more
        return service_pb2.UploadDatasetVersionResponse(
            dataset_version=version_to_proto(result.version) if result.version else None,
            created=result.created,
            report=result.report.name,
            report_summary=summary_to_proto(result.report.summary),
        )

    def ImportDatasetVersion(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ImportDatasetVersionRequest, context: grpc.ServicerContext
    ) -> service_pb2.ImportDatasetVersionResponse:
        _check_format(request.format, "format")
        if not request.source_uri:
            raise InvalidArgument(
                "source_uri is required",
                [FieldViolation("source_uri", "a file:///… URI", "REQUIRED")],
            )
        result = import_version(
            self._deps,
            IngestRequest(
                dataset=request.dataset,
                source_kind=SourceKind.IMPORT,
                source=request.source_uri,
                parent_version=request.parent_version,
                uploader=_uploader(request.uploader),
                content_sha256=request.content_sha256,
                validate_only=request.validate_only,
                allow_label_churn=request.allow_label_churn,
                label_churn_reason=request.label_churn_reason,
            ),
        )
        return service_pb2.ImportDatasetVersionResponse(
            dataset_version=version_to_proto(result.version) if result.version else None,
            created=result.created,
            report=result.report.name,
            report_summary=summary_to_proto(result.report.summary),
        )

    def GetDatasetVersion(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetDatasetVersionRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetDatasetVersionResponse:
        with read_snapshot(self._deps.sessions) as session:
            version = get_version(session, request.name)
        return service_pb2.GetDatasetVersionResponse(dataset_version=version_to_proto(version))

    def ListDatasetVersions(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListDatasetVersionsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListDatasetVersionsResponse:
        with read_snapshot(self._deps.sessions) as session:
            versions, token = list_versions(
                session,
                parent=request.parent,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return service_pb2.ListDatasetVersionsResponse(
            dataset_versions=[version_to_proto(v) for v in versions], next_page_token=token
        )

    def GetValidationReport(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetValidationReportRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetValidationReportResponse:
        with read_snapshot(self._deps.sessions) as session:
            report = get_report(session, request.name)
        return service_pb2.GetValidationReportResponse(validation_report=report_to_proto(report))

    def ListValidationReports(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListValidationReportsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListValidationReportsResponse:
        with read_snapshot(self._deps.sessions) as session:
            reports, token = list_reports(
                session,
                parent=request.parent,
                page_size=request.page_size,
                page_token=request.page_token,
                outcome=outcome_from_proto(request.outcome),
            )
        return service_pb2.ListValidationReportsResponse(
            validation_reports=[report_to_proto(r) for r in reports], next_page_token=token
        )

    def GetDatasetAudit(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetDatasetAuditRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetDatasetAuditResponse:
        if request.max_rows < 0:
            raise InvalidArgument(
                "invalid request", [FieldViolation("max_rows", "must be >= 0", "NEGATIVE")]
            )
        with read_snapshot(self._deps.sessions) as session:
            audit = get_audit(session, request.name)
        return service_pb2.GetDatasetAuditResponse(
            dataset_audit=audit_to_proto(audit, max_rows=request.max_rows)
        )
