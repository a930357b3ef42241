"""Client channels: retry service config, default deadlines."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from shared.grpc.client import (
    _DefaultDeadline,
    create_channel,
    retry_service_config,
    retryable_methods,
)
from tuneline.client.base import with_request_id
from tuneline.evaluator.v1 import service_pb2 as evaluator_pb2
from tuneline.registry.v1 import service_pb2 as registry_pb2
from tuneline.splitter.v1 import service_pb2 as splitter_pb2
from tuneline.trainer.v1 import service_pb2 as trainer_pb2


def _retry_policy(config: str) -> dict[str, Any]:
    parsed = json.loads(config)
    (method_config,) = parsed["methodConfig"]
    assert method_config["name"] == [{}], "the policy must apply to every method"
    return method_config["retryPolicy"]


def test_default_retry_policy_retries_unavailable_only() -> None:
    policy = _retry_policy(retry_service_config())
    assert policy == {
        "maxAttempts": 4,
        "initialBackoff": "0.1s",
        "maxBackoff": "2.0s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }


def test_retry_policy_uses_the_numbers_passed() -> None:
    policy = _retry_policy(
        retry_service_config(max_attempts=5, initial_backoff=0.25, max_backoff=3)
    )
    assert policy["maxAttempts"] == 5
    assert policy["initialBackoff"] == "0.25s"
    assert policy["maxBackoff"] == "3s"
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_create_channel_returns_a_usable_channel_without_connecting() -> None:
    channel = create_channel("127.0.0.1:1", default_timeout=0.5)
    try:
        assert isinstance(channel, grpc.Channel)
        method = channel.unary_unary("/tuneline.test.v1.Nothing/Call")
        assert callable(method)
    finally:
        channel.close()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.02},
        # max_attempts counts the first try, so 1 means "no retries": still a working channel
        {"max_attempts": 1},
    ],
    ids=["defaults", "small", "no-retries"],
)
def test_channel_service_config_is_accepted_by_grpc(options: dict[str, Any]) -> None:
    """Call a port nobody listens on (loopback): the failure must be about the peer.

    grpc validates the service config when the channel is first used; a config it rejects
    fails every call with INVALID_ARGUMENT before any connection is attempted.
    """
    channel = create_channel("127.0.0.1:1", default_timeout=0.2, **options)
    try:
        call = channel.unary_unary(
            "/tuneline.test.v1.Nothing/Call",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(b"")
        code = info.value.code()  # type: ignore[attr-defined]
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), (
            info.value.details()  # type: ignore[attr-defined]
        )
    finally:
        channel.close()


class _Details:
    def __init__(self, timeout: float | None) -> None:
        self.method = "/svc/M"
        self.timeout = timeout
        self.metadata = (("k", "v"),)
        self.credentials = None
        self.wait_for_ready = True
        self.compression = None


@pytest.mark.parametrize(
    "intercept",
    [
        "intercept_unary_unary",
        "intercept_stream_unary",
        "intercept_stream_stream",
    ],
)
def test_default_deadline_is_added_only_when_missing(intercept: str) -> None:
    interceptor = _DefaultDeadline(3.5)
    seen: list[Any] = []

    def continuation(details: Any, request: Any) -> str:
        seen.append((details, request))
        return "response"

    assert getattr(interceptor, intercept)(continuation, _Details(None), "req") == "response"
    assert getattr(interceptor, intercept)(continuation, _Details(1.25), "req") == "response"

    (no_deadline, request), (with_deadline, _) = seen
    assert request == "req"
    assert no_deadline.timeout == 3.5
    assert no_deadline.method == "/svc/M"
    assert no_deadline.metadata == (("k", "v"),)
    assert no_deadline.wait_for_ready is True
    assert with_deadline.timeout == 1.25


def test_server_streams_keep_the_callers_choice_of_no_deadline() -> None:
    """Watches run as long as the caller wants; a deadline they set is kept."""
    interceptor = _DefaultDeadline(3.5)
    seen: list[Any] = []

    def continuation(details: Any, request: Any) -> str:
        seen.append(details)
        return "stream"

    interceptor.intercept_unary_stream(continuation, _Details(None), "req")
    interceptor.intercept_unary_stream(continuation, _Details(1.25), "req")
    assert [details.timeout for details in seen] == [None, 1.25]


def test_only_reads_and_mutations_with_a_request_id_are_retryable() -> None:
    registry = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
    trainer = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]
    names = set(retryable_methods(registry, trainer))
    prefix = "tuneline.registry.v1.RegistryService/"
    for method in (
        "GetAlias",
        "ListModels",
        "WatchAlias",
        "RollbackModel",
        "PromoteCheckpoint",
        "ApproveCheckpoint",
        "RejectCheckpoint",
        "CreateModel",
    ):
        assert prefix + method in names
    assert prefix + "SetServingProfile" not in names, "a repeat would not be recognised as one"
    assert "tuneline.trainer.v1.TrainerService/CreateTrainingJob" in names
    assert "tuneline.trainer.v1.TrainerService/SetTrainingPolicy" in names
    assert "tuneline.trainer.v1.TrainerService/CancelTrainingJob" not in names
    assert "grpc.health.v1.Health/Check" in names


def test_every_policy_setter_carries_a_request_id_so_the_sdk_may_retry_it() -> None:
    services = [
        evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"],
        splitter_pb2.DESCRIPTOR.services_by_name["SplitterService"],
        trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
    ]
    names = set(retryable_methods(*services))
    assert "tuneline.evaluator.v1.EvaluatorService/SetEvaluationPolicy" in names
    assert "tuneline.splitter.v1.SplitterService/SetSplitPolicy" in names
    assert "tuneline.trainer.v1.TrainerService/SetTrainingPolicy" in names
    stamped = with_request_id(splitter_pb2.SetSplitPolicyRequest())
    assert len(stamped.request_id) == 32, "the SDK fills one in"


def test_a_per_method_config_has_no_default_retry_and_names_each_method() -> None:
    config = json.loads(
        retry_service_config(retryable=["pkg.Svc/Get", "/pkg.Svc/Rollback"], max_attempts=3)
    )
    default, retried = config["methodConfig"]
    assert default == {"name": [{}]}, "methods not listed are never retried"
    assert retried["name"] == [
        {"service": "pkg.Svc", "method": "Get"},
        {"service": "pkg.Svc", "method": "Rollback"},
    ]
    assert retried["retryPolicy"]["maxAttempts"] == 3
    with pytest.raises(ValueError, match=r"package\.Service/Method"):
        retry_service_config(retryable=["NoMethod"])


def test_with_request_id_fills_an_empty_id_on_a_copy_and_keeps_a_given_one() -> None:
    request = registry_pb2.RollbackModelRequest(model="models/m", reason="r")
    stamped = with_request_id(request)
    assert stamped.request_id
    assert request.request_id == "", "the caller's message is untouched"
    assert with_request_id(request).request_id != stamped.request_id, "one id per call"
    chosen = registry_pb2.RollbackModelRequest(model="models/m", request_id="mine")
    assert with_request_id(chosen) is chosen
    profile = registry_pb2.SetServingProfileRequest(model="models/m")
    assert with_request_id(profile) is profile, "no field, nothing to fill"
