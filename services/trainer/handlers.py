"""One function per trainer command or event, taking its dependencies as parameters.

Each runs inside the caller's session (one transaction): the state change and the events it
stages in the outbox commit together. Two kinds of callers:

* the gRPC servicer and the SplitCreated subscription — create, read, list, cancel jobs; set,
  read, list policies; read checkpoints;
* the worker supervisor — record what workers report: started, progress, checkpoints, the end
  (succeeded, cancelled, failed), OOM retries, crashes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Generic, Protocol, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.trainer.adapters import protos
from services.trainer.adapters.engine.plan import (
    WorkerCheckpoint,
    WorkerFinished,
    WorkerOomRetry,
    WorkerProgress,
    WorkerStarted,
)
from services.trainer.adapters.repository import (
    Pricing,
    TrainerRepository,
    checkpoint_from_row,
    dumps,
    job_cost,
    job_from_row,
    policy_from_row,
    utc,
)
from services.trainer.adapters.tables import CheckpointRow, JobRow, PolicyRow
from services.trainer.domain import (
    JOB_PREFIX,
    POLICY_PREFIX,
    RESOURCE_ID,
    BaseModelRef,
    Budget,
    BudgetHolder,
    CheckpointRecord,
    DatasetAuditInfo,
    FailureReason,
    JobConfig,
    JobState,
    KeptCheckpoint,
    LossPoint,
    Owner,
    Progress,
    SplitInfo,
    StopReason,
    TaskType,
    TrainingEstimate,
    TrainingJob,
    TrainingPolicy,
    budget_breaches,
    can_transition,
    checkpoint_name,
    checkpoints_to_delete,
    devices_in,
    disk_full_wait,
    effective_budget,
    estimate_training,
    from_jsonable,
    month_start,
    planned_steps,
    policy_job_id,
    resolve_adapter,
    resolve_checkpointing,
    resolve_hyperparameters,
    resolve_stopping,
    steps_per_epoch,
    target_modules_for,
    validate_dataset_name,
    validate_job_config,
    validate_model_name,
    validate_split_name,
)
from shared.artifacts import ArtifactError
from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    Unavailable,
)
from shared.events import stage_event
from shared.local_paths import without_local_paths
from shared.modeling import (
    InvalidModelReference,
    ModelingError,
    ModelNotFound,
    ModelRefused,
    ResolvedModel,
)
from shared.modeling.packaged import PACKAGED_MODELS
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size
from shared.protobuf import duration_from_seconds, timestamp_from_datetime
from shared.request_ids import refuse_reused_request_id, request_id_violations
from tuneline.trainer.v1 import events_pb2

# -- dependencies ------------------------------------------------------------------------------


class Models(Protocol):
    """Resolves base models (see :class:`services.trainer.adapters.models.ModelCatalog`)."""

    def resolve(self, ref: BaseModelRef) -> ResolvedModel: ...

    def max_length(self, model: ResolvedModel) -> int | None: ...


class SplitLookup(Protocol):
    """Asks the splitter about a split (None: unknown; LookupError: cannot ask)."""

    def fetch(self, name: str) -> SplitInfo | None: ...


class TargetModels(Protocol):
    """Asks the registry about a model: None when it does not exist, else its budget (empty
    when it has none); LookupError when the registry cannot be asked. See
    :class:`services.trainer.adapters.registry.RegistryModels`."""

    def lookup(self, name: str) -> Budget | None: ...


class TokenCounter(Protocol):
    """Counts a split's train tokens as training encodes them (see
    :class:`services.trainer.adapters.token_counts.SplitTokenCounter`); raises
    ``DataUnavailable`` when the split's files cannot be read."""

    def train_tokens(
        self, split: SplitInfo, model: ResolvedModel, max_length: int
    ) -> TrainTokenCount: ...


class TrainTokenCount(Protocol):
    @property
    def examples(self) -> int: ...

    @property
    def tokens(self) -> int: ...


@dataclass(frozen=True)
class Context:
    """What handlers need besides the session."""

    models: Models
    pricing: Pricing
    source: str
    software_versions: dict[str, str]
    splits: SplitLookup | None = None
    #: None: target models are not checked (handler tests about other things).
    target_models: TargetModels | None = None
    #: None: CreateTrainingJob with ``validate_only`` is refused as unavailable.
    token_counter: TokenCounter | None = None
    #: Throughput an estimate assumes with no earlier run to measure (deliberately low).
    default_tokens_per_device_second: float = 100.0
    #: Fixed device time per run an estimate assumes with no earlier run to measure it.
    default_overhead_device_seconds: float = 0.0
    #: Policies make a split's jobs only once its dataset version's ``DatasetAudited`` arrived
    #: (the service's default); False makes them on ``SplitCreated`` (handler tests).
    wait_for_dataset_audit: bool = False


@dataclass(frozen=True)
class CreateJobCommand:
    """A CreateTrainingJob request, converted."""

    job_id: str
    request_id: str
    target_model: str
    split: str
    task_type: TaskType | None
    config: JobConfig
    #: Violations found while converting the request (e.g. unknown enum numbers).
    violations: tuple[FieldViolation, ...] = ()


def _now() -> datetime:
    return datetime.now(UTC)


# -- creating jobs -----------------------------------------------------------------------------

#: ``PreconditionViolation.type`` of a base model missing from the server's models root (or
#: from the path named).
MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
#: ``PreconditionViolation.type`` of a base model the server will not load (pickle weights,
#: remote code …), and ``FieldViolation.reason`` of a malformed name or path.
MODEL_REFUSED = "MODEL_REFUSED"
#: ``PreconditionViolation.type`` of a ``target_model`` the registry does not have.
TARGET_MODEL_NOT_FOUND = "TARGET_MODEL_NOT_FOUND"
#: ``PreconditionViolation.type`` of a budget a job would exceed; the subject is the budget's
#: holder (``models/{m}`` or ``trainingPolicies/{p}``), the description names the limit.
BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
#: ``PreconditionViolation.type`` of a split whose dataset version the label audit BLOCKED;
#: the subject is the version, the description the audit's rule, numbers and rows.
LABEL_AUDIT_BLOCKED = "LABEL_AUDIT_BLOCKED"


