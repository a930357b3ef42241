"""The trainer service over real gRPC on loopback and a real Kafka broker, with real (tiny)
models trained in real worker processes.

SplitCreated arrives as a real CloudEvent on Kafka (published the way the splitter's outbox
does), pointing at a canonical JSONL and a split manifest written in the agreed formats; jobs
train; TrainingJobStarted, CheckpointReady and TrainingJobCompleted are read back from the
broker with their fields checked; checkpoints load with ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.registry import bootstrap as registry_bootstrap
from services.registry.settings import RegistrySettings
from services.trainer import bootstrap
from services.trainer.domain.jobs import policy_job_id
from services.trainer.entrypoints.supervisor import JobSupervisor
from services.trainer.settings import TrainerSettings
from shared.events import Envelope, KafkaEventPublisher, ensure_topics, topic_for
from shared.events.producers import EVENT_PRODUCERS
from shared.grpc import ClientSecurity, create_channel
from shared.modeling import folder_sha256, read_adapter_metadata
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.events import header, read_all_sent, start_group_at_end
from tests.fixtures.pki import LocalCA, spiffe_id
from tests.fixtures.trainer_data import build_tiny_bert, sentiment_rows, write_split
from tuneline.cli.main import app as cli
from tuneline.client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from tuneline.client.registry import RegistryClient
from tuneline.client.trainer import TrainerClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2 as dataset_events_pb2
from tuneline.dataset.v1 import resources_pb2 as dataset_pb2
from tuneline.devtools.waiting import eventually
from tuneline.evaluator.v1 import events_pb2 as evaluator_events_pb2
from tuneline.registry.v1 import resources_pb2 as registry_pb2
from tuneline.splitter.v1 import events_pb2 as splitter_events_pb2
from tuneline.trainer.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc

pytestmark = pytest.mark.integration

SUCCEEDED = resources_pb2.TRAINING_JOB_STATE_SUCCEEDED
RUNNING = resources_pb2.TRAINING_JOB_STATE_RUNNING
CANCELLED = resources_pb2.TRAINING_JOB_STATE_CANCELLED
FAILED = resources_pb2.TRAINING_JOB_STATE_FAILED
TERMINAL = {SUCCEEDED, CANCELLED, FAILED}


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root with a tiny BERT and a folder holding pickle weights."""
    root = tmp_path_factory.mktemp("models")
    build_tiny_bert(root / "tiny-bert")
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "bert"}')
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle
    return root


@dataclass
class Registry:
    """The real registry, in-process: the trainer asks it whether a job's target model exists,
    so every test registers the models its jobs train for."""

    runtime: ServiceRuntime

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.runtime.grpc_port}"

    def register(self, model: str, budget: common_pb2.Budget | None = None) -> str:
        """Create ``model`` (``models/{id}``): classification on tiny-bert, reviewed by hand,
        with ``budget`` if given."""
        with RegistryClient(self.target, timeout=30) as registry:
            registry.create_model(
                model.removeprefix("models/"),
                registry_pb2.Model(
                    task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
                    base_model=common_pb2.BaseModel(model_name="tiny-bert"),
                    evaluation_set=common_pb2.EvaluationSet(
                        dataset_version="datasets/held-out/versions/v1"
                    ),
                    promotion_policy=registry_pb2.PROMOTION_POLICY_MANUAL,
                    budget=budget,
                ),
            )
        return model


def _start_registry(
    kafka_bootstrap: str,
    data_dir: Path,
    trainer_artifact_root: Path,
    common: Mapping[str, Any] | None = None,
) -> ServiceRuntime:
    """A registry that checks and re-hashes artifacts under ``trainer_artifact_root``;
    ``common``: more CommonSettings fields (auth, TLS files)."""
    consumed = [
        topic_for(events_pb2.CheckpointReady),
        topic_for(evaluator_events_pb2.EvaluationCompleted),
        topic_for(evaluator_events_pb2.RegressionDetected),
    ]
    group = f"test-trainer-registry-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, consumed)
    start_group_at_end(kafka_bootstrap, group, consumed)
    runtime = build_runtime(
        registry_bootstrap.SPEC,
        CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=data_dir, **(common or {})),
        RegistrySettings(
            grpc_port=0,
            metrics_port=0,
            webhook_port=0,
            consumer_group=group,
            trainer_artifact_root=trainer_artifact_root,
        ),
    )
    runtime.start()
    return runtime


@pytest.fixture(scope="module")
def registry(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    runtime = _start_registry(
        kafka_bootstrap,
        tmp_path_factory.mktemp("registry-data"),
        # the trainers of this module keep their artifacts in data dirs of their own, all
        # under the session's temporary folder: the registry checks and re-hashes there
        tmp_path_factory.getbasetemp(),
    )
    try:
        yield Registry(runtime)
    finally:
        runtime.stop()


def _start(
    registry: Registry,
    kafka_bootstrap: str,
    data_dir: Path,
    models_root: Path,
    group: str,
    *,
    common: Mapping[str, Any] | None = None,
    **settings: Any,
) -> ServiceRuntime:
    """A trainer on ``registry``; ``common``: more CommonSettings fields (auth, TLS files)."""
    runtime = build_runtime(
        bootstrap.SPEC,
        CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=data_dir, **(common or {})),
        TrainerSettings(
            grpc_port=0,
            metrics_port=0,
            models_root=models_root,
            devices="cpu",
            cpu_threads=1,
            consumer_group=group,
            splitter_target="127.0.0.1:9",  # no splitter here: unknown splits stay unknown
            splitter_timeout_seconds=1.0,
            registry_target=registry.target,
            registry_timeout_seconds=60,  # a loaded machine must not make the answer UNAVAILABLE
            **settings,
        ),
    )
    runtime.start()
    return runtime


