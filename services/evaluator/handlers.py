"""One function per evaluator command or event, taking its dependencies as parameters.

* Events (applied in the consumer loop's transaction): a CheckpointReady records the checkpoint
  and, when the model's checkpoint selection takes it, a QUEUED evaluation — nothing more, so
  the partition is never blocked by minutes of scoring; SplitCreated / DatasetVersioned record
  where evaluation sets' rows are.
* Commands (gRPC): EvaluateCheckpoint, GetEvaluation, ListEvaluations, Set/GetEvaluationPolicy.
* Running (the supervisor's thread): :func:`run_evaluation` takes a claimed evaluation through
  the registry (model, gate, production), the stored baselines, the worker and the gate, and
  commits the result with its events (EvaluationCompleted, and RegressionDetected when it
  regressed) in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from services.evaluator.adapters import protos
from services.evaluator.adapters.metrics import EvaluatorMetrics
from services.evaluator.adapters.outcome_store import OutcomeArtifacts, OutcomesUnreadable
from services.evaluator.adapters.release import (
    check_parity,
    discard_merged_staging,
    parity_job,
)
from services.evaluator.adapters.repository import (
    CHECKPOINT_READY_KEY,
    REQUEST_KEY,
    EvaluatorRepository,
)
from services.evaluator.adapters.scoring import (
    DataChecksJob,
    RowSource,
    ScoringFailed,
    ScoringJob,
    ScoringResult,
    SubjectRole,
    SubjectSpec,
)
from services.evaluator.domain.data_checks import DataCheckPolicy, DataChecks, skipped
from services.evaluator.domain.evaluation import (
    Baseline,
    BaselineChoice,
    BaselineKind,
    CheckpointRef,
    CheckpointSelection,
    DependencyUnavailable,
    Evaluation,
    EvaluationFailed,
    EvaluationPolicy,
    EvaluationSet,
    FailureReason,
    ModelSpec,
    RegisteredCheckpoint,
    ScoredSubject,
    ScoringConditions,
    ScoringSettings,
    UnknownToRegistry,
    best_at_end,
    best_at_end_reason,
    check_evaluation_name,
    check_model_name,
    check_registry_checkpoint_name,
    check_trainer_checkpoint_name,
    evaluation_sets_key,
    model_of_policy,
    new_evaluation_name,
    resolve_policy,
)
from services.evaluator.domain.gate import PairedSet, Verdict, judge
from services.evaluator.domain.outcomes import ExampleMismatch, ExampleOutcomes
from shared.artifacts import ArtifactError, ArtifactStore
from shared.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    Unavailable,
)
from shared.events import ReceivedEvent, stage_event
from shared.modeling import (
    ModelingError,
    folder_sha256,
    read_adapter_metadata,
    resolve_base_model,
)
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size
from shared.request_ids import refuse_reused_request_id, request_id_violations
from shared.running_claims import RunningClaims
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2 as dataset_events_pb2
from tuneline.splitter.v1 import events_pb2 as splitter_events_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events_pb2

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class RegistryLookup(Protocol):
    """What the evaluator asks the registry (see ``adapters.registry_gateway``)."""

    def model(self, name: str) -> ModelSpec: ...

    def production(self, model: str) -> RegisteredCheckpoint | None: ...

    def checkpoint(self, name: str) -> RegisteredCheckpoint: ...


@dataclass(frozen=True)
class ServiceDefaults:
    """What applies when a model has no evaluation policy, and service-wide scoring limits."""

    checkpoint_selection: CheckpointSelection = CheckpointSelection.BEST_AT_END
    max_seq_length: int = 512
    #: Rows of the primary set the parity check compares merged and unmerged on (0: none).
    parity_max_examples: int = 64
    #: Contamination, coverage and shift of the primary set against the training rows.
    data_checks: DataCheckPolicy = field(default_factory=DataCheckPolicy)


def effective_policy(
    repository: EvaluatorRepository, model: str, defaults: ServiceDefaults
) -> EvaluationPolicy:
    """The model's policy, or the service defaults when none was set."""
    return repository.policy(model) or EvaluationPolicy(
        model=model, checkpoint_selection=defaults.checkpoint_selection
    )


# -- events -----------------------------------------------------------------------------------