def _check_model(
    config: JobConfig,
    context: Context,
    prefix: str,
    violations: list[FieldViolation],
    unavailable: list[PreconditionViolation],
) -> ResolvedModel | None:
    """Resolve the base model, sorting what is wrong by whose it is (AIP-193).

    A reference that is malformed in itself (not a folder name, a relative path, a path outside
    the allowed roots) is the request's fault: a field violation, INVALID_ARGUMENT. A model the
    server lacks (not in its models root) or refuses to load (pickle weights, remote code …)
    is the server's state, which the request cannot fix: a precondition violation for
    FAILED_PRECONDITION (:func:`_refuse_unavailable`), ``MODEL_NOT_FOUND`` or ``MODEL_REFUSED``
    with the model as subject.
    """
    base = config.base_model
    if bool(base.model_name) == bool(base.model_path):
        return None  # validate_job_config reported it
    field = f"{prefix}.base_model.{'model_name' if base.model_name else 'model_path'}"
    subject = base.model_name or base.model_path
    try:
        model = context.models.resolve(base)
    except InvalidModelReference as error:
        violations.append(FieldViolation(field, str(error), MODEL_REFUSED))
        return None
    except ModelNotFound as error:
        unavailable.append(PreconditionViolation(MODEL_NOT_FOUND, subject, str(error)))
        return None
    except ModelRefused as error:
        description = str(error)
        if base.model_name in PACKAGED_MODELS:
            description += (
                f"; `tuneline models prepare --only {base.model_name} --force` rebuilds it"
            )
        unavailable.append(PreconditionViolation(MODEL_REFUSED, subject, description))
        return None
    if base.files_sha256 and base.files_sha256 != model.files_sha256:
        violations.append(
            FieldViolation(
                f"{prefix}.base_model.files_sha256",
                f"the model's files have sha256 {model.files_sha256}, not {base.files_sha256}",
                "MODEL_CHANGED",
            )
        )
    if target_modules_for(config.adapter, model.model_type) is None:
        violations.append(
            FieldViolation(
                f"{prefix}.adapter_spec.target_modules",
                f"no default target modules for model type {model.model_type!r}: name them, or "
                "use the ALL_LINEAR preset",
                "NO_DEFAULT_TARGETS",
            )
        )
    return model


def _refuse_unavailable(unavailable: list[PreconditionViolation]) -> None:
    """Raise FAILED_PRECONDITION for a base model the server lacks or refuses, if there is one
    (called once the request itself is known to be valid)."""
    if not unavailable:
        return
    missing = unavailable[0].type == MODEL_NOT_FOUND
    raise FailedPrecondition(
        f"base model {unavailable[0].subject!r} is "
        + ("not in the server's models" if missing else "refused by the server"),
        unavailable,
    )


def _require_target_model(target_model: str, context: Context) -> Budget:
    """Refuse a target model the registry does not have (a typo must not cost a training run);
    return the model's budget (empty when it has none, or when models are not checked).

    FAILED_PRECONDITION (``TARGET_MODEL_NOT_FOUND``, the model as subject) when the registry
    says it does not exist; UNAVAILABLE, which the caller may retry, when the registry cannot
    be asked: the job is not queued on a guess, and a budget is never skipped for want of an
    answer. The registry never deletes a model, so a model found once stays found.
    """
    if context.target_models is None:
        return Budget()
    try:
        budget = context.target_models.lookup(target_model)
    except LookupError as error:
        raise Unavailable(
            f"cannot check that the target model {target_model!r} exists: {error}; retry later"
        ) from error
    if budget is None:
        raise FailedPrecondition(
            f"target model {target_model!r} is not registered",
            [
                PreconditionViolation(
                    TARGET_MODEL_NOT_FOUND,
                    target_model,
                    "the registry has no such model; create it first (`tuneline models create`)",
                )
            ],
        )
    return budget


def _estimate(
    repo: TrainerRepository,
    job: TrainingJob,
    model: ResolvedModel,
    context: Context,
    *,
    required: bool,
) -> TrainingEstimate | None:
    """The job's estimate (see :func:`estimate_training_job`); None when this trainer does not
    estimate, or when the split (or the tokenizer) cannot be read and nothing ``required`` it:
    training would then fail on its own, with DATA_UNAVAILABLE or MODEL_LOAD_FAILED."""
    if context.token_counter is None:
        return None
    hp = job.config.hyperparameters
    try:
        counted = context.token_counter.train_tokens(job.split, model, hp.max_seq_length)
    except (ModelingError, ArtifactError) as error:  # DataUnavailable is a ModelingError
        if not required:
            return None
        raise FailedPrecondition(
            f"the split {job.split.name} cannot be read to count its tokens",
            [PreconditionViolation("SPLIT_UNREADABLE", job.split.name, str(error))],
        ) from None
    return estimate_training(
        train_examples=counted.examples,
        train_tokens=counted.tokens,
        total_steps=planned_steps(max(1, counted.examples), hp),
        hp=hp,
        samples=repo.throughput_samples(model.files_sha256),
        default_tokens_per_device_second=context.default_tokens_per_device_second,
        price_per_device_hour=context.pricing.price_per_device_hour,
        currency=context.pricing.currency,
        validation_examples=job.split.validation_rows,
        eval_every_n_steps=job.config.stopping.eval_every_n_steps,
        default_overhead_device_seconds=context.default_overhead_device_seconds,
    )


def _budget_check(
    repo: TrainerRepository,
    holders: list[BudgetHolder],
    estimate: TrainingEstimate | None,
    context: Context,
) -> tuple[Budget, list[PreconditionViolation]]:
    """The job's effective budget, and every limit its estimate would exceed: per run, the
    estimate; per month, this month's spend of the holder's jobs (cost so far, or the estimate
    of those still running or queued) plus the estimate, read while no other admission against
    the same holder can commit (the caller's transaction must store the job before ending)."""
    held = [h for h in holders if h.budget.limited]
    if not held:
        return Budget(), []
    currency = context.pricing.currency
    monthly = [h.holder for h in held if h.budget.per_month is not None]
    if monthly:  # held until the job is stored and committed (see serialise_admission)
        repo.serialise_admission(monthly)
    since = month_start(_now())
    month_to_date = {
        h.holder: repo.committed_spend(
            since=since,
            pricing=context.pricing,
            training_policy=h.holder if h.holder.startswith(POLICY_PREFIX) else "",
            target_model="" if h.holder.startswith(POLICY_PREFIX) else h.holder,
        )
        for h in held
        if h.budget.per_month is not None
    }
    breaches = budget_breaches(
        held,
        estimated_cost=estimate.cost.amount if estimate is not None else Decimal(0),
        month_to_date=month_to_date,
        currency=currency,
    )
    violations = [
        PreconditionViolation(BUDGET_EXCEEDED, b.holder, f"{b.limit}: {b.description}")
        for b in breaches
    ]
    return effective_budget(held, currency), violations


