"""A cancelled job's last checkpoint is announced as cancelled, and never promoted by itself.

The real trainer (a real worker process training a tiny model) and the real registry run
in-process on the real broker, as in ``test_trainer_service``. A job is cancelled mid-run; the
CheckpointReady of the checkpoint it writes on the way out is read back from Kafka, and the
registry, with an AUTOMATIC promotion policy, registers it from that event. An evaluation that
PASSED against the base model (which would promote any other checkpoint) is then published as
the evaluator publishes it: the registry records it and holds the checkpoint.
"""

from __future__ import annotations

import pytest

from shared.events import KafkaEventPublisher
from shared.runtime import ServiceRuntime
from tests.fixtures.registry_events import evaluation_completed, publish, registry_checkpoint
from tests.integration.test_trainer_service import (  # noqa: F401 - fixtures used by name
    CANCELLED,
    RUNNING,
    TERMINAL,
    Registry,
    await_split,
    client,
    events_of,
    job_for,
    models_root,
    publish_split,
    registry,
    service,
    tiny_template,
    wait_for,
)
from tuneline.client.errors import NotFoundError
from tuneline.client.registry import RegistryClient
from tuneline.client.trainer import TrainerClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.devtools.waiting import answer, eventually
from tuneline.registry.v1 import resources_pb2 as registry_pb2
from tuneline.trainer.v1 import events_pb2, resources_pb2

pytestmark = pytest.mark.integration


def _registered(
    models: RegistryClient, name: str, timeout: float = 60.0
) -> registry_pb2.Checkpoint:
    """The registry's checkpoint ``name`` once it registered it (from CheckpointReady)."""
    return eventually(
        answer(lambda: models.get_checkpoint(name), NotFoundError),
        timeout=timeout,
        what=f"the registry to register {name}",
    )


def test_a_cancelled_jobs_checkpoint_says_so_and_is_not_promoted_automatically(
    service: ServiceRuntime,  # noqa: F811
    client: TrainerClient,  # noqa: F811
    registry: Registry,  # noqa: F811
    kafka_bootstrap: str,
    unique: str,
) -> None:
    model_id = f"cut-{unique}"
    with RegistryClient(registry.target, timeout=30) as models:
        models.create_model(
            model_id,
            registry_pb2.Model(
                task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
                base_model=common_pb2.BaseModel(model_name="tiny-bert"),
                evaluation_set=common_pb2.EvaluationSet(
                    dataset_version="datasets/held-out/versions/v1"
                ),
                promotion_policy=registry_pb2.PROMOTION_POLICY_AUTOMATIC,
            ),
        )
    event = publish_split(kafka_bootstrap, service.context.common.data_dir, f"datasets/{model_id}")
    await_split(client, event.split)
    long_job = job_for(event.split, tiny_template(max_steps=100_000), f"models/{model_id}")
    long_job.stopping_rules.eval_every_n_steps = 10_000  # no checkpoint but the one on the way out
    job_id = f"cut-{unique}"
    name = client.create_training_job(long_job, job_id=job_id).name
    wait_for(client, name, lambda j: j.state == RUNNING and j.progress.step >= 3, timeout=240)
    client.cancel_training_job(name, reason="enough")
    job = wait_for(client, name, lambda j: j.state in TERMINAL, timeout=120)
    assert job.state == CANCELLED
    assert job.stop_reason == resources_pb2.TRAINING_STOP_REASON_CANCELLED

    # the event says why training stopped: final, but cancelled
    (record,) = events_of(
        kafka_bootstrap, events_pb2.CheckpointReady, name, expected=1, sent_by=service
    )
    ready = events_pb2.CheckpointReady.FromString(record.value)
    assert ready.is_final
    assert ready.stop_reason == resources_pb2.TRAINING_STOP_REASON_CANCELLED
    assert ready.step == job.progress.step
    (kept,) = client.list_checkpoints(name)
    assert kept.stop_reason == resources_pb2.TRAINING_STOP_REASON_CANCELLED

    with RegistryClient(registry.target, timeout=30) as models:
        checkpoint = registry_checkpoint(model_id, job_id, ready.step)
        assert _registered(models, checkpoint).training_interrupted
        # the evaluator may evaluate it; a PASSED verdict would promote any other checkpoint
        passed = evaluation_completed(
            model_id, job_id, ready.step, evaluation=f"evaluations/cut-{unique}"
        )
        passed.checkpoint_sha256 = ready.sha256
        passed.lineage.CopyFrom(ready.lineage)
        publisher = KafkaEventPublisher(kafka_bootstrap, client_id=f"test-evaluator-{unique}")
        try:
            publish(publisher, passed)
            publisher.flush()
        finally:
            publisher.close()

        def evaluated_checkpoint() -> registry_pb2.Checkpoint | None:
            found = models.get_checkpoint(checkpoint)
            return found if found.evaluations else None

        evaluated = eventually(
            evaluated_checkpoint, timeout=60, what="the registry to attach the evaluation"
        )
        assert evaluated.verdict == common_pb2.EVALUATION_VERDICT_PASSED
        # held in the same transaction that attached the evaluation: nothing moved
        assert list(evaluated.aliases) == []
        assert not evaluated.ever_production
        assert models.get_production_alias(f"models/{model_id}").checkpoint == ""
