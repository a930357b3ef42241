"""One function per registry command or event, taking its dependencies as parameters.

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
:mod:`.deps` holds :class:`RegistryDeps`. What several of them share lives in the private
:mod:`._requests` (request checks), :mod:`._rows` (locked rows and their protos),
:mod:`._deferred` (parked and refused events) and :mod:`._artifacts` (artifact checks). The
names below are re-exported so that callers may keep writing ``handlers.promote_checkpoint``.
"""

from services.registry.handlers.aliases import (
    get_alias,
    list_alias_history,
    watch_alias_moves,
    watch_alias_start,
)
from services.registry.handlers.checkpoints import (
    get_checkpoint,
    list_checkpoints,
    on_checkpoint_ready,
)
from services.registry.handlers.deps import RegistryDeps
from services.registry.handlers.live_quality import report_live_quality
from services.registry.handlers.models import (
    create_model,
    get_model,
    list_models,
    set_serving_profile,
)
from services.registry.handlers.promotion import on_evaluation_completed
from services.registry.handlers.reviews import (
    approve_checkpoint,
    promote_checkpoint,
    reject_checkpoint,
)
from services.registry.handlers.rollback import (
    RollbackTrigger,
    on_alert,
    on_regression_detected,
    rollback_model,
    unfreeze_automation,
)

__all__ = [
    "RegistryDeps",
    "RollbackTrigger",
    "approve_checkpoint",
    "create_model",
    "get_alias",
    "get_checkpoint",
    "get_model",
    "list_alias_history",
    "list_checkpoints",
    "list_models",
    "on_alert",
    "on_checkpoint_ready",
    "on_evaluation_completed",
    "on_regression_detected",
    "promote_checkpoint",
    "reject_checkpoint",
    "report_live_quality",
    "rollback_model",
    "set_serving_profile",
    "unfreeze_automation",
    "watch_alias_moves",
    "watch_alias_start",
]