def _admitted(
    repo: TrainerRepository,
    job: TrainingJob,
    model: ResolvedModel,
    holders: list[BudgetHolder],
    context: Context,
    *,
    estimate_required: bool = False,
) -> TrainingJob:
    """The job with its estimate and effective budget; FAILED_PRECONDITION
    (``BUDGET_EXCEEDED``, one violation per limit) when it would exceed a budget."""
    limited = any(h.budget.limited for h in holders)
    estimate = _estimate(repo, job, model, context, required=estimate_required or limited)
    budget, violations = _budget_check(repo, holders, estimate, context)
    if violations:
        raise FailedPrecondition("the training job would exceed its budget", violations)
    return replace(job, budget=budget, estimate=estimate)


def _resolved_config(
    config: JobConfig, model: ResolvedModel, split: SplitInfo, context: Context
) -> JobConfig:
    hp = resolve_hyperparameters(config.hyperparameters, context.models.max_length(model))
    stopping = resolve_stopping(config.stopping, steps_per_epoch(max(1, split.train_rows), hp))
    return replace(
        config,
        base_model=BaseModelRef(
            model_name=config.base_model.model_name,
            model_path=config.base_model.model_path,
            files_sha256=model.files_sha256,
            revision=config.base_model.revision,
            architecture=model.architecture,
            model_type=model.model_type,
        ),
        adapter=resolve_adapter(config.adapter, split.task_type, model.model_type),
        hyperparameters=hp,
        stopping=stopping,
        checkpointing=resolve_checkpointing(config.checkpointing, stopping),
    )


def _new_job(
    *,
    name: str,
    target_model: str,
    split: SplitInfo,
    config: JobConfig,
    training_policy: str,
    request_id: str,
    context: Context,
) -> TrainingJob:
    hp = config.hyperparameters
    return TrainingJob(
        name=name,
        target_model=target_model,
        task_type=split.task_type,
        split=split,
        config=config,
        total_steps=planned_steps(max(1, split.train_rows), hp),
        training_policy=training_policy,
        software_versions=context.software_versions,
        request_id=request_id,
        micro_batch_size=hp.batch_size,
        accumulation_steps=hp.gradient_accumulation_steps,
    )


def _find_split(repo: TrainerRepository, name: str, context: Context) -> SplitInfo:
    known = repo.known_split(name)
    if known is not None:
        return known
    problem = "no SplitCreated announced it"
    if context.splits is not None:
        try:
            fetched = context.splits.fetch(name)
        except LookupError as error:
            problem = f"no SplitCreated announced it and {error}"
        else:
            if fetched is not None:
                repo.remember_split(fetched, now=_now())
                return fetched
            problem = "the splitter does not know it"
    raise FailedPrecondition(
        f"split {name} is not known to the trainer",
        [PreconditionViolation("SPLIT_UNKNOWN", name, problem)],
    )


def create_training_job(
    session: Session, command: CreateJobCommand, context: Context
) -> TrainingJob:
    """CreateTrainingJob: validate everything (spec, split, base model), then queue the job.

    Raises InvalidArgument with every field violation at once, AlreadyExists for a taken id,
    FailedPrecondition for a split the trainer cannot find or a target model the registry does
    not have, Unavailable when the registry cannot be asked. A repeated ``request_id`` returns
    the job the first request created.
    """
    repo = TrainerRepository(session)
    if command.request_id:
        existing = repo.job_row_by_request_id(command.request_id)
        if existing is not None:
            return job_from_row(existing, context.pricing)
    job, model, model_budget = _validated_job(repo, command, context)
    job = _admitted(repo, job, model, [BudgetHolder(command.target_model, model_budget)], context)
    row = repo.add_job(job, now=_now())
    try:
        session.flush()
    except IntegrityError:  # a concurrent request with the same id or request_id won
        session.rollback()
        raise AlreadyExists("TrainingJob", job.name) from None
    return job_from_row(row, context.pricing)


def estimate_training_job(
    session: Session, command: CreateJobCommand, context: Context
) -> tuple[TrainingJob, TrainingEstimate]:
    """CreateTrainingJob with ``validate_only``: every check a real request gets, then the
    estimate of its tokens (the split's train rows encoded as training will), device time
    (throughput of earlier SUCCEEDED runs of the same base model on the newest run's device
    type, else the configured default) and cost, and the budget check a real request gets.
    Creates nothing."""
    repo = TrainerRepository(session)
    job, model, model_budget = _validated_job(repo, command, context)
    if context.token_counter is None:
        raise Unavailable("this trainer does not estimate jobs")
    job = _admitted(
        repo,
        job,
        model,
        [BudgetHolder(command.target_model, model_budget)],
        context,
        estimate_required=True,
    )
    assert job.estimate is not None
    return replace(job, name="", total_steps=job.estimate.planned_steps), job.estimate


def _validated_job(
    repo: TrainerRepository, command: CreateJobCommand, context: Context
) -> tuple[TrainingJob, ResolvedModel, Budget]:
    """The job a CreateTrainingJob request describes, every check passed, not yet stored, with
    its target model's budget."""
    prefix = "training_job"
    violations: list[FieldViolation] = list(command.violations)
    if command.job_id and not RESOURCE_ID.match(command.job_id):
        violations.append(
            FieldViolation(
                "training_job_id",
                "must match ^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
                "INVALID_FORMAT",
            )
        )
    if len(command.request_id) > 128:
        violations.append(FieldViolation("request_id", "at most 128 characters", "TOO_LONG"))
    violations += validate_model_name(command.target_model, f"{prefix}.target_model")
    violations += validate_split_name(command.split, f"{prefix}.split")
    violations += validate_job_config(command.config, prefix)
    unavailable: list[PreconditionViolation] = []
    model = _check_model(command.config, context, prefix, violations, unavailable)
    if violations:
        raise InvalidArgument("the training job is invalid", violations)
    _refuse_unavailable(unavailable)
    assert model is not None
    split = _find_split(repo, command.split, context)
    audit = repo.dataset_audit(split.dataset_version)
    if audit is not None and audit.blocks_training:
        raise FailedPrecondition(
            f"split {split.name} is of a dataset version its label audit blocked",
            [PreconditionViolation(LABEL_AUDIT_BLOCKED, split.dataset_version, audit.refusal())],
        )
    if command.task_type is not None and command.task_type is not split.task_type:
        raise InvalidArgument(
            "the task type does not match the split",
            [
                FieldViolation(
                    f"{prefix}.task_type",
                    f"the split is {split.task_type.value}, not {command.task_type.value}",
                    "TASK_TYPE_MISMATCH",
                )
            ],
        )
    model_budget = _require_target_model(command.target_model, context)
    name = JOB_PREFIX + (command.job_id or f"j-{uuid.uuid4().hex[:20]}")
    if repo.job_row(name) is not None:
        raise AlreadyExists("TrainingJob", name)
    job = _new_job(
        name=name,
        target_model=command.target_model,
        split=split,
        config=_resolved_config(command.config, model, split, context),
        training_policy="",
        request_id=command.request_id,
        context=context,
    )
    return job, model, model_budget


