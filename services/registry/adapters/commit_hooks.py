"""Run side effects only once the transaction that caused them has committed.

Metrics, WatchAlias wake-ups and outbox wake-ups describe committed state: a rollback that is
itself rolled back (a lost race, a failing event handler about to be retried) must not count,
wake a watcher or be announced. Handlers register such effects with :func:`after_commit`; they
run after the session's commit, whoever commits it (the consumer loop or the handler's caller),
and are dropped if the transaction rolls back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_ACTIONS = "registry_after_commit_actions"
_LISTENING = "registry_after_commit_listening"


def _run(session: Session) -> None:
    for action in session.info.pop(_ACTIONS, []):
        try:
            action()
        except Exception:  # the commit stands; a failing side effect is only logged
            log.exception("after-commit action failed")


def _drop(session: Session, *_args: object) -> None:
    session.info.pop(_ACTIONS, None)


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Call ``action`` after ``session``'s current transaction commits (never if it rolls back)."""
    if not session.info.get(_LISTENING):
        event.listen(session, "after_commit", _run)
        event.listen(session, "after_rollback", _drop)
        session.info[_LISTENING] = True
    session.info.setdefault(_ACTIONS, []).append(action)