@pytest.fixture(scope="module")
def service(
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    models_root: Path,
    registry: Registry,
) -> Iterator[ServiceRuntime]:
    data_dir = tmp_path_factory.mktemp("trainer-data")
    runtime = _start(
        registry, kafka_bootstrap, data_dir, models_root, f"test-trainer-{uuid.uuid4().hex[:8]}"
    )
    yield runtime
    runtime.stop()


@pytest.fixture
def client(service: ServiceRuntime) -> Iterator[TrainerClient]:
    with TrainerClient(f"127.0.0.1:{service.grpc_port}", timeout=30) as trainer:
        yield trainer


# -- helpers --------------------------------------------------------------------------------------


def publish_split(
    bootstrap_servers: str,
    data_dir: Path,
    dataset: str,
    *,
    rows: int = 160,
    seed: int = 0,
    audit: int = dataset_pb2.LABEL_AUDIT_VERDICT_PASSED,
    audit_reason: str = "",
) -> splitter_events_pb2.SplitCreated:
    """Write a canonical JSONL + manifest where the splitter keeps them (under the data dir)
    and publish SplitCreated as the splitter's outbox does; then the version's DatasetAudited
    with verdict ``audit`` as the dataset service does (policies wait for it)."""
    version = f"{dataset}/versions/v{uuid.uuid4().hex[:8]}"
    written = write_split(
        data_dir / "splitter" / "artifacts" / version.replace("/", "_"),
        sentiment_rows(rows, seed=seed),
        dataset_version=version,
    )
    labels = {"train": {}, "validation": {}}  # type: dict[str, dict[str, int]]
    by_id = {r["id"]: r for r in sentiment_rows(rows, seed=seed)}
    for part, ids in (("train", written.train_ids), ("validation", written.validation_ids)):
        for row_id in ids:
            label = by_id[row_id]["label"]
            labels[part][label] = labels[part].get(label, 0) + 1
    event = splitter_events_pb2.SplitCreated(
        split=f"{version}/splits/s1",
        dataset=dataset,
        dataset_version=version,
        dataset_content_sha256=written.dataset_sha256,
        task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
        manifest_uri=written.manifest_path.resolve().as_uri(),
        manifest_sha256=written.manifest_sha256,
        dataset_artifact_uri=written.dataset_path.resolve().as_uri(),
        overlap_count=0,
    )
    for part, ids in (
        (common_pb2.SPLIT_PART_TRAIN, written.train_ids),
        (common_pb2.SPLIT_PART_VALIDATION, written.validation_ids),
    ):
        name = "train" if part == common_pb2.SPLIT_PART_TRAIN else "validation"
        event.parts.add(
            part=part,
            row_count=len(ids),
            label_distribution=[
                common_pb2.LabelCount(label=k, count=v) for k, v in sorted(labels[name].items())
            ],
        )
    event.event_time.GetCurrentTime()
    send_event(bootstrap_servers, event, event.split)
    audited = dataset_events_pb2.DatasetAudited(
        dataset_version=version,
        dataset=dataset,
        content_sha256=written.dataset_sha256,
        task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
        verdict=audit,  # type: ignore[arg-type]
        reason=audit_reason,
        suspected_line_numbers=[3, 17, 42] if audit_reason else [],
        audit=f"{version}/audit",
    )
    send_event(bootstrap_servers, audited, version)
    return event


def send_event(bootstrap_servers: str, message: Any, subject: str) -> None:
    ensure_topics(bootstrap_servers, [topic_for(message)])
    publisher = KafkaEventPublisher(bootstrap_servers, client_id="test-publisher")
    try:
        # as its producing service sends it: consumers refuse an event from anyone else
        source = EVENT_PRODUCERS[message.DESCRIPTOR.full_name]
        envelope = Envelope.wrap(message, source=source, subject=subject)
        publisher.send(envelope).get(timeout=30)  # type: ignore[attr-defined]
    finally:
        publisher.close()


def tiny_template(**hyper: Any) -> resources_pb2.TrainingJobTemplate:
    hp = {"batch_size": 8, "learning_rate": 5e-3, "max_steps": 12, "seed": 7, **hyper}
    return resources_pb2.TrainingJobTemplate(
        base_model=common_pb2.BaseModel(model_name="tiny-bert"),
        adapter_spec=common_pb2.AdapterSpec(rank=4),
        hyperparameters=common_pb2.Hyperparameters(**hp),
        stopping_rules=resources_pb2.StoppingRules(eval_every_n_steps=4),
    )


def job_for(
    split: str, template: resources_pb2.TrainingJobTemplate, model: str
) -> resources_pb2.TrainingJob:
    return resources_pb2.TrainingJob(
        target_model=model,
        split=split,
        base_model=template.base_model,
        adapter_spec=template.adapter_spec,
        hyperparameters=template.hyperparameters,
        stopping_rules=template.stopping_rules,
        checkpoint_policy=template.checkpoint_policy,
    )


def wait_for(
    client: TrainerClient,
    name: str,
    condition: Callable[[resources_pb2.TrainingJob], bool],
    timeout: float = 180.0,
) -> resources_pb2.TrainingJob:
    def job_meeting_it() -> resources_pb2.TrainingJob | None:
        try:
            job = client.get_training_job(name)
        except NotFoundError:
            return None
        return job if condition(job) else None

    return eventually(job_meeting_it, timeout=timeout, what=f"{name} to reach the condition")


