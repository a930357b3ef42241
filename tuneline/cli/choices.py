"""The command line's spellings of shared enums.

The CLI has always taken and shown task types in lower case (``--task causal_lm``); the value
itself is :class:`shared.task_types.TaskType`, which reads either case, so every conversion to
or from the contract goes through it and :mod:`shared.protobuf`'s enum converters.
"""

from __future__ import annotations

from enum import StrEnum

from shared.protobuf import enum_from_proto, enum_to_proto
from shared.task_types import TASK_TYPE_PREFIX, TaskType
from tuneline.common.v1 import resources_pb2 as common_pb2


class TaskChoice(StrEnum):
    """``--task``'s choices: :class:`TaskType`'s values in lower case."""

    classification = "classification"
    causal_lm = "causal_lm"

    @property
    def task_type(self) -> TaskType:
        return TaskType(self.value)

    def to_proto(self) -> common_pb2.TaskType.ValueType:
        return enum_to_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, self.task_type)


def task_label(number: int) -> str:
    """A proto task type as a listing shows it: ``causal_lm`` (``unspecified`` for 0)."""
    task = enum_from_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, number, TaskType)
    return task.value.lower() if task is not None else "unspecified"
