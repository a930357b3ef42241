"""Domain ⇄ protobuf: the evaluator's resources and events, and what it reads from others'.

The one place that knows both the domain's dataclasses and the contracts' messages: the gRPC
servicer, the subscriptions (other services' events, before a handler sees them), the repository
(which stores the ``Evaluation`` resource) and the event staging all convert here.
"""

from __future__ import annotations

import math
from typing import cast

from services.evaluator.adapters.data_check_protos import (
    data_checks_from_proto,
    data_checks_to_proto,
)
from services.evaluator.adapters.parity_protos import (
    parity_from_proto,
    parity_to_proto,
    serving_profile_from_proto,
)
from services.evaluator.domain.evaluation import (
    Baseline,
    BaselineKind,
    BaseModelRef,
    CheckpointRef,
    CheckpointSelection,
    Evaluation,
    EvaluationPolicy,
    EvaluationSet,
    EvaluationState,
    FailureReason,
    ModelSpec,
    RegisteredCheckpoint,
    SplitPart,
)
from services.evaluator.domain.events import (
    DatasetVersionLocation,
    ReadyCheckpoint,
    SplitLocation,
)
from services.evaluator.domain.gate import (
    ComparisonOutcome,
    GatePolicy,
    MetricComparison,
    MetricGate,
    MetricValue,
    SignificanceTest,
    Verdict,
    regression_severity,
)
from shared.protobuf import (
    datetime_from_timestamp,
    enum_from_proto,
    enum_to_proto,
    set_timestamp,
)
from shared.task_types import TASK_TYPE_PREFIX, TaskType
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2 as dataset_events_pb2
from tuneline.evaluator.v1 import events_pb2
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2
from tuneline.registry.v1 import resources_pb2 as registry_pb2
from tuneline.splitter.v1 import events_pb2 as splitter_events_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events_pb2

# -- enums ------------------------------------------------------------------------------------


def task_type_to_proto(task_type: TaskType | None) -> common_pb2.TaskType.ValueType:
    return enum_to_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, task_type)


def task_type_from_proto(number: int) -> TaskType | None:
    return enum_from_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, number, TaskType)


def verdict_to_proto(verdict: Verdict | None) -> common_pb2.EvaluationVerdict.ValueType:
    return enum_to_proto(common_pb2.EvaluationVerdict, "EVALUATION_VERDICT", verdict)


def verdict_from_proto(number: int) -> Verdict | None:
    return enum_from_proto(common_pb2.EvaluationVerdict, "EVALUATION_VERDICT", number, Verdict)


def selection_to_proto(
    selection: CheckpointSelection,
) -> evaluator_pb2.CheckpointSelection.ValueType:
    return enum_to_proto(evaluator_pb2.CheckpointSelection, "CHECKPOINT_SELECTION", selection)


def selection_from_proto(number: int) -> CheckpointSelection | None:
    return enum_from_proto(
        evaluator_pb2.CheckpointSelection, "CHECKPOINT_SELECTION", number, CheckpointSelection
    )


# -- values shared with other services --------------------------------------------------------


def base_model_from_proto(message: common_pb2.BaseModel) -> BaseModelRef:
    return BaseModelRef(
        model_name=message.model_name,
        model_path=message.model_path,
        files_sha256=message.files_sha256,
        revision=message.revision,
        architecture=message.architecture,
    )


def base_model_to_proto(base: BaseModelRef) -> common_pb2.BaseModel:
    message = common_pb2.BaseModel(
        files_sha256=base.files_sha256, revision=base.revision, architecture=base.architecture
    )
    if base.model_name:
        message.model_name = base.model_name
    elif base.model_path:
        message.model_path = base.model_path
    return message


def evaluation_set_from_proto(message: common_pb2.EvaluationSet) -> EvaluationSet:
    part = enum_from_proto(common_pb2.SplitPart, "SPLIT_PART", message.part, SplitPart)
    return EvaluationSet(
        dataset_version=message.dataset_version,
        split=message.split,
        part=part or SplitPart.VALIDATION,
        label=message.label,
    )


def evaluation_set_to_proto(evaluation_set: EvaluationSet) -> common_pb2.EvaluationSet:
    message = common_pb2.EvaluationSet(
        dataset_version=evaluation_set.dataset_version,
        split=evaluation_set.split,
        label=evaluation_set.label,
    )
    if evaluation_set.split:
        message.part = enum_to_proto(common_pb2.SplitPart, "SPLIT_PART", evaluation_set.part)
    return message