def events_of(
    bootstrap_servers: str, message_type: Any, job: str, expected: int, *, sent_by: ServiceRuntime
) -> list[Any]:
    """Every ``message_type`` event of ``job``, read once ``expected`` arrived and the trainer
    ``sent_by`` sent all its outbox staged: a duplicate would be among them."""
    return read_all_sent(
        bootstrap_servers,
        topic_for(message_type),
        lambda r: r.value and message_type.FromString(r.value).training_job == job,
        expected=expected,
        outboxes=[sent_by.context.sessions],
        timeout=60,
    )


def await_split(client: TrainerClient, split: str, timeout: float = 60.0) -> None:
    """Wait until the trainer consumed the SplitCreated of ``split``.

    Probes with a job whose task type contradicts the split: refused with TASK_TYPE_MISMATCH
    once the split is known (FAILED_PRECONDITION before), so the probe never creates a job.
    """
    probe = job_for(split, tiny_template(), "models/probe")
    probe.task_type = common_pb2.TASK_TYPE_CAUSAL_LM

    def split_known() -> bool:
        try:
            client.create_training_job(probe)
        except FailedPreconditionError:
            return False
        except InvalidArgumentError as error:
            if [v.reason for v in error.violations] != ["TASK_TYPE_MISMATCH"]:
                raise
            return True
        raise AssertionError(f"the probe job for {split} was created")

    eventually(split_known, timeout=timeout, what=f"the trainer to see {split}")


# -- tests ----------------------------------------------------------------------------------------


def test_a_version_its_label_audit_blocked_is_never_trained(
    service: ServiceRuntime, client: TrainerClient, registry: Registry, kafka_bootstrap: str
) -> None:
    unique = uuid.uuid4().hex[:8]
    dataset = f"datasets/blocked-{unique}"
    target = registry.register(f"models/blocked-{unique}")
    policy = client.set_training_policy(
        resources_pb2.TrainingPolicy(
            name=f"trainingPolicies/blocked-{unique}",
            dataset=dataset,
            target_model=target,
            job_template=tiny_template(),
        )
    )
    reason = "label_audit: estimated label noise 31.0% is above the 25% allowed (policy block)"
    event = publish_split(
        kafka_bootstrap,
        service.context.common.data_dir,
        dataset,
        audit=dataset_pb2.LABEL_AUDIT_VERDICT_BLOCKED,
        audit_reason=reason,
    )
    name = "trainingJobs/" + policy_job_id(policy.name, event.split)
    job = wait_for(client, name, lambda j: j.state == FAILED, timeout=60)
    assert job.failure_reason == resources_pb2.TRAINING_FAILURE_REASON_LABEL_AUDIT_BLOCKED
    assert reason in job.failure_message
    assert "3, 17, 42" in job.failure_message
    assert not job.HasField("start_time")
    with pytest.raises(FailedPreconditionError) as refused:
        client.create_training_job(job_for(event.split, tiny_template(), target))
    (violation,) = refused.value.violations
    assert (violation.reason, violation.field) == ("LABEL_AUDIT_BLOCKED", event.dataset_version)
    assert reason in violation.description


