"""Replication factor and min.insync.replicas of the topics services create."""

from __future__ import annotations

import pytest

from shared.events.publisher import TopicDurability, min_insync_replicas_for
from shared.settings import CommonSettings


@pytest.mark.parametrize(
    ("brokers", "expected"),
    [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))],
)
def test_derived_from_the_brokers_that_answer(brokers: int, expected: tuple[int, int]) -> None:
    durability = TopicDurability.for_cluster(brokers)
    assert (durability.replication_factor, durability.min_insync_replicas) == expected


def test_configured_values_win_even_above_the_brokers_that_answer_now() -> None:
    # a production cluster with a broker down at start must not get topics with fewer copies
    assert TopicDurability.for_cluster(2, replication_factor=3) == TopicDurability(3, 2)
    assert TopicDurability.for_cluster(3, min_insync_replicas=3) == TopicDurability(3, 3)
    with pytest.raises(ValueError, match="above the replication factor"):
        TopicDurability.for_cluster(1, min_insync_replicas=2)


def test_two_in_sync_only_where_there_are_three_copies() -> None:
    assert [min_insync_replicas_for(rf) for rf in (1, 2, 3, 4)] == [1, 1, 2, 2]


def test_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNELINE_KAFKA_REPLICATION_FACTOR", raising=False)
    assert CommonSettings().kafka_replication_factor is None
    monkeypatch.setenv("TUNELINE_KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("TUNELINE_KAFKA_MIN_INSYNC_REPLICAS", "2")
    settings = CommonSettings()
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (3, 2)