def gate_policy_from_proto(message: common_pb2.GatePolicy, task_type: TaskType) -> GatePolicy:
    test = enum_from_proto(
        common_pb2.SignificanceTest, "SIGNIFICANCE_TEST", message.test, SignificanceTest
    )
    return GatePolicy.resolve(
        task_type,
        metrics=[
            MetricGate(
                metric=gate.metric,
                tolerance=gate.tolerance,
                min_absolute_score=(
                    gate.min_absolute_score if gate.HasField("min_absolute_score") else None
                ),
            )
            for gate in message.metrics
        ],
        significance_level=message.significance_level,
        min_slice_size=int(message.min_slice_size),
        min_examples=int(message.min_examples),
        test=test,
        bootstrap_resamples=message.bootstrap_resamples,
        seed=message.seed if message.HasField("seed") else None,
        primary_metric=message.primary_metric,
        gated_slices=tuple(message.gated_slices),
    )


def gate_policy_to_proto(policy: GatePolicy) -> common_pb2.GatePolicy:
    message = common_pb2.GatePolicy(
        significance_level=policy.significance_level,
        min_slice_size=policy.min_slice_size,
        min_examples=policy.min_examples,
        test=enum_to_proto(common_pb2.SignificanceTest, "SIGNIFICANCE_TEST", policy.test),
        bootstrap_resamples=policy.bootstrap_resamples,
        seed=policy.seed,
        primary_metric=policy.primary_metric,
        gated_slices=policy.gated_slices,
    )
    for gate in policy.metrics:
        entry = message.metrics.add(metric=gate.metric, tolerance=gate.tolerance)
        if gate.min_absolute_score is not None:
            entry.min_absolute_score = gate.min_absolute_score
    return message


def model_spec_from_proto(model: registry_pb2.Model) -> ModelSpec:
    """What the evaluator needs of a registry model (task, base model, sets, gate)."""
    task_type = task_type_from_proto(model.task_type)
    if task_type is None:
        raise ValueError(f"model {model.name} has no task type")
    return ModelSpec(
        name=model.name,
        task_type=task_type,
        base_model=base_model_from_proto(model.base_model),
        evaluation_set=evaluation_set_from_proto(model.evaluation_set),
        golden_sets=tuple(evaluation_set_from_proto(s) for s in model.golden_sets),
        gate_policy=gate_policy_from_proto(model.gate_policy, task_type),
        serving_profile=(
            serving_profile_from_proto(model.serving_profile)
            if model.HasField("serving_profile")
            else None
        ),
    )


def registered_checkpoint_from_alias(alias: registry_pb2.Alias) -> RegisteredCheckpoint | None:
    """The checkpoint an alias points at, or ``None`` for an alias never set."""
    if not alias.checkpoint:
        return None
    return RegisteredCheckpoint(
        name=alias.checkpoint,
        sha256=alias.sha256,
        artifact_uri=alias.artifact_uri,
        base_model=base_model_from_proto(alias.base_model),
    )


def registered_checkpoint_from_proto(checkpoint: registry_pb2.Checkpoint) -> RegisteredCheckpoint:
    return RegisteredCheckpoint(
        name=checkpoint.name,
        sha256=checkpoint.sha256,
        artifact_uri=checkpoint.artifact_uri,
        base_model=base_model_from_proto(checkpoint.lineage.base_model),
    )


def checkpoint_ref_from_event(event: trainer_events_pb2.CheckpointReady) -> CheckpointRef:
    return CheckpointRef(
        name=event.checkpoint,
        sha256=event.sha256,
        artifact_uri=event.artifact_uri,
        training_job=event.training_job,
        target_model=event.target_model,
        step=event.step,
        is_best=event.is_best,
        is_final=event.is_final,
        task_type=task_type_from_proto(event.lineage.task_type),
        base_model=base_model_from_proto(event.lineage.base_model),
        lineage=event.lineage.SerializeToString(deterministic=True),
        validation_loss=event.validation_loss if event.HasField("validation_loss") else None,
        best_checkpoint=event.best_checkpoint,
    )


def ready_checkpoint_from_event(event: trainer_events_pb2.CheckpointReady) -> ReadyCheckpoint:
    """A CheckpointReady as the handler takes it: the checkpoint, and the event to store."""
    return ReadyCheckpoint(
        checkpoint_ref_from_event(event), event.SerializeToString(deterministic=True)
    )


