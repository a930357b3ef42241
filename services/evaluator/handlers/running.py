"""Running an evaluation (the supervisor's thread): claiming, re-queueing and releasing
evaluations, and :func:`run_evaluation`, which takes a claimed evaluation through the registry
(model, gate, production), the stored baselines, the worker and the gate, and commits the result
with its events (EvaluationCompleted, and RegressionDetected when it regressed) in one
transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from services.evaluator.adapters import protos
from services.evaluator.adapters.outcome_store import OutcomesUnreadable
from services.evaluator.adapters.release import check_parity, discard_merged_staging, parity_job
from services.evaluator.adapters.repository import EvaluatorRepository
from services.evaluator.adapters.scoring import (
    DataChecksJob,
    RowSource,
    ScoringFailed,
    ScoringJob,
    ScoringResult,
    SubjectRole,
    SubjectSpec,
)
from services.evaluator.domain.data_checks import DataChecks, skipped
from services.evaluator.domain.evaluation import (
    Baseline,
    BaselineChoice,
    BaselineKind,
    DependencyUnavailable,
    Evaluation,
    EvaluationFailed,
    EvaluationPolicy,
    EvaluationSet,
    FailureReason,
    ModelSpec,
    RegisteredCheckpoint,
    ScoredSubject,
    ScoringSettings,
    UnknownToRegistry,
)
from services.evaluator.domain.gate import PairedSet, Verdict, judge
from services.evaluator.domain.outcomes import ExampleMismatch, ExampleOutcomes
from services.evaluator.handlers.deps import EvaluatorDeps, effective_policy
from shared.artifacts import ArtifactError, ArtifactStore
from shared.events import stage_event
from shared.modeling import ModelingError, folder_sha256, read_adapter_metadata, resolve_base_model

log = logging.getLogger(__name__)


def _retry_delay(waited: timedelta) -> timedelta:
    """Ask again soon at first, then every ten seconds."""
    return timedelta(seconds=min(10.0, 1.0 + waited.total_seconds() / 4))


def requeue_interrupted(deps: EvaluatorDeps) -> int:
    """Evaluations left RUNNING by a stopped replica run again from the start; those a live
    replica (this one included) still works on are left alone."""
    with deps.sessions.begin() as session:
        repository = EvaluatorRepository(session)
        interrupted = [
            evaluation
            for evaluation in repository.running()
            if not deps.claims.held_elsewhere(evaluation.name)
        ]
        for evaluation in interrupted:
            repository.save(evaluation.requeued())
    return len(interrupted)


def claim_next(deps: EvaluatorDeps) -> Evaluation | None:
    """Mark the oldest runnable queued evaluation RUNNING and return it, claimed in
    ``deps.claims`` until :func:`release_claim`. The claim is taken before the RUNNING mark
    commits, so no other replica ever sees the row RUNNING and unclaimed."""
    with deps.sessions.begin() as session:
        repository = EvaluatorRepository(session)
        evaluation = repository.next_queued(deps.clock())
        if evaluation is None or not deps.claims.take(evaluation.name):
            return None
        try:
            started = evaluation.started(deps.clock())
            repository.save(started)
        except BaseException:
            deps.claims.release(evaluation.name)
            raise
    return started


def release_claim(deps: EvaluatorDeps, evaluation: Evaluation) -> None:
    """The replica is done with ``evaluation`` (whatever its outcome)."""
    deps.claims.release(evaluation.name)


def _local_folder(
    artifacts: ArtifactStore, uri: str, sha256: str, reason: FailureReason, what: str
) -> Path:
    """The local adapter folder behind ``uri``, verified against its sha256."""
    try:
        path = artifacts.materialize(uri)
    except ArtifactError as error:
        raise EvaluationFailed(reason, f"{what}: {error}") from error
    if not path.is_dir():
        raise EvaluationFailed(reason, f"{what}: no adapter folder at {uri}")
    actual = folder_sha256(path)
    if sha256 and actual != sha256:
        raise EvaluationFailed(
            reason, f"{what}: the folder at {uri} has sha256 {actual}, expected {sha256}"
        )
    return path


def _row_source(
    repository: EvaluatorRepository, artifacts: ArtifactStore, evaluation_set: EvaluationSet
) -> RowSource:
    """Where an evaluation set's rows are, from the SplitCreated / DatasetVersioned seen."""
    try:
        if evaluation_set.split:
            split = repository.split_location(evaluation_set.split)
            if split is None:
                raise DependencyUnavailable(
                    FailureReason.DATA_UNAVAILABLE,
                    f"no SplitCreated has announced {evaluation_set.split} (yet)",
                )
            if split.dataset_version != evaluation_set.dataset_version:
                raise EvaluationFailed(
                    FailureReason.DATA_UNAVAILABLE,
                    f"{evaluation_set.split} splits {split.dataset_version}, but the evaluation "
                    f"set pins {evaluation_set.dataset_version}",
                )
            return RowSource(
                set_key=evaluation_set.key,
                dataset_path=str(artifacts.materialize(split.dataset_artifact_uri)),
                dataset_sha256=split.dataset_content_sha256,
                manifest_path=str(artifacts.materialize(split.manifest_uri)),
                manifest_sha256=split.manifest_sha256,
                part=evaluation_set.part.value.lower(),
            )
        version = repository.dataset_version_location(evaluation_set.dataset_version)
        if version is None:
            raise DependencyUnavailable(
                FailureReason.DATA_UNAVAILABLE,
                f"no DatasetVersioned has announced {evaluation_set.dataset_version} (yet)",
            )
        return RowSource(
            set_key=evaluation_set.key,
            dataset_path=str(artifacts.materialize(version.artifact_uri)),
            dataset_sha256=version.content_sha256,
        )
    except ArtifactError as error:
        raise EvaluationFailed(FailureReason.DATA_UNAVAILABLE, str(error)) from error


