"""Claims that last as long as their process: a SIGKILLed holder's claim is free at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from shared.db import create_database_engine
from shared.running_claims import RunningClaims
from tuneline.devtools.waiting import eventually

HOLDER = """
import sys
from shared.db import create_database_engine
from shared.running_claims import RunningClaims
claims = RunningClaims(create_database_engine(sys.argv[1]), "evaluations")
assert claims.take("evaluations/e-1")
print("held", flush=True)
sys.stdin.read()  # until killed
"""


def test_sqlite_claims_are_always_granted_and_never_held_elsewhere(tmp_path) -> None:
    claims = RunningClaims(create_database_engine(f"sqlite:///{tmp_path / 'db'}"), "evaluations")
    assert not claims.enabled
    assert claims.take("evaluations/e-1")
    assert not claims.held_elsewhere("evaluations/e-1")
    claims.release("evaluations/e-1")


def test_a_killed_holders_claim_is_free_and_a_live_ones_is_not(postgresql_url: str) -> None:
    database_url = postgresql_url
    claims = RunningClaims(create_database_engine(database_url), "evaluations")
    assert claims.enabled
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        assert claims.held_elsewhere("evaluations/e-1")
        assert not claims.take("evaluations/e-1"), "a live replica's claim is not taken"
        assert not claims.held_elsewhere("evaluations/e-2")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the server drops a dead session's locks; how soon it notices the closed socket is not
    # ours to time, so ask until it has (a positive signal, not a sleep)
    eventually(
        lambda: not claims.held_elsewhere("evaluations/e-1"),
        timeout=60,
        what="the killed holder's claim to be released",
    )
    assert claims.take("evaluations/e-1")
    assert claims.held_elsewhere("evaluations/e-1"), "this process' own claim counts too"
    claims.release("evaluations/e-1")
    assert not claims.held_elsewhere("evaluations/e-1")