def test_split_created_trains_once_and_announces_checkpoints(
    service: ServiceRuntime,
    client: TrainerClient,
    registry: Registry,
    kafka_bootstrap: str,
    unique: str,
) -> None:
    data_dir = service.context.common.data_dir
    dataset = f"datasets/reviews-{unique}"
    policy = client.set_training_policy(
        resources_pb2.TrainingPolicy(
            name=f"trainingPolicies/p-{unique}",
            dataset=dataset,
            target_model=registry.register(f"models/sentiment-{unique}"),
            job_template=tiny_template(),
        )
    )
    assert policy.job_template.base_model.model_name == "tiny-bert"
    assert client.get_training_policy(policy.name).dataset == dataset
    assert [p.name for p in client.list_training_policies(dataset=dataset)] == [policy.name]
    event = publish_split(kafka_bootstrap, data_dir, dataset)
    # the splitter's outbox may re-send the same SplitCreated under a new event id
    send_event(kafka_bootstrap, event, event.split)
    name = "trainingJobs/" + policy_job_id(policy.name, event.split)
    updates = []
    wait_for(client, name, lambda j: True, timeout=60)
    for update in client.watch_training_job(name, timeout=180):
        updates.append(update)
    job = client.get_training_job(name)
    assert job.state == SUCCEEDED, job.failure_message
    assert job.stop_reason == resources_pb2.TRAINING_STOP_REASON_MAX_STEPS
    assert job.training_policy == policy.name
    assert job.creator == policy.name  # automation made it: no person to hold to four eyes
    assert [j.name for j in client.list_training_jobs(split=event.split)] == [name]
    # the watch streamed real progress: the first message carries the job, steps only grow
    assert updates[0].HasField("training_job")
    steps = [u.progress.step for u in updates]
    running = [u.progress for u in updates if u.progress.state == RUNNING and u.progress.step]
    assert any(p.tokens_per_second > 0 and p.learning_rate > 0 for p in running)
    assert any(p.HasField("eta") for p in running)
    assert steps == sorted(steps)
    assert steps[-1] == 12
    assert any(u.progress.HasField("train_loss") for u in updates)
    assert updates[-1].progress.state == SUCCEEDED
    # resolved defaults and lineage
    assert job.adapter_spec.target_modules == ["query", "key", "value"]
    assert job.adapter_spec.modules_to_save == ["classifier"]
    assert job.hyperparameters.precision == common_pb2.PRECISION_FP32
    assert job.lineage.base_model.files_sha256 == folder_sha256(
        Path(service.context.settings.models_root) / "tiny-bert"  # type: ignore[attr-defined]
    )
    assert job.cost.device_seconds > 0
    assert job.cost.tokens_processed > 0
    assert job.cost.amount.currency_code == "USD"

    started = events_of(kafka_bootstrap, events_pb2.TrainingJobStarted, name, 1, sent_by=service)
    assert len(started) == 1
    assert header(started[0], "ce_source") == "tuneline/trainer"
    started_event = events_pb2.TrainingJobStarted.FromString(started[0].value)
    assert started_event.training_policy == policy.name
    assert started_event.device == "cpu"

    # keyed by checkpoint name, so spread over partitions: order them by step
    ready = sorted(
        events_of(kafka_bootstrap, events_pb2.CheckpointReady, name, 3, sent_by=service),
        key=lambda r: events_pb2.CheckpointReady.FromString(r.value).step,
    )
    checkpoints = [events_pb2.CheckpointReady.FromString(r.value) for r in ready]
    assert [c.step for c in checkpoints] == [4, 8, 12]
    final = checkpoints[-1]
    assert final.is_final
    assert not checkpoints[0].is_final
    assert final.checkpoint == f"{name}/checkpoints/step-12"
    assert ready[-1].key.decode() == final.checkpoint
    assert final.HasField("validation_loss")
    assert final.train_loss > 0
    assert final.tokens_seen == job.progress.tokens_seen
    assert final.lineage.checkpoint == final.checkpoint
    assert final.lineage.dataset == dataset
    assert final.lineage.split == event.split
    assert final.lineage.split_manifest_sha256 == event.manifest_sha256
    assert final.lineage.software_versions["torch"]
    assert final.cost.device_seconds > 0
    assert final.job_creator == policy.name
    folder = service.context.artifacts.local_path(final.artifact_uri)
    assert folder_sha256(folder) == final.sha256
    assert read_adapter_metadata(folder).labels == ["neg", "pos"]
    assert sum(c.is_best for c in checkpoints) >= 1

    completed = events_of(
        kafka_bootstrap, events_pb2.TrainingJobCompleted, name, 1, sent_by=service
    )
    done = events_pb2.TrainingJobCompleted.FromString(completed[0].value)
    assert done.final_checkpoint == final.checkpoint
    assert list(done.checkpoints) == [c.checkpoint for c in checkpoints]
    assert done.steps_completed == 12
    assert done.tokens_per_second > 0
    assert done.best_checkpoint in done.checkpoints

    listed = list(client.list_checkpoints(name))
    assert [c.step for c in listed] == [4, 8, 12]
    assert client.get_checkpoint(final.checkpoint).sha256 == final.sha256

    url = f"http://127.0.0.1:{service.metrics_port}/metrics"
    metrics = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'tuneline_trainer_jobs{state="SUCCEEDED"}' in metrics
    assert "tuneline_trainer_queue_depth" in metrics
    assert f'tuneline_trainer_job_cost{{currency="USD",training_job="{name}"}}' in metrics
    assert f'tuneline_trainer_tokens_per_second{{training_job="{name}"}}' in metrics
    steps = next(
        line for line in metrics.splitlines() if line.startswith("tuneline_trainer_steps_total ")
    )
    assert float(steps.split()[1]) >= 12


def test_invalid_specs_are_refused_with_every_field_violation(
    service: ServiceRuntime, client: TrainerClient, kafka_bootstrap: str, unique: str
) -> None:
    event = publish_split(
        kafka_bootstrap, service.context.common.data_dir, f"datasets/bad-{unique}"
    )
    await_split(client, event.split)
    bad = job_for(event.split, tiny_template(), f"models/bad-{unique}")
    bad.adapter_spec.rank = -1
    bad.adapter_spec.method = 42
    bad.adapter_spec.dropout = 1.0
    bad.hyperparameters.learning_rate = -0.1
    bad.hyperparameters.max_steps = -5
    with pytest.raises(InvalidArgumentError) as raised:
        client.create_training_job(bad)
    fields = {v.field for v in raised.value.violations}
    assert {
        "training_job.adapter_spec.rank",
        "training_job.adapter_spec.method",
        "training_job.adapter_spec.dropout",
        "training_job.hyperparameters.learning_rate",
        "training_job.hyperparameters.max_steps",
    } <= fields

    # a path escaping the model roots is a malformed request ...
    outside = job_for(event.split, tiny_template(), f"models/bad-{unique}")
    outside.base_model.model_path = "/etc"
    with pytest.raises(InvalidArgumentError) as raised:
        client.create_training_job(outside)
    (violation,) = raised.value.violations
    assert violation.field == "training_job.base_model.model_path"
    assert violation.reason == "MODEL_REFUSED"

    # ... a model the server refuses or lacks is the server's state (AIP-193)
    pickled = job_for(event.split, tiny_template(), f"models/bad-{unique}")
    pickled.base_model.model_name = "pickled"
    with pytest.raises(FailedPreconditionError) as refused:
        client.create_training_job(pickled)
    (precondition,) = refused.value.violations
    assert precondition.field == "pickled", "the subject: the model as the request names it"
    assert precondition.reason == "MODEL_REFUSED"
    assert "pytorch_model.bin" in precondition.description

    absent = job_for(event.split, tiny_template(), f"models/bad-{unique}")
    absent.base_model.model_name = f"absent-{unique}"
    with pytest.raises(FailedPreconditionError) as missing:
        client.create_training_job(absent)
    (precondition,) = missing.value.violations
    assert (precondition.field, precondition.reason) == (f"absent-{unique}", "MODEL_NOT_FOUND")
    assert "tuneline models prepare" in precondition.description

    unknown = job_for(f"{event.dataset_version}/splits/nope", tiny_template(), f"models/x-{unique}")
    with pytest.raises(FailedPreconditionError):
        client.create_training_job(unknown)

    # a target model the registry does not have (a typo) is refused before anything trains
    typo = job_for(event.split, tiny_template(), f"models/bad-{unique}")
    with pytest.raises(FailedPreconditionError) as unregistered:
        client.create_training_job(typo)
    (precondition,) = unregistered.value.violations
    assert (precondition.field, precondition.reason) == (
        f"models/bad-{unique}",
        "TARGET_MODEL_NOT_FOUND",
    )
    # nothing half-written: no job for the refused requests
    assert [
        j.target_model for j in client.list_training_jobs(target_model=f"models/bad-{unique}")
    ] == []


