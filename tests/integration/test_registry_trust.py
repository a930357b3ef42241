"""What the registry does not take on anyone's word (issue #13): a PASSED verdict counts only
once the evaluator confirms it, and with four-eyes approval neither the creator of the training
job (CheckpointReady.job_creator) nor the model's creator can move a checkpoint to production.

A real registry on the real broker, with TUNELINE_REGISTRY_EVALUATOR_TARGET pointing at a
stand-in evaluator: a real gRPC server on loopback answering GetEvaluation with what the test
says the evaluator stored (tests/fixtures/evaluator_double.py). The events are published as
the trainer and evaluator publish them (tests/fixtures/registry_events.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.registry.bootstrap import SPEC
from services.registry.settings import RegistrySettings
from shared.events import KafkaEventPublisher, ensure_topics, topic_for
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.evaluator_double import StandInEvaluator, stored_evaluation
from tests.fixtures.events import start_group_at_end
from tests.fixtures.pki import LocalCA, spiffe_id
from tests.fixtures.registry_events import (
    checkpoint_ready,
    evaluation_completed,
    model_definition,
    publish,
    registry_checkpoint,
)
from tuneline.client import TunelineError
from tuneline.client.registry import RegistryClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.devtools.kafka import free_port
from tuneline.devtools.waiting import eventually
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.registry.v1 import events_pb2, resources_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events

pytestmark = pytest.mark.integration

COMPLETED = topic_for(evaluator_events.EvaluationCompleted)
CONSUMED = [
    topic_for(trainer_events.CheckpointReady),
    COMPLETED,
    topic_for(evaluator_events.RegressionDetected),
]
#: A safety net for a broken build, never a measure of speed.
WAIT_SECONDS = 120.0


@pytest.fixture(scope="module")
def evaluator() -> Iterator[StandInEvaluator]:
    stand_in = StandInEvaluator(free_port()).start()
    yield stand_in
    stand_in.stop()


def _start(
    kafka_bootstrap: str,
    data_dir: Path,
    evaluator: StandInEvaluator,
    *,
    four_eyes: bool = False,
    **common: Any,
) -> ServiceRuntime:
    """A registry confirming verdicts with ``evaluator``; ``common``: CommonSettings fields
    (``auth_mode``, TLS files)."""
    settings = RegistrySettings(
        grpc_port=0,
        metrics_port=0,
        consumer_group=f"test-registry-trust-{uuid.uuid4().hex[:8]}",
        # the events name synthetic artifacts; the artifact checks have their own tests
        verify_artifacts=False,
        evaluator_target=evaluator.target,
        evaluator_timeout_seconds=2.0,
        four_eyes=four_eyes,
    )
    ensure_topics(
        kafka_bootstrap,
        [*CONSUMED, topic_for(events_pb2.ModelPromoted), topic_for(events_pb2.ModelRolledBack)],
    )
    start_group_at_end(kafka_bootstrap, settings.resolved_consumer_group(), CONSUMED)
    runtime = build_runtime(
        SPEC,
        CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=data_dir, **common),
        settings,
    )
    runtime.start()
    return runtime


@pytest.fixture(scope="module")
def service(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, evaluator: StandInEvaluator
) -> Iterator[ServiceRuntime]:
    runtime = _start(kafka_bootstrap, tmp_path_factory.mktemp("registry-trust"), evaluator)
    yield runtime
    runtime.stop()


@pytest.fixture(scope="module")
def client(service: ServiceRuntime) -> Iterator[RegistryClient]:
    with RegistryClient(f"127.0.0.1:{service.grpc_port}") as registry:
        yield registry


@pytest.fixture(scope="module")
def publisher(kafka_bootstrap: str) -> Iterator[KafkaEventPublisher]:
    producer = KafkaEventPublisher(kafka_bootstrap, client_id="test-registry-verdicts")
    yield producer
    producer.close()


def _metric(service: ServiceRuntime, name: str, **labels: str) -> float:
    return service.context.registry.get_sample_value(name, labels) or 0.0


def _refused(service: ServiceRuntime, model_id: str, check: str) -> float:
    return _metric(service, "tuneline_registry_verdicts_refused_total", model=model_id, check=check)


def _new_model(client: RegistryClient) -> str:
    model_id = f"m-{uuid.uuid4().hex[:10]}"
    client.create_model(model_id, model_definition())
    return model_id


def _registered(client: RegistryClient, model_id: str, job: str) -> str:
    """The registry name of ``job``'s checkpoint, once CheckpointReady registered it."""
    name = registry_checkpoint(model_id, job, 100)
    eventually(
        lambda: any(c.name == name for c in client.list_checkpoints(f"models/{model_id}")),
        timeout=WAIT_SECONDS,
        what=f"{name} registered",
    )
    return name


