"""The splitter service over real gRPC on loopback and a real Kafka broker.

The dataset service is played by the tests themselves, exactly as it behaves: a canonical JSONL
artifact under ``<data_dir>/dataset/artifacts`` and a DatasetVersioned event published to the
broker with ``KafkaEventPublisher``. What comes back is read from the broker as it arrived.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from typer.testing import CliRunner

from services.dataset import bootstrap as dataset_bootstrap
from services.dataset.settings import DatasetSettings
from services.splitter.bootstrap import SPEC
from services.splitter.settings import SplitterSettings
from shared.events import KafkaEventPublisher, ensure_topics, topic_for
from shared.input_text import normalize_input_text
from shared.near_duplicates import near_duplicate_groups
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.dataset_side import DatasetSide
from tests.fixtures.datasets import rotten_tomatoes_rows, to_jsonl
from tests.fixtures.events import header, start_group_at_end
from tuneline.cli.main import app as cli
from tuneline.client.dataset import DatasetClient
from tuneline.client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from tuneline.client.splitter import SplitterClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2 as dataset_events_pb2
from tuneline.devtools.waiting import eventually
from tuneline.splitter.v1 import events_pb2, resources_pb2, service_pb2

pytestmark = pytest.mark.integration

DATASET_VERSIONED = topic_for(dataset_events_pb2.DatasetVersioned)
SPLIT_CREATED = topic_for(events_pb2.SplitCreated)
T = TypeVar("T")


def _components_by_group_and_text(rows: list[dict[str, Any]]) -> int:
    """How many groups rows form when a shared ``group``, a shared normalised text or a pair of
    near-duplicate texts joins them (computed here independently of the splitter's grouping,
    with a plain union-find over the shared near-duplicate definition's pairs)."""
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for row in rows:
        group, text = f"group:{row['group']}", f"text:{normalize_input_text(row['text'])}"
        parent[find(group)] = find(text)
    texts = list(dict.fromkeys(normalize_input_text(row["text"]) for row in rows))
    for members in near_duplicate_groups(texts):
        for member in members[1:]:
            parent[find(f"text:{texts[member]}")] = find(f"text:{texts[members[0]]}")
    return len({find(f"group:{row['group']}") for row in rows})


@dataclass
class Splitter:
    """The splitter service under test, in-process, and a client of it."""

    runtime: ServiceRuntime
    client: SplitterClient

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.runtime.grpc_port}"

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.runtime.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=5).read().decode()


@pytest.fixture(scope="module")
def dataset_side(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DatasetSide]:
    ensure_topics(kafka_bootstrap, [DATASET_VERSIONED, SPLIT_CREATED])
    publisher = KafkaEventPublisher(kafka_bootstrap, client_id="test-dataset-service")
    try:
        yield DatasetSide(
            kafka_bootstrap,
            tmp_path_factory.mktemp("tuneline-data"),
            publisher,
            rotten_tomatoes_rows(with_group=True),
        )
    finally:
        publisher.close()


@pytest.fixture(scope="module")
def dataset_service(dataset_side: DatasetSide) -> Iterator[ServiceRuntime]:
    """The real dataset service, which the splitter asks about versions it has not heard of
    (it knows none of those the tests store and announce themselves: NOT_FOUND)."""
    runtime = build_runtime(
        dataset_bootstrap.SPEC,
        CommonSettings(kafka_bootstrap=dataset_side.bootstrap, data_dir=dataset_side.data_dir),
        DatasetSettings(grpc_port=0, metrics_port=0, validation_workers=0),
    )
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture(scope="module")
def splitter(dataset_side: DatasetSide, dataset_service: ServiceRuntime) -> Iterator[Splitter]:
    group = f"test-splitter-{os.getpid()}-{time.time_ns()}"
    start_group_at_end(dataset_side.bootstrap, group, [DATASET_VERSIONED])
    runtime = build_runtime(
        SPEC,
        CommonSettings(kafka_bootstrap=dataset_side.bootstrap, data_dir=dataset_side.data_dir),
        SplitterSettings(
            grpc_port=0,
            metrics_port=0,
            consumer_group=group,
            dataset_target=f"127.0.0.1:{dataset_service.grpc_port}",
            # a loaded machine must not turn the dataset service's answer into UNAVAILABLE
            dataset_timeout_seconds=60,
        ),
    )
    runtime.start()
    try:
        with SplitterClient(f"127.0.0.1:{runtime.grpc_port}") as client:
            yield Splitter(runtime, client)
    finally:
        runtime.stop()


