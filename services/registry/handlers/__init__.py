"""One function per registry command or event, taking its dependencies as parameters.

They take domain values (the commands of ``domain/commands.py``, the events of
``domain/events.py``) and answer with domain values (``domain/resources.py``); the gRPC servicer
and the subscriptions convert (``adapters/protos.py``), so no handler imports generated code.

Every function runs inside the caller's transaction (``session``): the gRPC servicer and the
webhook open one per request, the consumer loop one per event. State changes, the alias
history row and the event announcing the move (``stage_event``, the outbox) commit together
or not at all. Alias-moving functions take the model's write lock first
(:meth:`RegistryRepository.lock_model`), so triggers racing for one model run one after the
other. Side effects outside the database (metrics, waking WatchAlias streams and the outbox
relay) run only after the commit (:func:`after_commit`).

Split by subject: :mod:`.models`, :mod:`.checkpoints`, :mod:`.promotion` (EvaluationCompleted
and automatic moves), :mod:`.reviews` (PromoteCheckpoint, Approve/RejectCheckpoint),
:mod:`.rollback` (with the automation freeze), :mod:`.aliases` and :mod:`.live_quality`;
:mod:`.deps` holds :class:`RegistryDeps`. What several of them share lives in
:mod:`.request_checks` (request checks), :mod:`.rows` (locked rows and the resources they
answer with), :mod:`.deferred` (parked and refused events) and :mod:`.artifact_refusals`
(artifact checks).
Callers import the module they need (``from services.registry.handlers import reviews``, then
``reviews.promote_checkpoint``); this package re-exports nothing.
"""