def test_one_job_per_device_and_cancel_stops_a_running_job_at_a_step_boundary(
    service: ServiceRuntime,
    client: TrainerClient,
    registry: Registry,
    kafka_bootstrap: str,
    unique: str,
) -> None:
    registry.register(f"models/c-{unique}")
    event = publish_split(kafka_bootstrap, service.context.common.data_dir, f"datasets/c-{unique}")
    await_split(client, event.split)
    long_job = job_for(event.split, tiny_template(max_steps=100_000), f"models/c-{unique}")
    long_job.stopping_rules.eval_every_n_steps = 10_000  # no checkpoint but the last
    name = client.create_training_job(long_job, job_id=f"cancel-{unique}").name
    wait_for(client, name, lambda j: j.state == RUNNING and j.progress.step >= 6, timeout=240)
    short = job_for(event.split, tiny_template(max_steps=2), f"models/c-{unique}")
    finished = client.create_training_job(short, job_id=f"short-{unique}").name
    assert client.get_training_job(finished).state == resources_pb2.TRAINING_JOB_STATE_QUEUED
    client.cancel_training_job(name, reason="test")
    job = wait_for(client, name, lambda j: j.state in TERMINAL, timeout=120)
    assert job.state == CANCELLED
    # the worker stopped at a step boundary and wrote a checkpoint on the way out (a worker
    # killed after the cancel grace period writes none)
    (kept,) = client.list_checkpoints(name)
    assert kept.is_final
    assert kept.step == job.progress.step
    assert client.cancel_training_job(name).state == CANCELLED  # again: a no-op
    short_job = wait_for(client, finished, lambda j: j.state in TERMINAL)
    assert short_job.state == SUCCEEDED
    # the only device (the CPU) was busy: the short job started only once the long one ended
    assert short_job.start_time.ToDatetime() >= job.end_time.ToDatetime()
    with pytest.raises(FailedPreconditionError):
        client.cancel_training_job(finished)


def test_a_killed_worker_resumes_from_its_last_checkpoint(
    *,
    service: ServiceRuntime,
    client: TrainerClient,
    registry: Registry,
    kafka_bootstrap: str,
    tmp_path: Path,
    models_root: Path,
    unique: str,
) -> None:
    registry.register(f"models/r-{unique}")
    template = tiny_template(max_steps=40)
    template.stopping_rules.eval_every_n_steps = 5
    # the reference: the same data (the fixture's rows are seeded) trained without a crash
    event = publish_split(kafka_bootstrap, service.context.common.data_dir, f"datasets/r-{unique}")
    await_split(client, event.split)
    spec = job_for(event.split, template, f"models/r-{unique}")
    reference = client.create_training_job(spec, job_id=f"ref-{unique}").name
    uninterrupted = wait_for(client, reference, lambda j: j.state in TERMINAL, timeout=240)
    final_ref = client.get_checkpoint(f"{reference}/checkpoints/step-40")

    # a service whose first runs park after step 12 (the checkpoint of step 10 written): the
    # kill always meets a running worker, whatever the machine's speed; the resume runs through
    crashing = _start(
        registry,
        kafka_bootstrap,
        tmp_path,
        models_root,
        f"test-trainer-{unique}",
        fault_hold_after_step=12,
    )
    try:
        with TrainerClient(f"127.0.0.1:{crashing.grpc_port}", timeout=30) as crashing_client:
            event = publish_split(kafka_bootstrap, tmp_path, f"datasets/k-{unique}")
            await_split(crashing_client, event.split)
            spec = job_for(event.split, template, f"models/r-{unique}")
            name = crashing_client.create_training_job(spec, job_id=f"kill-{unique}").name
            held = wait_for(
                crashing_client, name, lambda j: j.state == RUNNING and j.progress.step >= 12
            )
            assert held.progress.step == 12
            supervisor = next(c for c in crashing.components if isinstance(c, JobSupervisor))
            pid = supervisor.worker_pid(name)
            assert pid
            os.kill(pid, signal.SIGKILL)
            job = wait_for(crashing_client, name, lambda j: j.state in TERMINAL, timeout=240)
            assert job.state == SUCCEEDED, job.failure_message
            assert job.attempt_count == 2
            steps = [c.step for c in crashing_client.list_checkpoints(name)]
            final = crashing_client.get_checkpoint(f"{name}/checkpoints/step-40")
        announced = [
            events_pb2.CheckpointReady.FromString(r.value).step
            for r in events_of(
                kafka_bootstrap, events_pb2.CheckpointReady, name, len(steps), sent_by=crashing
            )
        ]
    finally:
        crashing.stop()
    assert steps == sorted(set(steps))
    assert steps[-1] == 40
    assert sorted(announced) == steps  # each step once, none twice
    # same seed, same data order, optimizer/RNG/data position restored: the same run
    assert job.progress.validation_loss == pytest.approx(
        uninterrupted.progress.validation_loss, rel=1e-3
    )
    assert final.train_loss == pytest.approx(final_ref.train_loss, rel=1e-3)


