"""Alertmanager webhook notifications, as Alertmanager itself sends them (payload version 4).

The registry rolls a model back when Alertmanager POSTs a firing alert that names it. These
helpers build the same JSON document and POST it with the bearer token, so a person (or the
demo, or a test) can fire the rollback path exactly as production alerting does, without
running Alertmanager.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

#: The alert the shipped Prometheus rules raise when live quality falls below its floor.
LIVE_QUALITY_ALERT = "TunelineModelLiveQualityBelowFloor"


def _alertmanager_time(moment: datetime) -> str:
    """RFC 3339 with nanoseconds, as Alertmanager (Go) writes it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def alertmanager_notification(
    model_id: str,
    *,
    fingerprint: str,
    starts_at: datetime,
    status: str = "firing",
    checkpoint_id: str = "",
    alertname: str = LIVE_QUALITY_ALERT,
    metric: str = "accuracy",
    summary: str = "",
    receiver: str = "tuneline-registry-rollback",
    action: str = "rollback",
) -> dict[str, Any]:
    """One alert about ``model_id`` wrapped in a webhook notification (version 4).

    ``fingerprint`` and ``starts_at`` identify the alert: Alertmanager re-sends the same pair
    while the alert keeps firing, and the registry acts on it once. The registry rolls back
    only on alerts labelled ``action="rollback"`` whose name is on its allow-list (``action=""``
    leaves the label out).
    """
    if status not in ("firing", "resolved"):
        raise ValueError("status must be 'firing' or 'resolved'")
    labels = {
        "alertname": alertname,
        "model": model_id,
        "metric": metric,
        "severity": "critical",
    }
    if action:
        labels["action"] = action
    if checkpoint_id:
        labels["checkpoint"] = checkpoint_id
    annotations = {
        "summary": summary or f"live {metric} of {model_id} is below its floor",
        "runbook": "the registry rolls production back on its own",
    }
    starts = _alertmanager_time(starts_at)
    alert = {
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else starts,
        "generatorURL": "http://prometheus.local/graph?g0.expr=...",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": f'{{}}:{{model="{model_id}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"model": model_id},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://alertmanager.local",
        "alerts": [alert],
    }


def post_alertmanager_notification(
    url: str, notification: Mapping[str, Any], *, token: str, timeout: float = 10.0
) -> tuple[int, str]:
    """POST ``notification`` to a webhook with ``Authorization: Bearer <token>``.

    Returns the HTTP status and the response body; HTTP errors (401, 400, …) are returned,
    not raised, so callers can show what the receiver said. Connection failures raise
    ``OSError``.
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the webhook URL must be http(s): {url!r}")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url,
        data=json.dumps(notification).encode("utf-8"),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", errors="replace")