def get_training_job(
    session: Session, name: str, context: Context
) -> tuple[TrainingJob, list[LossPoint]]:
    """GetTrainingJob: the job and its loss curve."""
    repo = TrainerRepository(session)
    row = repo.job_row(name)
    if row is None:
        raise NotFound("TrainingJob", name)
    return job_from_row(row, context.pricing), repo.loss_points(name)


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a List call."""

    items: list[T]
    next_page_token: str


def list_training_jobs(
    session: Session,
    *,
    target_model: str,
    state: JobState | None,
    split: str,
    page_size: int,
    page_token: str,
    context: Context,
) -> Page[tuple[TrainingJob, list[LossPoint]]]:
    """ListTrainingJobs: newest first, filtered, keyset-paged."""
    size = resolve_page_size(page_size)
    query = {"target_model": target_model, "state": state.value if state else "", "split": split}
    after = decode_page_token(page_token, query)
    repo = TrainerRepository(session)
    rows = repo.list_job_rows(
        target_model=target_model, state=state, split=split, after=after, limit=size + 1
    )
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        token = encode_page_token(query, [utc(last.create_time).isoformat(), last.name])  # type: ignore[union-attr]
    return Page([(job_from_row(r, context.pricing), repo.loss_points(r.name)) for r in rows], token)


def cancel_training_job(session: Session, name: str, reason: str, context: Context) -> TrainingJob:
    """CancelTrainingJob: a queued job is cancelled now; a running one is flagged and its
    worker stops within seconds (the supervisor sends the cancel). Cancelling a cancelled job
    is a no-op; a succeeded or failed job gives FAILED_PRECONDITION."""
    if len(reason) > 1000:
        raise InvalidArgument(
            "reason is too long", [FieldViolation("reason", "at most 1000 characters", "TOO_LONG")]
        )
    repo = TrainerRepository(session)
    row = repo.job_row(name)
    if row is None:
        raise NotFound("TrainingJob", name)
    state = JobState(row.state)
    now = _now()
    if state is JobState.CANCELLED:
        return job_from_row(row, context.pricing)
    if state.terminal:
        raise FailedPrecondition(
            f"job {name} is {state.value} and cannot be cancelled",
            [PreconditionViolation("JOB_TERMINAL", name, f"the job already {state.value.lower()}")],
        )
    row.cancel_requested = True
    row.cancel_reason = reason
    if state is JobState.QUEUED:
        row.state = JobState.CANCELLED.value
        row.stop_reason = StopReason.CANCELLED.value
        row.end_time = now
    row.update_time = now
    return job_from_row(row, context.pricing)


# -- checkpoints -------------------------------------------------------------------------------


def get_checkpoint(
    session: Session, name: str, context: Context
) -> tuple[CheckpointRecord, TrainingJob]:
    """GetCheckpoint: the checkpoint and its job (for the lineage)."""
    repo = TrainerRepository(session)
    row = repo.checkpoint_row(name)
    if row is None or row.artifact_deleted:
        raise NotFound("Checkpoint", name)
    job_row = repo.job_row(row.job)
    if job_row is None:
        raise NotFound("TrainingJob", row.job)
    job = job_from_row(job_row, context.pricing)
    return checkpoint_from_row(row, job), job


def list_checkpoints(
    session: Session, *, parent: str, page_size: int, page_token: str, context: Context
) -> Page[tuple[CheckpointRecord, TrainingJob]]:
    """ListCheckpoints: a job's kept checkpoints ascending by step (``trainingJobs/-``: all)."""
    if not parent.startswith(JOB_PREFIX) or not parent.removeprefix(JOB_PREFIX):
        raise InvalidArgument(
            "parent must be trainingJobs/{job} or trainingJobs/-",
            [
                FieldViolation(
                    "parent", "must be `trainingJobs/{job}` or `trainingJobs/-`", "INVALID_FORMAT"
                )
            ],
        )
    size = resolve_page_size(page_size)
    query = {"parent": parent}
    after = decode_page_token(page_token, query)
    repo = TrainerRepository(session)
    job = None if parent == f"{JOB_PREFIX}-" else parent
    if job is not None and repo.job_row(job) is None:
        raise NotFound("TrainingJob", job)
    rows = repo.list_checkpoint_rows(job=job, after=after, limit=size + 1)
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        token = encode_page_token(query, [rows[-1].job, rows[-1].step])
    jobs: dict[str, TrainingJob] = {}
    items = []
    for row in rows:
        if row.job not in jobs:
            job_row = repo.job_row(row.job)
            assert job_row is not None
            jobs[row.job] = job_from_row(job_row, context.pricing)
        items.append((checkpoint_from_row(row, jobs[row.job]), jobs[row.job]))
    return Page(items, token)


# -- policies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetPolicyCommand:
    name: str
    dataset: str
    target_model: str
    template: JobConfig
    template_present: bool
    disabled: bool
    violations: tuple[FieldViolation, ...] = ()
    owner: Owner = field(default_factory=Owner)
    budget: Budget = field(default_factory=Budget)
    #: Idempotency key: a repeat changes nothing and returns the policy as it is.
    request_id: str = ""


