"""One function per evaluator command or event, taking its dependencies as parameters, split by
subject:

* :mod:`.events` (applied in the consumer loop's transaction): a CheckpointReady records the
  checkpoint and, when the model's checkpoint selection takes it, a QUEUED evaluation — nothing
  more, so the partition is never blocked by minutes of scoring; SplitCreated / DatasetVersioned
  record where evaluation sets' rows are.
* Commands (gRPC): :mod:`.evaluations` (EvaluateCheckpoint, GetEvaluation, ListEvaluations) and
  :mod:`.policies` (Set/GetEvaluationPolicy).
* :mod:`.running` (the supervisor's thread): :func:`run_evaluation` takes a claimed evaluation
  through the registry (model, gate, production), the stored baselines, the worker and the gate,
  and commits the result with its events (EvaluationCompleted, and RegressionDetected when it
  regressed) in one transaction.

:mod:`.deps` holds what they share. The names below are re-exported so that callers may keep
writing ``handlers.run_evaluation``.
"""

from services.evaluator.handlers.deps import (
    Clock,
    EvaluatorDeps,
    RegistryLookup,
    ServiceDefaults,
    effective_policy,
    utc_now,
)
from services.evaluator.handlers.evaluations import (
    evaluate_checkpoint,
    get_evaluation,
    list_evaluations,
)
from services.evaluator.handlers.events import (
    on_checkpoint_ready,
    on_dataset_versioned,
    on_split_created,
)
from services.evaluator.handlers.policies import get_evaluation_policy, set_evaluation_policy
from services.evaluator.handlers.running import (
    claim_next,
    fail_evaluation,
    release_claim,
    requeue_interrupted,
    return_to_queue,
    run_evaluation,
)

__all__ = [
    "Clock",
    "EvaluatorDeps",
    "RegistryLookup",
    "ServiceDefaults",
    "claim_next",
    "effective_policy",
    "evaluate_checkpoint",
    "fail_evaluation",
    "get_evaluation",
    "get_evaluation_policy",
    "list_evaluations",
    "on_checkpoint_ready",
    "on_dataset_versioned",
    "on_split_created",
    "release_claim",
    "requeue_interrupted",
    "return_to_queue",
    "run_evaluation",
    "set_evaluation_policy",
    "utc_now",
]
