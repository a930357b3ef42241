"""The splitter's domain: plain dataclasses and rules; no grpc, kafka, torch or SQL.

* :mod:`.spec` — strategy, ratios, seed, their validation and the deterministic split id;
* :mod:`.rows` — a row reduced to id, text key and explicit group (the leakage guard) and
  label;
* :mod:`.assignment` — the HASH and STRATIFIED strategies, over groups of rows;
* :mod:`.manifest` — the split manifest, its stats and the overlap check;
* :mod:`.names` — resource names; :mod:`.model` — the stored split and split policy.
"""

from services.splitter.domain.assignment import GroupIndex, assign_rows, group_positions
from services.splitter.domain.manifest import (
    DatasetVersionRef,
    PartStats,
    SplitIntegrityError,
    SplitManifest,
    UnsplittableVersion,
    split_dataset,
)
from services.splitter.domain.model import Split, SplitPolicy
from services.splitter.domain.names import DatasetVersionName
from services.splitter.domain.rows import (
    MalformedDatasetRow,
    SplitRow,
    SplitRows,
    explicit_group,
    split_row,
    text_key,
)
from services.splitter.domain.spec import (
    DEFAULT_SPEC,
    PARTS,
    Part,
    SplitRatios,
    SplitSpec,
    SplitStrategy,
    split_id_for,
    validate_spec,
)

__all__ = [
    "DEFAULT_SPEC",
    "PARTS",
    "DatasetVersionName",
    "DatasetVersionRef",
    "GroupIndex",
    "MalformedDatasetRow",
    "Part",
    "PartStats",
    "Split",
    "SplitIntegrityError",
    "SplitManifest",
    "SplitPolicy",
    "SplitRatios",
    "SplitRow",
    "SplitRows",
    "SplitSpec",
    "SplitStrategy",
    "UnsplittableVersion",
    "assign_rows",
    "explicit_group",
    "group_positions",
    "split_dataset",
    "split_id_for",
    "split_row",
    "text_key",
    "validate_spec",
]
