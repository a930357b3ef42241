"""The serving handlers with fakes: load/verify/swap, Predict's statuses, feedback → reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.serving.adapters.metrics import ServingMetrics
from services.serving.domain import (
    FeedbackLedger,
    FollowDecision,
    LiveQualityBatch,
    PredictionMemory,
    Release,
    ReleaseRefused,
    ReportOutcome,
    ServingTable,
)
from services.serving.domain.releases import (
    Generation,
    ModelNotServed,
    NoModelLoaded,
    RefusalReason,
    WrongTaskType,
)
from services.serving.entrypoints.loader import ReleaseLoader
from services.serving.handlers import feedback, inference, releases
from services.serving.handlers.deps import ServingDeps
from shared.errors import InvalidArgument
from shared.modeling.tokenizer_fingerprint import TokenizerFingerprintRecord
from shared.task_types import TaskType
from tuneline.devtools.waiting import eventually

MODEL = "models/sentiment"
FINGERPRINT = TokenizerFingerprintRecord("base", "tok", "", (2,), 64)


@dataclass
class FakeModel:
    name: str
    task: TaskType = TaskType.CLASSIFICATION
    labels: Sequence[str] = ("neg", "pos")
    device: str = "cpu"
    tokenizer: TokenizerFingerprintRecord = FINGERPRINT

    def classify(self, text: str) -> Sequence[float]:
        return [0.2, 0.8] if self.name == "a" else [0.9, 0.1]

    def generate(self, prompt: str, max_new_tokens: int) -> Generation:
        return Generation(text=self.name, token_count=1, ended_turn=True)

    def fingerprint(self) -> TokenizerFingerprintRecord:
        return self.tokenizer


@dataclass
class FakeArtifacts:
    digests: dict[str, str]
    fetched: list[str] = field(default_factory=list)

    def fetch(self, uri: str, sha256: str) -> Path:
        self.fetched.append(uri)
        if self.digests.get(uri) != sha256:
            raise ReleaseRefused(RefusalReason.SHA256_MISMATCH, f"{uri} differs")
        return Path("/artifacts") / uri.rsplit("/", 1)[-1]


class FakeLoader:
    def load(self, folder: Path, release: Release) -> FakeModel:
        return FakeModel(folder.name)  # every fake artifact is a classifier


@dataclass
class FakeRegistry:
    answers: list[ReportOutcome] = field(default_factory=list)
    received: list[LiveQualityBatch] = field(default_factory=list)

    def report(self, batch: LiveQualityBatch) -> ReportOutcome:
        self.received.append(batch)
        return self.answers.pop(0) if self.answers else ReportOutcome.ACCEPTED


@dataclass
class ServingHarness:
    """The serving handlers on one :class:`ServingDeps`, as bootstrap wires it, with fakes at
    the edges (artifact fetcher, model loader, registry sink)."""

    deps: ServingDeps
    artifacts: FakeArtifacts
    registry: FakeRegistry
    metrics: CollectorRegistry
    wakes: list[int]

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.get_sample_value(name, labels) or 0.0


@pytest.fixture
def rig() -> ServingHarness:
    ids = count()
    metrics = CollectorRegistry()
    artifacts = FakeArtifacts({"file:///a": "sha-a", "file:///b": "sha-b"})
    registry = FakeRegistry()
    wakes: list[int] = []
    deps = ServingDeps(
        table=ServingTable([MODEL]),
        predictions=PredictionMemory(100),
        ledger=FeedbackLedger(),
        fetcher=artifacts,
        loader=FakeLoader(),
        sink=registry,
        metrics=ServingMetrics(metrics),
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        new_id=lambda: f"id{next(ids)}",
        report_every_feedbacks=3,
        report_due=lambda: wakes.append(1),
    )
    return ServingHarness(deps, artifacts, registry, metrics, wakes)


def release(revision: int, name: str, **overrides: object) -> Release:
    fields: dict[str, object] = {
        "model": MODEL,
        "checkpoint": f"{MODEL}/checkpoints/{name}",
        "revision": revision,
        "artifact_uri": f"file:///{name}",
        "sha256": f"sha-{name}",
        "task": TaskType.CLASSIFICATION,
        "tokenizer_fingerprint": FINGERPRINT,
    }
    return Release(**{**fields, **overrides})  # type: ignore[arg-type]


def test_promote_swap_and_roll_back_without_reloading(rig: ServingHarness) -> None:
    assert releases.apply_release(rig.deps, release(1, "a")) is not None
    assert inference.predict(rig.deps, MODEL, "great")[0].label == "pos"
    assert releases.apply_release(rig.deps, release(1, "a")) is None  # duplicate: ignored
    releases.apply_release(rig.deps, release(2, "b"))
    assert inference.predict(rig.deps, MODEL, "great")[0].label == "neg"
    back = releases.apply_release(rig.deps, release(3, "a"))
    assert back is not None
    assert back.release.revision == 3
    assert rig.artifacts.fetched == ["file:///a", "file:///b"]  # the rollback reused model a
    assert rig.value("tuneline_serving_swaps_total", model=MODEL) == 3
    info = {"model": MODEL, "checkpoint": f"{MODEL}/checkpoints/a", "revision": "3"}
    assert rig.value("tuneline_serving_checkpoint_info", **info, sha256="sha-a") == 1
    stale = {**info, "checkpoint": f"{MODEL}/checkpoints/b", "revision": "2", "sha256": "sha-b"}
    assert rig.metrics.get_sample_value("tuneline_serving_checkpoint_info", stale) is None


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"sha256": "sha-forged"}, "sha256_mismatch"),
        (
            {"tokenizer_fingerprint": TokenizerFingerprintRecord("base", "other", "", (2,), 64)},
            "fingerprint_mismatch",
        ),
        ({"task": TaskType.CAUSAL_LM}, "task_mismatch"),
    ],
)
def test_a_refused_release_keeps_the_old_model_serving(
    rig: ServingHarness, bad: dict[str, object], reason: str
) -> None:
    releases.apply_release(rig.deps, release(1, "a"))
    assert releases.apply_release(rig.deps, release(2, "b", **bad)) is None
    assert rig.deps.table.current(MODEL).release.revision == 1
    refused = rig.deps.table.refusals()[0]
    assert refused.release.revision == 2
    assert refused.reason.value == reason
    assert rig.value("tuneline_serving_refused_loads_total", model=MODEL, reason=reason) == 1


def test_predict_answers_precise_errors(rig: ServingHarness) -> None:
    with pytest.raises(NoModelLoaded):
        inference.predict(rig.deps, MODEL, "text")
    with pytest.raises(ModelNotServed):
        inference.predict(rig.deps, "models/unknown", "text")
    with pytest.raises(InvalidArgument):
        inference.predict(rig.deps, "not a name", "text")
    releases.apply_release(rig.deps, release(1, "a"))
    with pytest.raises(InvalidArgument):
        inference.predict(rig.deps, MODEL, "  ")
    with pytest.raises(WrongTaskType):
        inference.generate(rig.deps, MODEL, "hello")
    prediction, scores, served = inference.predict(rig.deps, MODEL, "text")
    assert (prediction.label, scores, served.release.revision) == ("pos", [0.2, 0.8], 1)
    assert rig.value("tuneline_serving_predictions_total", model=MODEL, label="pos") == 1


def test_feedback_counts_for_the_checkpoint_that_answered_and_reports_in_batches(
    rig: ServingHarness,
) -> None:
    releases.apply_release(rig.deps, release(1, "a"))
    on_a = [inference.predict(rig.deps, MODEL, "x")[0] for _ in range(2)]
    releases.apply_release(rig.deps, release(2, "b"))
    on_b = inference.predict(rig.deps, MODEL, "x")[0]
    feedback.submit_feedback(rig.deps, on_a[0].prediction_id, label="pos")  # right
    feedback.submit_feedback(rig.deps, on_a[1].prediction_id, label="neg")  # wrong
    assert feedback.submit_feedback(rig.deps, on_a[1].prediction_id, label="neg")[1] is False
    assert rig.wakes == []
    feedback.submit_feedback(rig.deps, on_b.prediction_id, label="neg")  # right, the 3rd
    assert rig.wakes == [1]  # report_every_feedbacks reached
    rig.registry.answers = [ReportOutcome.DROPPED, ReportOutcome.ACCEPTED]
    feedback.report_live_quality(rig.deps)
    sent = {(b.checkpoint.rsplit("/", 1)[-1], b.successes, b.trials) for b in rig.registry.received}
    assert sent == {("a", 1, 2), ("b", 1, 1)}
    rig.registry.received.clear()
    feedback.report_live_quality(rig.deps)
    assert rig.registry.received == []  # the dropped batch is not sent again
    assert rig.value("tuneline_serving_feedback_total", model=MODEL, outcome="duplicate") == 1


def test_an_unreached_registry_gets_the_same_report_again(rig: ServingHarness) -> None:
    releases.apply_release(rig.deps, release(1, "a"))
    prediction = inference.predict(rig.deps, MODEL, "x")[0]
    feedback.submit_feedback(rig.deps, prediction.prediction_id, score=0.9)
    rig.registry.answers = [ReportOutcome.RETRY]
    feedback.report_live_quality(rig.deps)
    feedback.report_live_quality(rig.deps)
    first, second = rig.registry.received
    assert first == second  # same request id: the registry counts it once


def test_the_loader_loads_only_the_newest_of_a_burst_of_announcements(rig: ServingHarness) -> None:
    loader = ReleaseLoader(rig.deps)
    decisions = [loader.offer(release(n, "a" if n % 2 else "b")) for n in (1, 2, 3)]
    assert decisions == [FollowDecision.LOAD] * 3
    loader.start()
    try:
        eventually(
            lambda: rig.value("tuneline_serving_swaps_total", model=MODEL),
            timeout=30,
            what="the loader's swap",
        )
    finally:
        loader.stop()
    assert rig.deps.table.current(MODEL).release.revision == 3
    assert rig.artifacts.fetched == ["file:///a"]  # revisions 1 and 2 were never loaded
    assert loader.offer(release(2, "b")) is FollowDecision.STALE
