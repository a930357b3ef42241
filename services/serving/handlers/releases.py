"""Following ``production``: announce a release, then load, verify and swap it."""

from __future__ import annotations

import logging
import time

from services.serving.domain import (
    FollowDecision,
    Release,
    ReleaseRefused,
    ServedModel,
    fingerprint_differences,
)
from services.serving.domain.releases import RefusalReason
from services.serving.handlers.deps import ServingDeps

log = logging.getLogger(__name__)


def announce(deps: ServingDeps, release: Release) -> FollowDecision:
    """Whether ``release`` should be loaded (its revision is new for a followed model)."""
    decision = deps.table.decide(release)
    if decision is FollowDecision.STALE:
        log.debug(
            "ignoring a release at or below the loaded revision",
            extra={"model": release.model, "revision": release.revision},
        )
    return decision


def apply_release(deps: ServingDeps, release: Release) -> ServedModel | None:
    """Fetch exactly the announced artifact, verify it, load it and swap it in.

    Returns the model now served, or ``None`` when nothing changed: the release was stale by the
    time its turn came, or it was refused (digest or fingerprint mismatch, load failure) — then
    the model served before keeps serving, and the refusal is logged, counted and listed.
    """
    with deps.table.loading(release.model):
        if deps.table.decide(release) is not FollowDecision.LOAD:
            return None
        started = time.perf_counter()
        try:
            served = _load(deps, release)
        except ReleaseRefused as refusal:
            deps.table.refuse(release, refusal, deps.clock())
            deps.metrics.refused_loads.labels(release.model, refusal.reason.value).inc()
            log.error(
                "refused a production release; the previous model keeps serving",
                extra={
                    "model": release.model,
                    "checkpoint": release.checkpoint,
                    "revision": release.revision,
                    "reason": refusal.reason.value,
                    "error": refusal.message,
                },
            )
            return None
        replaced = deps.table.swap(served)
        elapsed = time.perf_counter() - started
        deps.metrics.swapped(served.release, replaced.release if replaced else None, elapsed)
        log.info(
            "now serving",
            extra={
                "model": release.model,
                "checkpoint": release.checkpoint,
                "revision": release.revision,
                "replaced": replaced.release.checkpoint if replaced else "",
                "swap_seconds": round(elapsed, 3),
                "announced_by": release.announced_by,
            },
        )
        return served


def _load(deps: ServingDeps, release: Release) -> ServedModel:
    previous = deps.table.previous_for(release) if deps.keep_previous_model else None
    if previous is not None:
        # the very artifact verified when it served before: swap back without reloading
        return ServedModel(release, previous.model, deps.clock())
    folder = deps.fetcher.fetch(release.artifact_uri, release.sha256)
    model = deps.loader.load(folder, release)
    if model.task is not release.task:
        raise ReleaseRefused(
            RefusalReason.TASK_MISMATCH,
            f"the artifact is a {model.task.value} checkpoint; the registry announced "
            f"{release.task.value}",
        )
    if release.tokenizer_fingerprint is not None:
        differences = fingerprint_differences(release.tokenizer_fingerprint, model.fingerprint())
        if differences:
            raise ReleaseRefused(
                RefusalReason.FINGERPRINT_MISMATCH,
                "the loaded tokenizer is not the one the checkpoint was trained with: "
                + "; ".join(differences),
            )
    return ServedModel(release, model, deps.clock())
