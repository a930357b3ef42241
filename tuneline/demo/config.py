"""What one run of the demo is given: its sizes and budgets, where the stack answers, and who
watches it (:class:`DemoObserver`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from shared.modeling.packaged import ENCODER
from tuneline.demo.timeline import SeenEvent
from tuneline.devtools.stack import StackState
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2


class DemoError(RuntimeError):
    """The pipeline did not do what the story expects; the message says where it stopped."""


#: Why the demo overrides the label-churn refusal of its flipped version: to show the second
#: line of defence. Kept in the version's lineage like any override.
DEMO_CHURN_OVERRIDE = "demo: let the label audit judge a relabelled version too"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and budgets. The defaults are the CPU demo (minutes on two cores)."""

    evaluation_rows: int = 500
    first_rows: int = 1200
    grown_rows: int = 3000
    flip_fraction: float = 0.7
    #: Reviews of the narrow version: few enough that a model trained on them for the steps
    #: they give (``narrow_rows`` x 0.8 train part x ``epochs`` / ``batch_size``: 8 here)
    #: has not learned yet; a random sample that small would not pass the label audit (its
    #: probe estimates 25-40 % noise on 50-120 clean reviews), reviews that state their
    #: verdict do (about 2 %).
    narrow_rows: int = 160
    base_model: str = ENCODER
    lora_rank: int = 8
    batch_size: int = 16
    learning_rate: float = 3e-3
    #: One pass over the training part: a grown dataset trains for more steps.
    epochs: float = 1.0
    max_steps: int = 0
    max_seq_length: int = 64
    eval_every_n_steps: int = 25
    #: Gate: accuracy must be shown to drop by less than this (non-inferiority) to pass, and a
    #: drop of accuracy or macro-F1 shown beyond it regresses. 0.02 suits the 500-example
    #: evaluation set; smaller sets need more (the gate can vouch for less).
    tolerance: float = 0.02
    seed: int = 0
    #: Seconds each awaited event may take (training rounds are the slow ones).
    event_timeout: float = 600.0
    #: Live predictions (with labelled feedback) served at a time: traffic keeps coming, a
    #: batch at a time, until the registry's live-quality test decides (or the rows run out).
    live_predictions: int = 200
    #: The model's accuracy floor (its gate's ``min_absolute_score``): live quality whose
    #: always-valid upper bound falls below it fires the rollback alert. Chance level for two
    #: labels, so only a model that is worse than guessing on live traffic is rolled back.
    live_floor: float = 0.5
    #: Suffix of every id, so that runs on one stack never collide; empty picks a fresh one.
    run_id: str = ""

    def resolved_run_id(self) -> str:
        return self.run_id or uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class StackEndpoints:
    """Where the services of a running stack answer."""

    kafka_bootstrap: str
    dataset: str
    splitter: str
    trainer: str
    registry: str
    webhook_url: str
    webhook_token: str
    #: The serving service; empty: the demo sends no live traffic.
    serving: str = ""
    #: The registry's Prometheus endpoint, read the way the alert rule reads it; empty: the
    #: alert is sent without waiting for the live-quality test to fail.
    registry_metrics_url: str = ""

    @classmethod
    def of_stack(cls, state: StackState, webhook_token: str) -> StackEndpoints:
        """Where the services of a :class:`~tuneline.devtools.stack.LocalStack` answer."""
        targets = {service.name: service.target for service in state.services}
        registry = next(service for service in state.services if service.name == "registry")
        return cls(
            kafka_bootstrap=state.kafka_bootstrap,
            dataset=targets["dataset"],
            splitter=targets["splitter"],
            trainer=targets["trainer"],
            registry=targets["registry"],
            webhook_url=f"http://127.0.0.1:{registry.extra_ports['webhook']}/v1/alerts",
            webhook_token=webhook_token,
            serving=targets.get("serving", ""),
            registry_metrics_url=f"http://127.0.0.1:{registry.metrics_port}/metrics",
        )


class DemoObserver:
    """What the scenario reports while it runs; the defaults do nothing."""

    def stage(self, title: str) -> None:
        """A new step of the story begins."""

    def upload_progress(self, what: str, sent_bytes: int, total_bytes: int) -> None:
        """Bytes of an upload sent so far."""

    def training_progress(self, job: str, progress: trainer_pb2.TrainingProgress) -> None:
        """A progress snapshot of a running training job."""

    def event(self, seen: SeenEvent) -> None:
        """A pipeline event arrived (called from the timeline's reader thread)."""

    def note(self, text: str) -> None:
        """Something worth telling the person watching."""
