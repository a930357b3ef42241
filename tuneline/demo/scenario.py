"""The demo's story, played against a running stack through the client SDK.

1. A held-out evaluation set is pushed and pinned as the model's regression suite; the model is
   created with an AUTOMATIC promotion policy, and a training policy ties the training dataset
   to it. Nothing else is called: from here on the services' events drive the pipeline.
2. The first version of the dataset is pushed: DatasetVersioned → SplitCreated →
   TrainingJobStarted → CheckpointReady → EvaluationCompleted (against the bare base model) →
   ModelPromoted.
3. A grown, clean version (more rows of the same corpus) is pushed: the new checkpoint is
   compared with production and replaces it.
4. A version with most labels flipped is pushed: the dataset service refuses it before any
   training is paid for (``label_churn``: most rows it shares with its parent changed label).
   Pushed again with an explicit override (a reason, kept in its lineage), it is stored, and
   its label audit (the dataset's default policy: BLOCK above 25 % estimated noise) blocks it:
   DatasetAudited BLOCKED → the training policy's job for its split FAILS with
   LABEL_AUDIT_BLOCKED without ever starting. Nothing is trained on it.
5. A narrow version is pushed: only the grown version's reviews that state their verdict in so
   many words (a keyword pull, :func:`tuneline.demo.corpus.states_its_verdict`). Its data
   checks pass — no label changed against its parent, its audit finds its labels clean, the
   evaluation set covers what it trains on — but it is small and of one kind: the checkpoint
   trained on it is worse than production on the held-out reviews, and the regression gate
   refuses it: RegressionDetected, production unchanged.
6. Live traffic goes through the serving service, which follows production: the reviews'
   labels have drifted (they are the relabelled version's), so the production checkpoint
   answers badly and the labelled feedback reaches the registry as live quality counts.
   An Alertmanager notification about the model reaches the registry's webhook: production
   rolls back to the checkpoint before, and serving swaps back to it. The demo tells the time
   from the first bad prediction to the swap back, and how many bad predictions were served.

:func:`run_demo` waits on the :class:`~tuneline.demo.timeline.EventTimeline` for each event of
each round (matching them by lineage, not by timing) and reports through a
:class:`~tuneline.demo.config.DemoObserver`; it returns a
:class:`~tuneline.demo.results.DemoSummary`. The CLI renders the observer's calls with rich; the
cross-process test uses the same function with small sizes.

This module tells the story in order; the steps live beside it: :mod:`tuneline.demo.config`
(what a run is given), :mod:`tuneline.demo.run` (one run's ids, clients and timeline),
:mod:`tuneline.demo.rounds` (steps 1 to 5), :mod:`tuneline.demo.live` (step 6) and
:mod:`tuneline.demo.results` (what each step found).
"""

from __future__ import annotations

import time

from tuneline.client.registry import alias_name
from tuneline.demo.config import DemoConfig, DemoError, DemoObserver, StackEndpoints
from tuneline.demo.corpus import demo_corpus
from tuneline.demo.live import fire_alert, live_traffic, swapped_back
from tuneline.demo.results import DemoSummary, score_text
from tuneline.demo.rounds import (
    play_round,
    refused_for_label_churn,
    set_up,
    stopped_by_label_audit,
)
from tuneline.demo.run import open_run
from tuneline.demo.timeline import TimelineTimeout


def run_first_round(
    config: DemoConfig, endpoints: StackEndpoints, observer: DemoObserver | None = None
) -> DemoSummary:
    """The set-up and the first round only: one version pushed, split, trained, evaluated
    against the base model and promoted. For tests about how the services run (replicas,
    crashes) rather than about the story; raises like :func:`run_demo`."""
    return run_demo(config, endpoints, observer, first_round_only=True)


