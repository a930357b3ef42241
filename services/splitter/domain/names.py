"""The dataset version a split belongs to, as a typed value.

Names themselves (``datasets/{dataset}/versions/{version}``, ``…/splits/{split}``,
``datasets/{dataset}/splitPolicy``) are parsed and written by :mod:`shared.names`.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import names

#: The ``{version}`` segment of a List parent that means "every version" (AIP-159).
ANY_VERSION = names.SPLIT_LIST_PARENT.wildcards["version"]


@dataclass(frozen=True)
class DatasetVersionName:
    """``datasets/{dataset}/versions/{version}``."""

    dataset_id: str
    version_id: str

    @property
    def dataset(self) -> str:
        return names.DATASET.format(dataset=self.dataset_id)

    def __str__(self) -> str:
        return names.DATASET_VERSION.format(dataset=self.dataset_id, version=self.version_id)

    def split(self, split_id: str) -> str:
        """The name of one of this version's splits."""
        return names.SPLIT.format(dataset=self.dataset_id, version=self.version_id, split=split_id)

    @classmethod
    def parse(cls, name: str, *, field: str) -> DatasetVersionName:
        return cls(*names.DATASET_VERSION.ids(name, field=field))
