"""Two replicas of dataset, splitter, evaluator and registry, as processes on PostgreSQL and S3.

The pipeline (dataset → splitter → trainer → evaluator → registry) runs as separate processes
(:class:`~tuneline.devtools.stack.LocalStack` with ``replicas``) on one PostgreSQL server (one
database per service, shared by a service's replicas), one S3-compatible server on loopback
(moto, one bucket, a prefix per service) and the test broker. A service's replicas share its
consumer group, so Kafka spreads the partitions between them; its peers and the test reach all
its replicas through one multi-address target, failing over as a Kubernetes Service would.

The scripted demo's first round drives it (a held-out set pinned as the model's regression
suite, a training policy, one version of real reviews on a tiny BERT), while
:class:`~tests.fixtures.crashes.Crashes` SIGKILLs the first replica of each service at a moment
it has work in hand (and the trainer too), then starts it again. The tests check the same
exactly-once effects as the demo's: one split per version, one job per split, one evaluation
per final checkpoint, each alias move once, and each event once per ``ce_id`` on its topic.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from sqlalchemy.orm import Session, sessionmaker

from shared.events import ensure_topics, topic_for
from shared.modeling import default_models_root
from shared.modeling.packaged import ENCODER, prepare_packaged_models
from tests.fixtures.crashes import Crashes, the_one_event
from tests.fixtures.events import header, read_all_sent, service_database, start_group_at_end
from tests.fixtures.postgresql import fresh_postgresql_database
from tests.fixtures.s3 import create_bucket
from tests.fixtures.trainer_data import build_tiny_bert
from tuneline.client.evaluator import EvaluatorClient
from tuneline.client.registry import RegistryClient
from tuneline.client.splitter import SplitterClient
from tuneline.client.trainer import TrainerClient
from tuneline.dataset.v1 import events_pb2 as dataset_events
from tuneline.demo.config import DemoConfig, StackEndpoints
from tuneline.demo.results import DemoSummary
from tuneline.demo.scenario import run_first_round
from tuneline.demo.timeline import PIPELINE_EVENTS
from tuneline.devtools.stack import LocalStack, StackPorts
from tuneline.registry.v1 import resources_pb2 as registry_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

SERVICES = ("dataset", "splitter", "trainer", "evaluator", "registry")
REPLICATED = ("dataset", "splitter", "evaluator", "registry")
#: A random 2-layer BERT trains and evaluates in seconds; the gate's tolerance is wide enough
#: that its checkpoint passes against the (equally random) base model: this test is about how
#: the services run, not about what the model learns.
CONFIG = DemoConfig(
    base_model="tiny-bert",
    evaluation_rows=80,
    first_rows=160,
    grown_rows=160,
    epochs=1.0,
    batch_size=16,
    max_seq_length=32,
    eval_every_n_steps=3,
    tolerance=0.5,
    event_timeout=900.0,  # a hang, not a slow machine, is what should fail the run
)


@dataclass
class ReplicatedRun:
    summary: DemoSummary
    crashes: Crashes
    stack: LocalStack
    run_id: str
    #: Sessions on each service's database (its replicas share it), for the outbox signal.
    databases: dict[str, sessionmaker[Session]]

    def read_all_sent(self, bootstrap: str, kind: Any, expected: int) -> list[Any]:
        """This run's records of ``kind`` on its topic, once ``expected`` arrived and every
        service's outbox sent all it staged (a restarted process's resend included)."""
        mine = self.run_id.encode()  # in every id this run made (the broker is shared)
        return read_all_sent(
            bootstrap,
            topic_for(kind),
            lambda record: mine in record.value,  # type: ignore[attr-defined]
            expected=expected,
            outboxes=self.databases.values(),
            timeout=300,
        )


def _pipeline_topics(bootstrap: str) -> list[str]:
    """The pipeline's topics and every other Tuneline topic on the shared broker: a fresh
    consumer group is started at their end, so no earlier test's events are replayed."""
    pipeline = [topic_for(kind) for kind in PIPELINE_EVENTS]
    ensure_topics(bootstrap, pipeline)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        existing = {t for t in consumer.topics() if t.startswith("tuneline.")}
    finally:
        consumer.close()
    return sorted(existing | set(pipeline))


