"""WatchAlias wake-ups: local moves, another replica's moves (the poller), clients leaving."""

from __future__ import annotations

import threading

from services.registry.adapters.notifier import AliasMoveNotifier, AliasMovePoller

#: Generous: the waits below return as soon as their condition holds.
WAIT = 30.0


def test_a_wait_returns_on_a_move_or_when_its_stream_ends():
    notifier = AliasMoveNotifier()
    ended = threading.Event()
    seen = notifier.generation
    notifier.notify()
    assert notifier.wait(seen, ended, WAIT) == seen + 1
    waiting = threading.Thread(target=notifier.wait, args=(seen + 1, ended, WAIT))
    waiting.start()
    ended.set()
    notifier.interrupt()
    waiting.join(WAIT)
    assert not waiting.is_alive()


def test_the_poller_wakes_watchers_on_a_remote_move():
    notifier = AliasMoveNotifier()
    newest = [7]
    reads: list[int] = []

    def newest_move() -> int:
        reads.append(newest[0])
        return newest[0]

    poller = AliasMovePoller(notifier, newest_move, interval_seconds=0.01)
    poller.start()
    try:
        ended = threading.Event()
        with notifier.watching():
            # the first read after watching began wakes the stream once (it has no baseline)
            seen = notifier.wait(0, ended, WAIT)
            assert seen == 1
            newest[0] = 8  # another replica moved an alias
            assert notifier.wait(seen, ended, WAIT) == seen + 1
        assert notifier.watchers == 0
    finally:
        poller.stop()
    assert reads[-1] == 8