def split_location_from_event(event: splitter_events_pb2.SplitCreated) -> SplitLocation:
    return SplitLocation(
        split=event.split,
        dataset_version=event.dataset_version,
        manifest_uri=event.manifest_uri,
        manifest_sha256=event.manifest_sha256,
        dataset_artifact_uri=event.dataset_artifact_uri,
        dataset_content_sha256=event.dataset_content_sha256,
    )


def dataset_version_location_from_event(
    event: dataset_events_pb2.DatasetVersioned,
) -> DatasetVersionLocation:
    return DatasetVersionLocation(
        dataset_version=event.dataset_version,
        artifact_uri=event.artifact_uri,
        content_sha256=event.content_sha256,
    )


def _lineage(checkpoint: CheckpointRef) -> common_pb2.Lineage:
    return common_pb2.Lineage.FromString(checkpoint.lineage)


def training_split_of(checkpoint: CheckpointRef) -> str:
    """The split the checkpoint was trained on, as its lineage names it ("" when none)."""
    return _lineage(checkpoint).split


# -- metrics and comparisons ------------------------------------------------------------------


def metric_value_to_proto(value: MetricValue) -> common_pb2.MetricValue:
    return common_pb2.MetricValue(
        metric=value.metric,
        slice=value.slice,
        evaluation_set=value.evaluation_set,
        value=value.value,
        example_count=value.example_count,
    )


def metric_value_from_proto(message: common_pb2.MetricValue) -> MetricValue:
    return MetricValue(
        message.metric, message.slice, message.evaluation_set, message.value, message.example_count
    )


def comparison_to_proto(comparison: MetricComparison) -> common_pb2.MetricComparison:
    return common_pb2.MetricComparison(
        metric=comparison.metric,
        slice=comparison.slice,
        evaluation_set=comparison.evaluation_set,
        baseline=comparison.baseline,
        candidate=comparison.candidate,
        delta=comparison.delta,
        delta_ci_lower=comparison.delta_ci_lower,
        delta_ci_upper=comparison.delta_ci_upper,
        confidence_level=comparison.confidence_level,
        p_value=comparison.p_value,
        test=enum_to_proto(common_pb2.SignificanceTest, "SIGNIFICANCE_TEST", comparison.test),
        example_count=comparison.example_count,
        higher_is_better=comparison.higher_is_better,
        tolerance=comparison.tolerance,
        outcome=enum_to_proto(
            common_pb2.ComparisonOutcome, "COMPARISON_OUTCOME", comparison.outcome
        ),
        minimum_detectable_effect=_finite(comparison.minimum_detectable_drop),
        reason=comparison.reason,
        standard_error=_finite(comparison.standard_error),
        adjusted_p_value=comparison.adjusted_p_value,
        family_weight=comparison.family_weight,
    )


def comparison_from_proto(message: common_pb2.MetricComparison) -> MetricComparison:
    # The casts only narrow the type: the evaluator always sets a comparison's test and outcome
    # (likewise a baseline's kind and an evaluation's state) in what it stores.
    return MetricComparison(
        metric=message.metric,
        slice=message.slice,
        evaluation_set=message.evaluation_set,
        baseline=message.baseline,
        candidate=message.candidate,
        delta=message.delta,
        delta_ci_lower=message.delta_ci_lower,
        delta_ci_upper=message.delta_ci_upper,
        confidence_level=message.confidence_level,
        p_value=message.p_value,
        test=cast(
            SignificanceTest,
            enum_from_proto(
                common_pb2.SignificanceTest, "SIGNIFICANCE_TEST", message.test, SignificanceTest
            ),
        ),
        example_count=message.example_count,
        higher_is_better=message.higher_is_better,
        tolerance=message.tolerance,
        outcome=cast(
            ComparisonOutcome,
            enum_from_proto(
                common_pb2.ComparisonOutcome,
                "COMPARISON_OUTCOME",
                message.outcome,
                ComparisonOutcome,
            ),
        ),
        standard_error=message.standard_error,
        minimum_detectable_drop=message.minimum_detectable_effect,
        # comparisons stored before the family existed have no weight: not adjusted
        adjusted_p_value=message.adjusted_p_value if message.family_weight > 0 else 1.0,
        family_weight=message.family_weight,
        reason=message.reason,
    )


