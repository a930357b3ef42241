"""The splitter's adapters on their own: reading canonical content, proto conversions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from services.splitter.adapters import artifacts as artifacts_module
from services.splitter.adapters.artifacts import UnreadableDatasetContent, read_split_rows
from services.splitter.adapters.protos import (
    policy_to_proto,
    spec_from_proto,
    spec_to_proto,
    version_from_event,
)
from services.splitter.domain import (
    DEFAULT_SPEC,
    DatasetVersionRef,
    MalformedDatasetRow,
    SplitPolicy,
    SplitRatios,
    SplitRow,
    SplitSpec,
    SplitStrategy,
)
from shared.artifacts import LocalArtifactStore
from shared.errors import InvalidArgument
from shared.input_text import normalize_input_text
from shared.task_types import TaskType
from tests.fixtures.dataset_side import canonical_line, write_dataset_version
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2 as dataset_events_pb2
from tuneline.splitter.v1 import resources_pb2

ROWS = [
    {
        "id": f"r{i}",
        "text": f"Text number {i} \u2013 \u00fcn\u00efcode \u2713",
        "label": "ab"[i % 2],
    }
    for i in range(40)
]


def _store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "splitter" / "artifacts", readable_roots=[tmp_path])


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1024 * 1024])
def test_reading_streams_lines_across_chunk_boundaries(tmp_path, monkeypatch, chunk_bytes) -> None:
    # multi-byte characters and lines split anywhere between chunks must come out whole
    monkeypatch.setattr(artifacts_module, "_CHUNK_BYTES", chunk_bytes)
    version = version_from_event(write_dataset_version(tmp_path, "reviews", ROWS))
    rows = read_split_rows(_store(tmp_path), version)
    assert list(rows) == [
        SplitRow(r["id"], normalize_input_text(r["text"]), r["label"]) for r in ROWS
    ]


def test_a_last_line_without_newline_is_still_a_row(tmp_path) -> None:
    content = "".join(canonical_line(row) for row in ROWS).rstrip("\n").encode()
    path = tmp_path / "dataset" / "artifacts" / "rows.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    version = DatasetVersionRef(
        name="datasets/reviews/versions/v1",
        dataset="datasets/reviews",
        content_sha256=hashlib.sha256(content).hexdigest(),
        artifact_uri=path.as_uri(),
        task_type=TaskType.CLASSIFICATION,
        row_count=len(ROWS),
        byte_count=len(content),
    )
    assert read_split_rows(_store(tmp_path), version).ids == [row["id"] for row in ROWS]


def test_row_count_and_size_are_checked_too(tmp_path) -> None:
    event = write_dataset_version(tmp_path, "reviews", ROWS)
    event.row_count += 1
    event.byte_count -= 1
    with pytest.raises(UnreadableDatasetContent) as raised:
        read_split_rows(_store(tmp_path), version_from_event(event))
    assert f"{len(ROWS)} rows != {len(ROWS) + 1}" in raised.value.message
    assert "bytes !=" in raised.value.message
    assert raised.value.violations[0].type == "DATASET_CONTENT_UNREADABLE"


def test_a_missing_artifact_is_unreadable_content(tmp_path) -> None:
    event = write_dataset_version(tmp_path, "reviews", ROWS)
    Path(event.artifact_uri.removeprefix("file://")).unlink()
    with pytest.raises(UnreadableDatasetContent, match="does not exist"):
        read_split_rows(_store(tmp_path), version_from_event(event))


def test_a_line_that_is_not_an_object_names_its_line(tmp_path) -> None:
    content = (canonical_line(ROWS[0]) + json.dumps([1, 2]) + "\n").encode()
    path = tmp_path / "dataset" / "artifacts" / "rows.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    version = DatasetVersionRef(
        "datasets/r/versions/v1",
        "datasets/r",
        "0" * 64,
        path.as_uri(),
        TaskType.CLASSIFICATION,
        2,
        1,
    )
    with pytest.raises(MalformedDatasetRow, match="line 2: not a JSON object"):
        read_split_rows(_store(tmp_path), version)


# -- proto conversions --------------------------------------------------------------------------


def test_an_absent_spec_or_unset_fields_take_the_defaults() -> None:
    assert spec_from_proto(resources_pb2.SplitSpec(), present=False, field_prefix="spec.") == (
        DEFAULT_SPEC
    )
    assert spec_from_proto(resources_pb2.SplitSpec(seed=4), present=True, field_prefix="spec.") == (
        SplitSpec(seed=4)
    )
    explicit = resources_pb2.SplitSpec(
        strategy=resources_pb2.SPLIT_STRATEGY_STRATIFIED,
        ratios=resources_pb2.SplitRatios(train=0.6, validation=0.3, test=0.1),
        seed=-3,
    )
    spec = spec_from_proto(explicit, present=True, field_prefix="spec.")
    assert spec == SplitSpec(SplitStrategy.STRATIFIED, SplitRatios(0.6, 0.3, 0.1), -3)
    assert spec_to_proto(spec) == explicit
    # ratios set to zeros are not "unset": they reach validation and fail there
    zeros = resources_pb2.SplitSpec(ratios=resources_pb2.SplitRatios())
    assert spec_from_proto(zeros, present=True, field_prefix="spec.").ratios == SplitRatios(0, 0)


def test_an_unknown_strategy_number_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as raised:
        spec_from_proto(resources_pb2.SplitSpec(strategy=7), present=True, field_prefix="x.")  # type: ignore[arg-type]
    assert [(v.field, v.reason) for v in raised.value.violations] == [
        ("x.strategy", "UNKNOWN_ENUM_VALUE")
    ]


def test_the_default_policy_reads_without_update_time() -> None:
    message = policy_to_proto(SplitPolicy("reviews"))
    assert message.name == "datasets/reviews/splitPolicy"
    assert message.spec.strategy == resources_pb2.SPLIT_STRATEGY_HASH
    assert message.spec.ratios.train == pytest.approx(0.8)
    assert not message.HasField("update_time")


@pytest.mark.parametrize(
    "broken",
    [
        {"task_type": common_pb2.TASK_TYPE_UNSPECIFIED},
        {"artifact_uri": ""},
        {"content_sha256": ""},
    ],
)
def test_an_event_without_what_a_split_needs_is_refused(broken) -> None:
    event = dataset_events_pb2.DatasetVersioned(
        dataset_version="datasets/r/versions/v1",
        dataset="datasets/r",
        content_sha256="0" * 64,
        artifact_uri="file:///x",
        task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
    )
    for field, value in broken.items():
        setattr(event, field, value)
    with pytest.raises(ValueError, match="DatasetVersioned"):
        version_from_event(event)


def _raw_version(tmp_path: Path, content: bytes, rows: int) -> DatasetVersionRef:
    path = tmp_path / "dataset" / "artifacts" / "raw.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return DatasetVersionRef(
        "datasets/r/versions/v1",
        "datasets/r",
        hashlib.sha256(content).hexdigest(),
        path.as_uri(),
        TaskType.CLASSIFICATION,
        rows,
        len(content),
    )


@pytest.mark.parametrize("chunk_bytes", [5, 1024 * 1024])
def test_content_that_is_not_utf8_says_where(tmp_path, monkeypatch, chunk_bytes) -> None:
    monkeypatch.setattr(artifacts_module, "_CHUNK_BYTES", chunk_bytes)
    first = canonical_line(ROWS[0]).encode()
    version = _raw_version(tmp_path, first + b'{"id":"x","label":"a","text":"\xff"}\n', 2)
    with pytest.raises(UnreadableDatasetContent, match=f"not UTF-8 at byte {len(first) + 30}"):
        read_split_rows(_store(tmp_path), version)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"id":"x","label":"a","text":"t"} ', "data after the JSON value"),
        (b'{"id":"x","label":"a","text":"t"}\r', "data after the JSON value"),
        (b'{"id":"x","label":"a",', "not JSON"),
        (b"", "not JSON"),
    ],
)
def test_lines_that_are_not_canonical_rows_are_malformed(tmp_path, line, problem) -> None:
    version = _raw_version(tmp_path, canonical_line(ROWS[0]).encode() + line + b"\n", 2)
    with pytest.raises(MalformedDatasetRow, match=f"line 2: {problem}"):
        read_split_rows(_store(tmp_path), version)
