"""Which service produces each event type: the one ``ce_source`` a consumer accepts for it.

Every event type has exactly one producer, the service that owns its topic (the same service
the broker's ACLs let write it). A consumer that gets an event whose ``ce_source`` is not that
producer's, or an event type missing here, refuses it (the DLQ, with the reason): a record a
foreign client managed to write, through an ACL gap or a mistake, never causes an effect.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from shared.events.envelope import EnvelopeError


def service_source(service: str) -> str:
    """``ce_source`` of the events ``service`` emits (``tuneline/<service>``)."""
    return f"tuneline/{service}"


#: Event type (the topic: the message's full name) → ``ce_source`` of its only producer.
EVENT_PRODUCERS: Mapping[str, str] = MappingProxyType(
    {
        "tuneline.dataset.v1.DatasetVersioned": service_source("dataset"),
        "tuneline.dataset.v1.DatasetAudited": service_source("dataset"),
        "tuneline.splitter.v1.SplitCreated": service_source("splitter"),
        "tuneline.trainer.v1.TrainingJobStarted": service_source("trainer"),
        "tuneline.trainer.v1.CheckpointReady": service_source("trainer"),
        "tuneline.trainer.v1.TrainingJobCompleted": service_source("trainer"),
        "tuneline.trainer.v1.TrainingJobFailed": service_source("trainer"),
        "tuneline.evaluator.v1.EvaluationCompleted": service_source("evaluator"),
        "tuneline.evaluator.v1.RegressionDetected": service_source("evaluator"),
        "tuneline.registry.v1.ModelPromoted": service_source("registry"),
        "tuneline.registry.v1.ModelRolledBack": service_source("registry"),
    }
)


class UntrustedEventSource(EnvelopeError):
    """An event whose ``ce_source`` is not its type's producer (or of a type nobody produces)."""


def check_event_source(event_type: str, source: str, producers: Mapping[str, str]) -> None:
    """Raise :class:`UntrustedEventSource` unless ``source`` produces ``event_type``."""
    expected = producers.get(event_type)
    if expected is None:
        raise UntrustedEventSource(f"no service produces {event_type!r}: refused")
    if source != expected:
        raise UntrustedEventSource(
            f"ce_source {source[:80]!r} is not {expected!r}, the only producer of {event_type}"
        )
