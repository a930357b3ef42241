"""The SDK's retries are idempotent: a request id on every mutation that has one, retries only
for calls that are safe to repeat. A real gRPC server on loopback answers UNAVAILABLE once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from shared.grpc import ClientSecurity
from tuneline.client import TunelineError
from tuneline.client.registry import RegistryClient
from tuneline.registry.v1 import resources_pb2, service_pb2, service_pb2_grpc

pytestmark = pytest.mark.integration


class _FlakyRegistry(service_pb2_grpc.RegistryServiceServicer):
    """Answers UNAVAILABLE to the first call of each method (as if the response was lost
    after a failover), then OK; records every request it saw."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    def _first_fails(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        with self._lock:
            calls = self.seen.setdefault(method, [])
            calls.append(request)
            first = len(calls) == 1
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "failing over")

    def RollbackModel(self, request, context):
        self._first_fails("RollbackModel", request, context)
        return service_pb2.RollbackModelResponse()

    def PromoteCheckpoint(self, request, context):
        self._first_fails("PromoteCheckpoint", request, context)
        return service_pb2.PromoteCheckpointResponse()

    def ApproveCheckpoint(self, request, context):
        self._first_fails("ApproveCheckpoint", request, context)
        return service_pb2.ApproveCheckpointResponse()

    def SetServingProfile(self, request, context):
        self._first_fails("SetServingProfile", request, context)
        return service_pb2.SetServingProfileResponse()

    def GetAlias(self, request, context):
        self._first_fails("GetAlias", request, context)
        return service_pb2.GetAliasResponse(alias=resources_pb2.Alias(name=request.name))


@pytest.fixture
def flaky() -> Iterator[tuple[_FlakyRegistry, str]]:
    servicer = _FlakyRegistry()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def _client(target: str) -> RegistryClient:
    return RegistryClient(target, timeout=10, security=ClientSecurity())


def test_a_rollback_is_retried_with_the_same_generated_request_id(flaky) -> None:
    servicer, target = flaky
    with _client(target) as client:
        client.rollback_model("models/m", reason="bad canary")
    first, retry = servicer.seen["RollbackModel"]
    assert first.request_id, "the SDK filled in a request id"
    assert retry.request_id == first.request_id, "the retry carries the same id"


def test_each_logical_call_gets_its_own_request_id(flaky) -> None:
    servicer, target = flaky
    with _client(target) as client:
        client.promote_checkpoint("models/m/checkpoints/c1")
        client.promote_checkpoint("models/m/checkpoints/c1")
    ids = [r.request_id for r in servicer.seen["PromoteCheckpoint"]]
    assert len(ids) == 3  # the first call was retried once, the second was not
    assert ids[0] == ids[1] != ids[2]


def test_a_caller_chosen_request_id_is_kept(flaky) -> None:
    servicer, target = flaky
    with _client(target) as client:
        client.rollback_model("models/m", reason="bad canary", request_id="ticket-42")
    assert [r.request_id for r in servicer.seen["RollbackModel"]] == ["ticket-42", "ticket-42"]


def test_an_approval_is_retried_with_the_same_generated_request_id(flaky) -> None:
    servicer, target = flaky
    with _client(target) as client:
        client.approve_checkpoint("models/m/checkpoints/c1", reviewer="ann", reason="looks good")
    first, retry = servicer.seen["ApproveCheckpoint"]
    assert first.request_id
    assert retry.request_id == first.request_id


def test_a_mutation_without_a_request_id_is_not_retried(flaky) -> None:
    servicer, target = flaky
    with _client(target) as client, pytest.raises(TunelineError) as raised:
        client.set_serving_profile("models/m", None)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(servicer.seen["SetServingProfile"]) == 1, "never sent twice by the channel"


def test_reads_are_retried(flaky) -> None:
    servicer, target = flaky
    with _client(target) as client:
        assert client.get_alias("models/m/aliases/production").name.endswith("production")
    assert len(servicer.seen["GetAlias"]) == 2