def test_the_service_restarts_and_resumes_running_jobs(
    registry: Registry, kafka_bootstrap: str, tmp_path: Path, models_root: Path, unique: str
) -> None:
    registry.register(f"models/s-{unique}")
    group = f"test-trainer-{unique}"
    # The first process parks the job after step 8, so the stop below always meets a running
    # job whatever the machine's speed; the second process lets it run to the end.
    runtime = _start(
        registry, kafka_bootstrap, tmp_path, models_root, group, fault_hold_after_step=8
    )
    try:
        with TrainerClient(f"127.0.0.1:{runtime.grpc_port}", timeout=30) as client:
            event = publish_split(kafka_bootstrap, tmp_path, f"datasets/s-{unique}")
            template = tiny_template(max_steps=40)
            template.stopping_rules.eval_every_n_steps = 5
            await_split(client, event.split)
            name = client.create_training_job(
                job_for(event.split, template, f"models/s-{unique}"), job_id=f"restart-{unique}"
            ).name
            held = wait_for(client, name, lambda j: j.progress.step >= 8, timeout=240)
            assert held.state == RUNNING
            assert held.progress.step == 8
    finally:
        runtime.stop()
    runtime = _start(registry, kafka_bootstrap, tmp_path, models_root, group)
    try:
        with TrainerClient(f"127.0.0.1:{runtime.grpc_port}", timeout=30) as client:
            job = wait_for(client, name, lambda j: j.state in TERMINAL, timeout=240)
            assert job.state == SUCCEEDED, job.failure_message
            assert job.attempt_count == 2
            steps = [c.step for c in client.list_checkpoints(name)]
            assert steps == sorted(set(steps))
            assert steps[-1] == 40
        started = events_of(
            kafka_bootstrap, events_pb2.TrainingJobStarted, name, 1, sent_by=runtime
        )
        assert len(started) == 1  # a resume is not a new start
    finally:
        runtime.stop()


def test_out_of_memory_retries_with_half_the_micro_batch_then_fails(
    registry: Registry, kafka_bootstrap: str, tmp_path: Path, models_root: Path, unique: str
) -> None:
    registry.register(f"models/o-{unique}")
    runtime = _start(
        registry,
        kafka_bootstrap,
        tmp_path,
        models_root,
        f"test-trainer-{unique}",
        fault_oom_above_batch=4,
    )
    try:
        with TrainerClient(f"127.0.0.1:{runtime.grpc_port}", timeout=30) as client:
            event = publish_split(kafka_bootstrap, tmp_path, f"datasets/o-{unique}")
            fits = job_for(
                event.split, tiny_template(batch_size=8, max_steps=6), f"models/o-{unique}"
            )
            await_split(client, event.split)
            retried = client.create_training_job(fits, job_id=f"oom-fits-{unique}").name
            too_big = job_for(
                event.split, tiny_template(batch_size=16, max_steps=6), f"models/o-{unique}"
            )
            failing = client.create_training_job(too_big, job_id=f"oom-fails-{unique}").name
            job = wait_for(client, retried, lambda j: j.state in TERMINAL, timeout=240)
            assert job.state == SUCCEEDED, job.failure_message
            assert job.attempt_count == 2
            # same effective batch: half the micro-batch, twice the accumulation
            assert job.hyperparameters.batch_size == 8
            job = wait_for(client, failing, lambda j: j.state in TERMINAL, timeout=240)
            assert job.state == FAILED
            assert job.failure_reason == resources_pb2.TRAINING_FAILURE_REASON_OUT_OF_MEMORY
            assert "micro-batch of 8" in job.failure_message
        failed = events_of(
            kafka_bootstrap, events_pb2.TrainingJobFailed, failing, 1, sent_by=runtime
        )
        event_failed = events_pb2.TrainingJobFailed.FromString(failed[0].value)
        assert event_failed.failure_reason == resources_pb2.TRAINING_FAILURE_REASON_OUT_OF_MEMORY
        assert event_failed.attempt_count == 2
    finally:
        runtime.stop()