def baseline_to_proto(baseline: Baseline) -> evaluator_pb2.Baseline:
    return evaluator_pb2.Baseline(
        kind=enum_to_proto(evaluator_pb2.BaselineKind, "BASELINE_KIND", baseline.kind),
        checkpoint=baseline.checkpoint,
        checkpoint_sha256=baseline.checkpoint_sha256,
        base_model=base_model_to_proto(baseline.base_model),
        metrics=[metric_value_to_proto(v) for v in baseline.metrics],
        reused=baseline.reused,
    )


def baseline_from_proto(message: evaluator_pb2.Baseline) -> Baseline:
    return Baseline(
        kind=cast(
            BaselineKind,
            enum_from_proto(
                evaluator_pb2.BaselineKind, "BASELINE_KIND", message.kind, BaselineKind
            ),
        ),
        checkpoint=message.checkpoint,
        checkpoint_sha256=message.checkpoint_sha256,
        base_model=base_model_from_proto(message.base_model),
        metrics=tuple(metric_value_from_proto(v) for v in message.metrics),
        reused=message.reused,
    )


# -- the evaluation resource ------------------------------------------------------------------


def evaluation_to_proto(evaluation: Evaluation) -> evaluator_pb2.Evaluation:
    message = evaluator_pb2.Evaluation(
        name=evaluation.name,
        checkpoint=evaluation.checkpoint.name,
        checkpoint_sha256=evaluation.checkpoint.sha256,
        model=evaluation.model,
        task_type=task_type_to_proto(evaluation.task_type or evaluation.checkpoint.task_type),
        state=enum_to_proto(evaluator_pb2.EvaluationState, "EVALUATION_STATE", evaluation.state),
        verdict=verdict_to_proto(evaluation.verdict),
        metrics=[metric_value_to_proto(v) for v in evaluation.metrics],
        comparisons=[comparison_to_proto(c) for c in evaluation.comparisons],
        failure_reason=enum_to_proto(
            evaluator_pb2.EvaluationFailureReason,
            "EVALUATION_FAILURE_REASON",
            evaluation.failure_reason,
        ),
        failure_message=evaluation.failure_message,
        example_count=evaluation.example_count,
        lineage=_lineage(evaluation.checkpoint),
        selection_reason=evaluation.selection_reason,
    )
    if evaluation.selection is not None:
        message.checkpoint_selection = selection_to_proto(evaluation.selection)
    if evaluation.primary_set is not None:
        message.evaluation_set.CopyFrom(evaluation_set_to_proto(evaluation.primary_set))
    message.golden_sets.extend(evaluation_set_to_proto(s) for s in evaluation.golden_sets)
    if evaluation.gate_policy is not None:
        message.gate_policy.CopyFrom(gate_policy_to_proto(evaluation.gate_policy))
    if evaluation.baseline is not None:
        message.baseline.CopyFrom(baseline_to_proto(evaluation.baseline))
    if evaluation.parity is not None:
        message.parity.CopyFrom(parity_to_proto(evaluation.parity))
    if evaluation.data_checks is not None:
        message.data_checks.CopyFrom(data_checks_to_proto(evaluation.data_checks))
    set_timestamp(message.create_time, evaluation.create_time)
    set_timestamp(message.start_time, evaluation.start_time)
    set_timestamp(message.end_time, evaluation.end_time)
    return message


def evaluation_from_proto(
    message: evaluator_pb2.Evaluation,
    checkpoint: CheckpointRef,
    *,
    requested_baseline: str = "",
    request_id: str = "",
) -> Evaluation:
    """The domain evaluation back from its stored resource and its checkpoint's record."""
    task_type = task_type_from_proto(message.task_type)
    sets = []
    if message.HasField("evaluation_set"):
        sets.append(evaluation_set_from_proto(message.evaluation_set))
    sets += [evaluation_set_from_proto(s) for s in message.golden_sets]
    comparisons = tuple(comparison_from_proto(c) for c in message.comparisons)
    regressions = sorted(
        (c for c in comparisons if c.outcome is ComparisonOutcome.REGRESSED),
        key=regression_severity,
    )
    create_time = datetime_from_timestamp(message, "create_time")
    assert create_time is not None, "a stored evaluation always has a create time"
    return Evaluation(
        name=message.name,
        checkpoint=checkpoint,
        model=message.model,
        create_time=create_time,
        state=cast(
            EvaluationState,
            enum_from_proto(
                evaluator_pb2.EvaluationState, "EVALUATION_STATE", message.state, EvaluationState
            ),
        ),
        requested_baseline=requested_baseline,
        request_id=request_id,
        task_type=task_type,
        evaluation_sets=tuple(sets),
        gate_policy=(
            gate_policy_from_proto(message.gate_policy, task_type)
            if message.HasField("gate_policy") and task_type is not None
            else None
        ),
        verdict=verdict_from_proto(message.verdict),
        metrics=tuple(metric_value_from_proto(v) for v in message.metrics),
        baseline=baseline_from_proto(message.baseline) if message.HasField("baseline") else None,
        comparisons=comparisons,
        failure_reason=enum_from_proto(
            evaluator_pb2.EvaluationFailureReason,
            "EVALUATION_FAILURE_REASON",
            message.failure_reason,
            FailureReason,
        ),
        failure_message=message.failure_message,
        example_count=message.example_count,
        start_time=datetime_from_timestamp(message, "start_time"),
        end_time=datetime_from_timestamp(message, "end_time"),
        regressions=tuple(regressions),
        parity=parity_from_proto(message.parity),
        data_checks=(
            data_checks_from_proto(message.data_checks) if message.HasField("data_checks") else None
        ),
        selection=selection_from_proto(message.checkpoint_selection),
        selection_reason=message.selection_reason,
    )


