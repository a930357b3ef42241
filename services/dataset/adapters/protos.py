"""Domain objects to and from the dataset service's protobuf messages (resources and events).

The gRPC servicer uses it to answer, the handlers to build the ``DatasetVersioned`` they stage
in the outbox: one mapping for both, so the API and the event always agree.
"""

from __future__ import annotations

from services.dataset.domain.datasets import Dataset, DatasetVersion
from services.dataset.domain.label_audit import (
    ClassNoise,
    DatasetAudit,
    LabelAuditAction,
    LabelAuditVerdict,
    SuspectedRow,
)
from services.dataset.domain.parent_shift import ParentShift, ParentShiftStatus
from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.reports import (
    Finding,
    Lineage,
    Outcome,
    SourceKind,
    Summary,
    ValidationReport,
)
from services.dataset.domain.rules import Severity
from shared.errors import FieldViolation, InvalidArgument
from shared.ownership import Owner
from shared.protobuf import enum_from_proto, enum_to_proto, timestamp_from_datetime
from shared.task_types import TASK_TYPE_PREFIX, TaskType
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2, resources_pb2

_SEVERITIES = {
    Severity.ERROR: resources_pb2.VALIDATION_SEVERITY_ERROR,
    Severity.WARNING: resources_pb2.VALIDATION_SEVERITY_WARNING,
    Severity.INFO: resources_pb2.VALIDATION_SEVERITY_INFO,
}
_OUTCOMES = {
    Outcome.ACCEPTED: resources_pb2.VALIDATION_OUTCOME_ACCEPTED,
    Outcome.REJECTED: resources_pb2.VALIDATION_OUTCOME_REJECTED,
}
_SOURCE_KINDS = {
    SourceKind.UPLOAD: resources_pb2.DATASET_SOURCE_KIND_UPLOAD,
    SourceKind.IMPORT: resources_pb2.DATASET_SOURCE_KIND_IMPORT,
}
_AUDIT_ACTIONS = {
    LabelAuditAction.REPORT: resources_pb2.LABEL_AUDIT_ACTION_REPORT,
    LabelAuditAction.WARN: resources_pb2.LABEL_AUDIT_ACTION_WARN,
    LabelAuditAction.BLOCK: resources_pb2.LABEL_AUDIT_ACTION_BLOCK,
}
_AUDIT_ACTIONS_BY_NUMBER = {number: action for action, number in _AUDIT_ACTIONS.items()}
_AUDIT_VERDICTS = {
    LabelAuditVerdict.PENDING: resources_pb2.LABEL_AUDIT_VERDICT_PENDING,
    LabelAuditVerdict.PASSED: resources_pb2.LABEL_AUDIT_VERDICT_PASSED,
    LabelAuditVerdict.WARNED: resources_pb2.LABEL_AUDIT_VERDICT_WARNED,
    LabelAuditVerdict.BLOCKED: resources_pb2.LABEL_AUDIT_VERDICT_BLOCKED,
    LabelAuditVerdict.SKIPPED: resources_pb2.LABEL_AUDIT_VERDICT_SKIPPED,
    LabelAuditVerdict.FAILED: resources_pb2.LABEL_AUDIT_VERDICT_FAILED,
}
_PARENT_SHIFT_STATUSES = {
    ParentShiftStatus.PASSED: resources_pb2.PARENT_SHIFT_STATUS_PASSED,
    ParentShiftStatus.FLAGGED: resources_pb2.PARENT_SHIFT_STATUS_FLAGGED,
    ParentShiftStatus.SKIPPED: resources_pb2.PARENT_SHIFT_STATUS_SKIPPED,
}
#: Suspected rows' line numbers a DatasetAudited event carries (the audit has them all).
_LINES_IN_EVENT = 100


# -- requests -> domain ------------------------------------------------------------------------


def task_type_from_proto(value: int, *, field: str, required: bool = True) -> TaskType | None:
    if value == common_pb2.TASK_TYPE_UNSPECIFIED and not required:
        return None
    try:
        task_type = enum_from_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, value, TaskType)
    except ValueError:  # a number the proto does not define, or a task type datasets lack
        task_type = None
    if task_type is not None:
        return task_type
    raise InvalidArgument(
        "a task type is required" if value == 0 else f"unknown task type {value}",
        [FieldViolation(field, "CLASSIFICATION or CAUSAL_LM", "INVALID_TASK_TYPE")],
    )


def outcome_from_proto(value: int) -> Outcome | None:
    for outcome, number in _OUTCOMES.items():
        if number == value:
            return outcome
    if value == resources_pb2.VALIDATION_OUTCOME_UNSPECIFIED:
        return None
    raise InvalidArgument(
        f"unknown outcome {value}",
        [FieldViolation("outcome", "ACCEPTED, REJECTED or unset", "INVALID_OUTCOME")],
    )


