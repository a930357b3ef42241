"""The rounds of the story: the set-up, then each pushed version followed through the pipeline by
its events (trained and promoted, refused, blocked by its label audit, or regressed)."""

from __future__ import annotations

import time
from typing import Any

from shared.names import TRAINING_POLICY
from shared.task_types import TaskType
from tuneline.client.dataset import dataset_name
from tuneline.client.errors import InvalidArgumentError, TunelineError
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2 as dataset_events
from tuneline.dataset.v1 import resources_pb2 as dataset_pb2
from tuneline.demo.config import DEMO_CHURN_OVERRIDE, DemoError
from tuneline.demo.corpus import SENTIMENT_LABELS, to_jsonl
from tuneline.demo.results import (
    BlockedVersion,
    RoundResult,
    data_checks_line,
    money,
    overall_metric,
    worst_comparison,
)
from tuneline.demo.run import DemoRun
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.registry.v1 import events_pb2 as registry_events
from tuneline.registry.v1 import resources_pb2 as registry_pb2
from tuneline.splitter.v1 import events_pb2 as splitter_events
from tuneline.trainer.v1 import events_pb2 as trainer_events
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2

_TERMINAL_JOB_STATES = {
    trainer_pb2.TRAINING_JOB_STATE_SUCCEEDED,
    trainer_pb2.TRAINING_JOB_STATE_FAILED,
    trainer_pb2.TRAINING_JOB_STATE_CANCELLED,
}


def set_up(demo: DemoRun, evaluation_rows: list[dict[str, str]]) -> str:
    """Step 1: the held-out evaluation set (never split), the model gated on it, the training
    dataset and the training policy tying it to the model; returns the evaluation version."""
    config = demo.config
    demo.observer.stage("Held-out evaluation set and the model")
    demo.datasets.create_dataset(
        demo.evaluation_dataset_id,
        TaskType.CLASSIFICATION,
        label_set=SENTIMENT_LABELS,
        display_name="Rotten Tomatoes, held-out movies",
    )
    # the regression suite is used whole: no split, and no training on it
    demo.splitter.set_split_policy(
        dataset_name(demo.evaluation_dataset_id), auto_split_disabled=True
    )
    evaluation = push(demo, demo.evaluation_dataset_id, "held-out evaluation set", evaluation_rows)
    demo.observer.note(f"evaluation set {evaluation.name}: {evaluation.row_count} rows")
    gate = common_pb2.GatePolicy(
        metrics=[
            common_pb2.MetricGate(
                metric="accuracy",
                tolerance=config.tolerance,
                min_absolute_score=config.live_floor,
            ),
            common_pb2.MetricGate(metric="macro_f1", tolerance=config.tolerance),
        ],
        seed=config.seed,
    )
    demo.registry.create_model(
        demo.model_id,
        registry_pb2.Model(
            display_name="Review sentiment",
            task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
            base_model=common_pb2.BaseModel(model_name=config.base_model),
            evaluation_set=common_pb2.EvaluationSet(dataset_version=evaluation.name),
            gate_policy=gate,
            promotion_policy=registry_pb2.PROMOTION_POLICY_AUTOMATIC,
        ),
    )
    demo.observer.note(f"model {demo.model} (AUTOMATIC promotion)")
    demo.datasets.create_dataset(
        demo.dataset_id,
        TaskType.CLASSIFICATION,
        label_set=SENTIMENT_LABELS,
        display_name="Rotten Tomatoes reviews",
        # the label audit's default policy: BLOCK above 25 % estimated label noise
    )
    hyperparameters = common_pb2.Hyperparameters(
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        epochs=config.epochs,
        max_steps=config.max_steps,
        max_seq_length=config.max_seq_length,
        seed=config.seed,
    )
    demo.trainer.set_training_policy(
        trainer_pb2.TrainingPolicy(
            name=TRAINING_POLICY.format(policy=demo.dataset_id),
            dataset=dataset_name(demo.dataset_id),
            target_model=demo.model,
            job_template=trainer_pb2.TrainingJobTemplate(
                display_name="demo LoRA",
                base_model=common_pb2.BaseModel(model_name=config.base_model),
                adapter_spec=common_pb2.AdapterSpec(rank=config.lora_rank),
                hyperparameters=hyperparameters,
                stopping_rules=trainer_pb2.StoppingRules(
                    eval_every_n_steps=config.eval_every_n_steps
                ),
            ),
        )
    )
    demo.observer.note(f"training policy: every split of {dataset_name(demo.dataset_id)} trains")
    return str(evaluation.name)


