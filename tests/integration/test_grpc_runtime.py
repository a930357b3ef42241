"""The shared gRPC server on a real loopback port: health, reflection, errors, deadlines."""

from __future__ import annotations

import threading

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

from shared.errors import FieldViolation, InvalidArgument, NotFound
from shared.grpc import GrpcServerMetrics, ServiceRegistration, build_grpc_server, create_channel
from shared.grpc.capacity import StreamLimits
from tuneline.client import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ServiceClient,
)
from tuneline.dataset.v1 import service_pb2, service_pb2_grpc
from tuneline.devtools.kafka import free_port

pytestmark = pytest.mark.integration

DATASET_SERVICE = service_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name


class ProbeServicer(service_pb2_grpc.DatasetServiceServicer):
    """Just enough behaviour to exercise the runtime: an invalid input, a slow call, a bug."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()  # a slow call is in the handler
        self.finished = threading.Event()  # a slow call has left it
        self.upload_ended = ""

    def CreateDataset(self, request, context):
        if not request.dataset_id:
            raise InvalidArgument(
                "the request has invalid fields",
                [
                    FieldViolation("dataset_id", "required", "REQUIRED"),
                    FieldViolation("dataset.task_type", "must be set", "REQUIRED"),
                ],
            )
        raise RuntimeError("a bug that must not leak")

    def GetDataset(self, request, context):
        if request.name == "datasets/slow":
            self.entered.set()
            self.release.wait(5)
            self.finished.set()
            return service_pb2.GetDatasetResponse()
        raise NotFound("dataset", request.name)

    def UploadDatasetVersion(self, request_iterator, context):
        """Reads until the client finishes or the server cuts the stream off; records which."""
        self.entered.set()
        try:
            for _ in request_iterator:
                pass
        except grpc.RpcError:
            self.upload_ended = "cut off"
        else:
            self.upload_ended = "completed"
        finally:
            self.finished.set()
        return service_pb2.UploadDatasetVersionResponse()


@pytest.fixture
def served():
    registry = CollectorRegistry()
    servicer = ProbeServicer()
    server = build_grpc_server(
        host="127.0.0.1",
        port=0,
        services=[
            ServiceRegistration(
                DATASET_SERVICE, servicer, service_pb2_grpc.add_DatasetServiceServicer_to_server
            )
        ],
        metrics=GrpcServerMetrics(registry),
        grace_seconds=2.0,
    )
    server.start()
    channel = create_channel(f"127.0.0.1:{server.port}", default_timeout=5.0)
    yield server, channel, registry, servicer
    servicer.release.set()
    channel.close()
    server.stop(grace=0)


def test_invalid_input_is_invalid_argument_with_field_violations(served):
    _, channel, registry, _ = served
    stub = service_pb2_grpc.DatasetServiceStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.CreateDataset(service_pb2.CreateDatasetRequest())
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad_request) for d in status.details)
    assert [(v.field, v.reason) for v in bad_request.field_violations] == [
        ("dataset_id", "REQUIRED"),
        ("dataset.task_type", "REQUIRED"),
    ]
    assert (
        registry.get_sample_value(
            "tuneline_grpc_server_handled_total",
            {
                "grpc_service": DATASET_SERVICE,
                "grpc_method": "CreateDataset",
                "grpc_type": "unary",
                "grpc_code": "INVALID_ARGUMENT",
            },
        )
        == 1.0
    )


def test_not_found_carries_resource_info_and_bugs_are_internal(served):
    _, channel, _, _ = served
    stub = service_pb2_grpc.DatasetServiceStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetDataset(service_pb2.GetDatasetRequest(name="datasets/nope"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_details_pb2.ResourceInfo()
    assert any(d.Unpack(info) for d in rpc_status.from_call(raised.value).details)
    assert info.resource_name == "datasets/nope"

    with pytest.raises(grpc.RpcError) as bug:
        stub.CreateDataset(service_pb2.CreateDatasetRequest(dataset_id="x"))
    assert bug.value.code() == grpc.StatusCode.INTERNAL
    assert "must not leak" not in bug.value.details()


def test_an_expired_deadline_is_deadline_exceeded(served):
    _, channel, _, servicer = served
    stub = service_pb2_grpc.DatasetServiceStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetDataset(service_pb2.GetDatasetRequest(name="datasets/slow"), timeout=0.3)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the caller was answered while the handler still waited: it did not wait for the server
    assert not servicer.finished.is_set()


def test_the_channel_default_deadline_applies_when_the_caller_sets_none(served):
    server, _, _, _ = served
    channel = create_channel(f"127.0.0.1:{server.port}", default_timeout=0.3)
    try:
        stub = service_pb2_grpc.DatasetServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetDataset(service_pb2.GetDatasetRequest(name="datasets/slow"))
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        channel.close()


def test_a_server_stream_without_a_deadline_outlives_the_channel_default(served):
    """Watches are meant to last: the default deadline applies to unary calls only."""
    server, _, _, _ = served
    channel = create_channel(f"127.0.0.1:{server.port}", default_timeout=0.3)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=DATASET_SERVICE))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        # a unary call begun after the watch runs out of the default deadline: so has the watch's
        stub = service_pb2_grpc.DatasetServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetDataset(service_pb2.GetDatasetRequest(name="datasets/slow"))
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # ...and the watch still delivers what changes after it
        server.health.set(DATASET_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert watch.is_active()
        watch.cancel()
    finally:
        channel.close()


def test_reflection_lists_the_services(served):
    _, channel, _, _ = served
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {
        DATASET_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


def test_reflection_turned_off_lists_nothing_and_health_still_answers():
    """Production's TUNELINE_GRPC_REFLECTION=false: no API listing, probes unaffected."""
    server = build_grpc_server(
        host="127.0.0.1",
        port=0,
        services=[],
        metrics=GrpcServerMetrics(CollectorRegistry()),
        reflection=False,
    )
    server.start()
    try:
        with create_channel(f"127.0.0.1:{server.port}", default_timeout=5.0) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                ProtoReflectionDescriptorDatabase(channel).get_services()
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
    finally:
        server.stop(grace=0)