def on_checkpoint_ready(
    event: ReceivedEvent[trainer_events_pb2.CheckpointReady],
    session: Session,
    *,
    defaults: ServiceDefaults,
    metrics: EvaluatorMetrics | None = None,
    clock: Clock = utc_now,
) -> Evaluation | None:
    """Record the checkpoint; queue its evaluation when the model's selection takes it.

    One evaluation per checkpoint: a second CheckpointReady for the same checkpoint (a
    redelivery with a new event id, a re-announcement after a restart) queues nothing.
    """
    repository = EvaluatorRepository(session)
    checkpoint = repository.record_checkpoint(event.message)
    if not checkpoint.target_model:
        log.warning("checkpoint without a target model", extra={"checkpoint": checkpoint.name})
        return None
    policy = effective_policy(repository, checkpoint.target_model, defaults)
    selection = policy.checkpoint_selection
    if selection is CheckpointSelection.BEST_AT_END:
        chosen = _best_at_end(repository, checkpoint)
    elif selection.selects(is_best=checkpoint.is_best, is_final=checkpoint.is_final):
        chosen = (checkpoint, selection.reason(checkpoint))
    else:
        chosen = None
    if chosen is None:
        if metrics:
            metrics.skipped.labels(checkpoint.target_model.rsplit("/", 1)[-1]).inc()
        return None
    target, reason = chosen
    dedupe_key = CHECKPOINT_READY_KEY + target.name
    if repository.by_dedupe_key(dedupe_key) is not None:
        return None
    evaluation = Evaluation(
        name=new_evaluation_name(),
        checkpoint=target,
        model=target.target_model,
        create_time=clock(),
        task_type=target.task_type,
        selection=selection,
        selection_reason=reason,
    )
    repository.add_evaluation(evaluation, dedupe_key=dedupe_key)
    return evaluation


def _best_at_end(
    repository: EvaluatorRepository, announced: CheckpointRef
) -> tuple[CheckpointRef, str] | None:
    """The job's best checkpoint, once both it and the job's final checkpoint are known.

    The final CheckpointReady names the best; the two events travel under different record
    keys, so either may arrive first: whichever completes the pair queues the evaluation.
    """
    if announced.is_final:
        final: CheckpointRef | None = announced
    else:
        final = repository.final_checkpoint_of(announced.training_job)
    if final is None:
        return None
    wanted = best_at_end(final)
    if wanted == announced.name:
        chosen: CheckpointRef | None = announced
    elif announced.is_final:
        chosen = repository.checkpoint(wanted)
    else:
        chosen = None  # not the best of its job
    if chosen is None:
        return None
    return chosen, best_at_end_reason(chosen, final)


def on_split_created(
    event: ReceivedEvent[splitter_events_pb2.SplitCreated], session: Session
) -> None:
    """Remember where a split's manifest and rows are (evaluation sets name splits)."""
    EvaluatorRepository(session).record_split(event.message)


def on_dataset_versioned(
    event: ReceivedEvent[dataset_events_pb2.DatasetVersioned], session: Session
) -> None:
    """Remember where a dataset version's rows are (golden sets may name a whole version)."""
    EvaluatorRepository(session).record_dataset_version(event.message)


# -- commands ---------------------------------------------------------------------------------


def _check_evaluate_request(
    checkpoint: str, model: str, baseline_checkpoint: str, request_id: str
) -> None:
    violations = []
    if not checkpoint:
        violations.append(FieldViolation("checkpoint", "required", "REQUIRED"))
    if len(request_id) > 200:
        violations.append(FieldViolation("request_id", "at most 200 characters", "TOO_LONG"))
    if violations:
        raise InvalidArgument("invalid EvaluateCheckpoint request", violations)
    check_trainer_checkpoint_name(checkpoint, "checkpoint")
    if model:
        check_model_name(model, "model")
    if baseline_checkpoint:
        check_registry_checkpoint_name(baseline_checkpoint, "baseline_checkpoint")


def _model_to_evaluate_for(
    registry: RegistryLookup, model_name: str, candidate: CheckpointRef
) -> ModelSpec:
    """The registry's model, checked to be one the candidate can be evaluated for."""
    try:
        spec = registry.model(model_name)
    except UnknownToRegistry:
        raise NotFound("model", model_name) from None
    except DependencyUnavailable as error:
        raise Unavailable(error.message) from error
    if not spec.evaluation_set.dataset_version:
        raise FailedPrecondition(
            f"{model_name} has no evaluation set",
            [PreconditionViolation("NO_EVALUATION_SET", model_name, "the registry model has none")],
        )
    if candidate.task_type is not None and candidate.task_type is not spec.task_type:
        raise FailedPrecondition(
            f"{candidate.name} is a {candidate.task_type.value} checkpoint; {model_name} is "
            f"{spec.task_type.value}",
            [PreconditionViolation("TASK_TYPE_MISMATCH", candidate.name, "task types differ")],
        )
    return spec


