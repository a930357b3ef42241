"""Alerts: reading Alertmanager's webhook payload (:func:`parse_alertmanager_payload`), which
alerts may roll back (:class:`RollbackAlertPolicy`) and whether a firing alert is about the
checkpoint in production now (:func:`alert_concerns_production`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class AlertNotice:
    """One alert of an Alertmanager webhook notification, as the registry reads it."""

    fingerprint: str
    status: str  # "firing" or "resolved"
    starts_at: datetime
    model_id: str  # "" when the alert names no model
    checkpoint_id: str  # "" when the alert names no checkpoint
    summary: str
    alertname: str
    action: str = ""  # the alert's `action` label: only "rollback" may roll back

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    @property
    def idempotency_key(self) -> str:
        """One incident: the same alert (fingerprint) that started at the same instant."""
        return f"alert:{self.fingerprint}:{self.starts_at.isoformat()}"

    @property
    def cause(self) -> str:
        return f"alert:{self.fingerprint}"

    @property
    def reason(self) -> str:
        return self.summary or f"alert {self.alertname or self.fingerprint} is firing"


def parse_rfc3339(value: str) -> datetime:
    """Alertmanager's timestamps (Go's RFC 3339, up to nanoseconds) as aware datetimes."""
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if not match:
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    fraction = (match.group(2) or "")[:7]  # Python parses at most microseconds
    parsed = datetime.fromisoformat(match.group(1) + fraction + match.group(3))
    if parsed.tzinfo is None:
        raise ValueError(f"RFC 3339 time without an offset: {value!r}")
    return parsed.astimezone(UTC)


def _id_from_label(value: str, prefix: str) -> str:
    """Labels may carry the bare id or the full resource name; keep the last segment."""
    value = value.strip()
    if value.startswith(prefix):
        value = value.rsplit("/", 1)[-1]
    return value


def parse_alertmanager_payload(document: Any) -> list[AlertNotice]:
    """Read Alertmanager's webhook JSON (version 4) into notices; ValueError when malformed."""
    if not isinstance(document, Mapping):
        raise ValueError("the body must be a JSON object")
    version = str(document.get("version", "4"))
    if version != "4":
        raise ValueError(f"unsupported webhook payload version {version!r} (expected 4)")
    alerts = document.get("alerts")
    if not isinstance(alerts, list):
        raise ValueError("'alerts' must be a list")
    common_labels = document.get("commonLabels") or {}
    notices = []
    for index, alert in enumerate(alerts):
        if not isinstance(alert, Mapping):
            raise ValueError(f"alerts[{index}] must be an object")
        labels = {**common_labels, **(alert.get("labels") or {})}
        annotations = alert.get("annotations") or {}
        fingerprint = str(alert.get("fingerprint") or "")
        if not fingerprint:
            raise ValueError(f"alerts[{index}] has no fingerprint")
        status = str(alert.get("status") or document.get("status") or "")
        if status not in ("firing", "resolved"):
            raise ValueError(f"alerts[{index}].status must be firing or resolved")
        try:
            starts_at = parse_rfc3339(str(alert.get("startsAt") or ""))
        except ValueError as error:
            raise ValueError(f"alerts[{index}].startsAt: {error}") from None
        notices.append(
            AlertNotice(
                fingerprint=fingerprint,
                status=status,
                starts_at=starts_at,
                model_id=_id_from_label(str(labels.get("model") or ""), "models/"),
                checkpoint_id=_id_from_label(str(labels.get("checkpoint") or ""), "models/"),
                summary=str(annotations.get("summary") or ""),
                alertname=str(labels.get("alertname") or ""),
                action=str(labels.get("action") or ""),
            )
        )
    return notices


#: The alerts of ``deploy/prometheus/rules`` labelled ``action="rollback"``: the default of
#: TUNELINE_REGISTRY_ROLLBACK_ALERT_NAMES (a test keeps the two in step).
DEFAULT_ROLLBACK_ALERTS = (
    "TunelineModelLiveQualityBelowFloor",
    "TunelineModelLiveQualityValueBelowFloor",
    "TunelineModelOfflineQualityBelowFloor",
)
ROLLBACK_ACTION = "rollback"


@dataclass(frozen=True)
class RollbackAlertPolicy:
    """Which alerts may roll a model back: labelled ``action="rollback"`` and named on the
    allow-list. Any other alert reaching the webhook (a routing mistake, a label a rule author
    copied, a forged notification with the token) is acknowledged and ignored."""

    alertnames: frozenset[str] = frozenset(DEFAULT_ROLLBACK_ALERTS)

    def why_ignored(self, notice: AlertNotice) -> str:
        """Why ``notice`` may not roll anything back, or "" when it may."""
        if notice.action != ROLLBACK_ACTION:
            return f'the alert is not labelled action="{ROLLBACK_ACTION}"'
        if notice.alertname not in self.alertnames:
            return f"alert {notice.alertname!r} is not on the rollback allow-list"
        return ""


def alert_concerns_production(
    notice: AlertNotice, *, production_checkpoint_id: str, production_since: datetime | None
) -> tuple[bool, str]:
    """Whether a firing alert is about the checkpoint in production now, and if not, why.

    An alert that names a checkpoint is about that checkpoint. One that names none is about
    whatever served traffic when it started: if production moved after the alert started (for
    instance, another trigger already rolled back), the alert describes the previous checkpoint
    and must not roll back the one that replaced it.
    """
    if not production_checkpoint_id:
        return False, "nothing is in production"
    if notice.checkpoint_id and notice.checkpoint_id != production_checkpoint_id:
        return False, f"the alert is about {notice.checkpoint_id}, not production"
    if (
        not notice.checkpoint_id
        and production_since is not None
        and notice.starts_at < production_since
    ):
        return False, "the alert started before the current production checkpoint went live"
    return True, ""
