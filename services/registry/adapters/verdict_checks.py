"""The registry confirms a PASSED verdict with the evaluator instead of taking an event's word.

Whoever can write the EvaluationCompleted topic could announce any verdict. Before a PASSED
EvaluationCompleted counts (it can promote, or make a checkpoint promotable by hand), the
registry asks the evaluator for the evaluation (GetEvaluation, through the SDK's
:class:`~tuneline.client.evaluator.EvaluatorClient`: a deadline on every call, retries on
UNAVAILABLE) and compares what the evaluator stored with what the event says — the same
checkpoint and model, verdict PASSED, and the metrics, comparisons, parity and evaluation set the
registry records and decides on.

* The evaluator answers and agrees: ``""``.
* It answers that the evaluation does not exist, or stored something else: the reason (the
  caller refuses the event).
* It cannot be asked (down, overloaded, refusing this service's identity): :class:`TransientError`
  — the event is fine, the consumer retries it until the evaluator answers; it is never refused
  or dead-lettered for that.
"""

from __future__ import annotations

from google.protobuf.message import Message

from services.registry.domain.events import CompletedEvaluation
from shared.events import TransientError
from tuneline.client.errors import InvalidArgumentError, NotFoundError, TunelineError
from tuneline.client.evaluator import EvaluatorClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2

#: The ``check`` label of tuneline_registry_verdicts_refused_total.
NOT_FOUND = "not_found"
MISMATCH = "mismatch"


def _encoded(*messages: Message) -> list[bytes]:
    return [message.SerializeToString(deterministic=True) for message in messages]


def verdict_disagreement(
    event: evaluator_events.EvaluationCompleted, stored: evaluator_pb2.Evaluation
) -> str:
    """What the event claims that the evaluator's stored evaluation does not say, or ""."""
    problems = []
    if stored.checkpoint != event.checkpoint:
        problems.append(f"it evaluated {stored.checkpoint or '(none)'}, not {event.checkpoint}")
    if stored.model != event.model:
        problems.append(f"its model is {stored.model or '(none)'}, not {event.model}")
    if stored.verdict != common_pb2.EVALUATION_VERDICT_PASSED:
        verdict = common_pb2.EvaluationVerdict.Name(stored.verdict).removeprefix(
            "EVALUATION_VERDICT_"
        )
        problems.append(f"its verdict is {verdict}, not PASSED")
    if event.checkpoint_sha256 and stored.checkpoint_sha256 != event.checkpoint_sha256:
        problems.append("it scored an artifact with another sha256")
    if _encoded(*stored.metrics) != _encoded(*event.metrics):
        problems.append("its metrics differ")
    if _encoded(*stored.comparisons) != _encoded(*event.comparisons):
        problems.append("its comparisons differ")
    if _encoded(stored.parity) != _encoded(event.parity):
        problems.append("its parity check differs")
    if _encoded(stored.evaluation_set) != _encoded(event.evaluation_set):
        problems.append("its evaluation set differs")
    return "; ".join(problems)


class VerdictConfirmer:
    """Asks the evaluator whether a PASSED EvaluationCompleted says what it stored."""

    def __init__(self, client: EvaluatorClient) -> None:
        self._client = client

    def problem(self, evaluation: CompletedEvaluation) -> tuple[str, str]:
        """``(check, why)`` when the evaluator does not confirm the event, ``("", "")`` when it
        does; :class:`TransientError` when it cannot be asked now."""
        event = evaluator_events.EvaluationCompleted.FromString(evaluation.payload)
        try:
            stored = self._client.get_evaluation(event.evaluation)
        except (NotFoundError, InvalidArgumentError) as error:
            return NOT_FOUND, f"the evaluator has no evaluation {event.evaluation!r}: {error}"
        except TunelineError as error:  # down, deadline, or refusing us: not the event's fault
            raise TransientError(
                f"the evaluator cannot confirm {event.evaluation} now: {error}"
            ) from error
        disagreement = verdict_disagreement(event, stored)
        if disagreement:
            return MISMATCH, f"the evaluator's {event.evaluation} disagrees: {disagreement}"
        return "", ""

    def close(self) -> None:
        self._client.close()