def evaluate_checkpoint(
    session: Session,
    registry: RegistryLookup,
    *,
    checkpoint: str,
    model: str = "",
    baseline_checkpoint: str = "",
    force: bool = False,
    request_id: str = "",
    clock: Clock = utc_now,
) -> tuple[Evaluation, bool]:
    """Queue an evaluation of ``checkpoint``; returns it and whether this call created it.

    Idempotent: with a ``request_id`` seen before, the evaluation that request created; without
    ``force``, an existing evaluation (not failed) of the same checkpoint sha256 for the same
    model on the same evaluation set versions.
    """
    _check_evaluate_request(checkpoint, model, baseline_checkpoint, request_id)
    repository = EvaluatorRepository(session)
    if request_id:
        earlier = repository.by_dedupe_key(REQUEST_KEY + request_id)
        if earlier is not None:
            return earlier, False
    candidate = repository.checkpoint(checkpoint)
    if candidate is None:
        raise NotFound("checkpoint", checkpoint)
    model_name = model or candidate.target_model
    if not model_name:
        raise FailedPrecondition(
            "the checkpoint names no target model; say which model's gate applies",
            [PreconditionViolation("NO_TARGET_MODEL", checkpoint, "set the request's model")],
        )
    spec = _model_to_evaluate_for(registry, model_name, candidate)
    if not force:
        same = repository.same_evaluation(
            candidate.sha256, model_name, evaluation_sets_key(spec.evaluation_sets)
        )
        if same is not None:
            return same, False
    if baseline_checkpoint:
        try:
            registry.checkpoint(baseline_checkpoint)
        except UnknownToRegistry:
            raise NotFound("checkpoint", baseline_checkpoint) from None
        except DependencyUnavailable as error:
            raise Unavailable(error.message) from error
    evaluation = Evaluation(
        name=new_evaluation_name(),
        checkpoint=candidate,
        model=model_name,
        create_time=clock(),
        requested_baseline=baseline_checkpoint,
        request_id=request_id,
        selection_reason="requested by EvaluateCheckpoint",
    ).resolved(spec)
    repository.add_evaluation(
        evaluation, dedupe_key=REQUEST_KEY + request_id if request_id else None
    )
    return evaluation, True


def get_evaluation(session: Session, name: str) -> Evaluation:
    check_evaluation_name(name)
    evaluation = EvaluatorRepository(session).evaluation(name)
    if evaluation is None:
        raise NotFound("evaluation", name)
    return evaluation


def list_evaluations(
    session: Session,
    *,
    page_size: int = 0,
    page_token: str = "",
    model: str = "",
    checkpoint: str = "",
    verdict: Verdict | None = None,
) -> tuple[list[Evaluation], str]:
    """A page of evaluations, newest first, and the next page's token ("" on the last)."""
    if model:
        check_model_name(model, "model")
    if checkpoint:
        check_trainer_checkpoint_name(checkpoint, "checkpoint")
    size = resolve_page_size(page_size)
    query = {"model": model, "checkpoint": checkpoint, "verdict": verdict.value if verdict else ""}
    position = decode_page_token(page_token, query)
    if position is not None and (len(position) != 1 or not isinstance(position[0], int)):
        raise InvalidArgument(
            "page_token is not a token this service issued",
            [FieldViolation("page_token", "not a valid page token", "INVALID_PAGE_TOKEN")],
        )
    rows = EvaluatorRepository(session).list_evaluations(
        model=model,
        checkpoint=checkpoint,
        verdict=verdict,
        before_seq=int(position[0]) if position else None,
        limit=size + 1,
    )
    page = rows[:size]
    next_token = encode_page_token(query, [page[-1][0]]) if len(rows) > size else ""
    return [evaluation for _seq, evaluation in page], next_token


def set_evaluation_policy(
    session: Session,
    *,
    name: str,
    checkpoint_selection: CheckpointSelection | None,
    max_generation_examples: int,
    max_new_tokens: int,
    batch_size: int,
    request_id: str = "",
    clock: Clock = utc_now,
) -> EvaluationPolicy:
    """Create or replace a model's evaluation policy; returns it with defaults resolved.

    A repeated ``request_id`` changes nothing (not even a policy someone else set since) and
    returns the policy as stored; the same id about another model is refused."""
    if problems := request_id_violations(request_id):
        raise InvalidArgument("request_id is invalid", problems)
    if not name:
        raise InvalidArgument(
            "evaluation_policy.name is required",
            [FieldViolation("evaluation_policy.name", "required", "REQUIRED")],
        )
    model = model_of_policy(name, "evaluation_policy.name")
    repository = EvaluatorRepository(session)
    if request_id:
        applied_to = repository.policy_request(request_id)
        if applied_to is not None:
            refuse_reused_request_id(applied_to, name)
            stored = repository.policy(model)
            if stored is None:  # policies are never deleted; kept for a clear error all the same
                raise NotFound("EvaluationPolicy", name)
            return stored
    policy = resolve_policy(
        model,
        checkpoint_selection=checkpoint_selection,
        max_generation_examples=max_generation_examples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        update_time=clock(),
    )
    if request_id:
        assert policy.update_time is not None
        repository.record_policy_request(request_id, name, policy.update_time)
    repository.set_policy(policy)
    return policy