def test_a_verdict_the_evaluator_confirms_promotes(service, client, publisher, evaluator):
    model_id = _new_model(client)
    event = evaluation_completed(model_id, "a", 100, evaluation=f"evaluations/{model_id}-a")
    evaluator.stores(stored_evaluation(event))
    publish(publisher, checkpoint_ready(model_id, "a", 100))
    publish(publisher, event)
    name = registry_checkpoint(model_id, "a", 100)
    eventually(
        lambda: client.get_production_alias(f"models/{model_id}").checkpoint == name,
        timeout=WAIT_SECONDS,
        what=f"{name} in production",
    )
    assert event.evaluation in evaluator.asked


@pytest.mark.parametrize(
    ("stored_verdict", "check"),
    [
        pytest.param(common_pb2.EVALUATION_VERDICT_FAILED, "mismatch", id="evaluator-says-failed"),
        pytest.param(None, "not_found", id="evaluator-does-not-know-it"),
    ],
)
def test_a_forged_passed_verdict_promotes_nothing(  # noqa: PLR0917 - fixtures and parameters
    service, client, publisher, evaluator, stored_verdict, check
):
    model_id = _new_model(client)
    publish(publisher, checkpoint_ready(model_id, "forged", 100))
    checkpoint = _registered(client, model_id, "forged")
    forged = evaluation_completed(
        model_id, "forged", 100, evaluation=f"evaluations/{model_id}-forged"
    )
    if stored_verdict is not None:  # the real evaluation of that checkpoint FAILED
        real = stored_evaluation(forged)
        real.verdict = stored_verdict  # type: ignore[assignment]
        evaluator.stores(real)
    publish(publisher, forged)
    eventually(
        lambda: _refused(service, model_id, check) == 1,
        timeout=WAIT_SECONDS,
        what=f"the forged verdict refused ({check})",
    )
    assert client.get_production_alias(f"models/{model_id}").checkpoint == ""
    recorded = client.get_checkpoint(checkpoint)
    assert recorded.verdict != common_pb2.EVALUATION_VERDICT_PASSED
    assert not recorded.evaluations, "a refused verdict is not attached to the checkpoint"


def test_an_evaluator_that_is_down_delays_the_promotion_until_it_answers(
    service, client, publisher, evaluator
):
    model_id = _new_model(client)
    event = evaluation_completed(model_id, "d", 100, evaluation=f"evaluations/{model_id}-d")
    evaluator.stores(stored_evaluation(event))
    publish(publisher, checkpoint_ready(model_id, "d", 100))
    name = _registered(client, model_id, "d")
    failures = _metric(service, "tuneline_event_handler_failures_total", topic=COMPLETED)
    dead_lettered = _metric(service, "tuneline_events_dead_lettered_total", topic=COMPLETED)
    evaluator.stop()
    try:
        publish(publisher, event)
        eventually(
            lambda: (
                _metric(service, "tuneline_event_handler_failures_total", topic=COMPLETED)
                >= failures + 2
            ),
            timeout=WAIT_SECONDS,
            what="the verdict tried twice while the evaluator is down",
        )
        assert client.get_production_alias(f"models/{model_id}").checkpoint == ""
    finally:
        evaluator.start()
    eventually(
        lambda: client.get_production_alias(f"models/{model_id}").checkpoint == name,
        timeout=WAIT_SECONDS,
        what=f"{name} in production once the evaluator answers",
    )
    assert _metric(service, "tuneline_events_dead_lettered_total", topic=COMPLETED) == (
        dead_lettered
    )
    assert _refused(service, model_id, "not_found") == _refused(service, model_id, "mismatch") == 0