def run_demo(
    config: DemoConfig,
    endpoints: StackEndpoints,
    observer: DemoObserver | None = None,
    *,
    first_round_only: bool = False,
) -> DemoSummary:
    """Play the whole story (or only its first round); raises :class:`DemoError` (or
    ``TimelineTimeout``) when the pipeline does not do what it should."""
    observer = observer or DemoObserver()
    started = time.monotonic()
    corpus = demo_corpus(
        evaluation_rows=config.evaluation_rows,
        first_rows=config.first_rows,
        grown_rows=config.first_rows if first_round_only else config.grown_rows,
        flip_fraction=config.flip_fraction,
        narrow_rows=None if first_round_only else config.narrow_rows,
        seed=config.seed,
    )
    with open_run(config, endpoints, observer) as demo:
        try:
            evaluation_version = set_up(demo, corpus.evaluation)
            observer.stage(f"Version 1: {len(corpus.first)} reviews")
            first = play_round(demo, "first", corpus.first, "", expect_promotion=True)
            if first_round_only:
                return DemoSummary(
                    model=demo.model,
                    evaluation_version=evaluation_version,
                    rounds=[first],
                    rollback=None,
                    churn_refusal="",
                    alias_history=list(
                        demo.registry.list_alias_history(alias_name(demo.model, "-"))
                    ),
                    production_checkpoint=demo.production(),
                    events=demo.timeline.events(),
                    wall_seconds=time.monotonic() - started,
                )
            observer.stage(f"Version 2: grown to {len(corpus.grown)} reviews, clean")
            grown = play_round(
                demo, "grown", corpus.grown, first.dataset_version, expect_promotion=True
            )
            if demo.production() != grown.registry_checkpoint:
                raise DemoError("production did not move to the grown version's checkpoint")
            observer.stage(f"Version 3: {config.flip_fraction:.0%} of the labels flipped")
            churn_refusal = refused_for_label_churn(demo, corpus.flipped, grown.dataset_version)
            observer.note(f"refused before any training: {churn_refusal}")
            observer.note("pushed again with an override: its label audit must stop it")
            blocked = stopped_by_label_audit(
                demo, corpus.flipped, grown.dataset_version, churn_refusal
            )
            observer.note(blocked.audit)
            observer.note(
                f"{blocked.training_job} {blocked.failure_reason}, never started: "
                f"{blocked.failure_message}"
            )
            observer.stage(
                f"Version 4: narrow — the {len(corpus.narrow)} reviews that state their verdict"
            )
            narrow = play_round(
                demo, "narrow", corpus.narrow, grown.dataset_version, expect_promotion=False
            )
            observer.note(f"{narrow.audit}; evaluation data checks: {narrow.data_checks}")
            observer.note(
                f"{narrow.steps} steps on {narrow.train_rows} reviews: accuracy "
                f"{score_text(narrow.accuracy)} against production's "
                f"{score_text(narrow.baseline_accuracy)}; {narrow.regression}"
            )
            if demo.production() != grown.registry_checkpoint:
                raise DemoError("production moved after a regression")
            observer.note(f"production unchanged: {grown.registry_checkpoint}")
            live = live_traffic(demo, grown.registry_checkpoint, corpus.flipped)
            rollback = fire_alert(demo, grown.registry_checkpoint)
            if rollback.to_checkpoint != first.registry_checkpoint:
                raise DemoError(
                    f"rolled back to {rollback.to_checkpoint}, not {first.registry_checkpoint}"
                )
            if live is not None:
                swapped_back(demo, live, first.registry_checkpoint)
        except TimelineTimeout as error:
            raise DemoError(f"the pipeline stalled: {error}") from error
        history = list(demo.registry.list_alias_history(alias_name(demo.model, "-")))
        return DemoSummary(
            model=demo.model,
            evaluation_version=evaluation_version,
            rounds=[first, grown, narrow],
            rollback=rollback,
            churn_refusal=churn_refusal,
            alias_history=history,
            production_checkpoint=demo.production(),
            events=demo.timeline.events(),
            wall_seconds=time.monotonic() - started,
            live=live,
            blocked=blocked,
        )
