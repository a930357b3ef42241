"""The serving domain: release dedupe, the atomic swap, predictions and feedback accounting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from services.serving.domain import (
    FeedbackLedger,
    FollowDecision,
    Prediction,
    PredictionMemory,
    Release,
    ReleaseRefused,
    ReportOutcome,
    ServedModel,
    ServingTable,
    fingerprint_differences,
)
from services.serving.domain.predictions import PredictionNotFound
from services.serving.domain.releases import ModelNotServed, NoModelLoaded, RefusalReason
from shared.errors import InvalidArgument
from shared.modeling.tokenizer_fingerprint import TokenizerFingerprintRecord
from shared.task_types import TaskType

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MODEL = "models/sentiment"


def release(revision: int, checkpoint: str = "a", sha256: str = "") -> Release:
    return Release(
        model=MODEL,
        checkpoint=f"{MODEL}/checkpoints/{checkpoint}",
        revision=revision,
        artifact_uri=f"file:///artifacts/{checkpoint}",
        sha256=sha256 or f"sha-{checkpoint}",
        task=TaskType.CLASSIFICATION,
    )


def served(r: Release) -> ServedModel:
    return ServedModel(r, model=object(), load_time=NOW)  # type: ignore[arg-type]


def test_a_release_loads_once_and_older_or_equal_revisions_are_stale() -> None:
    table = ServingTable([MODEL])
    assert table.decide(release(1)) is FollowDecision.LOAD
    table.swap(served(release(1)))
    assert table.decide(release(1)) is FollowDecision.STALE  # the same move from watch + Kafka
    assert table.decide(release(2, "b")) is FollowDecision.LOAD
    table.swap(served(release(3, "a")))  # a rollback is a newer revision
    assert table.decide(release(2, "b")) is FollowDecision.STALE  # a late replay
    assert table.loaded_revision(MODEL) == 3


def test_only_followed_models_unless_following_all() -> None:
    assert ServingTable([MODEL]).decide(
        Release("models/other", "models/other/checkpoints/x", 1, "u", "s", TaskType.CAUSAL_LM)
    ) is (FollowDecision.NOT_FOLLOWED)
    everything = ServingTable()
    assert everything.decide(release(1)) is FollowDecision.LOAD
    assert everything.followed() == [MODEL]


def test_a_permanent_refusal_is_not_retried_a_transient_one_is() -> None:
    table = ServingTable([MODEL])
    table.refuse(release(1), ReleaseRefused(RefusalReason.ARTIFACT_UNAVAILABLE, "down"), NOW)
    assert table.decide(release(1)) is FollowDecision.LOAD
    table.refuse(release(1), ReleaseRefused(RefusalReason.SHA256_MISMATCH, "bad"), NOW)
    assert table.decide(release(1)) is FollowDecision.STALE
    assert [r.reason for r in table.refusals()] == [
        RefusalReason.SHA256_MISMATCH,
        RefusalReason.ARTIFACT_UNAVAILABLE,
    ]


def test_a_request_in_flight_keeps_the_model_it_started_with() -> None:
    table = ServingTable([MODEL])
    with pytest.raises(NoModelLoaded):
        table.current(MODEL)
    with pytest.raises(ModelNotServed):
        table.current("models/unknown")
    old = served(release(1, "a"))
    table.swap(old)
    in_flight = table.current(MODEL)
    replaced = table.swap(served(release(2, "b")))
    assert replaced is old
    assert in_flight is old
    assert table.current(MODEL).release.checkpoint.endswith("/b")
    assert table.previous_for(release(3, "a")) is old  # a rollback to it needs no reload
    assert table.previous_for(release(3, "a", sha256="other")) is None


def test_fingerprint_differences_compare_only_what_was_announced() -> None:
    loaded = TokenizerFingerprintRecord("m", "tok", "chat", (2, 7), 128)
    assert fingerprint_differences(TokenizerFingerprintRecord("m", "", "", (), 0), loaded) == []
    assert fingerprint_differences(loaded, loaded) == []
    other = TokenizerFingerprintRecord("m", "tok2", "chat2", (2,), 64)
    assert len(fingerprint_differences(other, loaded)) == 4


def prediction(number: int, label: str = "pos") -> Prediction:
    return Prediction(
        prediction_id=f"p{number}",
        model=MODEL,
        checkpoint=f"{MODEL}/checkpoints/a",
        revision=1,
        task=TaskType.CLASSIFICATION,
        label=label,
        labels=("neg", "pos"),
    )


def test_the_prediction_memory_is_bounded_and_counts_an_outcome_once() -> None:
    memory = PredictionMemory(capacity=2)
    for number in range(3):
        memory.remember(prediction(number))
    assert len(memory) == 2
    with pytest.raises(PredictionNotFound):
        memory.record_outcome("p0", label="pos")  # expired
    recorded, counted = memory.record_outcome("p1", label="neg")
    assert (recorded.success, counted) == (False, True)
    again, counted = memory.record_outcome("p1", label="pos")
    assert (again.success, counted) == (False, False)  # the first outcome stands
    assert memory.record_outcome("p2", score=0.9)[0].success is True
    with pytest.raises(InvalidArgument):
        memory.record_outcome("p2", label="maybe")


def test_feedback_batches_retry_with_the_same_request_id_and_drop_for_good() -> None:
    ledger = FeedbackLedger()
    ids = (f"r{n}" for n in count())
    for success in (True, True, False):
        ledger.record(MODEL, "ckpt-a", success, NOW)
    ledger.record(MODEL, "ckpt-b", False, NOW + timedelta(seconds=5))
    first = ledger.take_batches(lambda: next(ids))
    assert {(b.checkpoint, b.successes, b.trials) for b in first} == {
        ("ckpt-a", 2, 3),
        ("ckpt-b", 0, 1),
    }
    a, b = sorted(first, key=lambda batch: batch.checkpoint)
    ledger.settle(a, ReportOutcome.RETRY)
    ledger.settle(b, ReportOutcome.DROPPED)  # left production: never sent again
    ledger.record(MODEL, "ckpt-a", True, NOW)
    second = ledger.take_batches(lambda: next(ids))
    assert [(x.request_id, x.trials) for x in second] == [(a.request_id, 3), ("r2", 1)]
    for batch in second:
        ledger.settle(batch, ReportOutcome.ACCEPTED)
    assert ledger.take_batches(lambda: next(ids)) == []