# -- four eyes: whoever created the training job or the model cannot move it to production ---


def test_with_four_eyes_the_jobs_and_the_models_creators_cannot_approve_another_reviewer_can(
    kafka_bootstrap, publisher, evaluator, tmp_path
):
    ca = LocalCA(tmp_path / "pki")
    server = ca.issue("registry", uri=spiffe_id("service", "registry"), server=True)
    policy = tmp_path / "policy.json"
    # ed creates models and reviews, bob trains and reviews: four eyes, not roles, keeps each
    # off his own work
    policy.write_text(
        json.dumps(
            {
                "bindings": {
                    "ed": ["editor", "reviewer"],
                    "bob": ["editor", "reviewer"],
                    "alice": ["reviewer"],
                }
            }
        )
    )
    runtime = _start(
        kafka_bootstrap,
        tmp_path / "data",
        evaluator,
        four_eyes=True,
        auth_mode="enforce",
        tls_cert_file=server.cert_file,
        tls_key_file=server.key_file,
        tls_client_ca_file=ca.ca_file,
        auth_policy_file=policy,
    )

    def client_for(name: str) -> RegistryClient:
        return RegistryClient(f"127.0.0.1:{runtime.grpc_port}", security=ca.client_security(name))

    try:
        with client_for("ed") as ed, client_for("bob") as bob, client_for("alice") as alice:
            model_id = f"m-{uuid.uuid4().hex[:10]}"
            definition = model_definition(policy=resources_pb2.PROMOTION_POLICY_MANUAL)
            definition.creator = "alice"  # output only: the certificate says who created it
            assert ed.create_model(model_id, definition).creator == "ed"
            event = evaluation_completed(model_id, "x", 100, evaluation=f"evaluations/{model_id}-x")
            evaluator.stores(stored_evaluation(event))
            ready = checkpoint_ready(model_id, "x", 100)
            ready.job_creator = "bob"  # the trainer's verified caller of CreateTrainingJob
            publish(publisher, ready)
            publish(publisher, event)
            checkpoint = registry_checkpoint(model_id, "x", 100)
            eventually(
                lambda: alice.get_alias(f"models/{model_id}/aliases/candidate").revision == 1,
                timeout=WAIT_SECONDS,
                what="candidate moved",
            )
            assert alice.get_checkpoint(checkpoint).job_creator == "bob"
            for who, created, creator in (
                (bob, "training_job", "bob"),
                (ed, "model", "ed"),
            ):
                for attempt in (
                    # the request's reviewer/actor is ignored: the certificate's subject counts
                    partial(who.approve_checkpoint, checkpoint, reviewer="alice", reason="mine"),
                    partial(who.promote_checkpoint, checkpoint, actor="alice", reason="ship it"),
                ):
                    with pytest.raises(TunelineError) as denied:
                        attempt()
                    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
                    assert denied.value.metadata["reason"] == "FOUR_EYES"
                    assert denied.value.metadata["created"] == created
                    assert denied.value.metadata["creator"] == creator
                    assert denied.value.metadata["checkpoint"] == checkpoint
            assert alice.get_production_alias(f"models/{model_id}").checkpoint == ""
            alice.approve_checkpoint(checkpoint, reviewer="bob", reason="looks good")
            assert alice.get_checkpoint(checkpoint).review.reviewer == "alice"
            assert alice.get_production_alias(f"models/{model_id}").checkpoint == checkpoint
    finally:
        runtime.stop()