def set_training_policy(
    session: Session, command: SetPolicyCommand, context: Context
) -> TrainingPolicy:
    """SetTrainingPolicy: validate the template as a job would be, check the target model
    with the registry, then create or replace.

    The jobs a policy makes later, on SplitCreated, do not ask the registry again: the model
    was there when the policy was set and the registry never deletes one, and its budget (fixed
    when the model was created) is kept with the policy, so the Kafka consumer never waits on
    (or fails for) the registry. A repeated ``request_id`` changes nothing (not even a policy
    someone else set since) and returns the policy as stored.
    """
    prefix = "training_policy"
    violations: list[FieldViolation] = list(command.violations)
    violations += request_id_violations(command.request_id)
    policy_id = command.name.removeprefix(POLICY_PREFIX)
    if not command.name.startswith(POLICY_PREFIX) or not RESOURCE_ID.match(policy_id):
        violations.append(
            FieldViolation(
                f"{prefix}.name",
                "must be `trainingPolicies/{policy}` with an id matching "
                "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
                "INVALID_FORMAT",
            )
        )
    violations += validate_dataset_name(command.dataset, f"{prefix}.dataset")
    violations += validate_model_name(command.target_model, f"{prefix}.target_model")
    unavailable: list[PreconditionViolation] = []
    if not command.template_present:
        violations.append(FieldViolation(f"{prefix}.job_template", "is required", "REQUIRED"))
    else:
        violations += validate_job_config(command.template, f"{prefix}.job_template")
        template_prefix = f"{prefix}.job_template"
        _check_model(command.template, context, template_prefix, violations, unavailable)
    if violations:
        raise InvalidArgument("the training policy is invalid", violations)
    _refuse_unavailable(unavailable)
    repo = TrainerRepository(session)
    if command.request_id:
        earlier = repo.policy_request(command.request_id)
        if earlier is not None:
            return _repeated_policy_request(repo, command, earlier.policy)
    model_budget = _require_target_model(command.target_model, context)
    now = _now()
    if command.request_id:
        repo.record_policy_request(command.request_id, command.name, now)
    row = repo.policy_row(command.name)
    if row is None:
        row = PolicyRow(name=command.name, create_time=now)
        session.add(row)
    row.dataset = command.dataset
    row.target_model = command.target_model
    row.template_json = dumps(command.template)
    row.disabled = command.disabled
    row.owner_json = dumps(command.owner)
    row.budget_json = dumps(command.budget)
    row.model_budget_json = dumps(model_budget)
    row.update_time = now
    session.flush()
    return policy_from_row(row)


def _repeated_policy_request(
    repo: TrainerRepository, command: SetPolicyCommand, applied_to: str
) -> TrainingPolicy:
    """The answer to a SetTrainingPolicy whose ``request_id`` was applied already."""
    refuse_reused_request_id(applied_to, command.name)
    row = repo.policy_row(applied_to)
    if row is None:  # policies are never deleted; kept for a clear error all the same
        raise NotFound("TrainingPolicy", applied_to)
    return policy_from_row(row)


def get_training_policy(session: Session, name: str) -> TrainingPolicy:
    row = TrainerRepository(session).policy_row(name)
    if row is None:
        raise NotFound("TrainingPolicy", name)
    return policy_from_row(row)


def list_training_policies(
    session: Session, *, dataset: str, page_size: int, page_token: str
) -> Page[TrainingPolicy]:
    size = resolve_page_size(page_size)
    query = {"dataset": dataset}
    after = decode_page_token(page_token, query)
    rows = TrainerRepository(session).list_policy_rows(
        dataset=dataset, after=str(after[0]) if after else None, limit=size + 1
    )
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        token = encode_page_token(query, [rows[-1].name])
    return Page([policy_from_row(r) for r in rows], token)


# -- SplitCreated ------------------------------------------------------------------------------


def on_split_created(session: Session, split: SplitInfo, context: Context) -> list[str]:
    """Remember the split and make its policies' jobs (:func:`_make_policy_jobs`) — unless
    ``context.wait_for_dataset_audit`` and its dataset version's ``DatasetAudited`` has not
    arrived yet: :func:`on_dataset_audited` makes them then. Returns the names of the jobs made."""
    repo = TrainerRepository(session)
    now = _now()
    repo.remember_split(split, now=now)
    audit = repo.dataset_audit(split.dataset_version)
    if audit is None and context.wait_for_dataset_audit:
        return []
    return _make_policy_jobs(session, split, audit, context, now=now)


def on_dataset_audited(session: Session, audit: DatasetAuditInfo, context: Context) -> list[str]:
    """Remember the version's audit; make the policy jobs of its splits known so far (those
    that waited for it). A redelivered event makes nothing. Returns the names of the jobs made."""
    repo = TrainerRepository(session)
    now = _now()
    if not repo.remember_dataset_audit(audit, now=now):
        return []
    dataset = audit.dataset_version.split("/versions/")[0]
    created: list[str] = []
    for split in repo.known_splits_of_version(dataset, audit.dataset_version):
        created += _make_policy_jobs(session, split, audit, context, now=now)
    return created


def _make_policy_jobs(
    session: Session,
    split: SplitInfo,
    audit: DatasetAuditInfo | None,
    context: Context,
    *,
    now: datetime,
) -> list[str]:
    """For each enabled policy on the split's dataset make the one job the (policy, split) pair
    names — nothing if it exists. A version the label audit BLOCKED gives FAILED jobs
    (LABEL_AUDIT_BLOCKED: never started; the message names the rule and rows). A template that
    no longer validates (say its base model was removed) gives a FAILED job, announced by
    TrainingJobFailed, so the problem is visible instead of silently skipped; so does a job
    that would exceed its model's or its policy's budget (BUDGET_EXCEEDED: it never starts; the
    model's budget is the one kept with the policy)."""
    repo = TrainerRepository(session)
    created: list[str] = []
    for policy in repo.enabled_policies_for(split.dataset):
        name = JOB_PREFIX + policy_job_id(policy.name, split.name)
        if repo.job_row(name) is not None:
            continue
        if audit is not None and audit.blocks_training:
            job = _new_job(
                name=name,
                target_model=policy.target_model,
                split=split,
                config=policy.template,
                training_policy=policy.name,
                request_id="",
                context=context,
            )
            job.state = JobState.FAILED
            job.failure_reason = FailureReason.LABEL_AUDIT_BLOCKED
            job.failure_message = audit.refusal()
            row = repo.add_job(job, now=now)
            _stage_failed(session, row, context, now=now)
            created.append(name)
            continue
        violations: list[FieldViolation] = validate_job_config(policy.template, "job_template")
        unavailable: list[PreconditionViolation] = []
        model = _check_model(policy.template, context, "job_template", violations, unavailable)
        if violations or unavailable or model is None:
            job = _new_job(
                name=name,
                target_model=policy.target_model,
                split=split,
                config=policy.template,
                training_policy=policy.name,
                request_id="",
                context=context,
            )
            job.state = JobState.FAILED
            refused = any(v.reason == MODEL_REFUSED for v in violations) or any(
                p.type == MODEL_REFUSED for p in unavailable
            )
            job.failure_reason = (
                FailureReason.MODEL_REFUSED if refused else FailureReason.MODEL_LOAD_FAILED
            )
            job.failure_message = "; ".join(
                [f"{v.field}: {v.description}" for v in violations]
                + [f"base model {p.subject}: {p.description}" for p in unavailable]
            )
            row = repo.add_job(job, now=now)
            _stage_failed(session, row, context, now=now)
        else:
            job = _new_job(
                name=name,
                target_model=policy.target_model,
                split=split,
                config=_resolved_config(policy.template, model, split, context),
                training_policy=policy.name,
                request_id="",
                context=context,
            )
            holders = [
                BudgetHolder(policy.target_model, policy.model_budget),
                BudgetHolder(policy.name, policy.budget),
            ]
            try:
                job = _admitted(repo, job, model, holders, context)
            except FailedPrecondition as refused:
                job.state = JobState.FAILED
                over_budget = all(v.type == BUDGET_EXCEEDED for v in refused.violations)
                job.failure_reason = (
                    FailureReason.BUDGET_EXCEEDED if over_budget else FailureReason.DATA_UNAVAILABLE
                )
                job.failure_message = "; ".join(
                    f"{v.subject} {v.description}" for v in refused.violations
                )
                row = repo.add_job(job, now=now)
                _stage_failed(session, row, context, now=now)
            else:
                repo.add_job(job, now=now)
        created.append(name)
    return created


