"""Resource names the splitter reads and writes (AIP-122 style).

``datasets/{dataset}/versions/{version}``, ``…/splits/{split}`` and
``datasets/{dataset}/splitPolicy``. Dataset ids are user-chosen and follow the common id rule;
version ids are assigned by the dataset service and treated as opaque tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import FieldViolation, InvalidArgument

_DATASET_ID = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
_OPAQUE_ID = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?"
_VERSION = re.compile(rf"^datasets/({_DATASET_ID})/versions/({_OPAQUE_ID})$")
_SPLIT = re.compile(rf"^datasets/({_DATASET_ID})/versions/({_OPAQUE_ID})/splits/({_OPAQUE_ID})$")
_POLICY = re.compile(rf"^datasets/({_DATASET_ID})/splitPolicy$")
_LIST_PARENT = re.compile(rf"^datasets/({_DATASET_ID})/versions/({_OPAQUE_ID}|-)$")

#: The ``{version}`` segment of a List parent that means "every version" (AIP-159).
ANY_VERSION = "-"


def _invalid(field: str, value: str, expected: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field} {value!r} is not {expected}",
        [FieldViolation(field, f"expected {expected}", "INVALID_RESOURCE_NAME")],
    )


@dataclass(frozen=True)
class DatasetVersionName:
    """``datasets/{dataset}/versions/{version}``."""

    dataset_id: str
    version_id: str

    @property
    def dataset(self) -> str:
        return f"datasets/{self.dataset_id}"

    def __str__(self) -> str:
        return f"datasets/{self.dataset_id}/versions/{self.version_id}"

    def split(self, split_id: str) -> str:
        """The name of one of this version's splits."""
        return f"{self}/splits/{split_id}"

    @classmethod
    def parse(cls, name: str, *, field: str) -> DatasetVersionName:
        match = _VERSION.match(name)
        if not match:
            raise _invalid(field, name, "a dataset version name, datasets/{dataset}/versions/{v}")
        return cls(match.group(1), match.group(2))


def parse_split_name(name: str, *, field: str) -> tuple[DatasetVersionName, str]:
    """The version and split id of ``datasets/{d}/versions/{v}/splits/{s}``."""
    match = _SPLIT.match(name)
    if not match:
        raise _invalid(field, name, "a split name, datasets/{dataset}/versions/{v}/splits/{s}")
    return DatasetVersionName(match.group(1), match.group(2)), match.group(3)


def parse_policy_name(name: str, *, field: str) -> str:
    """The dataset id of ``datasets/{dataset}/splitPolicy``."""
    match = _POLICY.match(name)
    if not match:
        raise _invalid(field, name, "a split policy name, datasets/{dataset}/splitPolicy")
    return match.group(1)


def policy_name(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/splitPolicy"


def parse_list_parent(name: str, *, field: str) -> tuple[str, str]:
    """Dataset id and version id (or :data:`ANY_VERSION`) of a ListSplits parent."""
    match = _LIST_PARENT.match(name)
    if not match:
        raise _invalid(
            field, name, "datasets/{dataset}/versions/{version}, or …/versions/- for all"
        )
    return match.group(1), match.group(2)
