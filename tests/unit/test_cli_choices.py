"""The CLI's lower-case task choices are the shared TaskType, converted through it."""

from __future__ import annotations

from shared.task_types import TaskType
from tuneline.cli.choices import TaskChoice, task_label
from tuneline.common.v1 import resources_pb2 as common_pb2


def test_every_task_type_has_one_choice() -> None:
    assert {choice.task_type for choice in TaskChoice} == set(TaskType)
    assert all(choice.value == choice.task_type.value.lower() for choice in TaskChoice)


def test_choices_convert_to_the_contract_and_back() -> None:
    assert TaskChoice.causal_lm.to_proto() == common_pb2.TASK_TYPE_CAUSAL_LM
    assert TaskChoice.classification.to_proto() == common_pb2.TASK_TYPE_CLASSIFICATION
    assert task_label(common_pb2.TASK_TYPE_CAUSAL_LM) == "causal_lm"
    assert task_label(common_pb2.TASK_TYPE_UNSPECIFIED) == "unspecified"
