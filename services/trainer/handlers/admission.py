"""Admitting a job, shared by CreateTrainingJob, SetTrainingPolicy and the jobs policies make:
the base model, the target model, the split, the resolved config, the estimate and the budgets."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from services.trainer.adapters.repository import TrainerRepository
from services.trainer.domain.config import (
    BaseModelRef,
    JobConfig,
    planned_steps,
    resolve_adapter,
    resolve_checkpointing,
    resolve_hyperparameters,
    resolve_stopping,
    steps_per_epoch,
    target_modules_for,
)
from services.trainer.domain.costs import (
    Budget,
    BudgetHolder,
    budget_breaches,
    effective_budget,
    month_start,
)
from services.trainer.domain.estimates import TrainingEstimate, estimate_training
from services.trainer.domain.jobs import POLICY_PREFIX, SplitInfo, TrainingJob
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.handlers.job_rows import utc_now
from shared.artifacts import ArtifactError
from shared.errors import FailedPrecondition, FieldViolation, PreconditionViolation, Unavailable
from shared.modeling import (
    InvalidModelReference,
    ModelingError,
    ModelNotFound,
    ModelRefused,
    ResolvedModel,
)
from shared.modeling.packaged import PACKAGED_MODELS

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


def check_model(
    config: JobConfig,
    deps: TrainerDeps,
    prefix: str,
    violations: list[FieldViolation],
    unavailable: list[PreconditionViolation],
) -> ResolvedModel | None:
    """Resolve the base model, sorting what is wrong by whose it is (AIP-193).

    A reference that is malformed in itself (not a folder name, a relative path, a path outside
    the allowed roots) is the request's fault: a field violation, INVALID_ARGUMENT. A model the
    server lacks (not in its models root) or refuses to load (pickle weights, remote code …)
    is the server's state, which the request cannot fix: a precondition violation for
    FAILED_PRECONDITION (:func:`refuse_unavailable`), ``MODEL_NOT_FOUND`` or ``MODEL_REFUSED``
    with the model as subject.
    """
    base = config.base_model
    if bool(base.model_name) == bool(base.model_path):
        return None  # validate_job_config reported it
    field = f"{prefix}.base_model.{'model_name' if base.model_name else 'model_path'}"
    subject = base.model_name or base.model_path
    try:
        model = deps.models.resolve(base)
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


def refuse_unavailable(unavailable: list[PreconditionViolation]) -> None:
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


def require_target_model(target_model: str, deps: TrainerDeps) -> Budget:
    """Refuse a target model the registry does not have (a typo must not cost a training run);
    return the model's budget (empty when it has none, or when models are not checked).

    FAILED_PRECONDITION (``TARGET_MODEL_NOT_FOUND``, the model as subject) when the registry
    says it does not exist; UNAVAILABLE, which the caller may retry, when the registry cannot
    be asked: the job is not queued on a guess, and a budget is never skipped for want of an
    answer. The registry never deletes a model, so a model found once stays found.
    """
    if deps.target_models is None:
        return Budget()
    try:
        budget = deps.target_models.lookup(target_model)
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
    deps: TrainerDeps,
    *,
    required: bool,
) -> TrainingEstimate | None:
    """The job's estimate (see :func:`.jobs.estimate_training_job`); None when this trainer does not
    estimate, or when the split (or the tokenizer) cannot be read and nothing ``required`` it:
    training would then fail on its own, with DATA_UNAVAILABLE or MODEL_LOAD_FAILED."""
    if deps.token_counter is None:
        return None
    hp = job.config.hyperparameters
    try:
        counted = deps.token_counter.train_tokens(job.split, model, hp.max_seq_length)
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
        default_tokens_per_device_second=deps.default_tokens_per_device_second,
        price_per_device_hour=deps.pricing.price_per_device_hour,
        currency=deps.pricing.currency,
        validation_examples=job.split.validation_rows,
        eval_every_n_steps=job.config.stopping.eval_every_n_steps,
        default_overhead_device_seconds=deps.default_overhead_device_seconds,
    )


def _budget_check(
    repo: TrainerRepository,
    holders: list[BudgetHolder],
    estimate: TrainingEstimate | None,
    deps: TrainerDeps,
) -> tuple[Budget, list[PreconditionViolation]]:
    """The job's effective budget, and every limit its estimate would exceed: per run, the
    estimate; per month, this month's spend of the holder's jobs (cost so far, or the estimate
    of those still running or queued) plus the estimate, read while no other admission against
    the same holder can commit (the caller's transaction must store the job before ending)."""
    held = [h for h in holders if h.budget.limited]
    if not held:
        return Budget(), []
    currency = deps.pricing.currency
    monthly = [h.holder for h in held if h.budget.per_month is not None]
    if monthly:  # held until the job is stored and committed (see serialise_admission)
        repo.serialise_admission(monthly)
    since = month_start(utc_now())
    month_to_date = {
        h.holder: repo.committed_spend(
            since=since,
            pricing=deps.pricing,
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


def admitted(
    repo: TrainerRepository,
    job: TrainingJob,
    model: ResolvedModel,
    holders: list[BudgetHolder],
    deps: TrainerDeps,
    *,
    estimate_required: bool = False,
) -> TrainingJob:
    """The job with its estimate and effective budget; FAILED_PRECONDITION
    (``BUDGET_EXCEEDED``, one violation per limit) when it would exceed a budget."""
    limited = any(h.budget.limited for h in holders)
    estimate = _estimate(repo, job, model, deps, required=estimate_required or limited)
    budget, violations = _budget_check(repo, holders, estimate, deps)
    if violations:
        raise FailedPrecondition("the training job would exceed its budget", violations)
    return replace(job, budget=budget, estimate=estimate)


def resolved_config(
    config: JobConfig, model: ResolvedModel, split: SplitInfo, deps: TrainerDeps
) -> JobConfig:
    hp = resolve_hyperparameters(config.hyperparameters, deps.models.max_length(model))
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


def new_job(
    *,
    name: str,
    target_model: str,
    split: SplitInfo,
    config: JobConfig,
    training_policy: str,
    request_id: str,
    deps: TrainerDeps,
    creator: str = "",
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
        software_versions=deps.software_versions,
        request_id=request_id,
        micro_batch_size=hp.batch_size,
        accumulation_steps=hp.gradient_accumulation_steps,
        # a policy's job is automation's doing: the policy is its creator, not a person
        creator=training_policy or creator,
    )


def find_split(repo: TrainerRepository, name: str, deps: TrainerDeps) -> SplitInfo:
    known = repo.known_split(name)
    if known is not None:
        return known
    problem = "no SplitCreated announced it"
    if deps.splits is not None:
        try:
            fetched = deps.splits.fetch(name)
        except LookupError as error:
            problem = f"no SplitCreated announced it and {error}"
        else:
            if fetched is not None:
                repo.remember_split(fetched, now=utc_now())
                return fetched
            problem = "the splitter does not know it"
    raise FailedPrecondition(
        f"split {name} is not known to the trainer",
        [PreconditionViolation("SPLIT_UNKNOWN", name, problem)],
    )