def push(
    demo: DemoRun,
    dataset_id: str,
    what: str,
    rows: list[dict[str, str]],
    parent: str = "",
    *,
    label_churn_override: str = "",
) -> Any:
    """Upload ``rows`` as a version of ``dataset_id`` (a revision of ``parent``, when given);
    returns the stored ``DatasetVersion``."""
    content = to_jsonl(rows)
    response = demo.datasets.upload_dataset_version(
        dataset_name(dataset_id),
        content,
        filename=f"{what}.jsonl",
        parent_version=parent,
        uploader="tuneline-demo",
        label_churn_override=label_churn_override,
        progress=lambda sent, _lines: demo.observer.upload_progress(what, sent, len(content)),
    )
    return response.dataset_version


def label_audit(demo: DemoRun, version: str) -> str:
    """The label audit of ``version`` in one line: its verdict, the estimated noise against
    the policy's limit, per label, and the first suspected rows (it is done: training, or
    its refusal, waited for it)."""
    audit = demo.datasets.get_dataset_audit(version, max_rows=3)
    verdict = dataset_pb2.LabelAuditVerdict.Name(audit.verdict).removeprefix("LABEL_AUDIT_VERDICT_")
    comparison = "above" if audit.noise_rate > audit.max_noise_rate else "within"
    per_label = ", ".join(f"{c.label} {c.noise_rate:.0%}" for c in audit.classes)
    rows = "; ".join(
        f"line {row.line_number} {row.given_label}→{row.suggested_label}"
        for row in audit.suspected_rows
    )
    return (
        f"label audit {verdict}: estimated noise {audit.noise_rate:.1%} ({per_label}), "
        f"{comparison} the {audit.max_noise_rate:.0%} allowed; {audit.suspected_count} of "
        f"{audit.row_count} rows suspected" + (f" ({rows}, …)" if rows else "")
    )


def play_round(
    demo: DemoRun,
    label: str,
    rows: list[dict[str, str]],
    parent: str,
    *,
    expect_promotion: bool,
    label_churn_override: str = "",
) -> RoundResult:
    started = time.monotonic()
    result = RoundResult(label=label)
    version = push(
        demo, demo.dataset_id, label, rows, parent, label_churn_override=label_churn_override
    )
    result.dataset_version = version.name
    result.rows = version.row_count
    result.content_sha256 = version.content_sha256
    demo.wait(dataset_events.DatasetVersioned, lambda e: e.dataset_version == version.name)
    split = demo.wait(splitter_events.SplitCreated, lambda e: e.dataset_version == version.name)
    result.split = split.split
    for part in split.parts:
        if part.part == common_pb2.SPLIT_PART_TRAIN:
            result.train_rows = part.row_count
        elif part.part == common_pb2.SPLIT_PART_VALIDATION:
            result.validation_rows = part.row_count
    job_failed = [(trainer_events.TrainingJobFailed, lambda e: e.lineage.split == split.split)]
    started_event = demo.wait(
        trainer_events.TrainingJobStarted,
        lambda e: e.lineage.split == split.split,
        job_failed,
    )
    job = started_event.training_job
    result.training_job = job
    result.audit = label_audit(demo, version.name)  # done: the policy's job waited for it
    watch_training(demo, job)
    completed = demo.wait(
        trainer_events.TrainingJobCompleted,
        lambda e: e.training_job == job,
        [(trainer_events.TrainingJobFailed, lambda e: e.training_job == job)],
    )
    result.steps = completed.steps_completed
    result.loss_trend = [
        (
            point.step,
            point.train_loss if point.HasField("train_loss") else None,
            point.validation_loss if point.HasField("validation_loss") else None,
        )
        for point in completed.loss_trend
    ]
    result.device_seconds = completed.cost.device_seconds
    result.cost = money(completed.cost.amount)
    result.checkpoint = completed.final_checkpoint
    result.evaluated_checkpoint = completed.best_checkpoint or completed.final_checkpoint
    evaluation = demo.wait(
        evaluator_events.EvaluationCompleted,
        lambda e: e.checkpoint == result.evaluated_checkpoint,
    )
    result.verdict = common_pb2.EvaluationVerdict.Name(evaluation.verdict).removeprefix(
        "EVALUATION_VERDICT_"
    )
    result.accuracy = overall_metric(evaluation.metrics, "accuracy")
    result.baseline_accuracy = overall_metric(evaluation.baseline.metrics, "accuracy")
    result.baseline = evaluation.baseline.checkpoint or "base model"
    result.data_checks = data_checks_line(evaluation.data_checks)
    expected = "PASSED" if expect_promotion else "REGRESSED"
    if result.verdict != expected:
        detail = evaluation.failure_message or worst_comparison(evaluation.comparisons)
        raise DemoError(
            f"the {label} version's checkpoint was judged {result.verdict}, not {expected}"
            + (f": {detail}" if detail else "")
        )
    if expect_promotion:
        promoted = demo.wait(
            registry_events.ModelPromoted,
            lambda e: e.source_checkpoint == result.evaluated_checkpoint,
        )
        result.registry_checkpoint = promoted.to_checkpoint
        result.promoted = True
    else:
        regression = demo.wait(
            evaluator_events.RegressionDetected,
            lambda e: e.checkpoint == result.evaluated_checkpoint,
        )
        result.regression = (
            f"{regression.metric}{' in ' + regression.slice if regression.slice else ''} "
            f"{regression.baseline:.3f} → {regression.candidate:.3f} "
            f"(Δ {regression.delta:+.3f}, p = {regression.p_value:.2g})"
        )
    result.seconds = time.monotonic() - started
    return result