def _choose_baseline(
    evaluation: Evaluation, model: ModelSpec, deps: EvaluatorDeps
) -> BaselineChoice:
    """The explicit baseline, else production, else the bare base model."""
    try:
        if evaluation.requested_baseline:
            registered: RegisteredCheckpoint | None = deps.registry.checkpoint(
                evaluation.requested_baseline
            )
            kind = BaselineKind.EXPLICIT_CHECKPOINT
        else:
            registered = deps.registry.production(model.name)
            kind = BaselineKind.PRODUCTION_CHECKPOINT
    except UnknownToRegistry as error:
        raise EvaluationFailed(FailureReason.BASELINE_UNAVAILABLE, str(error)) from error
    if registered is not None:
        subject = ScoredSubject(
            base_model=registered.base_model,
            adapter_sha256=registered.sha256,
            adapter_uri=registered.artifact_uri,
        )
        return BaselineChoice(kind, subject, registered.name)
    base = model.base_model
    if not base.files_sha256:
        # the registry resolves it on CreateModel; computed here only if it did not
        try:
            resolved = resolve_base_model(
                model_name=base.model_name,
                model_path=base.model_path,
                models_root=deps.models_root,
                allowed_roots=deps.allowed_roots,
            )
        except ModelingError as error:
            raise EvaluationFailed(FailureReason.MODEL_LOAD_FAILED, str(error)) from error
        base = type(base)(
            model_name=base.model_name,
            model_path=base.model_path,
            files_sha256=resolved.files_sha256,
            revision=base.revision,
            architecture=resolved.architecture,
        )
    return BaselineChoice(BaselineKind.BASE_MODEL, ScoredSubject(base_model=base))


def _training_max_length(adapter_folder: Path, default: int) -> int:
    """The token limit the adapter was trained with (its ``tuneline_adapter.json``), so that
    candidate and baseline are scored on the examples exactly as training saw them; the
    service's ``default`` when the folder does not say (the engine then refuses the folder)."""
    try:
        trained = read_adapter_metadata(adapter_folder).max_seq_length
    except ModelingError:
        return default
    return trained if trained > 0 else default


