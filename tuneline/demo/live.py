"""The end of the story: live traffic through the serving service on drifted labels, the
alert about its live accuracy, the rollback it triggers, and serving swapping back."""

from __future__ import annotations

import time
import urllib.request
import uuid
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from tuneline.client.alerts import alertmanager_notification, post_alertmanager_notification
from tuneline.client.errors import TunelineError
from tuneline.client.serving import ServingClient
from tuneline.demo.config import DemoError
from tuneline.demo.results import LiveTrafficResult, RollbackResult
from tuneline.demo.run import DemoRun
from tuneline.registry.v1 import events_pb2 as registry_events
from tuneline.registry.v1 import resources_pb2 as registry_pb2


def live_traffic(
    demo: DemoRun, production: str, rows: list[dict[str, str]]
) -> LiveTrafficResult | None:
    """Predict rows through the serving service and send their (drifted) true labels, a
    batch of ``live_predictions`` at a time, as traffic keeps coming, until the registry's
    always-valid test says the live accuracy is below the floor (or ``rows`` run out):
    how many labelled answers that takes depends on how bad they are, not on a count
    fixed in advance."""
    if demo.serving is None:
        return None
    batch = max(1, demo.config.live_predictions)
    demo.observer.stage(f"Live traffic through the serving service: {batch} reviews at a time")
    _wait_serving(demo, demo.serving, production)
    result = LiveTrafficResult(checkpoint=production, predictions=0, bad_predictions=0)
    for start in range(0, len(rows), batch):
        for row in rows[start : start + batch]:
            answer = demo.serving.predict(demo.model, row["text"])
            feedback = demo.serving.submit_feedback(answer.prediction_id, label=row["label"])
            result.predictions += 1
            if not feedback.success:
                if not result.bad_predictions:
                    demo.first_bad_prediction = time.monotonic()
                result.bad_predictions += 1
        demo.observer.note(
            f"{result.bad_predictions} of {result.predictions} predictions of {production} "
            "were wrong; the counts went to the registry as live quality"
        )
        if _live_test_decided(demo, production, result.predictions):
            break
    return result


def swapped_back(demo: DemoRun, live: LiveTrafficResult, restored: str) -> None:
    """Wait until serving answers from ``restored``; time it from the first bad answer."""
    if demo.serving is None:
        return
    _wait_serving(demo, demo.serving, restored)
    answer = demo.serving.predict(demo.model, "a gripping, funny film")
    if answer.checkpoint != restored:
        raise DemoError(f"serving answered from {answer.checkpoint}, not {restored}")
    live.swapped_back_to = restored
    if live.bad_predictions:
        live.seconds_to_swap_back = time.monotonic() - demo.first_bad_prediction
    demo.observer.note(
        f"serving swapped back to {restored}"
        + (
            f" {live.seconds_to_swap_back:.1f} s after the first bad prediction"
            if live.seconds_to_swap_back is not None
            else ""
        )
    )


def fire_alert(demo: DemoRun, production: str) -> RollbackResult:
    """Once the registry finds live accuracy below the floor, send Alertmanager's notification
    to its webhook and wait for the rollback of ``production`` it triggers."""
    live_quality_below_floor(demo, production)
    demo.observer.stage("Alertmanager fires: live accuracy below its floor")
    already = len(demo.timeline)
    notification = alertmanager_notification(
        demo.model_id,
        fingerprint=uuid.uuid4().hex[:16],
        starts_at=datetime.now(UTC),
        summary=f"live accuracy of {demo.model_id} fell below its floor",
    )
    sent = time.monotonic()
    status, body = post_alertmanager_notification(
        demo.endpoints.webhook_url, notification, token=demo.endpoints.webhook_token
    )
    if status >= 300:
        raise DemoError(f"the registry's webhook answered {status}: {body}")
    demo.observer.note(f"webhook answered {status}")
    rolled_back = demo.timeline.wait_for(
        registry_events.ModelRolledBack,
        lambda e: e.model == demo.model,
        timeout=demo.config.event_timeout,
        after=already,
    )
    arrived = time.monotonic() - sent
    if rolled_back.from_checkpoint != production:
        raise DemoError(f"rolled back from {rolled_back.from_checkpoint}, not {production}")
    return RollbackResult(
        from_checkpoint=rolled_back.from_checkpoint,
        to_checkpoint=rolled_back.to_checkpoint,
        trigger=registry_pb2.AliasMoveTrigger.Name(rolled_back.trigger).removeprefix(
            "ALIAS_MOVE_TRIGGER_"
        ),
        reason=rolled_back.reason,
        seconds_to_rollback=arrived,
    )


def live_quality_below_floor(demo: DemoRun, production: str) -> None:
    """Wait, as Prometheus would, until the registry says the live accuracy of
    ``production`` is below its floor: the upper bound of its always-valid confidence
    sequence, over the counts serving reported, fell under ``live_floor``."""
    url = demo.endpoints.registry_metrics_url
    if not url:
        return
    checkpoint = production.rsplit("/", 1)[-1]
    deadline = time.monotonic() + demo.config.event_timeout
    while True:
        series = _live_quality_series(url, demo.model_id, checkpoint)
        if series.get("tuneline_model_live_quality_below_floor") == 1.0:
            break
        if time.monotonic() > deadline:
            raise DemoError(f"live accuracy of {production} never fell below its floor")
        time.sleep(0.5)
    demo.observer.note(
        f"live accuracy {series.get('tuneline_model_live_quality', 0):.0%} over "
        f"{series.get('tuneline_model_live_quality_trials', 0):.0f} labelled predictions; "
        f"its upper bound {series.get('tuneline_model_live_quality_upper_bound', 0):.0%} "
        f"is below the floor {demo.config.live_floor:.0%}: the alert rule fires"
    )


def _live_test_decided(demo: DemoRun, production: str, trials: int) -> bool:
    """Whether the registry, once it has counted ``trials`` labelled answers, finds the
    live accuracy of ``production`` below the floor (True too when it cannot be asked)."""
    url = demo.endpoints.registry_metrics_url
    if not url:
        return True
    checkpoint = production.rsplit("/", 1)[-1]
    deadline = time.monotonic() + demo.config.event_timeout
    while True:
        series = _live_quality_series(url, demo.model_id, checkpoint)
        if series.get("tuneline_model_live_quality_trials", 0) >= trials:
            return series.get("tuneline_model_live_quality_below_floor") == 1.0
        if time.monotonic() > deadline:
            raise DemoError(f"the registry never counted {trials} live answers")
        time.sleep(0.5)


def _wait_serving(demo: DemoRun, serving: ServingClient, checkpoint: str) -> None:
    deadline = time.monotonic() + demo.config.event_timeout
    while time.monotonic() < deadline:
        try:
            if any(
                s.model == demo.model and s.checkpoint == checkpoint
                for s in serving.get_serving_state().served_models
            ):
                return
        except TunelineError:
            pass  # not answering yet: ask again
        time.sleep(0.2)
    raise DemoError(f"the serving service never served {checkpoint}")


def _live_quality_series(metrics_url: str, model_id: str, checkpoint: str) -> dict[str, float]:
    """The registry's live-quality gauges of one production checkpoint (all traffic)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("tuneline_model_live_quality"):
            continue
        for sample in family.samples:
            labels = sample.labels
            wanted = (labels.get("model"), labels.get("checkpoint"), labels.get("slice", ""))
            if wanted == (model_id, checkpoint, ""):
                found[sample.name] = sample.value
    return found
