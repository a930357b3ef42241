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
from services.evaluator.domain.evaluation import CheckpointSelection
from services.evaluator.entrypoints.grpc_api import EvaluatorServicer
from services.evaluator.entrypoints.subscriptions import evaluator_subscriptions
from services.evaluator.entrypoints.supervisor import EvaluationSupervisor
from services.evaluator.handlers import RunDependencies, ServiceDefaults
from services.evaluator.settings import EvaluatorSettings
from shared.events import Subscription
from shared.grpc import ServiceRegistration
from shared.runtime import BackgroundComponent, ServiceContext, ServiceSpec
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


class _RegistryChannelCloser:
    """Closes the registry channel when the service stops (started first, stopped last)."""

    def __init__(self, registry: RegistryGateway) -> None:
        self._registry = registry

    def start(self) -> None:
        return None

    def stop(self) -> None:
        self._registry.close()


def _settings(context: ServiceContext) -> EvaluatorSettings:
    settings = context.settings
    if not isinstance(settings, EvaluatorSettings):  # a plain ServiceSettings in some tests
        settings = EvaluatorSettings()
    return settings


def wiring(context: ServiceContext) -> EvaluatorWiring:
    """Build the instance's parts once per context. Connects to nothing yet."""
    existing = getattr(context, _WIRING_KEY, None)
    if isinstance(existing, EvaluatorWiring):
        return existing
    settings = _settings(context)
    defaults = ServiceDefaults(
        checkpoint_selection=CheckpointSelection(settings.default_checkpoint_selection),
        max_seq_length=settings.max_seq_length,
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
        on_events_staged=context.relay.wake,
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
    return [_RegistryChannelCloser(parts.registry), parts.supervisor]


SPEC = ServiceSpec(
    name="evaluator",
    tables=[EvaluatorBase.metadata],
    publishes=[events_pb2.EvaluationCompleted, events_pb2.RegressionDetected],
    grpc_services=grpc_services,
    subscriptions=subscriptions,
    background=background,
)
