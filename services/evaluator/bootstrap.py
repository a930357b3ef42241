"""Wiring of the evaluator service: what makes it this service on the shared runtime.

:func:`wire` builds one :class:`~services.evaluator.handlers.deps.EvaluatorDeps` per service
instance, shared by the gRPC servicer, the Kafka subscriptions and the supervisor.
"""

from __future__ import annotations

from services.evaluator.adapters.metrics import EvaluatorMetrics, register_backlog
from services.evaluator.adapters.registry_gateway import RegistryGateway
from services.evaluator.adapters.tables import EvaluatorBase
from services.evaluator.adapters.worker import EvaluationWorker
from services.evaluator.domain.data_checks import DataCheckPolicy
from services.evaluator.domain.evaluation import CheckpointSelection
from services.evaluator.entrypoints.grpc_api import EvaluatorServicer
from services.evaluator.entrypoints.subscriptions import evaluator_subscriptions
from services.evaluator.entrypoints.supervisor import EvaluationSupervisor
from services.evaluator.handlers.deps import EvaluatorDeps, ServiceDefaults
from services.evaluator.settings import EvaluatorSettings
from shared.grpc import ServiceRegistration
from shared.running_claims import RunningClaims
from shared.runtime import ServiceContext, ServiceParts, ServiceSpec
from tuneline.client.registry import RegistryClient
from tuneline.evaluator.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name


def wire(context: ServiceContext[EvaluatorSettings]) -> ServiceParts:
    """The servicer, the subscriptions and the supervisor. Connects to nothing yet."""
    settings = context.settings
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
    deps = EvaluatorDeps(
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
    servicer = EvaluatorServicer(deps, on_queued=supervisor.wake)
    return ServiceParts(
        grpc_services=[
            ServiceRegistration(
                SERVICE_NAME, servicer, service_pb2_grpc.add_EvaluatorServiceServicer_to_server
            )
        ],
        subscriptions=evaluator_subscriptions(
            deps, trainer_artifact_root=settings.resolved_trainer_artifact_root(context.common)
        ),
        background=[supervisor],
        close_on_stop=[registry],
    )


SPEC = ServiceSpec(
    name="evaluator",
    tables=[EvaluatorBase.metadata],
    publishes=[events_pb2.EvaluationCompleted, events_pb2.RegressionDetected],
    wire=wire,
)
