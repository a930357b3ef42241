"""One function per evaluator command or event, split by subject:

* :mod:`.events` (applied in the consumer loop's transaction): a CheckpointReady records the
  checkpoint and, when the model's checkpoint selection takes it, a QUEUED evaluation — nothing
  more, so the partition is never blocked by minutes of scoring; SplitCreated / DatasetVersioned
  record where evaluation sets' rows are.
* Commands (gRPC, each in the servicer's transaction): :mod:`.evaluations` (EvaluateCheckpoint,
  GetEvaluation, ListEvaluations) and :mod:`.policies` (Set/GetEvaluationPolicy).
* :mod:`.running` (the supervisor's thread): :func:`~.running.run_evaluation` takes a claimed
  evaluation through the registry (model, gate, production), the stored baselines, the worker
  and the gate, and commits the result with its events (EvaluationCompleted, and
  RegressionDetected when it regressed) in one transaction. Scoring takes minutes, so these open
  their own short transactions around it instead of being handed one.

Events and commands take ``(session, deps, ...)``: the caller owns the transaction.
:mod:`.deps` holds what they share (:class:`~.deps.EvaluatorDeps`). Callers import each function
from its module.
"""