def _stratified(train: float, validation: float, test: float, seed: int):
    return resources_pb2.SplitSpec(
        strategy=resources_pb2.SPLIT_STRATEGY_STRATIFIED,
        ratios=resources_pb2.SplitRatios(train=train, validation=validation, test=test),
        seed=seed,
    )


def test_dataset_versioned_becomes_split_created_with_its_manifest(
    splitter: Splitter, dataset_side: DatasetSide, unique: str
) -> None:
    dataset = f"datasets/reviews-{unique}"
    policy = splitter.client.set_split_policy(dataset, _stratified(0.7, 0.2, 0.1, seed=11))
    assert policy.spec.strategy == resources_pb2.SPLIT_STRATEGY_STRATIFIED
    event = dataset_side.version(f"reviews-{unique}", dataset_side.reviews(3000))
    dataset_side.announce(event)

    (record,), (created,) = dataset_side.split_events(event.dataset_version, expected=1)
    assert record.key.decode() == created.split
    assert header(record, "ce_type") == SPLIT_CREATED
    assert header(record, "ce_source") == "tuneline/splitter"
    assert header(record, "ce_subject") == created.split
    assert header(record, "content-type") == "application/protobuf"
    assert created.split.startswith(f"{event.dataset_version}/splits/")
    assert created.dataset == dataset
    assert created.dataset_content_sha256 == event.content_sha256
    assert created.dataset_artifact_uri == event.artifact_uri
    assert created.task_type == common_pb2.TASK_TYPE_CLASSIFICATION
    assert created.spec == policy.spec
    assert created.overlap_count == 0
    assert created.HasField("event_time")
    assert [p.part for p in created.parts] == [
        common_pb2.SPLIT_PART_TRAIN,
        common_pb2.SPLIT_PART_VALIDATION,
        common_pb2.SPLIT_PART_TEST,
    ]
    assert sum(p.row_count for p in created.parts) == event.row_count

    manifest_bytes = Path(created.manifest_uri.removeprefix("file://")).read_bytes()
    assert hashlib.sha256(manifest_bytes).hexdigest() == created.manifest_sha256
    manifest = json.loads(manifest_bytes)
    assert manifest["dataset_version"] == event.dataset_version
    assert manifest["overlap_count"] == 0
    for stats in created.parts:
        part = common_pb2.SplitPart.Name(stats.part).removeprefix("SPLIT_PART_").lower()
        assert manifest["stats"][part]["rows"] == stats.row_count == len(manifest["parts"][part])
        assert manifest["stats"][part]["labels"] == {
            c.label: c.count for c in stats.label_distribution
        }
    # on real reviews grouped by movie: each part near its ratio, and no movie in two parts
    with Path(event.artifact_uri.removeprefix("file://")).open() as content:
        rows = [json.loads(line) for line in content]
    movie = {row["id"]: row["group"] for row in rows}
    movies = {part: {movie[i] for i in ids} for part, ids in manifest["parts"].items()}
    assert not movies["train"] & movies["validation"]
    assert not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]
    for stats, ratio in zip(created.parts, (0.7, 0.2, 0.1), strict=True):
        assert abs(stats.row_count / event.row_count - ratio) < 0.03

    split = splitter.client.get_split(created.split)
    assert split.manifest_sha256 == created.manifest_sha256
    # a review quoted under two movies joins them: the groups are the movies, merged by text
    assert split.group_count == _components_by_group_and_text(rows)
    assert [s.name for s in splitter.client.list_splits(f"{event.dataset_version}")] == [
        created.split
    ]

    metrics = splitter.metrics()
    assert 'tuneline_splits_created_total{strategy="STRATIFIED",trigger="event"} 1.0' in metrics
    group = splitter.runtime.context.settings.resolved_consumer_group()
    assert f'tuneline_kafka_consumer_lag{{group="{group}",partition=' in metrics


def test_a_twice_delivered_dataset_versioned_makes_one_split(
    splitter: Splitter, dataset_side: DatasetSide, unique: str
) -> None:
    event = dataset_side.version(f"twice-{unique}", dataset_side.reviews(500))
    envelope = dataset_side.announce(event)
    dataset_side.announce(event, event_id=envelope.id)  # a redelivery: same event id
    dataset_side.announce(event)  # the same news again under a new event id

    # all three were taken off the topic (in order: one partition): one applied, one skipped
    # by id, one found known
    eventually(
        lambda: (
            'tuneline_split_versions_not_split_total{reason="already_seen"}' in splitter.metrics()
        ),
        timeout=120,
        what="the third delivery to be handled",
    )
    assert (
        'outcome="duplicate",topic="tuneline.dataset.v1.DatasetVersioned"} ' in splitter.metrics()
    )
    records, (created,) = dataset_side.split_events(
        event.dataset_version, expected=1, outboxes=[splitter.runtime.context.sessions]
    )
    assert len(records) == 1
    assert [s.name for s in splitter.client.list_splits(event.dataset_version)] == [created.split]