def policy_to_proto(policy: EvaluationPolicy) -> evaluator_pb2.EvaluationPolicy:
    message = evaluator_pb2.EvaluationPolicy(
        name=policy.name,
        checkpoint_selection=selection_to_proto(policy.checkpoint_selection),
        max_generation_examples=policy.max_generation_examples,
        max_new_tokens=policy.max_new_tokens,
        batch_size=policy.batch_size,
    )
    set_timestamp(message.update_time, policy.update_time)
    return message


# -- events -----------------------------------------------------------------------------------


def evaluation_completed_event(evaluation: Evaluation) -> events_pb2.EvaluationCompleted:
    """EvaluationCompleted for a terminal evaluation (FAILED ones too)."""
    resource = evaluation_to_proto(evaluation)
    event = events_pb2.EvaluationCompleted(
        evaluation=resource.name,
        model=resource.model,
        checkpoint=resource.checkpoint,
        checkpoint_sha256=resource.checkpoint_sha256,
        verdict=resource.verdict,
        golden_sets=resource.golden_sets,
        metrics=resource.metrics,
        comparisons=resource.comparisons,
        failure_reason=resource.failure_reason,
        failure_message=resource.failure_message,
        example_count=resource.example_count,
        lineage=resource.lineage,
        checkpoint_selection=resource.checkpoint_selection,
        selection_reason=resource.selection_reason,
    )
    if resource.HasField("evaluation_set"):
        event.evaluation_set.CopyFrom(resource.evaluation_set)
    if resource.HasField("baseline"):
        event.baseline.CopyFrom(resource.baseline)
    if resource.HasField("parity"):
        event.parity.CopyFrom(resource.parity)
    if resource.HasField("data_checks"):
        event.data_checks.CopyFrom(resource.data_checks)
    set_timestamp(event.event_time, evaluation.end_time)
    return event


def regression_detected_event(evaluation: Evaluation) -> events_pb2.RegressionDetected:
    """RegressionDetected for a REGRESSED evaluation, headlined by its most severe regression."""
    if not evaluation.regressions or evaluation.baseline is None:
        raise ValueError(f"{evaluation.name} has no regression to report")
    worst = evaluation.regressions[0]
    event = events_pb2.RegressionDetected(
        evaluation=evaluation.name,
        model=evaluation.model,
        checkpoint=evaluation.checkpoint.name,
        checkpoint_sha256=evaluation.checkpoint.sha256,
        metric=worst.metric,
        slice=worst.slice,
        evaluation_set=worst.evaluation_set,
        baseline=worst.baseline,
        candidate=worst.candidate,
        delta=worst.delta,
        delta_ci_lower=_finite(worst.delta_ci_lower),
        delta_ci_upper=_finite(worst.delta_ci_upper),
        confidence_level=worst.confidence_level,
        p_value=worst.p_value,
        example_count=worst.example_count,
        tolerance=worst.tolerance,
        regressions=[comparison_to_proto(c) for c in evaluation.regressions],
        baseline_kind=enum_to_proto(
            evaluator_pb2.BaselineKind, "BASELINE_KIND", evaluation.baseline.kind
        ),
        baseline_checkpoint=evaluation.baseline.checkpoint,
    )
    set_timestamp(event.event_time, evaluation.end_time)
    return event


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