# -- the supervisor's records ------------------------------------------------------------------


def runnable_jobs(session: Session, now: datetime | None = None) -> list[str]:
    """Jobs waiting for a device, in the order they get one: interrupted RUNNING jobs
    (resumes) first, then QUEUED jobs oldest first. A job waiting out a full disk
    (``blocked_until``) is left out until then, unless it was cancelled meanwhile."""
    now = now or _now()
    rows = TrainerRepository(session).job_rows_in([JobState.RUNNING, JobState.QUEUED])
    running = [r.name for r in rows if r.state == JobState.RUNNING.value and not _blocked(r, now)]
    queued = [r.name for r in rows if r.state == JobState.QUEUED.value]
    return running + queued


def _blocked(row: JobRow, now: datetime) -> bool:
    """Whether the job waits out a full disk at ``now`` (a cancelled one waits for nothing)."""
    until = utc(row.blocked_until)
    return until is not None and until > now and not row.cancel_requested


def _progress(row: JobRow) -> Progress:
    return from_jsonable(Progress, json.loads(row.progress_json or "{}"))


def _set_progress(row: JobRow, progress: Progress) -> None:
    row.progress_json = dumps(progress)


def begin_attempt(session: Session, name: str, *, device: str, pid: int | None) -> JobRow | None:
    """A worker was started for ``name`` on ``device``: QUEUED → RUNNING, one more attempt.
    Returns None when the job cannot run (it was cancelled meanwhile)."""
    row = TrainerRepository(session).job_row(name)
    if row is None:
        return None
    state = JobState(row.state)
    if state is not JobState.RUNNING and not can_transition(state, JobState.RUNNING):
        return None
    now = _now()
    row.state = JobState.RUNNING.value
    row.attempt_count += 1
    row.device = device
    row.worker_pid = pid
    row.attempt_started_at = now
    row.attempt_tokens_start = _progress(row).tokens_seen
    row.update_time = now
    return row


def _close_attempt(row: JobRow, now: datetime) -> None:
    """Add the finished attempt's device time and tokens to the job's totals."""
    started = utc(row.attempt_started_at)
    if started is not None:
        # every device of the slot was held for the attempt's time
        elapsed = max(0.0, (now - started).total_seconds())
        row.device_seconds_done += elapsed * devices_in(row.device)
        row.tokens_processed_done += max(0, _progress(row).tokens_seen - row.attempt_tokens_start)
    row.attempt_started_at = None
    row.worker_pid = None


def record_started(session: Session, name: str, message: WorkerStarted, context: Context) -> None:
    """The worker loaded everything: store the device-resolved hyperparameters; on the first
    start, stage TrainingJobStarted."""
    repo = TrainerRepository(session)
    row = repo.job_row(name)
    if row is None:
        return
    now = _now()
    job = job_from_row(row, context.pricing)
    repo.update_spec(row, replace(job.config, hyperparameters=message.hyperparameters))
    row.total_steps = message.total_steps
    row.device = message.device
    row.device_type = message.device_type
    row.attempt_tokens_start = message.tokens_seen
    row.blocked_reason, row.blocked_until = "", None  # training again
    progress = _progress(row)
    _set_progress(
        row,
        replace(
            progress,
            step=message.step,
            total_steps=message.total_steps,
            tokens_seen=message.tokens_seen,
            update_time=now,
            skipped_rows=message.skipped_rows,
        ),
    )
    row.update_time = now
    if row.start_time is None:
        row.start_time = now
        job = job_from_row(row, context.pricing)
        stage_event(
            session,
            events_pb2.TrainingJobStarted(
                training_job=name,
                target_model=job.target_model,
                training_policy=job.training_policy,
                lineage=protos.lineage_to_proto(job.lineage()),
                stopping_rules=protos.stopping_to_proto(job.config.stopping),
                checkpoint_policy=protos.checkpointing_to_proto(job.config.checkpointing),
                total_steps=message.total_steps,
                device=message.device,
                event_time=timestamp_from_datetime(now),
            ),
            source=context.source,
            subject=name,
        )


def record_progress(session: Session, name: str, message: WorkerProgress) -> None:
    """A progress snapshot; a loss-curve point when the worker marked one."""
    repo = TrainerRepository(session)
    row = repo.job_row(name)
    if row is None:
        return
    now = _now()
    progress = _progress(row)
    best = progress.best_validation_loss
    if message.validation_loss is not None and (best is None or message.validation_loss < best):
        best = message.validation_loss
    _set_progress(
        row,
        Progress(
            step=message.step,
            total_steps=message.total_steps,
            epoch=message.epoch,
            train_loss=message.train_loss,
            validation_loss=(
                message.validation_loss
                if message.validation_loss is not None
                else progress.validation_loss
            ),
            best_validation_loss=best,
            learning_rate=message.learning_rate,
            tokens_per_second=message.tokens_per_second,
            tokens_seen=message.tokens_seen,
            eta_seconds=message.eta_seconds,
            elapsed_seconds=message.elapsed_seconds,
            update_time=now,
            skipped_rows=progress.skipped_rows,
        ),
    )
    row.training_seconds_done = message.elapsed_seconds
    row.update_time = now
    if message.log_point or message.validation_loss is not None:
        repo.put_loss_point(
            name,
            LossPoint(
                step=message.step,
                epoch=message.epoch,
                train_loss=message.interval_train_loss if message.log_point else None,
                validation_loss=message.validation_loss,
            ),
        )


