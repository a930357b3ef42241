"""The trainer's commands and events, one function each, taking the caller's session (one
transaction: the state change and the events it stages in the outbox commit together) and
their dependencies as parameters. Split by subject:

* :mod:`.deps` — what they need besides the session (:class:`.deps.TrainerDeps`, the ports);
* :mod:`.admission` — the checks a job passes before it is queued, and its budget;
* :mod:`.jobs` — CreateTrainingJob (and its estimate), CancelTrainingJob;
* :mod:`.queries` — Get and List of jobs, checkpoints and policies;
* :mod:`.policies` — SetTrainingPolicy;
* :mod:`.policy_jobs` — SplitCreated and DatasetAudited, which make policies' jobs;
* :mod:`.attempts` — the supervisor's bookkeeping of worker attempts;
* :mod:`.worker_reports` — what workers report (started, progress, checkpoints, the end);
* :mod:`.job_rows` — what several of them do to a stored job.
"""

from __future__ import annotations

from services.trainer.handlers.admission import (
    BUDGET_EXCEEDED,
    LABEL_AUDIT_BLOCKED,
    MODEL_NOT_FOUND,
    MODEL_REFUSED,
    TARGET_MODEL_NOT_FOUND,
)
from services.trainer.handlers.attempts import (
    begin_attempt,
    cancel_without_worker,
    record_disk_full,
    record_oom_retry,
    record_worker_lost,
    runnable_jobs,
)
from services.trainer.handlers.deps import (
    Models,
    SplitLookup,
    TargetModels,
    TokenCounter,
    TrainerDeps,
    TrainTokenCount,
)
from services.trainer.handlers.jobs import (
    CreateJobCommand,
    cancel_training_job,
    create_training_job,
    estimate_training_job,
)
from services.trainer.handlers.policies import SetPolicyCommand, set_training_policy
from services.trainer.handlers.policy_jobs import on_dataset_audited, on_split_created
from services.trainer.handlers.queries import (
    Page,
    get_checkpoint,
    get_training_job,
    get_training_policy,
    list_checkpoints,
    list_training_jobs,
    list_training_policies,
)
from services.trainer.handlers.worker_reports import (
    CheckpointOutcome,
    record_checkpoint,
    record_failed,
    record_finished,
    record_progress,
    record_started,
)

__all__ = [
    "BUDGET_EXCEEDED",
    "LABEL_AUDIT_BLOCKED",
    "MODEL_NOT_FOUND",
    "MODEL_REFUSED",
    "TARGET_MODEL_NOT_FOUND",
    "CheckpointOutcome",
    "CreateJobCommand",
    "Models",
    "Page",
    "SetPolicyCommand",
    "SplitLookup",
    "TargetModels",
    "TokenCounter",
    "TrainTokenCount",
    "TrainerDeps",
    "begin_attempt",
    "cancel_training_job",
    "cancel_without_worker",
    "create_training_job",
    "estimate_training_job",
    "get_checkpoint",
    "get_training_job",
    "get_training_policy",
    "list_checkpoints",
    "list_training_jobs",
    "list_training_policies",
    "on_dataset_audited",
    "on_split_created",
    "record_checkpoint",
    "record_disk_full",
    "record_failed",
    "record_finished",
    "record_oom_retry",
    "record_progress",
    "record_started",
    "record_worker_lost",
    "runnable_jobs",
    "set_training_policy",
]
