"""The events the trainer publishes, built from its domain values (the converters of
:mod:`services.trainer.adapters.protos` build their parts)."""

from __future__ import annotations

from datetime import datetime

from services.trainer.adapters.protos import (
    checkpointing_to_proto,
    cost_to_proto,
    failure_reason_to_proto,
    lineage_to_proto,
    loss_point_to_proto,
    stop_reason_to_proto,
    stopping_to_proto,
    tokenizer_fingerprint_to_proto,
)
from services.trainer.domain.jobs import CheckpointRecord, LossPoint, TrainingJob
from shared.protobuf import duration_from_seconds, timestamp_from_datetime
from tuneline.trainer.v1 import events_pb2


def training_job_started_event(
    job: TrainingJob, *, total_steps: int, device: str, now: datetime
) -> events_pb2.TrainingJobStarted:
    return events_pb2.TrainingJobStarted(
        training_job=job.name,
        target_model=job.target_model,
        training_policy=job.training_policy,
        lineage=lineage_to_proto(job.lineage()),
        stopping_rules=stopping_to_proto(job.config.stopping),
        checkpoint_policy=checkpointing_to_proto(job.config.checkpointing),
        total_steps=total_steps,
        device=device,
        event_time=timestamp_from_datetime(now),
    )


def checkpoint_ready_event(
    record: CheckpointRecord, job: TrainingJob, *, now: datetime
) -> events_pb2.CheckpointReady:
    """CheckpointReady for ``record``, a checkpoint of ``job`` (as stored once it was recorded:
    a final checkpoint names the job's best one, what BEST_AT_END evaluates)."""
    event = events_pb2.CheckpointReady(
        checkpoint=record.name,
        training_job=job.name,
        target_model=job.target_model,
        step=record.step,
        epoch=record.epoch,
        train_loss=record.train_loss,
        tokens_seen=record.tokens_seen,
        artifact_uri=record.artifact_uri,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        is_best=record.is_best,
        is_final=record.is_final,
        lineage=lineage_to_proto(job.lineage(record.name)),
        cost=cost_to_proto(record.cost),
        event_time=timestamp_from_datetime(now),
        job_creator=job.creator,  # the registry's four-eyes approval refuses it as approver
    )
    if record.validation_loss is not None:
        event.validation_loss = record.validation_loss
    if record.stop_reason is not None:
        event.stop_reason = stop_reason_to_proto(record.stop_reason)  # type: ignore[assignment]
    if record.is_final:
        # what BEST_AT_END evaluates: the job's result, not merely its last checkpoint
        event.best_checkpoint = job.best_checkpoint or record.name
    if record.tokenizer_fingerprint is not None:
        event.tokenizer_fingerprint.CopyFrom(
            tokenizer_fingerprint_to_proto(record.tokenizer_fingerprint)
        )
    return event


def training_job_failed_event(job: TrainingJob, *, now: datetime) -> events_pb2.TrainingJobFailed:
    assert job.failure_reason is not None
    return events_pb2.TrainingJobFailed(
        training_job=job.name,
        target_model=job.target_model,
        failure_reason=failure_reason_to_proto(job.failure_reason),  # type: ignore[arg-type]
        failure_message=job.failure_message,
        latest_checkpoint=job.latest_checkpoint,
        steps_completed=job.progress.step,
        attempt_count=job.attempt_count,
        cost=cost_to_proto(job.cost),
        lineage=lineage_to_proto(job.lineage()),
        event_time=timestamp_from_datetime(now),
    )


def training_job_completed_event(
    job: TrainingJob,
    *,
    checkpoints: list[str],
    steps_completed: int,
    epochs_completed: float,
    final_train_loss: float,
    loss_points: list[LossPoint],
    tokens_per_second: float,
    best_validation_loss: float | None,
    duration_seconds: float,
    now: datetime,
) -> events_pb2.TrainingJobCompleted:
    """TrainingJobCompleted for a SUCCEEDED ``job``: its last 1,000 loss points, its kept
    ``checkpoints``, and what the worker reported when it ended."""
    assert job.stop_reason is not None
    event = events_pb2.TrainingJobCompleted(
        training_job=job.name,
        target_model=job.target_model,
        stop_reason=stop_reason_to_proto(job.stop_reason),  # type: ignore[arg-type]
        best_checkpoint=job.best_checkpoint or job.latest_checkpoint,
        final_checkpoint=job.latest_checkpoint,
        checkpoints=checkpoints,
        steps_completed=steps_completed,
        epochs_completed=epochs_completed,
        final_train_loss=final_train_loss,
        loss_trend=[loss_point_to_proto(p) for p in loss_points][-1000:],
        tokens_per_second=tokens_per_second,
        cost=cost_to_proto(job.cost),
        lineage=lineage_to_proto(job.lineage()),
        duration=duration_from_seconds(duration_seconds),
        event_time=timestamp_from_datetime(now),
    )
    if best_validation_loss is not None:
        event.best_validation_loss = best_validation_loss
    return event
