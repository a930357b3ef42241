"""The data checks' domain values to and from ``EvaluationDataChecks`` messages."""

from __future__ import annotations

from collections.abc import Iterable

from services.evaluator.domain.data_checks import (
    Contamination,
    Coverage,
    CoverageCount,
    DataChecks,
    DataCheckStatus,
    Shift,
)
from shared.protobuf import enum_from_proto, enum_to_proto
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2

_STATUS = "DATA_CHECK_STATUS"


def _status_to_proto(status: DataCheckStatus) -> evaluator_pb2.DataCheckStatus.ValueType:
    return enum_to_proto(evaluator_pb2.DataCheckStatus, _STATUS, status)


def _status_from_proto(number: int) -> DataCheckStatus:
    status = enum_from_proto(evaluator_pb2.DataCheckStatus, _STATUS, number, DataCheckStatus)
    return status or DataCheckStatus.SKIPPED


def _counts_to_proto(counts: tuple[CoverageCount, ...]) -> list[evaluator_pb2.CoverageCount]:
    return [
        evaluator_pb2.CoverageCount(
            value=c.value, training_rows=c.training_rows, evaluation_rows=c.evaluation_rows
        )
        for c in counts
    ]


def _counts_from_proto(
    messages: Iterable[evaluator_pb2.CoverageCount],
) -> tuple[CoverageCount, ...]:
    return tuple(CoverageCount(m.value, m.training_rows, m.evaluation_rows) for m in messages)


def data_checks_to_proto(checks: DataChecks) -> evaluator_pb2.EvaluationDataChecks:
    contamination, coverage, shift = checks.contamination, checks.coverage, checks.shift
    return evaluator_pb2.EvaluationDataChecks(
        training_split=checks.training_split,
        verdict_effect=checks.verdict_effect,
        contamination=evaluator_pb2.Contamination(
            status=_status_to_proto(contamination.status),
            reason=contamination.reason,
            evaluation_rows=contamination.evaluation_rows,
            training_rows=contamination.training_rows,
            contaminated_rows=contamination.contaminated_rows,
            contaminated_share=contamination.share,
            max_share=contamination.max_share,
            similarity_threshold=contamination.similarity_threshold,
            evaluation_row_ids=contamination.row_ids,
        ),
        coverage=evaluator_pb2.Coverage(
            status=_status_to_proto(coverage.status),
            reason=coverage.reason,
            labels=_counts_to_proto(coverage.labels),
            slices=_counts_to_proto(coverage.slices),
            untested_labels=coverage.untested_labels,
            untested_slices=coverage.untested_slices,
        ),
        shift=evaluator_pb2.Shift(
            status=_status_to_proto(shift.status),
            reason=shift.reason,
            auc=shift.auc,
            effect_size=shift.effect_size,
            p_value=shift.p_value,
            permutations=shift.permutations,
            min_effect=shift.min_effect,
            significance_level=shift.significance_level,
            far_share=shift.far_share,
            far_distance=shift.far_distance,
            far_quantile=shift.far_quantile,
            far_max_share=shift.far_max_share,
            training_rows=shift.training_rows,
            evaluation_rows=shift.evaluation_rows,
        ),
    )


def data_checks_from_proto(message: evaluator_pb2.EvaluationDataChecks) -> DataChecks:
    contamination, coverage, shift = message.contamination, message.coverage, message.shift
    return DataChecks(
        training_split=message.training_split,
        verdict_effect=message.verdict_effect,
        contamination=Contamination(
            _status_from_proto(contamination.status),
            contamination.reason,
            evaluation_rows=contamination.evaluation_rows,
            training_rows=contamination.training_rows,
            contaminated_rows=contamination.contaminated_rows,
            max_share=contamination.max_share,
            similarity_threshold=contamination.similarity_threshold,
            row_ids=tuple(contamination.evaluation_row_ids),
        ),
        coverage=Coverage(
            _status_from_proto(coverage.status),
            coverage.reason,
            labels=_counts_from_proto(coverage.labels),
            slices=_counts_from_proto(coverage.slices),
        ),
        shift=Shift(
            _status_from_proto(shift.status),
            shift.reason,
            auc=shift.auc,
            p_value=shift.p_value,
            permutations=shift.permutations,
            min_effect=shift.min_effect,
            significance_level=shift.significance_level,
            far_share=shift.far_share,
            far_distance=shift.far_distance,
            far_quantile=shift.far_quantile,
            far_max_share=shift.far_max_share,
            training_rows=shift.training_rows,
            evaluation_rows=shift.evaluation_rows,
        ),
    )
