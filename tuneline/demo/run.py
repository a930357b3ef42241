"""One run of the demo against a stack: its ids, its clients and the event timeline it waits on."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tuneline.client.dataset import DatasetClient
from tuneline.client.registry import RegistryClient, model_name
from tuneline.client.serving import ServingClient
from tuneline.client.splitter import SplitterClient
from tuneline.client.trainer import TrainerClient
from tuneline.demo.config import DemoConfig, DemoObserver, StackEndpoints
from tuneline.demo.timeline import EventTimeline


class DemoRun:
    """The ids of one run (every one ends in its run id, so runs on one stack never collide),
    a client per service, and the :class:`~tuneline.demo.timeline.EventTimeline` of the
    pipeline's events; the steps of the story (:mod:`tuneline.demo.rounds`,
    :mod:`tuneline.demo.live`) act through it."""

    def __init__(
        self, config: DemoConfig, endpoints: StackEndpoints, observer: DemoObserver
    ) -> None:
        self.config = config
        self.endpoints = endpoints
        self.observer = observer
        self.run_id = config.resolved_run_id()
        self.model_id = f"sentiment-{self.run_id}"
        self.model = model_name(self.model_id)
        self.dataset_id = f"reviews-{self.run_id}"
        self.evaluation_dataset_id = f"reviews-heldout-{self.run_id}"
        self.timeline = EventTimeline(endpoints.kafka_bootstrap)
        self.timeline.subscribe(observer.event)
        self.datasets = DatasetClient(endpoints.dataset, timeout=30)
        self.splitter = SplitterClient(endpoints.splitter, timeout=30)
        self.trainer = TrainerClient(endpoints.trainer, timeout=30)
        self.registry = RegistryClient(endpoints.registry, timeout=30)
        self.serving = ServingClient(endpoints.serving, timeout=30) if endpoints.serving else None
        #: When live traffic got its first wrong answer (``time.monotonic()``).
        self.first_bad_prediction = 0.0

    def close(self) -> None:
        self.timeline.close()
        for client in (self.datasets, self.splitter, self.trainer, self.registry, self.serving):
            if client is not None:
                client.close()

    def wait(
        self,
        kind: Any,
        where: Callable[[Any], bool],
        failing: Sequence[tuple[Any, Callable[[Any], bool]]] = (),
    ) -> Any:
        """The first ``kind`` event matching ``where``; raises at once on a ``failing`` one."""
        return self.timeline.wait_for(
            kind, where, timeout=self.config.event_timeout, also_fail_on=failing
        )

    def production(self) -> str:
        return str(self.registry.get_production_alias(self.model).checkpoint)


@contextmanager
def open_run(
    config: DemoConfig, endpoints: StackEndpoints, observer: DemoObserver
) -> Iterator[DemoRun]:
    demo = DemoRun(config, endpoints, observer)
    try:
        demo.timeline.start()
        yield demo
    finally:
        demo.close()