@pytest.fixture(scope="module")
def replicated_run(
    kafka_bootstrap: str,
    postgresql_admin_url: str,
    s3_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ReplicatedRun]:
    models_root = tmp_path_factory.mktemp("models")
    build_tiny_bert(models_root / "tiny-bert")
    # the dataset service's label audit embeds with the real MiniLM (its default models root)
    prepare_packaged_models(default_models_root(), names=(ENCODER,))
    run_id = uuid.uuid4().hex[:8]
    bucket = create_bucket(s3_endpoint)
    topics = _pipeline_topics(kafka_bootstrap)
    env = dict(os.environ)  # with the S3 fixture's test credentials
    env["TUNELINE_S3_ENDPOINT_URL"] = s3_endpoint
    env["TUNELINE_TRAINER_MODELS_ROOT"] = str(models_root)
    env["TUNELINE_TRAINER_DEVICES"] = "cpu"
    env["TUNELINE_TRAINER_CPU_THREADS"] = "1"
    env["TUNELINE_EVALUATOR_MODELS_ROOT"] = str(models_root)
    env["TUNELINE_EVALUATOR_MAX_SEQ_LENGTH"] = str(CONFIG.max_seq_length)
    # merged-vs-unmerged numbers on a random model are noise, and not what is tested here
    env["TUNELINE_EVALUATOR_PARITY_MAX_EXAMPLES"] = "0"
    with contextlib.ExitStack() as cleanup:
        databases = {}
        for name in SERVICES:
            prefix = f"TUNELINE_{name.upper()}_"
            env[f"{prefix}DATABASE_URL"] = cleanup.enter_context(
                fresh_postgresql_database(postgresql_admin_url)
            )
            databases[name] = cleanup.enter_context(service_database(env[f"{prefix}DATABASE_URL"]))
            env[f"{prefix}ARTIFACT_ROOT"] = f"s3://{bucket}/{name}"
            group = f"test-replicas-{name}-{run_id}"
            start_group_at_end(kafka_bootstrap, group, topics)
            env[f"{prefix}CONSUMER_GROUP"] = group
        # the registry registers (and re-hashes) only checkpoints in the trainer's area, the
        # evaluator evaluates only those, and the registry takes merged release models only
        # from the evaluator's area
        env["TUNELINE_REGISTRY_TRAINER_ARTIFACT_ROOT"] = f"s3://{bucket}/trainer"
        env["TUNELINE_EVALUATOR_TRAINER_ARTIFACT_ROOT"] = f"s3://{bucket}/trainer"
        env["TUNELINE_REGISTRY_EVALUATOR_ARTIFACT_ROOT"] = f"s3://{bucket}/evaluator"
        home: Path = tmp_path_factory.mktemp("replicas-stack")
        stack = LocalStack(
            home,
            StackPorts.free(),
            kafka_bootstrap=kafka_bootstrap,
            services=SERVICES,
            replicas=dict.fromkeys(REPLICATED, 2),
        )
        state = stack.up(env=env, timeout=300)
        cleanup.callback(stack.down, state)
        crashes = Crashes(stack, run_id=run_id)
        crashes.start()
        cleanup.callback(crashes.stop)
        registry = next(s for s in state.services if s.name == "registry")
        endpoints = StackEndpoints(
            kafka_bootstrap=kafka_bootstrap,
            dataset=stack.peer_target("dataset"),
            splitter=stack.peer_target("splitter"),
            trainer=stack.peer_target("trainer"),
            registry=stack.peer_target("registry"),
            webhook_url=f"http://127.0.0.1:{registry.extra_ports['webhook']}/v1/alerts",
            webhook_token=stack.webhook_token_path.read_text().strip(),
        )
        summary = run_first_round(replace(CONFIG, run_id=run_id), endpoints, crashes)
        crashes.wait_until_restarted()
        yield ReplicatedRun(summary, crashes, stack, run_id, databases)


def test_the_first_replica_of_each_service_was_killed_and_came_back(
    replicated_run: ReplicatedRun,
) -> None:
    assert not replicated_run.crashes.errors
    killed = {name for name, _old, _new in replicated_run.crashes.kills}
    assert killed == set(SERVICES)
    state = replicated_run.stack.running()
    assert state is not None
    running = {s.instance: s.pid for s in state.services}
    assert sorted(running) == sorted([*SERVICES, *(f"{name}-1" for name in REPLICATED)])
    for name, old, new in replicated_run.crashes.kills:
        assert old != new, name
        assert running[name] == new, name


