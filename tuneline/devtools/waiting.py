"""Waiting on a positive signal: the one way tests and benchmarks wait for something to happen.

Nothing here sleeps and then looks: :func:`eventually` asks a probe until it reports that the
awaited thing happened (a consumer caught up, a verdict recorded, a worker reached a known
point). The timeout is a safety net for a broken build, never a measure of speed: set it
generously. Benchmarks use the same helper for their polling loops, so what they time ends at
the signal and a hang fails with what was awaited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: How often the probe is asked; small enough not to slow tests, large enough not to spin.
POLL_SECONDS = 0.1


def eventually(
    probe: Callable[[], T | None], *, timeout: float, what: str, poll: float = POLL_SECONDS
) -> T:
    """Ask ``probe`` until it returns something truthy, and return that.

    Raises :class:`AssertionError` naming ``what`` (and the last value seen) after ``timeout``
    seconds. ``poll`` is the pause between two questions (a benchmark timing a fast signal
    asks more often).
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}; last: {last!r}"
            )
        time.sleep(poll)


def answer(call: Callable[[], T], *not_yet: type[BaseException]) -> Callable[[], T | None]:
    """A probe for :func:`eventually`: what ``call`` returns, or None while it raises ``not_yet``.

    For a resource that does not exist yet (NotFoundError) or a server still starting
    (UnavailableError); any other error fails at once.
    """

    def probe() -> T | None:
        try:
            return call()
        except not_yet:
            return None

    return probe
