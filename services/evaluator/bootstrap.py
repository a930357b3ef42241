"""Wiring of the evaluator service: what makes it this service on the shared runtime.

One :class:`EvaluatorWiring` per service instance is shared by the gRPC servicer, the Kafka
subscriptions and the supervisor (the runtime calls ``grpc_services``, ``subscriptions`` and
``background`` separately with the same context, so it is kept on the context).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.evaluator.adapters.metrics import EvaluatorMetrics, register_backlog
from services.evaluator.adapters.registry_gateway import RegistryGateway
from services.evaluator.adapters.tables import EvaluatorBase
from services.evaluator.adapters.worker import EvaluationWorker
from services.evaluator.domain.data_checks import DataCheckPolicy
from services.evaluator.domain.evaluation import CheckpointSelection
from services.evaluator.entrypoints.grpc_api import EvaluatorServicer
from services.evaluator.entrypoints.subscriptions import evaluator_subscriptions
from services.evaluator.entrypoints.supervisor import EvaluationSupervisor
from services.evaluator.handlers import RunDependencies, ServiceDefaults
from services.evaluator.settings import EvaluatorSettings
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
from tuneline.client.registry import RegistryClient
from tuneline.evaluator.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name

_WIRING_KEY = "_evaluator_wiring"


@dataclass
class EvaluatorWiring:
    """The instance's shared parts."""

    settings: EvaluatorSettings
    defaults: ServiceDefaults
    metrics: EvaluatorMetrics
    registry: RegistryGateway
    supervisor: EvaluationSupervisor


def wiring(context: ServiceContext) -> EvaluatorWiring:
    """Build the instance's parts once per context. Connects to nothing yet."""
    existing = getattr(context, _WIRING_KEY, None)
    if isinstance(existing, EvaluatorWiring):
        return existing
    settings = service_settings(context, EvaluatorSettings)
    defaults = ServiceDefaults(
        checkpoint_selection=CheckpointSelection(settings.default_checkpoint_selection),
        max_seq_length=settings.max_seq_length,
        parity_max_examples=settings.parity_max_examples,
        data_checks=DataCheckPolicy(
            contamination_max_share=settings.contamination_max_share,
            similarity_threshold=settings.near_duplicate_threshold,
            shift_min_effect=settings.shift_min_effect,
            shift_significance_level=settings.shift_significance_level,
            shift_permutations=settings.shift_permutations,
            shift_max_rows=settings.shift_max_rows,
            far_max_share=settings.far_max_share,
            shift_enabled=settings.shift_check,
        ),
    )
    metrics = EvaluatorMetrics(context.registry)
    register_backlog(context.registry, context.sessions)
    registry = RegistryGateway(
        RegistryClient(settings.registry_target, timeout=settings.registry_timeout_seconds)
    )
    worker = EvaluationWorker()
    deps = RunDependencies(
        sessions=context.sessions,
        registry=registry,
        artifacts=context.artifacts,
        score=lambda job: worker.run(job, timeout=settings.evaluation_timeout_seconds),
        source=context.source,
        models_root=settings.models_root,
        allowed_roots=settings.model_allowed_roots,
        device=settings.device,
        defaults=defaults,
        dependency_wait_seconds=settings.dependency_wait_seconds,
        metrics=metrics,
        conditions=lambda: worker.conditions(
            settings.device, timeout=settings.evaluation_timeout_seconds
        ),
        on_events_staged=context.relay.wake,
        claims=RunningClaims(context.engine, "evaluations"),
    )
    supervisor = EvaluationSupervisor(deps, worker, poll_seconds=settings.poll_seconds)
    built = EvaluatorWiring(settings, defaults, metrics, registry, supervisor)
    setattr(context, _WIRING_KEY, built)
    return built


def grpc_services(context: ServiceContext) -> Sequence[ServiceRegistration]:
    parts = wiring(context)
    servicer = EvaluatorServicer(
        context.sessions, parts.registry, parts.defaults, on_queued=parts.supervisor.wake
    )
    return [
        ServiceRegistration(
            SERVICE_NAME, servicer, service_pb2_grpc.add_EvaluatorServiceServicer_to_server
        )
    ]


def subscriptions(context: ServiceContext) -> Sequence[Subscription]:
    parts = wiring(context)
    return evaluator_subscriptions(parts.defaults, parts.metrics)


def background(context: ServiceContext) -> Sequence[BackgroundComponent]:
    parts = wiring(context)
    return [CloseOnStop(parts.registry.close), parts.supervisor]


SPEC = ServiceSpec(
    name="evaluator",
    tables=[EvaluatorBase.metadata],
    publishes=[events_pb2.EvaluationCompleted, events_pb2.RegressionDetected],
    grpc_services=grpc_services,
    subscriptions=subscriptions,
    background=background,
)