def test_the_cli_creates_lists_and_watches_a_job(
    *,
    service: ServiceRuntime,
    client: TrainerClient,
    registry: Registry,
    kafka_bootstrap: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.register(f"models/cli-{unique}")
    event = publish_split(
        kafka_bootstrap, service.context.common.data_dir, f"datasets/cli-{unique}"
    )
    await_split(client, event.split)
    monkeypatch.setenv("TUNELINE_TRAINER_TARGET", f"127.0.0.1:{service.grpc_port}")
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables to the terminal's width
    runner = CliRunner()
    created = runner.invoke(
        cli,
        [
            "jobs",
            "create",
            event.split,
            "--target-model",
            f"models/cli-{unique}",
            "--base-model",
            "tiny-bert",
            "--id",
            f"cli-{unique}",
            "--rank",
            "4",
            "--max-steps",
            "6",
            "--batch-size",
            "8",
            "--eval-every",
            "3",
            "--watch",
        ],
    )
    assert created.exit_code == 0, created.output
    assert f"queued trainingJobs/cli-{unique}" in created.output
    assert "SUCCEEDED" in created.output
    listed = runner.invoke(cli, ["jobs", "list", "--target-model", f"models/cli-{unique}"])
    assert listed.exit_code == 0, listed.output
    assert f"cli-{unique}" in listed.output
    assert "6/6" in listed.output
    shown = runner.invoke(cli, ["jobs", "show", f"cli-{unique}"])
    assert '"state": "TRAINING_JOB_STATE_SUCCEEDED"' in shown.output
    refused = runner.invoke(
        cli,
        ["jobs", "create", event.split, "--target-model", "models/x", "--base-model", "pickled"],
    )
    assert refused.exit_code == 1
    assert "MODEL_REFUSED" in refused.output or "pickle" in refused.output


def test_the_cli_sets_lists_and_shows_a_policy_with_its_owner_and_budgets(
    *,
    service: ServiceRuntime,
    client: TrainerClient,
    registry: Registry,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = registry.register(f"models/pol-{unique}")
    name = f"trainingPolicies/pol-{unique}"
    monkeypatch.setenv("TUNELINE_TRAINER_TARGET", f"127.0.0.1:{service.grpc_port}")
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables to the terminal's width
    runner = CliRunner()
    incomplete = runner.invoke(cli, ["policies", "set", f"pol-{unique}", "--owner", "ml"])
    assert incomplete.exit_code == 2
    assert "--dataset, --target-model, --base-model" in incomplete.output
    created = runner.invoke(
        cli,
        [
            "policies",
            "set",
            f"pol-{unique}",
            "--dataset",
            f"datasets/pol-{unique}",
            "--target-model",
            model,
            "--base-model",
            "tiny-bert",
            "--owner",
            "support-ml",
            "--owner-contact",
            "#support-ml",
            "--runbook",
            "https://runbooks.example.com/pol",
            "--max-cost-per-run",
            "2.50",
            "--max-cost-per-month",
            "40",
        ],
    )
    assert created.exit_code == 0, created.output
    assert f"set {name}" in created.output
    # a change names only what changes: the rest (dataset, template, owner team) is kept
    changed = runner.invoke(
        cli,
        [
            "policies",
            "set",
            name,
            "--runbook",
            "https://runbooks.example.com/pol-v2",
            "--max-cost-per-month",
            "30",
            "--disabled",
        ],
    )
    assert changed.exit_code == 0, changed.output
    stored = client.get_training_policy(name)
    assert (stored.dataset, stored.target_model) == (f"datasets/pol-{unique}", model)
    assert stored.job_template.base_model.model_name == "tiny-bert"
    assert (stored.owner.team, stored.owner.contact, stored.owner.runbook_uri) == (
        "support-ml",
        "#support-ml",
        "https://runbooks.example.com/pol-v2",
    )
    per_run, per_month = stored.budget.max_cost_per_run, stored.budget.max_cost_per_month
    assert (per_run.units, per_run.nanos, per_run.currency_code) == (2, 500_000_000, "USD")
    assert (per_month.units, per_month.nanos, per_month.currency_code) == (30, 0, "USD")
    assert stored.disabled
    listed = runner.invoke(cli, ["policies", "list", "--dataset", f"datasets/pol-{unique}"])
    assert listed.exit_code == 0, listed.output
    (row,) = [line for line in listed.output.splitlines() if name in line]
    for shown in ("tiny-bert", "support-ml (#support-ml)", "2.50 USD/run", "30.00 USD/month"):
        assert shown in row
    assert row.rstrip(" │").endswith("no")
    got = runner.invoke(cli, ["policies", "get", f"pol-{unique}"])
    assert got.exit_code == 0, got.output
    assert '"runbook_uri": "https://runbooks.example.com/pol-v2"' in got.output
    cleared = runner.invoke(cli, ["policies", "set", name, "--no-budget", "--enabled"])
    assert cleared.exit_code == 0, cleared.output
    stored = client.get_training_policy(name)
    assert not stored.HasField("budget") or not (
        stored.budget.HasField("max_cost_per_run") or stored.budget.HasField("max_cost_per_month")
    )
    assert not stored.disabled
    assert stored.owner.team == "support-ml"


def test_a_budget_refuses_a_run_before_it_starts_and_stops_one_that_reaches_it(
    registry: Registry, kafka_bootstrap: str, tmp_path: Path, models_root: Path, unique: str
) -> None:
    """The model's per-run budget, held by the registry and enforced by the trainer: a job
    estimated over it is refused with the budget named; a job admitted under it that costs more
    than estimated is stopped with a final checkpoint and BUDGET_EXHAUSTED."""
    # a device-second costs USD 1, so the tiny run's budget is reached within seconds; the
    # first run parks after step 2 until the supervisor stops it, whatever the machine's speed
    runtime = _start(
        registry,
        kafka_bootstrap,
        tmp_path,
        models_root,
        f"test-trainer-{unique}",
        fault_hold_after_step=2,
        price_per_device_hour=Decimal(3600),
    )
    try:
        with TrainerClient(f"127.0.0.1:{runtime.grpc_port}", timeout=30) as client:
            event = publish_split(kafka_bootstrap, tmp_path, f"datasets/b-{unique}")
            await_split(client, event.split)
            spec = job_for(event.split, tiny_template(), registry.register(f"models/f-{unique}"))
            _planned, estimate = client.estimate_training_job(spec)
            cost = estimate.estimated_cost
            assert cost.currency_code == "USD"
            assert estimate.estimated_device_seconds > 0

            def budget(units: int, nanos: int) -> common_pb2.Budget:
                limit = common_pb2.Money(currency_code="USD", units=units, nanos=nanos)
                return common_pb2.Budget(max_cost_per_run=limit)

            half = (cost.units * 1_000_000_000 + cost.nanos) // 2
            spec.target_model = registry.register(
                f"models/h-{unique}", budget(*divmod(half, 1_000_000_000))
            )
            with pytest.raises(FailedPreconditionError) as refused:
                client.create_training_job(spec, job_id=f"over-{unique}")
            (violation,) = refused.value.violations
            assert (violation.reason, violation.field) == ("BUDGET_EXCEEDED", spec.target_model)
            assert violation.description.startswith("max_cost_per_run:")
            with pytest.raises(NotFoundError):
                client.get_training_job(f"trainingJobs/over-{unique}")

            spec.target_model = registry.register(
                f"models/e-{unique}", budget(cost.units, cost.nanos)
            )
            name = client.create_training_job(spec, job_id=f"stop-{unique}").name
            job = wait_for(client, name, lambda j: j.state in TERMINAL, timeout=240)
            checkpoints = list(client.list_checkpoints(name))
    finally:
        runtime.stop()
    assert job.state == SUCCEEDED, job.failure_message
    assert job.stop_reason == resources_pb2.TRAINING_STOP_REASON_BUDGET_EXHAUSTED
    assert job.budget.max_cost_per_run == cost
    assert job.estimate.estimated_cost == cost  # recorded beside the actual
    spent = job.cost.amount.units * 1_000_000_000 + job.cost.amount.nanos
    assert spent >= cost.units * 1_000_000_000 + cost.nanos
    assert 1 <= job.progress.step < 12  # stopped at a step boundary, before max_steps
    final = checkpoints[-1]
    assert final.is_final
    assert final.step == job.progress.step
    assert final.stop_reason == resources_pb2.TRAINING_STOP_REASON_BUDGET_EXHAUSTED
    (ready,) = [
        events_pb2.CheckpointReady.FromString(r.value)
        for r in events_of(
            kafka_bootstrap, events_pb2.CheckpointReady, name, len(checkpoints), sent_by=runtime
        )
        if events_pb2.CheckpointReady.FromString(r.value).is_final
    ]
    assert ready.stop_reason == resources_pb2.TRAINING_STOP_REASON_BUDGET_EXHAUSTED


# -- identity: a job's creator is the verified caller ---------------------------------------------


def test_with_auth_a_jobs_creator_is_the_verified_caller_and_reaches_the_registry(
    kafka_bootstrap: str,
    models_root: Path,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four-eyes approval in the registry refuses a checkpoint's job creator as approver, so
    the creator must be the certificate's subject, never what the client asserts."""
    ca = LocalCA(tmp_path / "pki")
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"bindings": {"ed": ["editor"], "carol": ["editor"]}}))
    data_dir = tmp_path / "data"  # one data dir: the registry's default trainer artifact root

    def auth(service: str) -> dict[str, Any]:
        issued = ca.issue(service, uri=spiffe_id("service", service), server=True)
        return {
            "auth_mode": "enforce",
            "tls_cert_file": issued.cert_file,
            "tls_key_file": issued.key_file,
            "tls_ca_file": ca.ca_file,
            "tls_client_ca_file": ca.ca_file,
            "auth_policy_file": policy,
        }

    def as_user(name: str) -> ClientSecurity:
        issued = ca.issue(name, common_name=name)
        return ClientSecurity(
            tls=True, ca_file=ca.ca_file, cert_file=issued.cert_file, key_file=issued.key_file
        )

    registry_runtime = _start_registry(
        kafka_bootstrap, data_dir, data_dir / "trainer" / "artifacts", auth("registry")
    )
    trainer_auth = auth("trainer")
    # a service's clients of its peers read TUNELINE_TLS_*/AUTH_* from the environment
    # (ClientSecurity.from_environment), as a deployed trainer's do
    for setting in ("auth_mode", "tls_cert_file", "tls_key_file", "tls_ca_file"):
        monkeypatch.setenv(f"TUNELINE_{setting.upper()}", str(trainer_auth[setting]))
    registry = Registry(registry_runtime)
    trainer = None
    try:
        trainer = _start(
            registry,
            kafka_bootstrap,
            data_dir,
            models_root,
            f"test-trainer-auth-{uuid.uuid4().hex[:8]}",
            common=trainer_auth,
        )
        target = f"127.0.0.1:{trainer.grpc_port}"
        model = f"models/own-{unique}"
        with RegistryClient(registry.target, security=as_user("ed")) as ed:
            ed.create_model(
                model.removeprefix("models/"),
                registry_pb2.Model(
                    task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
                    base_model=common_pb2.BaseModel(model_name="tiny-bert"),
                    evaluation_set=common_pb2.EvaluationSet(
                        dataset_version="datasets/held-out/versions/v1"
                    ),
                    promotion_policy=registry_pb2.PROMOTION_POLICY_MANUAL,
                ),
            )
        event = publish_split(kafka_bootstrap, data_dir, f"datasets/own-{unique}")
        carol = as_user("carol")
        with TrainerClient(target, security=carol) as client:
            await_split(client, event.split)
            request = service_pb2.CreateTrainingJobRequest(
                training_job=job_for(event.split, tiny_template(max_steps=2), model),
                training_job_id=f"own-{unique}",
            )
            with create_channel(target, security=carol) as channel:
                created = service_pb2_grpc.TrainerServiceStub(channel).CreateTrainingJob(
                    request, metadata=[("x-tuneline-principal", "mallory")], timeout=60
                )
            name = created.training_job.name
            # the client's own x-tuneline-principal is ignored: the certificate says carol
            assert created.training_job.creator == "carol"
            assert client.get_training_job(name).creator == "carol"
            job = wait_for(client, name, lambda j: j.state in TERMINAL)
            assert job.state == SUCCEEDED, job.failure_message
        (record,) = events_of(kafka_bootstrap, events_pb2.CheckpointReady, name, 1, sent_by=trainer)
        assert events_pb2.CheckpointReady.FromString(record.value).job_creator == "carol"
        with RegistryClient(registry.target, security=as_user("ed")) as ed:
            registered = eventually(
                lambda: list(ed.list_checkpoints(model, training_job=name)) or None,
                timeout=120,
                what="the registry to register the job's checkpoint",
            )
        assert [c.job_creator for c in registered] == ["carol"]
    finally:
        if trainer is not None:
            trainer.stop()
        registry_runtime.stop()