def watch_training(demo: DemoRun, job: str) -> None:
    """Stream the job's progress to the observer until it ends; a broken stream (the
    trainer restarting) resumes watching, since the job resumes too."""
    deadline = time.monotonic() + demo.config.event_timeout
    while time.monotonic() < deadline:
        try:
            for update in demo.trainer.watch_training_job(job, timeout=None):
                demo.observer.training_progress(job, update.progress)
                if update.progress.state in _TERMINAL_JOB_STATES:
                    return
        except TunelineError as error:
            demo.observer.note(
                f"progress stream of {job} interrupted ({error.code.name}); reconnecting"
            )
            time.sleep(1.0)
            continue
        return


def refused_for_label_churn(demo: DemoRun, rows: list[dict[str, str]], parent: str) -> str:
    """Push ``rows`` as a revision of ``parent`` and expect the dataset service to refuse
    it for label churn; returns the finding, as the validation report words it."""
    try:
        version = push(demo, demo.dataset_id, "relabelled", rows, parent)
    except InvalidArgumentError as error:
        report = demo.datasets.get_validation_report(error.metadata.get("report", ""))
        finding = next((f for f in report.findings if f.rule_id == "label_churn"), None)
        if finding is None:
            raise DemoError(
                f"the relabelled version was refused, not for churn: {error}"
            ) from error
        lines = ", ".join(str(n) for n in finding.line_numbers[:5])
        return f"label_churn: {finding.message} (first lines {lines}, …)"
    raise DemoError(f"{version.name} was accepted although most of its labels changed")


def stopped_by_label_audit(
    demo: DemoRun, rows: list[dict[str, str]], parent: str, churn_refusal: str
) -> BlockedVersion:
    """Push ``rows`` again, with the churn override, and expect its label audit to block it:
    DatasetAudited BLOCKED, and the training policy's job for its split FAILED with
    LABEL_AUDIT_BLOCKED, never started (a TrainingJobStarted for the split fails the demo)."""
    started = time.monotonic()
    version = push(
        demo, demo.dataset_id, "relabelled", rows, parent, label_churn_override=DEMO_CHURN_OVERRIDE
    )
    audited = demo.wait(dataset_events.DatasetAudited, lambda e: e.dataset_version == version.name)
    verdict = dataset_pb2.LabelAuditVerdict.Name(audited.verdict).removeprefix(
        "LABEL_AUDIT_VERDICT_"
    )
    if audited.verdict != dataset_pb2.LABEL_AUDIT_VERDICT_BLOCKED:
        raise DemoError(
            f"the label audit of {version.name} said {verdict}, not BLOCKED: {audited.reason}"
        )
    split = demo.wait(splitter_events.SplitCreated, lambda e: e.dataset_version == version.name)
    refused = demo.wait(
        trainer_events.TrainingJobFailed,
        lambda e: e.lineage.split == split.split,
        [(trainer_events.TrainingJobStarted, lambda e: e.lineage.split == split.split)],
    )
    reason = trainer_pb2.TrainingFailureReason.Name(refused.failure_reason).removeprefix(
        "TRAINING_FAILURE_REASON_"
    )
    if refused.failure_reason != trainer_pb2.TRAINING_FAILURE_REASON_LABEL_AUDIT_BLOCKED:
        raise DemoError(f"{refused.training_job} failed for {reason}, not the label audit")
    return BlockedVersion(
        dataset_version=version.name,
        rows=version.row_count,
        churn_refusal=churn_refusal,
        verdict=verdict,
        noise_rate=audited.noise_rate,
        max_noise_rate=audited.max_noise_rate,
        suspected_count=audited.suspected_count,
        audit_reason=audited.reason,
        audit=label_audit(demo, version.name),
        split=split.split,
        training_job=refused.training_job,
        failure_reason=reason,
        failure_message=refused.failure_message,
        seconds=time.monotonic() - started,
    )
