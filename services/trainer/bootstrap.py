"""Wiring of the trainer service: what makes it this service on the shared runtime.

One :class:`TrainerParts` per service instance is shared by the gRPC servicer, the
SplitCreated subscription and the worker supervisor, so all three see the same change
notifications and metrics. It is kept on the context because the runtime calls
``grpc_services``, ``subscriptions`` and ``background`` separately with the same context.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass

from services.trainer import handlers
from services.trainer.adapters.metrics import TrainerMetrics
from services.trainer.adapters.models import ModelCatalog
from services.trainer.adapters.notifications import JobChangePoller, JobChanges
from services.trainer.adapters.registry import RegistryModels
from services.trainer.adapters.repository import Pricing, TrainerRepository
from services.trainer.adapters.splits import SplitterLookup
from services.trainer.adapters.tables import TrainerBase
from services.trainer.adapters.token_counts import SplitTokenCounter
from services.trainer.entrypoints import events
from services.trainer.entrypoints.grpc_api import TrainerServicer
from services.trainer.entrypoints.supervisor import (
    CLAIM_NAMESPACE,
    JobSupervisor,
    SupervisorConfig,
)
from services.trainer.settings import TrainerSettings
from shared.events import Subscription
from shared.grpc import ServiceRegistration
from shared.running_claims import RunningClaims
from shared.runtime import (
    BackgroundComponent,
    CloseOnStop,
    ServiceContext,
    ServiceSpec,
    service_settings,
)
from tuneline.trainer.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name

_PARTS_KEY = "_trainer_parts"
#: Distributions whose versions every lineage records.
_SOFTWARE = ("tuneline", "torch", "transformers", "peft", "safetensors")


def software_versions() -> dict[str, str]:
    """Installed versions of the software that trains (read without importing it)."""
    found: dict[str, str] = {}
    for name in _SOFTWARE:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


@dataclass
class TrainerParts:
    """The instance's shared pieces."""

    settings: TrainerSettings
    context: handlers.Context
    models: ModelCatalog
    changes: JobChanges
    metrics: TrainerMetrics
    supervisor: JobSupervisor


def trainer_parts(context: ServiceContext) -> TrainerParts:
    """Build the shared pieces once per service context."""
    existing = getattr(context, _PARTS_KEY, None)
    if isinstance(existing, TrainerParts):
        return existing
    settings = service_settings(context, TrainerSettings)
    models = ModelCatalog(settings.models_root, settings.allowed_model_roots)
    handler_context = handlers.Context(
        models=models,
        pricing=Pricing(settings.price_per_device_hour, settings.currency),
        source=context.source,
        software_versions=software_versions(),
        splits=SplitterLookup(settings.splitter_target, timeout=settings.splitter_timeout_seconds),
        target_models=RegistryModels(
            settings.registry_target, timeout=settings.registry_timeout_seconds
        ),
        token_counter=SplitTokenCounter(context.artifacts),
        default_tokens_per_device_second=settings.estimate_tokens_per_device_second,
        default_overhead_device_seconds=settings.estimate_overhead_device_seconds,
        wait_for_dataset_audit=settings.wait_for_dataset_audit,
    )
    changes = JobChanges()
    metrics = TrainerMetrics(context.registry, context.sessions, handler_context.pricing)
    supervisor = JobSupervisor(
        sessions=context.sessions,
        artifacts=context.artifacts,
        models=models,
        context=handler_context,
        changes=changes,
        metrics=metrics,
        relay=context.relay,
        config=SupervisorConfig(
            devices=settings.devices,
            cpu_threads=settings.cpu_threads,
            ranks_per_job=settings.ranks_per_job,
            max_worker_restarts=settings.max_worker_restarts,
            cancel_grace_seconds=settings.cancel_grace_seconds,
            fault_oom_above_batch=settings.fault_oom_above_batch,
            fault_hold_after_step=settings.fault_hold_after_step,
            log_level=context.common.log_level,
            s3_endpoint_url=context.common.s3_endpoint_url,
        ),
        claims=RunningClaims(context.engine, CLAIM_NAMESPACE),
    )
    parts = TrainerParts(settings, handler_context, models, changes, metrics, supervisor)
    setattr(context, _PARTS_KEY, parts)
    return parts


def grpc_services(context: ServiceContext) -> Sequence[ServiceRegistration]:
    parts = trainer_parts(context)
    servicer = TrainerServicer(
        context.sessions, parts.context, parts.changes, stopping=context.stopping
    )
    return [
        ServiceRegistration(
            SERVICE_NAME, servicer, service_pb2_grpc.add_TrainerServiceServicer_to_server
        )
    ]


def subscriptions(context: ServiceContext) -> Sequence[Subscription]:
    parts = trainer_parts(context)
    return events.subscriptions(parts.context, parts.changes)


def background(context: ServiceContext) -> Sequence[BackgroundComponent]:
    parts = trainer_parts(context)
    sessions = context.sessions

    def newest_job_change() -> object:
        with sessions() as session:
            return TrainerRepository(session).newest_job_change()

    return [
        CloseOnStop(parts.changes.close),
        JobChangePoller(parts.changes, newest_job_change, parts.settings.watch_poll_seconds),
        parts.supervisor,
    ]


SPEC = ServiceSpec(
    name="trainer",
    tables=[TrainerBase.metadata],
    publishes=[
        events_pb2.TrainingJobStarted,
        events_pb2.CheckpointReady,
        events_pb2.TrainingJobCompleted,
        events_pb2.TrainingJobFailed,
    ],
    grpc_services=grpc_services,
    subscriptions=subscriptions,
    background=background,
)