@dataclass(frozen=True)
class CheckpointOutcome:
    """What recording a checkpoint decided; artifacts to delete once committed."""

    recorded: bool
    delete_uris: list[str]


def record_checkpoint(
    session: Session, name: str, message: WorkerCheckpoint, context: Context, *, keep_best_k: int
) -> CheckpointOutcome:
    """A checkpoint is in the artifact store: record it once per (job, step), mark the best,
    apply retention, and stage CheckpointReady. A step already recorded (a resumed run
    redoing it) is not announced again.

    The final checkpoint says why training stopped (``stop_reason``); the job keeps the reason,
    so the checkpoint's resource shows it too. A CANCELLED one is partly trained: CheckpointReady
    says so, and the registry never promotes it automatically."""
    repo = TrainerRepository(session)
    row = repo.job_row(name)
    if row is None:
        return CheckpointOutcome(False, [message.state_uri])
    now = _now()
    if message.is_final and message.stop_reason is not None:
        row.stop_reason = message.stop_reason.value
    old_state = row.latest_state_uri
    row.latest_state_uri = message.state_uri
    row.training_seconds_done = message.elapsed_seconds
    deletions = [old_state] if old_state and old_state != message.state_uri else []
    if repo.checkpoint_at(name, message.step) is not None:
        row.update_time = now
        return CheckpointOutcome(False, deletions)
    previous = repo.checkpoint_rows(name)
    best_so_far = min(
        (c.validation_loss for c in previous if c.validation_loss is not None), default=None
    )
    is_best = message.validation_loss is not None and (
        best_so_far is None or message.validation_loss < best_so_far
    )
    progress = _progress(row)
    _set_progress(row, replace(progress, tokens_seen=message.tokens_seen))
    cost = job_cost(row, context.pricing, now=now)
    checkpoint = CheckpointRow(
        name=checkpoint_name(name, message.step),
        job=name,
        step=message.step,
        epoch=message.epoch,
        train_loss=message.train_loss,
        validation_loss=message.validation_loss,
        tokens_seen=message.tokens_seen,
        artifact_uri=message.artifact_uri,
        state_uri=message.state_uri,
        sha256=message.sha256,
        size_bytes=message.size_bytes,
        is_best=is_best,
        is_final=message.is_final,
        cost_json=dumps(cost),
        tokenizer_fingerprint_json=(
            dumps(message.tokenizer_fingerprint.to_json()) if message.tokenizer_fingerprint else ""
        ),
        create_time=now,
    )
    session.add(checkpoint)
    session.flush()  # the unique (job, step) constraint is the last guard against a repeat
    kept = [c for c in [*previous, checkpoint] if not c.artifact_deleted]
    doomed = set(
        checkpoints_to_delete(
            [KeptCheckpoint(c.step, c.validation_loss, c.is_final) for c in kept], keep_best_k
        )
    )
    for candidate in kept:
        if candidate.step in doomed:
            candidate.artifact_deleted = True
            deletions.append(candidate.artifact_uri)
    survivors = [c for c in kept if c.step not in doomed]
    validated = [c for c in survivors if c.validation_loss is not None]
    best_row = min(validated, key=lambda c: (c.validation_loss, -c.step)) if validated else None
    row.best_checkpoint = best_row.name if best_row else ""
    row.latest_checkpoint = checkpoint.name
    row.disk_full_count = 0  # a checkpoint was written: the disk has room again
    row.update_time = now
    job = job_from_row(row, context.pricing)
    record = checkpoint_from_row(checkpoint, job)
    event = events_pb2.CheckpointReady(
        checkpoint=record.name,
        training_job=name,
        target_model=job.target_model,
        step=record.step,
        epoch=record.epoch,
        train_loss=record.train_loss,
        tokens_seen=record.tokens_seen,
        artifact_uri=record.artifact_uri,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        is_best=record.is_best,
        is_final=record.is_final,
        lineage=protos.lineage_to_proto(job.lineage(record.name)),
        cost=protos.cost_to_proto(record.cost),
        event_time=timestamp_from_datetime(now),
    )
    if record.validation_loss is not None:
        event.validation_loss = record.validation_loss
    if record.stop_reason is not None:
        event.stop_reason = protos.stop_reason_to_proto(record.stop_reason)  # type: ignore[assignment]
    if record.is_final:
        # what BEST_AT_END evaluates: the job's result, not merely its last checkpoint
        event.best_checkpoint = row.best_checkpoint or record.name
    if record.tokenizer_fingerprint is not None:
        event.tokenizer_fingerprint.CopyFrom(
            protos.tokenizer_fingerprint_to_proto(record.tokenizer_fingerprint)
        )
    stage_event(session, event, source=context.source, subject=record.name)
    return CheckpointOutcome(True, deletions)


def _stage_failed(session: Session, row: JobRow, context: Context, *, now: datetime) -> None:
    job = job_from_row(row, context.pricing)
    assert job.failure_reason is not None
    stage_event(
        session,
        events_pb2.TrainingJobFailed(
            training_job=job.name,
            target_model=job.target_model,
            failure_reason=protos.failure_reason_to_proto(job.failure_reason),  # type: ignore[arg-type]
            failure_message=job.failure_message,
            latest_checkpoint=job.latest_checkpoint,
            steps_completed=job.progress.step,
            attempt_count=job.attempt_count,
            cost=protos.cost_to_proto(job.cost),
            lineage=protos.lineage_to_proto(job.lineage()),
            event_time=timestamp_from_datetime(now),
        ),
        source=context.source,
        subject=job.name,
    )


