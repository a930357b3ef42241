"""The registry service's domain: plain dataclasses and rules, no grpc, kafka, torch or SQL.

The rules that matter most live here, each a pure function a unit test can drive directly:

* :mod:`.model` — aliases, actors, the records' enums and the resource names
  (``models/{m}``, ``models/{m}/checkpoints/{c}``, ``models/{m}/aliases/{a}``), and how a
  trainer checkpoint name becomes a registry checkpoint id;
* :mod:`.promotion` — what a finished evaluation does to a model's aliases
  (:func:`~.promotion.decide_on_evaluation`);
* :mod:`.rollback` — which checkpoint production goes back to
  (:func:`~.rollback.choose_rollback_target`), replaying the alias history as a stack of
  production "stints", and the circuit breaker of automatic rollbacks;
* :mod:`.alerts` — reading Alertmanager's webhook payload and deciding whether a firing alert
  is about the checkpoint in production now;
* :mod:`.live_quality` — whether a checkpoint is past the model's floor, from a bare value or
  from counts through an always-valid confidence sequence;
* :mod:`.reviews` — four eyes: whether a reviewer is one of a checkpoint's authors;
* :mod:`.events` — what the registry takes from CheckpointReady and EvaluationCompleted, and
  whether a checkpoint's base model is its model's.

The handlers take :mod:`.commands` and answer with :mod:`.resources` (a model, checkpoint, alias
or alias move as the registry holds it).
"""