def test_explicit_create_split_is_idempotent(
    splitter: Splitter, dataset_side: DatasetSide, unique: str
) -> None:
    dataset = f"datasets/explicit-{unique}"
    splitter.client.set_split_policy(dataset, auto_split_disabled=True)
    event = dataset_side.version(f"explicit-{unique}", dataset_side.reviews(800))
    dataset_side.announce(event)

    def create():
        try:
            return splitter.client.create_split(
                event.dataset_version, _stratified(0.8, 0.1, 0.1, seed=2)
            )
        except NotFoundError:
            return None  # the DatasetVersioned is not consumed yet

    split, created = eventually(create, timeout=120, what="the version to be known")
    assert created
    assert split.spec.ratios.test == pytest.approx(0.1)
    again, created_again = splitter.client.create_split(
        event.dataset_version, _stratified(0.8, 0.1, 0.1, seed=2)
    )
    assert (again, created_again) == (split, False)
    hashed, _ = splitter.client.create_split(
        event.dataset_version
    )  # the policy's spec: the defaults
    assert hashed.spec.strategy == resources_pb2.SPLIT_STRATEGY_HASH
    assert [p.part for p in hashed.parts] == [
        common_pb2.SPLIT_PART_TRAIN,
        common_pb2.SPLIT_PART_VALIDATION,
    ]

    _, events = dataset_side.split_events(
        event.dataset_version, expected=2, outboxes=[splitter.runtime.context.sessions]
    )
    assert sorted(e.split for e in events) == sorted([split.name, hashed.name])
    listed = [s.name for s in splitter.client.list_splits(f"{dataset}/versions/-", page_size=1)]
    assert listed == [hashed.name, split.name], "newest first, across pages of one"


def test_a_version_can_be_split_the_moment_its_upload_returns(
    splitter: Splitter, dataset_service: ServiceRuntime, dataset_side: DatasetSide, unique: str
) -> None:
    """Read-your-writes: no waiting for DatasetVersioned to reach the splitter, no retry."""
    dataset_id = f"ryw-{unique}"
    with DatasetClient(f"127.0.0.1:{dataset_service.grpc_port}") as datasets:
        datasets.create_dataset(dataset_id, "classification")
        uploaded = datasets.upload_dataset_version(
            f"datasets/{dataset_id}", to_jsonl(dataset_side.reviews(400))
        )
    version = uploaded.dataset_version

    split, created = splitter.client.create_split(version.name, _stratified(0.8, 0.1, 0.1, seed=5))

    assert created
    assert split.dataset_version == version.name
    assert split.dataset_content_sha256 == version.content_sha256
    assert sum(p.row_count for p in split.parts) == version.row_count
    assert split.overlap_count == 0


