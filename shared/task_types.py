"""The kind of learning problem: one enum for every service, the SDK and the CLI.

Its values follow :mod:`shared.protobuf`'s enum convention, the proto value names without their
prefix (``TaskType.CAUSAL_LM`` ⇄ ``TASK_TYPE_CAUSAL_LM``), so every converter reads and writes it
with ``enum_to_proto``/``enum_from_proto`` and the prefix :data:`TASK_TYPE_PREFIX`.

Before this module the dataset and trainer services stored lower-case values
(``"causal_lm"``) in their rows and in adapter metadata written to artifacts. Rows are rewritten
by migrations; artifacts are immutable, so reading accepts either case (``TaskType("causal_lm")``
is ``TaskType.CAUSAL_LM``). New writes are always upper case.
"""

from __future__ import annotations

from enum import StrEnum

#: The proto enum's value prefix (``tuneline.common.v1.TaskType``).
TASK_TYPE_PREFIX = "TASK_TYPE"


class TaskType(StrEnum):
    """Where a row's text lives and how a model learns from it."""

    #: ``input`` → ``label``: one label out of a fixed set.
    CLASSIFICATION = "CLASSIFICATION"
    #: ``input`` → ``output``: the model learns to write the output after the input.
    CAUSAL_LM = "CAUSAL_LM"

    @classmethod
    def _missing_(cls, value: object) -> TaskType | None:
        # Values written before one convention existed were lower case; they stay readable.
        if isinstance(value, str):
            upper = value.upper()
            for member in cls:
                if member.value == upper:
                    return member
        return None