def test_health_is_serving_then_not_serving_on_stop(served):
    server, channel, _, servicer = served
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
    assert health.Check(health_pb2.HealthCheckRequest(service=DATASET_SERVICE)).status == serving

    # Watch, then stop with an RPC in flight: NOT_SERVING must reach the watcher first.
    watch = health.Watch(health_pb2.HealthCheckRequest(service=DATASET_SERVICE), timeout=10)
    assert next(watch).status == serving
    stub = service_pb2_grpc.DatasetServiceStub(channel)
    in_flight = stub.GetDataset.future(service_pb2.GetDatasetRequest(name="datasets/slow"))
    assert servicer.entered.wait(30), "the slow call never reached its handler"
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 3.0})
    stopper.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    servicer.release.set()  # the in-flight call completes within the grace period
    assert in_flight.result(timeout=5) == service_pb2.GetDatasetResponse()
    stopper.join(10)


def test_unavailable_is_retried_until_the_server_appears():
    port = free_port()
    channel = create_channel(
        f"127.0.0.1:{port}",
        default_timeout=10.0,
        max_attempts=5,
        initial_backoff=0.5,
        max_backoff=1.0,
    )
    registry = CollectorRegistry()
    servicer = ProbeServicer()
    server = build_grpc_server(
        host="127.0.0.1",
        port=port,
        services=[
            ServiceRegistration(
                DATASET_SERVICE, servicer, service_pb2_grpc.add_DatasetServiceServicer_to_server
            )
        ],
        metrics=GrpcServerMetrics(registry),
    )
    # The server only starts after the first attempt has failed with UNAVAILABLE.
    timer = threading.Timer(0.1, server.start)
    timer.start()
    try:
        stub = service_pb2_grpc.DatasetServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetDataset(service_pb2.GetDatasetRequest(name="datasets/x"))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND  # reached the server after all
    finally:
        timer.join()
        channel.close()
        server.stop(grace=0)


def test_the_client_sdk_turns_statuses_into_exceptions_with_details(served):
    server, _, _, _ = served
    with ServiceClient(f"127.0.0.1:{server.port}", timeout=5) as client:
        stub = service_pb2_grpc.DatasetServiceStub(client.channel)
        with pytest.raises(InvalidArgumentError) as invalid:
            client._call(stub.CreateDataset, service_pb2.CreateDatasetRequest())
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in invalid.value.violations] == ["dataset_id", "dataset.task_type"]
        assert invalid.value.reason == "INVALID_ARGUMENT"
        assert "dataset_id: required" in str(invalid.value)

        with pytest.raises(NotFoundError) as missing:
            client._call(stub.GetDataset, service_pb2.GetDatasetRequest(name="datasets/gone"))
        assert missing.value.resource_name == "datasets/gone"

        with pytest.raises(DeadlineExceededError):
            client._call(
                stub.GetDataset, service_pb2.GetDatasetRequest(name="datasets/slow"), timeout=0.2
            )


def test_an_idle_upload_is_cut_off_and_streams_beyond_the_client_cap_are_refused():
    servicer = ProbeServicer()
    server = build_grpc_server(
        host="127.0.0.1",
        port=0,
        services=[
            ServiceRegistration(
                DATASET_SERVICE, servicer, service_pb2_grpc.add_DatasetServiceServicer_to_server
            )
        ],
        metrics=GrpcServerMetrics(CollectorRegistry()),
        limits=StreamLimits(max_streams_per_client=1, upload_idle_seconds=0.5),
    )
    server.start()
    stalled = threading.Event()
    stop_sending = threading.Event()

    def one_chunk_then_silence():
        yield service_pb2.UploadDatasetVersionRequest()
        stalled.set()
        stop_sending.wait(60)  # a client that opened an upload and went quiet

    try:
        with create_channel(f"127.0.0.1:{server.port}", default_timeout=30.0) as channel:
            stub = service_pb2_grpc.DatasetServiceStub(channel)
            idle = stub.UploadDatasetVersion.future(one_chunk_then_silence())
            assert servicer.entered.wait(10)
            assert stalled.wait(10)
            # the idle upload holds this client's only stream slot
            with pytest.raises(grpc.RpcError) as refused:
                stub.UploadDatasetVersion(iter([service_pb2.UploadDatasetVersionRequest()]))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            status = rpc_status.from_call(refused.value)
            assert status is not None
            info = error_details_pb2.ErrorInfo()
            assert any(d.Unpack(info) for d in status.details)
            assert (info.metadata["cap"], info.metadata["limit"]) == ("client", "1")
            # the server cancels the silent upload after its idle timeout, freeing the slot
            with pytest.raises(grpc.RpcError) as cut_off:
                idle.result(timeout=30)
            assert cut_off.value.code() == grpc.StatusCode.CANCELLED
            assert servicer.finished.wait(10)
            assert servicer.upload_ended == "cut off"
            stub.UploadDatasetVersion(iter([service_pb2.UploadDatasetVersionRequest()]))
            assert servicer.upload_ended == "completed"
    finally:
        stop_sending.set()
        server.stop(grace=0)