@dataclass
class _Scored:
    """Candidate and baseline outcomes per set, and which baseline sets were reused."""

    candidate: dict[str, ExampleOutcomes]
    baseline: dict[str, ExampleOutcomes]
    baseline_reused: bool
    new_outcomes: list[tuple[str, str, ExampleOutcomes]]
    result: ScoringResult


def _score(
    deps: EvaluatorDeps,
    evaluation: Evaluation,
    *,
    model: ModelSpec,
    choice: BaselineChoice,
    sources: Sequence[RowSource],
    policy: EvaluationPolicy,
    scoring: ScoringSettings,
    candidate_path: Path,
    data_checks: DataChecksJob | None,
) -> _Scored:
    """Score the candidate, and the baseline on every set it has no stored outcomes for
    under the same ``scoring`` settings and conditions (others are scored again, not paired)."""
    fingerprint = scoring.fingerprint(model.task_type)
    candidate_subject = ScoredSubject(
        base_model=evaluation.checkpoint.base_model,
        adapter_sha256=evaluation.checkpoint.sha256,
        adapter_uri=evaluation.checkpoint.artifact_uri,
    )
    baseline_key = choice.subject.store_key
    stored: dict[str, ExampleOutcomes] = {}
    with deps.sessions() as session:
        repository = EvaluatorRepository(session)
        for source in sources:
            found = repository.stored_outcomes(baseline_key, source.set_key, fingerprint)
            if found is None:
                continue
            try:
                stored[source.set_key] = deps.outcome_artifacts.read(found)
            except OutcomesUnreadable as error:
                log.warning(
                    "stored baseline unreadable; scoring it again", extra={"error": str(error)}
                )
    same_subject = baseline_key == candidate_subject.store_key
    subjects = [
        SubjectSpec(
            candidate_subject.store_key,
            SubjectRole.CANDIDATE,
            candidate_subject.base_model,
            str(candidate_path),
        )
    ]
    baseline_needed = not same_subject and len(stored) < len(sources)
    if baseline_needed:
        baseline_path = ""
        if choice.subject.adapter_uri:
            baseline_path = str(
                _local_folder(
                    deps.artifacts,
                    choice.subject.adapter_uri,
                    choice.subject.adapter_sha256,
                    FailureReason.BASELINE_UNAVAILABLE,
                    f"the baseline checkpoint {choice.checkpoint}",
                )
            )
        subjects.append(
            SubjectSpec(
                baseline_key, SubjectRole.BASELINE, choice.subject.base_model, baseline_path
            )
        )
    job = ScoringJob(
        evaluation=evaluation.name,
        task_type=model.task_type,
        subjects=tuple(subjects),
        sets=tuple(sources),
        scoring=scoring,
        batch_size=policy.batch_size,
        models_root=str(deps.models_root),
        allowed_roots=tuple(str(r) for r in deps.allowed_roots),
        device=deps.device,
        parity=parity_job(evaluation, sources[0], deps.defaults.parity_max_examples),
        data_checks=data_checks,
    )
    try:
        result = deps.score(job)
    except BaseException:
        discard_merged_staging(job.parity)
        raise
    candidate = {
        s.set_key: result.outcomes[(candidate_subject.store_key, s.set_key)] for s in sources
    }
    new = [(candidate_subject.store_key, key, outcomes) for key, outcomes in candidate.items()]
    if same_subject:
        baseline = dict(candidate)
    elif baseline_needed:
        baseline = {s.set_key: result.outcomes[(baseline_key, s.set_key)] for s in sources}
        new += [
            (baseline_key, key, outcomes) for key, outcomes in baseline.items() if key not in stored
        ]
    else:
        baseline = stored
    if deps.metrics and not same_subject:
        source_label = "computed" if baseline_needed else "reused"
        deps.metrics.baseline_results.labels(source_label).inc(len(sources))
    return _Scored(
        candidate=candidate,
        baseline=baseline,
        baseline_reused=not baseline_needed,
        new_outcomes=new,
        result=result,
    )


