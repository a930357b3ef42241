"""Wiring of the trainer service: what makes it this service on the shared runtime.

:func:`wire` builds one :class:`~services.trainer.handlers.deps.TrainerDeps` per service
instance, shared with one job-change notifier and one set of metrics by the gRPC servicer, the
event subscriptions and the worker supervisor.
"""

from __future__ import annotations

import importlib.metadata

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
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.settings import TrainerSettings
from shared.grpc import ServiceRegistration
from shared.running_claims import RunningClaims
from shared.runtime import ServiceContext, ServiceParts, ServiceSpec
from tuneline.trainer.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name

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


def wire(context: ServiceContext[TrainerSettings]) -> ServiceParts:
    """The servicer, the subscriptions, the job-change poller and the worker supervisor.
    Connects to nothing yet."""
    settings = context.settings
    models = ModelCatalog(settings.models_root, settings.allowed_model_roots)
    deps = TrainerDeps(
        sessions=context.sessions,
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
    metrics = TrainerMetrics(context.registry, context.sessions, deps.pricing)
    supervisor = JobSupervisor(
        artifacts=context.artifacts,
        models=models,
        deps=deps,
        changes=changes,
        metrics=metrics,
        relay=context.relay,
        config=SupervisorConfig(
            devices=settings.devices,
            cpu_threads=settings.cpu_threads,
            micro_batch_tokens=settings.micro_batch_tokens,
            compile_layers=settings.compile,
            ranks_per_job=settings.ranks_per_job,
            sharding=settings.sharding,
            kubernetes=settings.kubernetes_launch(),
            max_worker_restarts=settings.max_worker_restarts,
            cancel_grace_seconds=settings.cancel_grace_seconds,
            fault_oom_above_batch=settings.fault_oom_above_batch,
            fault_hold_after_step=settings.fault_hold_after_step,
            log_level=context.common.log_level,
            s3_endpoint_url=context.common.s3_endpoint_url,
        ),
        claims=RunningClaims(context.engine, CLAIM_NAMESPACE),
    )
    servicer = TrainerServicer(deps, changes, stopping=context.stopping)

    def newest_job_change() -> object:
        with deps.sessions() as session:
            return TrainerRepository(session).newest_job_change()

    return ServiceParts(
        grpc_services=[
            ServiceRegistration(
                SERVICE_NAME, servicer, service_pb2_grpc.add_TrainerServiceServicer_to_server
            )
        ],
        subscriptions=events.subscriptions(deps, changes),
        background=[
            JobChangePoller(changes, newest_job_change, settings.watch_poll_seconds),
            supervisor,
        ],
        close_on_stop=[changes],
    )


SPEC = ServiceSpec(
    name="trainer",
    tables=[TrainerBase.metadata],
    publishes=[
        events_pb2.TrainingJobStarted,
        events_pb2.CheckpointReady,
        events_pb2.TrainingJobCompleted,
        events_pb2.TrainingJobFailed,
    ],
    wire=wire,
)