def policy_from_proto(message: resources_pb2.SchemaPolicy, *, field: str) -> SchemaPolicy:
    severities: dict[str, Severity] = {}
    violations = []
    for rule_id, value in message.rule_severities.items():
        severity = next((s for s, number in _SEVERITIES.items() if number == value), None)
        if severity is None:
            violations.append(
                FieldViolation(
                    f"{field}.rule_severities[{rule_id}]",
                    "ERROR, WARNING or INFO",
                    "INVALID_SEVERITY",
                )
            )
        else:
            severities[rule_id] = severity
    if violations:
        raise InvalidArgument("invalid schema policy", violations)
    return SchemaPolicy(
        label_set=tuple(message.label_set),
        max_text_length=message.max_text_length,
        min_rows_per_class=message.min_rows_per_class,
        max_imbalance_ratio=message.max_imbalance_ratio,
        max_label_churn=message.max_label_churn,
        min_shared_rows_for_churn=message.min_shared_rows_for_churn,
        label_audit_action=_AUDIT_ACTIONS_BY_NUMBER.get(message.label_audit_action),
        max_label_noise_rate=message.max_label_noise_rate,
        rule_severities=severities,
    )


# -- domain -> resources -----------------------------------------------------------------------


def policy_to_proto(policy: SchemaPolicy) -> resources_pb2.SchemaPolicy:
    return resources_pb2.SchemaPolicy(
        label_set=policy.label_set,
        label_set_derived=policy.label_set_derived,
        max_text_length=policy.max_text_length,
        min_rows_per_class=policy.min_rows_per_class,
        max_imbalance_ratio=policy.max_imbalance_ratio,
        max_label_churn=policy.max_label_churn,
        min_shared_rows_for_churn=policy.min_shared_rows_for_churn,
        label_audit_action=_AUDIT_ACTIONS[policy.label_audit_action]
        if policy.label_audit_action
        else resources_pb2.LABEL_AUDIT_ACTION_UNSPECIFIED,
        max_label_noise_rate=policy.max_label_noise_rate,
        rule_severities={rule: _SEVERITIES[s] for rule, s in policy.rule_severities.items()},
    )


def dataset_to_proto(dataset: Dataset) -> resources_pb2.Dataset:
    return resources_pb2.Dataset(
        name=dataset.name,
        display_name=dataset.display_name,
        description=dataset.description,
        task_type=task_type_to_proto(dataset.task_type),
        schema_policy=policy_to_proto(dataset.policy),
        latest_version=dataset.latest_version,
        version_count=dataset.version_count,
        create_time=timestamp_from_datetime(dataset.create_time),
        update_time=timestamp_from_datetime(dataset.update_time),
        owner=common_pb2.Owner(
            team=dataset.owner.team,
            contact=dataset.owner.contact,
            runbook_uri=dataset.owner.runbook_uri,
        ),
    )


def owner_from_proto(owner: common_pb2.Owner) -> Owner:
    return Owner(team=owner.team, contact=owner.contact, runbook_uri=owner.runbook_uri)


def task_type_to_proto(task_type: TaskType) -> common_pb2.TaskType.ValueType:
    return enum_to_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, task_type)


def lineage_to_proto(lineage: Lineage) -> resources_pb2.DatasetVersionLineage:
    return resources_pb2.DatasetVersionLineage(
        parent_version=lineage.parent_version,
        uploader=lineage.uploader,
        source_kind=_SOURCE_KINDS[lineage.source_kind],
        source=lineage.source,
        source_sha256=lineage.source_sha256,
        label_churn_override=lineage.label_churn_override,
    )


def summary_to_proto(summary: Summary) -> resources_pb2.ValidationSummary:
    return resources_pb2.ValidationSummary(
        outcome=_OUTCOMES[summary.outcome],
        error_count=summary.error_count,
        warning_count=summary.warning_count,
        info_count=summary.info_count,
        error_rule_ids=summary.error_rules,
        warning_rule_ids=summary.warning_rules,
    )


def finding_to_proto(finding: Finding) -> resources_pb2.ValidationFinding:
    return resources_pb2.ValidationFinding(
        rule_id=finding.rule.value,
        severity=_SEVERITIES[finding.severity],
        message=finding.message,
        count=finding.count,
        line_numbers=finding.line_numbers,
        field=finding.field,
    )


def report_to_proto(report: ValidationReport) -> resources_pb2.ValidationReport:
    return resources_pb2.ValidationReport(
        name=report.name,
        dataset_version=report.dataset_version,
        summary=summary_to_proto(report.summary),
        findings=[finding_to_proto(f) for f in report.findings],
        lines_read=report.lines_read,
        bytes_read=report.bytes_read,
        lineage=lineage_to_proto(report.lineage),
        validate_only=report.validate_only,
        create_time=timestamp_from_datetime(report.create_time),
    )


def _counts(items: tuple[tuple[str, int], ...]) -> list[common_pb2.LabelCount]:
    return [common_pb2.LabelCount(label=label, count=count) for label, count in items]