def _finish(deps: EvaluatorDeps, evaluation: Evaluation) -> None:
    """Commit a terminal evaluation with its events, then count it."""
    with deps.sessions.begin() as session:
        EvaluatorRepository(session).save(evaluation)
        stage_event(
            session,
            protos.evaluation_completed_event(evaluation),
            source=deps.source,
            subject=evaluation.name,
        )
        if evaluation.verdict is Verdict.REGRESSED:
            stage_event(
                session,
                protos.regression_detected_event(evaluation),
                source=deps.source,
                subject=evaluation.name,
            )
    deps.on_events_staged()
    if deps.metrics:
        deps.metrics.record_terminal(evaluation)
    log.info(
        "evaluation finished",
        extra={
            "evaluation": evaluation.name,
            "checkpoint": evaluation.checkpoint.name,
            "verdict": evaluation.verdict.value if evaluation.verdict else "",
            "failure": evaluation.failure_message[:500],
        },
    )


def fail_evaluation(
    deps: EvaluatorDeps, evaluation: Evaluation, reason: FailureReason, message: str
) -> Evaluation:
    """End a claimed evaluation as FAILED (an unexpected error), with its event."""
    failed = evaluation.failed(reason, message, deps.clock())
    _finish(deps, failed)
    return failed


def return_to_queue(deps: EvaluatorDeps, evaluation: Evaluation) -> None:
    """Put a claimed evaluation back in the queue (the service stops while it runs)."""
    with deps.sessions.begin() as session:
        EvaluatorRepository(session).save(evaluation.requeued())


def _defer_or_fail(
    deps: EvaluatorDeps, evaluation: Evaluation, waiting: DependencyUnavailable
) -> Evaluation | None:
    """Back to the queue to wait a little; FAILED once it has waited long enough."""
    now = deps.clock()
    with deps.sessions() as session:
        since = EvaluatorRepository(session).waiting_since(evaluation.name) or now
    if (now - since).total_seconds() >= deps.dependency_wait_seconds:
        failed = evaluation.failed(
            waiting.reason,
            f"{waiting.message}; gave up after waiting {deps.dependency_wait_seconds:.0f} s",
            now,
        )
        _finish(deps, failed)
        return failed
    with deps.sessions.begin() as session:
        EvaluatorRepository(session).defer(
            evaluation.requeued(), until=now + _retry_delay(now - since), waiting_since=since
        )
    log.info(
        "evaluation waits for a dependency",
        extra={"evaluation": evaluation.name, "waiting_for": waiting.message},
    )
    return None


def run_evaluation(deps: EvaluatorDeps, evaluation: Evaluation) -> Evaluation | None:
    """Run a claimed (RUNNING) evaluation to its verdict and commit it with its events.

    Returns the terminal evaluation, or ``None`` when it went back to the queue to wait for a
    dependency. Raises only what stops the service (the worker being stopped).
    """
    try:
        model = _resolve_model(deps, evaluation)
        evaluation = evaluation.resolved(model)
        with deps.sessions() as session:
            repository = EvaluatorRepository(session)
            policy = effective_policy(repository, model.name, deps.defaults)
            sources = [_row_source(repository, deps.artifacts, s) for s in model.evaluation_sets]
        choice = _choose_baseline(evaluation, model, deps)
        candidate_path = _local_folder(
            deps.artifacts,
            evaluation.checkpoint.artifact_uri,
            evaluation.checkpoint.sha256,
            FailureReason.CHECKPOINT_UNAVAILABLE,
            "the candidate checkpoint",
        )
        scoring = ScoringSettings(
            max_generation_examples=policy.max_generation_examples,
            max_new_tokens=policy.max_new_tokens,
            max_seq_length=_training_max_length(candidate_path, deps.defaults.max_seq_length),
            conditions=deps.conditions() if deps.conditions else None,
        )
        checks_job = _data_checks_job(deps, evaluation)
        scored = _score(
            deps,
            evaluation,
            model=model,
            choice=choice,
            sources=sources,
            policy=policy,
            scoring=scoring,
            candidate_path=candidate_path,
            data_checks=checks_job,
        )
        sets = [
            PairedSet(s.label, scored.candidate[source.set_key], scored.baseline[source.set_key])
            for s, source in zip(model.evaluation_sets, sources, strict=True)
        ]
        try:
            result = judge(sets, model.gate_policy)
        except ExampleMismatch as error:
            raise EvaluationFailed(
                FailureReason.INTERNAL, f"candidate and baseline outcomes differ: {error}"
            ) from error
        baseline = Baseline(
            kind=choice.kind,
            checkpoint=choice.checkpoint,
            checkpoint_sha256=choice.subject.adapter_sha256,
            base_model=choice.subject.base_model,
            metrics=result.baseline_metrics,
            reused=scored.baseline_reused,
        )
        finished = evaluation.succeeded(
            result,
            baseline,
            len(scored.candidate[sources[0].set_key]),
            deps.clock(),
            data_checks=scored.result.data_checks or _not_checked(checks_job),
        )
        finished = replace(finished, parity=check_parity(deps.artifacts, model, scored.result))
        _store_outcomes(deps, evaluation, model, scoring.fingerprint(model.task_type), scored)
        if deps.metrics and scored.result.seconds > 0:
            deps.metrics.examples_per_second.labels(scored.result.device).set(
                scored.result.examples_scored / scored.result.seconds
            )
    except DependencyUnavailable as waiting:
        return _defer_or_fail(deps, evaluation, waiting)
    except (EvaluationFailed, ScoringFailed) as failure:
        finished = evaluation.failed(failure.reason, failure.message, deps.clock())
    _finish(deps, finished)
    return finished


