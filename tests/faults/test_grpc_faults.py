"""gRPC faults on the real registry: open watch streams during a rollback, a lost response.

The registry runs in-process on real gRPC (loopback) and the session's Kafka broker; its
production alias is set up the way the trainer and evaluator move it (CheckpointReady +
EvaluationCompleted on Kafka). Each checker counts what callers were told against what the
registry's alias history and the ModelRolledBack topic hold:

* **16 + N watch streams during a rollback.** The old server had 16 worker threads, so 16
  watchers took them all; here 16 + 32 watchers (one client, within the default per-client cap
  of 64: the caps are left as shipped) stay open while a rollback runs. The alias moves exactly
  once, every watcher sees that move exactly once, Health is SERVING before, during and after.
  The 100-watcher case (caps raised to 100) is in tests/integration/test_registry_service.py,
  its latency figures in bench/watch_capacity.py.
* **A lost response after commit.** A proxy (tests/fixtures/lossy_proxy.py) forwards a call
  and drops the response once the server has sent it. The SDK's retry policy sends the call
  again with the request id it generated. RollbackModel: production has moved exactly one step
  back and one ModelRolledBack was published. CreateTrainingJob (the real trainer servicer,
  without its worker supervisor, so no job runs; a stub splitter answers GetSplit): exactly one
  job was queued, the one the caller was told about.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.registry.bootstrap import SERVICE_NAME
from services.trainer import bootstrap as trainer_bootstrap
from services.trainer.settings import TrainerSettings
from shared.events import KafkaEventPublisher
from shared.grpc import ClientSecurity, create_channel
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.grpc_faults import (
    WAIT_SECONDS,
    answered,
    grpc_target,
    in_production,
    manual_rollbacks,
    published_rollbacks,
    start_registry,
)
from tests.fixtures.lossy_proxy import LossyGrpcProxy
from tests.fixtures.registry_events import model_definition
from tests.fixtures.trainer_data import build_tiny_bert
from tuneline.client.registry import RegistryClient
from tuneline.client.trainer import TrainerClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.splitter.v1 import resources_pb2 as splitter_pb2
from tuneline.splitter.v1 import service_pb2 as splitter_service
from tuneline.splitter.v1 import service_pb2_grpc as splitter_grpc
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
#: The old server's worker threads, which 16 watchers used to fill.
OLD_WORKER_THREADS = 16
#: Watchers beyond those.
EXTRA_WATCHERS = 32


@pytest.fixture(scope="module")
def registry(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceRuntime]:
    runtime = start_registry(kafka_bootstrap, tmp_path_factory.mktemp("registry"))
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture(scope="module")
def publisher(kafka_bootstrap: str) -> Iterator[KafkaEventPublisher]:
    producer = KafkaEventPublisher(kafka_bootstrap, client_id="test-grpc-faults")
    yield producer
    producer.close()


def _health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=WAIT_SECONDS).status)


def test_sixteen_plus_n_watchers_during_a_rollback(
    registry: ServiceRuntime, publisher: KafkaEventPublisher, kafka_bootstrap: str
) -> None:
    watchers = OLD_WORKER_THREADS + EXTRA_WATCHERS
    target = grpc_target(registry)
    streams: list[Any] = []  # the SDK's watch iterators (generators: close() ends them)
    with RegistryClient(target, timeout=WAIT_SECONDS) as client, create_channel(target) as probe:
        model_id, (a, b, c) = in_production(client, publisher, ["a", "b", "c"])
        alias = f"models/{model_id}/aliases/production"
        try:
            for _ in range(watchers):
                stream = client.watch_alias(alias)
                assert next(stream).alias.checkpoint == c
                streams.append(stream)
            assert _health(probe) == SERVING

            # Health asked while the watchers are being woken and read the move
            during: list[int] = []
            asking = threading.Thread(target=lambda: during.append(_health(probe)))
            asking.start()
            rolled = client.rollback_model(f"models/{model_id}", reason="16 + N watchers")
            asking.join(WAIT_SECONDS)
            assert rolled.alias.checkpoint == b
            seen = [next(stream).move for stream in streams]

            # a fence: the next move each watcher sees is a second rollback, so none saw the
            # first one twice
            fence = client.rollback_model(f"models/{model_id}", reason="the fence")
            after = [next(stream).move for stream in streams]
        finally:
            for stream in streams:
                stream.close()

        assert during == [SERVING]
        assert _health(probe) == SERVING
        assert manual_rollbacks(client, model_id) == [(c, b), (b, a)], (
            "the alias moved back exactly once per rollback"
        )
        assert [(m.revision, m.to_checkpoint) for m in seen] == [
            (rolled.move.revision, b)
        ] * watchers, "every watcher saw the rollback"
        assert [m.revision for m in after] == [fence.move.revision] * watchers
        assert fence.move.revision == rolled.move.revision + 1
    assert published_rollbacks(kafka_bootstrap, model_id, registry.context.sessions) == [
        (c, b),
        (b, a),
    ]


def test_a_lost_rollback_response_is_retried_and_moves_production_once(
    registry: ServiceRuntime, publisher: KafkaEventPublisher, kafka_bootstrap: str
) -> None:
    target = grpc_target(registry)
    with RegistryClient(target, timeout=WAIT_SECONDS) as direct:
        model_id, (_, b, c) = in_production(direct, publisher, ["a", "b", "c"])
        before = answered(registry, SERVICE_NAME, "RollbackModel")
        with (
            LossyGrpcProxy(target) as proxy,
            RegistryClient(proxy.target, timeout=WAIT_SECONDS, security=ClientSecurity()) as sdk,
        ):
            proxy.lose_next_response()
            rolled = sdk.rollback_model(f"models/{model_id}", reason="a lost response")
            assert proxy.lost == 1, "the first response never reached the caller"

        # the caller learns the outcome of the first attempt: production one step back
        assert rolled.alias.checkpoint == b
        assert answered(registry, SERVICE_NAME, "RollbackModel") - before == 2, (
            "the server answered both attempts"
        )
        assert direct.get_production_alias(f"models/{model_id}").checkpoint == b
        assert manual_rollbacks(direct, model_id) == [(c, b)]
    assert published_rollbacks(kafka_bootstrap, model_id, registry.context.sessions) == [(c, b)]


def test_the_proxy_forwards_untouched_when_not_armed(registry: ServiceRuntime) -> None:
    """The control: through the proxy, calls behave as direct ones."""
    with (
        LossyGrpcProxy(grpc_target(registry)) as proxy,
        create_channel(proxy.target, security=ClientSecurity()) as channel,
    ):
        assert _health(channel) == SERVING
        assert _health(channel) == SERVING
        assert proxy.lost == 0


# -- a lost CreateTrainingJob response ---------------------------------------------------------


class _SplitOracle(splitter_grpc.SplitterServiceServicer):
    """Answers GetSplit for any split name with a small classification split (the trainer asks
    the splitter about a split no SplitCreated announced; its files are never read here)."""

    def GetSplit(self, request, context):
        version = request.name.split("/splits/")[0]
        return splitter_service.GetSplitResponse(
            split=splitter_pb2.Split(
                name=request.name,
                dataset_version=version,
                dataset_content_sha256="0" * 64,
                task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
                manifest_uri="file:///nonexistent/manifest.json",
                manifest_sha256="0" * 64,
                dataset_artifact_uri="file:///nonexistent/rows.jsonl",
                parts=[
                    splitter_pb2.SplitPartStats(part=common_pb2.SPLIT_PART_TRAIN, row_count=120),
                    splitter_pb2.SplitPartStats(
                        part=common_pb2.SPLIT_PART_VALIDATION, row_count=40
                    ),
                ],
            )
        )


@pytest.fixture(scope="module")
def splitter() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    splitter_grpc.add_SplitterServiceServicer_to_server(_SplitOracle(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture(scope="module")
def trainer(
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    registry: ServiceRuntime,
    splitter: str,
) -> Iterator[ServiceRuntime]:
    """The real trainer servicer on the shared runtime, without the worker supervisor: a job
    it queues stays QUEUED, so nothing trains."""
    models_root = tmp_path_factory.mktemp("models")
    build_tiny_bert(models_root / "tiny-bert")
    runtime = build_runtime(
        dataclasses.replace(
            trainer_bootstrap.SPEC,
            wire=lambda context: dataclasses.replace(
                trainer_bootstrap.wire(context), background=()
            ),
        ),
        CommonSettings(
            kafka_bootstrap=kafka_bootstrap, data_dir=tmp_path_factory.mktemp("trainer")
        ),
        TrainerSettings(
            grpc_port=0,
            metrics_port=0,
            models_root=models_root,
            devices="cpu",
            consumer_group=f"test-grpc-faults-trainer-{uuid.uuid4().hex[:8]}",
            splitter_target=splitter,
            registry_target=grpc_target(registry),
            registry_timeout_seconds=60,
        ),
    )
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


def test_a_lost_create_training_job_response_queues_one_job(
    registry: ServiceRuntime, trainer: ServiceRuntime
) -> None:
    trainer_service = trainer_bootstrap.SERVICE_NAME
    model_id = f"m-{uuid.uuid4().hex[:10]}"
    with RegistryClient(grpc_target(registry), timeout=WAIT_SECONDS) as models:
        models.create_model(model_id, model_definition())
    job = trainer_pb2.TrainingJob(
        target_model=f"models/{model_id}",
        split=f"datasets/reviews/versions/v{uuid.uuid4().hex[:8]}/splits/s1",
        base_model=common_pb2.BaseModel(model_name="tiny-bert"),
        hyperparameters=common_pb2.Hyperparameters(batch_size=8, max_steps=12),
    )
    before = answered(trainer, trainer_service, "CreateTrainingJob")
    with (
        LossyGrpcProxy(grpc_target(trainer)) as proxy,
        TrainerClient(proxy.target, timeout=WAIT_SECONDS, security=ClientSecurity()) as sdk,
    ):
        proxy.lose_next_response()
        created = sdk.create_training_job(job)  # no job id: the server names the job
        assert proxy.lost == 1, "the first response never reached the caller"

    assert answered(trainer, trainer_service, "CreateTrainingJob") - before == 2, (
        "the server answered both attempts"
    )
    with TrainerClient(grpc_target(trainer), timeout=WAIT_SECONDS) as direct:
        queued = list(direct.list_training_jobs(target_model=f"models/{model_id}"))
    assert [j.name for j in queued] == [created.name], "exactly one job, the one the caller got"
    assert queued[0].state == trainer_pb2.TRAINING_JOB_STATE_QUEUED