def test_bad_requests_get_precise_statuses_and_store_nothing(
    splitter: Splitter, dataset_side: DatasetSide, unique: str
) -> None:
    dataset = f"datasets/bad-{unique}"
    with pytest.raises(InvalidArgumentError) as raised:
        splitter.client.set_split_policy(
            dataset,
            resources_pb2.SplitSpec(ratios=resources_pb2.SplitRatios(train=0.9, validation=0.2)),
        )
    assert [(v.field, v.reason) for v in raised.value.violations] == [
        ("split_policy.spec.ratios", "RATIOS_DO_NOT_SUM_TO_ONE")
    ]
    with pytest.raises(InvalidArgumentError) as raised:
        splitter.client.set_split_policy(
            dataset,
            resources_pb2.SplitSpec(ratios=resources_pb2.SplitRatios(train=1.0, validation=0.0)),
        )
    assert [v.field for v in raised.value.violations] == ["split_policy.spec.ratios.validation"]
    assert not splitter.client.get_split_policy(dataset).HasField("update_time"), (
        "nothing was stored"
    )

    with pytest.raises(InvalidArgumentError) as raised:
        splitter.client.set_split_policy("datasets/Reviews")  # not a dataset id
    assert [v.field for v in raised.value.violations] == ["split_policy.name"]
    with pytest.raises(InvalidArgumentError) as raised:
        splitter.client.create_split(f"{dataset}/v1")
    assert [v.field for v in raised.value.violations] == ["parent"]
    with pytest.raises(InvalidArgumentError) as raised:
        splitter.client.create_split(f"{dataset}/versions/v1", resources_pb2.SplitSpec(strategy=9))  # type: ignore[arg-type]
    assert [v.field for v in raised.value.violations] == ["spec.strategy"]
    with pytest.raises(InvalidArgumentError) as raised:
        splitter.client.create_split(
            f"{dataset}/versions/v1",
            resources_pb2.SplitSpec(ratios=resources_pb2.SplitRatios(train=0, validation=1)),
        )
    assert [v.field for v in raised.value.violations] == ["spec.ratios.train"]
    with pytest.raises(NotFoundError):
        splitter.client.create_split(f"{dataset}/versions/v1")
    with pytest.raises(NotFoundError):
        splitter.client.get_split(f"{dataset}/versions/v1/splits/s-1")
    foreign_token = service_pb2.ListSplitsRequest(
        parent=f"{dataset}/versions/-", page_token="bm90LWEtdG9rZW4"
    )
    with pytest.raises(InvalidArgumentError) as raised:
        splitter.client._call(
            splitter.client._stub.ListSplits, foreign_token
        )  # a token it never issued
    assert [v.field for v in raised.value.violations] == ["page_token"]

    # a version with one row: recorded when announced, but it cannot be split
    event = dataset_side.version(f"bad-{unique}", [{"text": "alone", "label": "x"}])
    dataset_side.announce(event)

    def create():
        try:
            return splitter.client.create_split(event.dataset_version)
        except NotFoundError:
            return None
        except FailedPreconditionError as error:
            return error

    error = eventually(create, timeout=120, what="the version to be known")
    assert isinstance(error, FailedPreconditionError)
    assert [v.reason for v in error.violations] == ["TOO_FEW_GROUPS"]
    assert list(splitter.client.list_splits(f"{dataset}/versions/-")) == []
    splits_dir = dataset_side.data_dir / "splitter" / "artifacts" / "splits" / f"bad-{unique}"
    assert not splits_dir.exists()
    temp = dataset_side.data_dir / "splitter" / "artifacts" / ".tmp"
    # the replica's temp folder stays (its lock files beside it), with no write left in it.
    # Other tests' versions may be being split by this same service right now: their writes
    # come and go, a write this refusal leaked would stay.
    eventually(
        lambda: not [p for p in temp.rglob("*") if p.is_file() and p.parent != temp],
        timeout=120,
        what="no write left in the splitter's temp folder",
    )


def test_the_cli_creates_shows_and_lists_splits(
    splitter: Splitter, dataset_side: DatasetSide, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELINE_SPLITTER_TARGET", splitter.target)
    runner = CliRunner()
    result = runner.invoke(cli, ["splits", "policy", "set", f"cli-{unique}", "--no-auto-split"])
    assert result.exit_code == 0, result.output
    assert '"auto_split_disabled": true' in result.output
    event = dataset_side.version(f"cli-{unique}", dataset_side.reviews(400))
    dataset_side.announce(event)

    def create():
        result = runner.invoke(
            cli,
            [
                "splits",
                "create",
                event.dataset_version,
                "--strategy",
                "stratified",
                "--train",
                "0.75",
            ],
        )
        return result if result.exit_code == 0 else None

    result = eventually(create, timeout=120, what="the CLI to create the split")
    assert "created:" in result.output
    (split,) = splitter.client.list_splits(event.dataset_version)
    assert split.spec.ratios.validation == pytest.approx(0.25)
    assert split.name in result.output

    again = runner.invoke(
        cli,
        ["splits", "create", event.dataset_version, "--strategy", "stratified", "--train", "0.75"],
    )
    assert "already existed" in again.output
    shown = runner.invoke(cli, ["splits", "show", split.name])
    assert shown.exit_code == 0
    assert split.manifest_sha256 in shown.output
    listed = runner.invoke(cli, ["splits", "list", f"datasets/cli-{unique}/versions/-"])
    assert listed.exit_code == 0
    assert "STRATIFIED" in listed.output
    bad = runner.invoke(cli, ["splits", "create", event.dataset_version, "--train", "1.5"])
    assert bad.exit_code == 1
    assert "INVALID_ARGUMENT" in bad.output