def version_to_proto(version: DatasetVersion) -> resources_pb2.DatasetVersion:
    return resources_pb2.DatasetVersion(
        name=version.name,
        content_sha256=version.content_sha256,
        row_count=version.row_count,
        byte_count=version.byte_count,
        task_type=task_type_to_proto(version.task_type),
        label_distribution=_counts(version.label_distribution),
        slice_distribution=_counts(version.slice_distribution),
        artifact_uri=version.artifact_uri,
        report=version.report,
        report_summary=summary_to_proto(version.summary),
        lineage=lineage_to_proto(version.lineage),
        create_time=timestamp_from_datetime(version.create_time),
    )


def dataset_versioned(version: DatasetVersion) -> events_pb2.DatasetVersioned:
    """The event announcing ``version``: every field of the contract, from the version."""
    return events_pb2.DatasetVersioned(
        dataset_version=version.name,
        dataset=version.dataset,
        content_sha256=version.content_sha256,
        row_count=version.row_count,
        byte_count=version.byte_count,
        task_type=task_type_to_proto(version.task_type),
        label_distribution=_counts(version.label_distribution),
        slice_distribution=_counts(version.slice_distribution),
        artifact_uri=version.artifact_uri,
        report=version.report,
        report_summary=summary_to_proto(version.summary),
        lineage=lineage_to_proto(version.lineage),
        event_time=timestamp_from_datetime(version.create_time),
    )


def _suspected_row_to_proto(row: SuspectedRow) -> resources_pb2.SuspectedLabelError:
    return resources_pb2.SuspectedLabelError(
        line_number=row.line_number,
        given_label=row.given_label,
        suggested_label=row.suggested_label,
        label_quality=row.label_quality,
    )


def _class_noise_to_proto(noise: ClassNoise) -> resources_pb2.LabelNoise:
    return resources_pb2.LabelNoise(
        label=noise.label,
        row_count=noise.row_count,
        suspected_count=noise.suspected_count,
        noise_rate=noise.noise_rate,
    )


def audit_to_proto(audit: DatasetAudit, *, max_rows: int = 0) -> resources_pb2.DatasetAudit:
    """The audit resource; ``max_rows`` > 0 keeps that many suspected rows."""
    message = resources_pb2.DatasetAudit(
        name=audit.name,
        dataset_version=audit.dataset_version,
        verdict=_AUDIT_VERDICTS[audit.verdict],
        reason=audit.reason,
        action=_AUDIT_ACTIONS[audit.policy.action],
        max_noise_rate=audit.policy.max_noise_rate,
        encoder=audit.encoder,
        row_count=audit.row_count,
        create_time=timestamp_from_datetime(audit.create_time),
    )
    if audit.complete_time is not None:
        message.complete_time.CopyFrom(timestamp_from_datetime(audit.complete_time))
    findings = audit.findings
    if findings is not None:
        rows = findings.suspected_rows[:max_rows] if max_rows > 0 else findings.suspected_rows
        message.noise_rate = findings.noise_rate
        message.suspected_count = findings.suspected_count
        message.folds = findings.folds
        message.out_of_fold_accuracy = findings.out_of_fold_accuracy
        message.classes.extend(_class_noise_to_proto(c) for c in findings.classes)
        message.suspected_rows.extend(_suspected_row_to_proto(r) for r in rows)
    if audit.parent_shift is not None:
        message.parent_shift.CopyFrom(parent_shift_to_proto(audit.parent_shift))
    return message


def parent_shift_to_proto(shift: ParentShift) -> resources_pb2.ParentShift:
    return resources_pb2.ParentShift(
        parent_version=shift.parent_version,
        status=_PARENT_SHIFT_STATUSES[shift.status],
        reason=shift.reason,
        auc=shift.auc,
        effect_size=shift.effect_size,
        p_value=shift.p_value,
        permutations=shift.permutations,
        parent_rows=shift.parent_rows,
        version_rows=shift.version_rows,
        min_effect=shift.min_effect,
        significance_level=shift.significance_level,
    )


def dataset_audited(audit: DatasetAudit) -> events_pb2.DatasetAudited:
    """The event announcing a finished audit."""
    assert audit.complete_time is not None
    findings = audit.findings
    return events_pb2.DatasetAudited(
        dataset_version=audit.dataset_version,
        dataset=f"datasets/{audit.dataset_id}",
        content_sha256=audit.content_sha256,
        task_type=task_type_to_proto(audit.task_type),
        verdict=_AUDIT_VERDICTS[audit.verdict],
        reason=audit.reason,
        action=_AUDIT_ACTIONS[audit.policy.action],
        max_noise_rate=audit.policy.max_noise_rate,
        noise_rate=findings.noise_rate if findings else 0.0,
        suspected_count=findings.suspected_count if findings else 0,
        suspected_line_numbers=[
            row.line_number for row in (findings.suspected_rows if findings else ())
        ][:_LINES_IN_EVENT],
        audit=audit.name,
        event_time=timestamp_from_datetime(audit.complete_time),
        parent_shift=parent_shift_to_proto(audit.parent_shift) if audit.parent_shift else None,
    )
