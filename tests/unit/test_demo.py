"""The demo's data cut, its Alertmanager notification, and its refusal to start half-equipped."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.registry.domain.alerts import parse_alertmanager_payload
from tuneline.cli.main import app
from tuneline.client.alerts import alertmanager_notification, post_alertmanager_notification
from tuneline.demo.corpus import (
    CorpusError,
    demo_corpus,
    flip_labels,
    rotten_tomatoes_reviews,
    states_its_verdict,
)


@pytest.fixture(scope="module")
def corpus():
    return demo_corpus(
        evaluation_rows=200, first_rows=300, grown_rows=900, flip_fraction=0.7, narrow_rows=60
    )


def test_the_corpus_is_the_real_rotten_tomatoes_snippets_once_each():
    reviews = rotten_tomatoes_reviews()
    assert 12_000 < len(reviews) <= 12_808
    assert len({review.text for review in reviews}) == len(reviews)
    assert {review.label for review in reviews} == {"fresh", "rotten"}


def test_evaluation_movies_are_never_trained_on(corpus):
    evaluation_movies = {row["group"] for row in corpus.evaluation}
    training_movies = {row["group"] for row in corpus.grown}
    assert evaluation_movies
    assert not evaluation_movies & training_movies
    assert not {r["text"] for r in corpus.evaluation} & {r["text"] for r in corpus.grown}


def test_versions_are_balanced_and_the_grown_one_extends_the_first(corpus):
    assert len(corpus.evaluation) == 200
    assert corpus.grown[:300] == corpus.first
    assert len(corpus.grown) == 900
    for rows in (corpus.evaluation, corpus.first, corpus.grown):
        counts = Counter(row["label"] for row in rows)
        assert abs(counts["fresh"] - counts["rotten"]) <= 1


def test_flipping_changes_about_the_asked_share_and_nothing_else(corpus):
    changed = [a for a, b in zip(corpus.grown, corpus.flipped, strict=True) if a != b]
    assert 0.63 < len(changed) / len(corpus.grown) < 0.77
    for before, after in zip(corpus.grown, corpus.flipped, strict=True):
        assert {k: v for k, v in before.items() if k != "label"} == {
            k: v for k, v in after.items() if k != "label"
        }
    # the same rows flip whatever else is in the dataset
    again = flip_labels(corpus.grown[:100], ("fresh", "rotten"), 0.7)
    assert again == corpus.flipped[:100]


def test_the_narrow_version_is_a_balanced_subset_that_states_its_verdict(corpus):
    assert len(corpus.narrow) == 60
    assert Counter(row["label"] for row in corpus.narrow) == {"fresh": 30, "rotten": 30}
    # a subset of the grown version: no label changes against it
    assert {tuple(row.items()) for row in corpus.narrow} <= {
        tuple(row.items()) for row in corpus.grown
    }
    assert all(states_its_verdict(row) for row in corpus.narrow)
    assert not states_its_verdict({"text": "A brilliant, funny film.", "label": "rotten"})
    assert states_its_verdict({"text": "Dull. Tedious!", "label": "rotten"})
    with pytest.raises(CorpusError, match="balanced rows"):
        demo_corpus(
            evaluation_rows=200, first_rows=300, grown_rows=900, flip_fraction=0.7, narrow_rows=900
        )


def test_the_cut_is_the_same_on_every_run(corpus):
    assert (
        demo_corpus(
            evaluation_rows=200, first_rows=300, grown_rows=900, flip_fraction=0.7, narrow_rows=60
        )
        == corpus
    )


def test_the_notification_is_what_the_registry_reads_from_alertmanager():
    started = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)
    notification = alertmanager_notification(
        "sentiment", fingerprint="f00d", starts_at=started, checkpoint_id="job.step-40"
    )
    (notice,) = parse_alertmanager_payload(notification)
    assert notice.model_id == "sentiment"
    assert notice.checkpoint_id == "job.step-40"
    assert notice.status == "firing"
    assert notice.fingerprint == "f00d"
    assert notice.starts_at == started
    with pytest.raises(ValueError, match="status must be"):
        alertmanager_notification("m", fingerprint="f", starts_at=started, status="pending")


def test_posting_refuses_non_http_urls():
    with pytest.raises(ValueError, match="http"):
        post_alertmanager_notification("file:///etc/passwd", {}, token="t")


def test_the_demo_says_what_is_missing_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    result = CliRunner().invoke(app, ["demo", "--home", str(tmp_path / "home")])
    assert result.exit_code == 2
    assert "prerequisite" in result.output
    assert "Java 17+ is required" in result.output
    assert not (tmp_path / "home" / "logs").exists()