def test_the_round_flowed_in_causal_order_with_each_event_once(
    replicated_run: ReplicatedRun,
) -> None:
    events = replicated_run.summary.events
    [result] = replicated_run.summary.rounds
    version = the_one_event(events, "DatasetVersioned", dataset_version=result.dataset_version)
    split = the_one_event(events, "SplitCreated", dataset_version=result.dataset_version)
    started = the_one_event(events, "TrainingJobStarted", training_job=result.training_job)
    final = the_one_event(events, "CheckpointReady", checkpoint=result.checkpoint)
    judged = result.evaluated_checkpoint  # the job's best checkpoint (BEST_AT_END)
    evaluated = the_one_event(events, "EvaluationCompleted", checkpoint=judged)
    promoted = the_one_event(events, "ModelPromoted", source_checkpoint=judged)
    assert version < split < started < final < evaluated < promoted
    assert result.promoted
    assert [e.kind for e in events].count("TrainingJobFailed") == 0


def test_each_event_is_on_its_topic_once_per_ce_id(
    replicated_run: ReplicatedRun, kafka_bootstrap: str
) -> None:
    """What the timeline saw, read back from the topics. Two live relays never send one outbox
    row (a second record with the same ce_id); the one exception is the documented one: a
    process SIGKILLed after Kafka acknowledged a row and before it marked the row sent sends it
    again when it is back (same ce_id, consumers skip it), so a service whose process was killed
    may show one ce_id twice, never more."""
    mine = replicated_run.run_id.encode()  # in every id this run made (the broker is shared)
    events = [e for e in replicated_run.summary.events if mine in e.message.SerializeToString()]
    killed = {name.split("-")[0] for name, _old, _new in replicated_run.crashes.kills}
    for kind in PIPELINE_EVENTS:
        name = kind.DESCRIPTOR.name
        ids = {e.id for e in events if e.kind == name}
        if not ids:
            continue
        records = replicated_run.read_all_sent(kafka_bootstrap, kind, expected=len(ids))
        per_id = Counter(header(record, "ce_id") for record in records)
        assert set(per_id) == ids, name
        sources = {header(record, "ce_id"): header(record, "ce_source") for record in records}
        for event_id, count in per_id.items():
            source = str(sources[event_id]).rsplit("/", 1)[-1]
            assert count == 1 or (count == 2 and source in killed), (name, event_id, count)


def test_each_version_was_audited_once_by_one_of_the_dataset_replicas(
    replicated_run: ReplicatedRun, kafka_bootstrap: str
) -> None:
    """Both dataset replicas poll for PENDING audits; one records each verdict and announces it."""
    versions = [
        replicated_run.summary.evaluation_version,
        replicated_run.summary.rounds[0].dataset_version,
    ]
    records = replicated_run.read_all_sent(
        kafka_bootstrap, dataset_events.DatasetAudited, expected=len(versions)
    )
    audited = [dataset_events.DatasetAudited.FromString(r.value).dataset_version for r in records]
    assert sorted(audited) == sorted(versions)
    assert len({header(record, "ce_id") for record in records}) == len(versions)


def test_each_effect_was_applied_once_and_every_replica_sees_it(
    replicated_run: ReplicatedRun,
) -> None:
    summary = replicated_run.summary
    [result] = summary.rounds
    announced = {e.message.checkpoint for e in summary.events if e.kind == "CheckpointReady"}
    stack = replicated_run.stack
    with TrainerClient(stack.peer_target("trainer")) as trainer:
        jobs = list(trainer.list_training_jobs(target_model=summary.model))
    assert [(j.name, j.split) for j in jobs] == [(result.training_job, result.split)]
    for service in stack.plan():  # one database per service: every replica answers the same
        if service.name == "splitter":
            with SplitterClient(service.target) as splitter:
                splits = [s.name for s in splitter.list_splits(result.dataset_version)]
            assert splits == [result.split], service.instance
        elif service.name == "evaluator":
            with EvaluatorClient(service.target) as evaluator:
                evaluations = list(evaluator.list_evaluations(model=summary.model))
            assert [e.checkpoint for e in evaluations] == [result.evaluated_checkpoint], (
                service.instance
            )
        elif service.name == "registry":
            with RegistryClient(service.target) as registry:
                moves = list(registry.list_alias_history(f"{summary.model}/aliases/production"))
                registered = list(registry.list_checkpoints(summary.model))
            assert [(m.trigger, m.to_checkpoint) for m in moves] == [
                (registry_pb2.ALIAS_MOVE_TRIGGER_PROMOTION, result.registry_checkpoint)
            ], service.instance
            assert sorted(c.source_checkpoint for c in registered) == sorted(announced)
