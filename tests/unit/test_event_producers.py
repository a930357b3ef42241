"""The one map of event type → producer (``shared.events.producers``) matches the services."""

from __future__ import annotations

import pytest

from services.dataset.bootstrap import SPEC as DATASET
from services.evaluator.bootstrap import SPEC as EVALUATOR
from services.registry.bootstrap import SPEC as REGISTRY
from services.serving.bootstrap import SPEC as SERVING
from services.splitter.bootstrap import SPEC as SPLITTER
from services.trainer.bootstrap import SPEC as TRAINER
from shared.events import topic_for
from shared.events.producers import (
    EVENT_PRODUCERS,
    UntrustedEventSource,
    check_event_source,
    service_source,
)

SPECS = (DATASET, SPLITTER, TRAINER, EVALUATOR, REGISTRY, SERVING)


def test_every_published_event_has_its_service_as_only_producer() -> None:
    published = {
        topic_for(message): service_source(spec.name)
        for spec in SPECS
        for message in spec.publishes
    }
    assert published == dict(EVENT_PRODUCERS)


@pytest.mark.parametrize(
    ("event_type", "source"),
    [
        ("tuneline.trainer.v1.CheckpointReady", "tuneline/dataset"),
        ("tuneline.trainer.v1.CheckpointReady", "tuneline/trainer "),
        ("tuneline.evaluator.v1.EvaluationCompleted", "tuneline/trainer"),
        ("tuneline.trainer.v1.Unknown", "tuneline/trainer"),
    ],
)
def test_a_source_other_than_the_producer_is_refused(event_type: str, source: str) -> None:
    with pytest.raises(UntrustedEventSource):
        check_event_source(event_type, source, EVENT_PRODUCERS)


def test_the_producer_is_accepted() -> None:
    check_event_source("tuneline.trainer.v1.CheckpointReady", "tuneline/trainer", EVENT_PRODUCERS)