def _not_checked(checks_job: DataChecksJob | None) -> DataChecks:
    if checks_job is None:
        return skipped(
            "", "the candidate's lineage names no split whose rows the evaluator can read"
        )
    return skipped(checks_job.training_split, "the scorer did not run the data checks")


def _data_checks_job(deps: EvaluatorDeps, evaluation: Evaluation) -> DataChecksJob | None:
    """Where the candidate's training rows are: the train part of its lineage's split (None
    when the lineage names no split the evaluator has seen announced)."""
    training_split = protos.training_split_of(evaluation.checkpoint)
    if not training_split:
        return None
    with deps.sessions() as session:
        split = EvaluatorRepository(session).split_location(training_split)
    if split is None:
        return None
    try:
        training = RowSource(
            set_key=f"{training_split}#train",
            dataset_path=str(deps.artifacts.materialize(split.dataset_artifact_uri)),
            dataset_sha256=split.dataset_content_sha256,
            manifest_path=str(deps.artifacts.materialize(split.manifest_uri)),
            manifest_sha256=split.manifest_sha256,
            part="train",
        )
    except ArtifactError as error:
        log.warning("training rows unavailable", extra={"error": str(error)})
        return None
    return DataChecksJob(training, training_split, deps.defaults.data_checks)


def _resolve_model(deps: EvaluatorDeps, evaluation: Evaluation) -> ModelSpec:
    try:
        model = deps.registry.model(evaluation.model)
    except UnknownToRegistry as error:
        raise EvaluationFailed(
            FailureReason.DATA_UNAVAILABLE,
            f"{evaluation.model} is not registered: no evaluation set to evaluate on",
        ) from error
    task = evaluation.checkpoint.task_type
    if task is not None and task is not model.task_type:
        raise EvaluationFailed(
            FailureReason.CHECKPOINT_UNAVAILABLE,
            f"{evaluation.checkpoint.name} is a {task.value} checkpoint; {model.name} is "
            f"{model.task_type.value}",
        )
    return model


def _store_outcomes(
    deps: EvaluatorDeps,
    evaluation: Evaluation,
    model: ModelSpec,
    fingerprint: str,
    scored: _Scored,
) -> None:
    """Keep every newly scored outcome, so none is ever computed twice."""
    written = [
        deps.outcome_artifacts.write(
            outcomes,
            subject_key=subject_key,
            set_key=set_key,
            scoring_fingerprint=fingerprint,
            computed_by=evaluation.name,
        )
        for subject_key, set_key, outcomes in scored.new_outcomes
    ]
    with deps.sessions.begin() as session:
        repository = EvaluatorRepository(session)
        for stored in written:
            repository.add_outcomes(stored, task_type=model.task_type.value, now=deps.clock())