def get_evaluation_policy(
    session: Session, name: str, defaults: ServiceDefaults
) -> EvaluationPolicy:
    model = model_of_policy(name, "name")
    return effective_policy(EvaluatorRepository(session), model, defaults)


# -- running an evaluation --------------------------------------------------------------------


@dataclass
class RunDependencies:
    """What running an evaluation needs; the supervisor builds it once."""

    sessions: sessionmaker[Session]
    registry: RegistryLookup
    artifacts: ArtifactStore
    score: Callable[[ScoringJob], ScoringResult]
    source: str
    models_root: Path
    allowed_roots: Sequence[Path] = ()
    device: str | None = None
    defaults: ServiceDefaults = field(default_factory=ServiceDefaults)
    dependency_wait_seconds: float = 120.0
    metrics: EvaluatorMetrics | None = None
    clock: Clock = utc_now
    #: Which device, dtype and library versions the engine scores under (asked of the worker;
    #: part of the key of stored outcomes). ``None``: not known, as with fake scorers.
    conditions: Callable[[], ScoringConditions] | None = None
    #: Called after a commit that staged events (wakes the outbox relay).
    on_events_staged: Callable[[], None] = lambda: None
    #: Which RUNNING evaluations a live replica works on (PostgreSQL advisory locks), so a
    #: replica that starts re-queues only those whose replica is gone.
    claims: RunningClaims = field(default_factory=lambda: RunningClaims(None, "evaluations"))

    @property
    def outcome_artifacts(self) -> OutcomeArtifacts:
        return OutcomeArtifacts(self.artifacts)


def _retry_delay(waited: timedelta) -> timedelta:
    """Ask again soon at first, then every ten seconds."""
    return timedelta(seconds=min(10.0, 1.0 + waited.total_seconds() / 4))


def requeue_interrupted(deps: RunDependencies) -> int:
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


def claim_next(deps: RunDependencies) -> Evaluation | None:
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


def release_claim(deps: RunDependencies, evaluation: Evaluation) -> None:
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
    evaluation: Evaluation, model: ModelSpec, deps: RunDependencies
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
    deps: RunDependencies,
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


def _finish(deps: RunDependencies, evaluation: Evaluation) -> None:
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
    deps: RunDependencies, evaluation: Evaluation, reason: FailureReason, message: str
) -> Evaluation:
    """End a claimed evaluation as FAILED (an unexpected error), with its event."""
    failed = evaluation.failed(reason, message, deps.clock())
    _finish(deps, failed)
    return failed


def return_to_queue(deps: RunDependencies, evaluation: Evaluation) -> None:
    """Put a claimed evaluation back in the queue (the service stops while it runs)."""
    with deps.sessions.begin() as session:
        EvaluatorRepository(session).save(evaluation.requeued())


def _defer_or_fail(
    deps: RunDependencies, evaluation: Evaluation, waiting: DependencyUnavailable
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


def run_evaluation(deps: RunDependencies, evaluation: Evaluation) -> Evaluation | None:
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


def _data_checks_job(deps: RunDependencies, evaluation: Evaluation) -> DataChecksJob | None:
    """Where the candidate's training rows are: the train part of its lineage's split (None
    when the lineage names no split the evaluator has seen announced)."""
    lineage = common_pb2.Lineage.FromString(evaluation.checkpoint.lineage)
    if not lineage.split:
        return None
    with deps.sessions() as session:
        split = EvaluatorRepository(session).split_location(lineage.split)
    if split is None:
        return None
    try:
        training = RowSource(
            set_key=f"{lineage.split}#train",
            dataset_path=str(deps.artifacts.materialize(split.dataset_artifact_uri)),
            dataset_sha256=split.dataset_content_sha256,
            manifest_path=str(deps.artifacts.materialize(split.manifest_uri)),
            manifest_sha256=split.manifest_sha256,
            part="train",
        )
    except ArtifactError as error:
        log.warning("training rows unavailable", extra={"error": str(error)})
        return None
    return DataChecksJob(training, lineage.split, deps.defaults.data_checks)


def _resolve_model(deps: RunDependencies, evaluation: Evaluation) -> ModelSpec:
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
    deps: RunDependencies,
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