def record_finished(
    session: Session, name: str, message: WorkerFinished, context: Context
) -> JobState | None:
    """The worker ended training: SUCCEEDED (stage TrainingJobCompleted) or CANCELLED."""
    repo = TrainerRepository(session)
    row = repo.job_row(name)
    if row is None or JobState(row.state).terminal:
        return None
    now = _now()
    progress = _progress(row)
    _set_progress(
        row,
        replace(
            progress,
            step=message.step,
            epoch=message.epoch,
            tokens_seen=message.tokens_seen,
            elapsed_seconds=message.elapsed_seconds,
            eta_seconds=None,
            update_time=now,
        ),
    )
    _close_attempt(row, now)
    row.training_seconds_done = message.elapsed_seconds
    row.end_time = now
    row.update_time = now
    if message.cancelled:
        row.state = JobState.CANCELLED.value
        row.stop_reason = StopReason.CANCELLED.value
        return JobState.CANCELLED
    row.state = JobState.SUCCEEDED.value
    row.stop_reason = (message.stop_reason or StopReason.MAX_STEPS).value
    job = job_from_row(row, context.pricing)
    kept = [c for c in repo.checkpoint_rows(name) if not c.artifact_deleted]
    validated = [c.validation_loss for c in kept if c.validation_loss is not None]
    tokens_per_second = (
        job.cost.tokens_processed / message.elapsed_seconds if message.elapsed_seconds > 0 else 0.0
    )
    started = utc(row.start_time) or now
    completed = events_pb2.TrainingJobCompleted(
        training_job=name,
        target_model=job.target_model,
        stop_reason=protos.stop_reason_to_proto(StopReason(row.stop_reason)),  # type: ignore[arg-type]
        best_checkpoint=job.best_checkpoint or job.latest_checkpoint,
        final_checkpoint=job.latest_checkpoint,
        checkpoints=[c.name for c in kept],
        steps_completed=message.step,
        epochs_completed=message.epoch,
        final_train_loss=message.final_train_loss,
        loss_trend=[protos.loss_point_to_proto(p) for p in repo.loss_points(name)][-1000:],
        tokens_per_second=tokens_per_second,
        cost=protos.cost_to_proto(job.cost),
        lineage=protos.lineage_to_proto(job.lineage()),
        duration=duration_from_seconds((now - started).total_seconds()),
        event_time=timestamp_from_datetime(now),
    )
    if validated:
        completed.best_validation_loss = min(validated)
    stage_event(session, completed, source=context.source, subject=name)
    return JobState.SUCCEEDED


def record_failed(
    session: Session, name: str, reason: FailureReason, message: str, context: Context
) -> bool:
    """The job failed for ``reason``: FAILED, stage TrainingJobFailed. False if already over.

    The message is for API clients: local paths quoted from torch, transformers or the OS are
    cut to their last component."""
    row = TrainerRepository(session).job_row(name)
    if row is None or JobState(row.state).terminal:
        return False
    now = _now()
    _close_attempt(row, now)
    row.state = JobState.FAILED.value
    row.stop_reason = StopReason.FAILED.value
    row.failure_reason = reason.value
    row.failure_message = without_local_paths(message)[:10_000]
    row.end_time = now
    row.update_time = now
    _stage_failed(session, row, context, now=now)
    return True


def record_oom_retry(session: Session, name: str, message: WorkerOomRetry) -> None:
    """The worker retries after running out of memory: one more attempt, a smaller micro-batch."""
    row = TrainerRepository(session).job_row(name)
    if row is None:
        return
    row.attempt_count += 1
    row.oom_retries += 1
    row.micro_batch_size = message.micro_batch_size
    row.accumulation_steps = message.accumulation_steps
    row.update_time = _now()


def record_worker_lost(
    session: Session,
    name: str,
    *,
    crashed: bool,
    max_restarts: int,
    context: Context,
    ended_at: datetime | None = None,
) -> JobState | None:
    """The worker exited without finishing: the service halted it (``crashed=False``) or it
    died. A cancelled job becomes CANCELLED; a crash beyond ``max_restarts`` fails the job
    with WORKER_CRASHED; otherwise the job stays RUNNING and resumes from its last checkpoint.
    Returns the new terminal state, if any."""
    row = TrainerRepository(session).job_row(name)
    if row is None or JobState(row.state).terminal:
        return None
    now = _now()
    _close_attempt(row, now)
    row.update_time = now
    if row.cancel_requested:
        row.state = JobState.CANCELLED.value
        row.stop_reason = StopReason.CANCELLED.value
        row.end_time = now
        return JobState.CANCELLED
    if crashed:
        row.crash_count += 1
        if row.crash_count > max_restarts:
            record_failed(
                session,
                name,
                FailureReason.WORKER_CRASHED,
                f"the worker process died {row.crash_count} times (resume limit {max_restarts})",
                context,
            )
            return JobState.FAILED
    return None


def record_disk_full(
    session: Session, name: str, message: str, *, now: datetime | None = None
) -> JobState | None:
    """The worker's attempt ended on a full disk (it wrote nothing half-done). The job stays
    RUNNING and resumes from its last complete checkpoint after :func:`disk_full_wait` (it says
    so in ``status_message``); a cancelled one becomes CANCELLED. Returns the new terminal
    state, if any."""
    row = TrainerRepository(session).job_row(name)
    if row is None or JobState(row.state).terminal:
        return None
    now = now or _now()
    _close_attempt(row, now)
    row.update_time = now
    if row.cancel_requested:
        row.state = JobState.CANCELLED.value
        row.stop_reason = StopReason.CANCELLED.value
        row.end_time = now
        row.blocked_reason, row.blocked_until = "", None
        return JobState.CANCELLED
    row.disk_full_count += 1
    resume_at = now + disk_full_wait(row.disk_full_count)
    last = f"its last complete checkpoint, {row.latest_checkpoint}" if row.latest_checkpoint else ""
    row.blocked_reason = (
        f"{without_local_paths(message)[:2000]} (attempt {row.attempt_count}); resuming "
        f"from {last or 'the start'} at {resume_at.isoformat(timespec='seconds')}: free space "
        "on the trainer's artifact store"
    )
    row.blocked_until = resume_at
    return None


def cancel_without_worker(session: Session, name: str) -> bool:
    """A running job with no worker (between a crash and its resume) was cancelled."""
    row = TrainerRepository(session).job_row(name)
    if row is None or row.state != JobState.RUNNING.value or not row.cancel_requested:
        return False
    now = _now()
    _close_attempt(row, now)
    row.state = JobState.CANCELLED.value
    row.stop_reason = StopReason.CANCELLED.value
    row.end_time = now
    row.update_time = now
    return True
