"""Domain errors become google.rpc.Status with the same rich details in every service."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from shared.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    ResourceExhausted,
    Unavailable,
)
from shared.grpc.errors import ERROR_DOMAIN, abort_with, to_rpc_status


def _unpack(details: list[any_pb2.Any], message_type: type) -> list:
    found = []
    for detail in details:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            assert detail.Unpack(message)
            found.append(message)
    return found


def _error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    (info,) = _unpack(list(status.details), error_details_pb2.ErrorInfo)
    return info


def test_invalid_argument_carries_bad_request_with_each_violation() -> None:
    error = InvalidArgument(
        "2 fields are invalid",
        [
            FieldViolation("adapter.rank", "must be positive", "OUT_OF_RANGE"),
            FieldViolation("dataset", "is required"),
        ],
        metadata={"request_id": "r-7"},
    )

    status = to_rpc_status(error)

    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == "2 fields are invalid"
    assert len(status.details) == 2
    (bad_request,) = _unpack(list(status.details), error_details_pb2.BadRequest)
    violations = [(v.field, v.description, v.reason) for v in bad_request.field_violations]
    assert violations == [
        ("adapter.rank", "must be positive", "OUT_OF_RANGE"),
        ("dataset", "is required", ""),
    ]
    info = _error_info(status)
    assert info.reason == "INVALID_ARGUMENT"
    assert info.domain == ERROR_DOMAIN == "tuneline.dev"
    assert dict(info.metadata) == {"request_id": "r-7"}


def test_invalid_argument_without_violations_still_has_empty_bad_request() -> None:
    status = to_rpc_status(InvalidArgument("bad"))
    (bad_request,) = _unpack(list(status.details), error_details_pb2.BadRequest)
    assert list(bad_request.field_violations) == []


def test_failed_precondition_carries_precondition_failure() -> None:
    error = FailedPrecondition(
        "model is not serving",
        [PreconditionViolation("STATE", "models/m1/versions/3", "version is ARCHIVED")],
        metadata={"state": "ARCHIVED"},
    )

    status = to_rpc_status(error)

    assert status.code == code_pb2.FAILED_PRECONDITION
    assert status.message == "model is not serving"
    (failure,) = _unpack(list(status.details), error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("STATE", "models/m1/versions/3", "version is ARCHIVED")
    ]
    assert not _unpack(list(status.details), error_details_pb2.BadRequest)
    info = _error_info(status)
    assert info.reason == "FAILED_PRECONDITION"
    assert info.domain == "tuneline.dev"
    assert dict(info.metadata) == {"state": "ARCHIVED"}


@pytest.mark.parametrize(
    ("error_type", "code", "reason", "suffix"),
    [
        (NotFound, code_pb2.NOT_FOUND, "NOT_FOUND", "not found"),
        (AlreadyExists, code_pb2.ALREADY_EXISTS, "ALREADY_EXISTS", "already exists"),
    ],
)
def test_resource_errors_carry_resource_info(
    error_type: type[NotFound | AlreadyExists], code: int, reason: str, suffix: str
) -> None:
    status = to_rpc_status(error_type("Dataset", "datasets/d1"))

    assert status.code == code
    assert status.message == f"Dataset 'datasets/d1' {suffix}"
    (info,) = _unpack(list(status.details), error_details_pb2.ResourceInfo)
    assert info.resource_type == "Dataset"
    assert info.resource_name == "datasets/d1"
    assert info.description == status.message
    error_info = _error_info(status)
    assert error_info.reason == reason
    assert error_info.domain == "tuneline.dev"
    assert dict(error_info.metadata) == {}


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (ResourceExhausted("upload too big"), code_pb2.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"),
        (Unavailable("kafka is down"), code_pb2.UNAVAILABLE, "UNAVAILABLE"),
        (DomainError("odd"), code_pb2.UNKNOWN, "DOMAIN_ERROR"),
    ],
)
def test_other_errors_carry_only_error_info(error: DomainError, code: int, reason: str) -> None:
    status = to_rpc_status(error)
    assert status.code == code
    assert status.message == error.message
    assert len(status.details) == 1
    info = _error_info(status)
    assert info.reason == reason
    assert info.domain == "tuneline.dev"


def test_subclass_maps_to_parent_code() -> None:
    class DatasetMissing(NotFound):
        pass

    status = to_rpc_status(DatasetMissing("Dataset", "datasets/x"))
    assert status.code == code_pb2.NOT_FOUND
    assert _error_info(status).reason == "DATASET_MISSING"


def test_status_survives_grpc_status_conversion() -> None:
    status = to_rpc_status(InvalidArgument("bad", [FieldViolation("a", "b")]))
    grpc_status = rpc_status.to_status(status)
    assert grpc_status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_status.details == "bad"
    (key, value) = grpc_status.trailing_metadata[0]
    assert key == "grpc-status-details-bin"
    assert status_pb2.Status.FromString(value) == status


class _Aborted(Exception):
    pass


class _FakeContext:
    def __init__(self) -> None:
        self.status: grpc.Status | None = None
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise _Aborted

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise _Aborted


def test_abort_with_domain_error_sends_rich_status() -> None:
    context = _FakeContext()
    with pytest.raises(_Aborted):
        abort_with(context, NotFound("Model", "models/m"))  # type: ignore[arg-type]
    assert context.status is not None
    assert context.status.code == grpc.StatusCode.NOT_FOUND
    assert context.aborted is None


def test_abort_with_bug_is_internal_and_does_not_leak(caplog: pytest.LogCaptureFixture) -> None:
    context = _FakeContext()
    with pytest.raises(_Aborted):
        abort_with(context, KeyError("secret-internal-detail"))  # type: ignore[arg-type]
    assert context.status is None
    assert context.aborted is not None
    code, details = context.aborted
    assert code == grpc.StatusCode.INTERNAL
    assert "secret-internal-detail" not in details
    assert any(record.exc_info for record in caplog.records)
