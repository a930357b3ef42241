"""The splitter's handlers over a real SQLite database and a local artifact store.

No broker and no gRPC server: these check what each command and event does to the splitter's state —
the split row, the manifest artifact and the staged SplitCreated — and what it leaves untouched
when it refuses.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.splitter.adapters.artifacts import UnreadableDatasetContent
from services.splitter.adapters.metrics import SplitterMetrics
from services.splitter.adapters.protos import spec_to_proto, split_to_proto, version_from_event
from services.splitter.adapters.repository import SplitterRepository
from services.splitter.adapters.tables import SplitRecord, SplitterBase
from services.splitter.domain import (
    DatasetVersionName,
    DatasetVersionRef,
    MalformedDatasetRow,
    Part,
    Split,
    SplitPolicy,
    SplitRatios,
    SplitSpec,
    SplitStrategy,
    UnsplittableVersion,
)
from services.splitter.entrypoints.grpc_api import SplitterServicer
from services.splitter.handlers import (
    SplitterDeps,
    VersionLookup,
    create_split,
    get_split,
    get_split_policy,
    list_splits,
    on_dataset_versioned,
    set_split_policy,
)
from shared.artifacts import LocalArtifactStore
from shared.db import create_database_engine, create_schema, create_session_factory
from shared.errors import InvalidArgument, NotFound, Unavailable
from shared.events import Envelope, OutboxEvent
from tests.fixtures.dataset_side import write_dataset_version
from tests.fixtures.datasets import rotten_tomatoes_rows
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.splitter.v1 import events_pb2, resources_pb2, service_pb2

SOURCE = "tuneline/splitter"
T = TypeVar("T")


@dataclass
class SplitterHarness:
    """The splitter's handlers on one :class:`SplitterDeps`, as bootstrap wires it, minus the
    network; each call runs in a transaction of its own, as the servicer and the consumer run
    them."""

    data_dir: Path
    deps: SplitterDeps
    #: ``deps.artifacts``, the local store the tests read manifests from.
    artifacts: LocalArtifactStore
    registry: CollectorRegistry

    def _in_transaction(self, work: Callable[[Session], T]) -> T:
        with self.deps.sessions.begin() as session:
            return work(session)

    def consume(self, version: DatasetVersionRef) -> Split | None:
        return self._in_transaction(lambda s: on_dataset_versioned(s, self.deps, version))

    def create(
        self,
        version: DatasetVersionRef | str,
        spec: SplitSpec | None = None,
        *,
        versions: VersionLookup | None = None,
    ) -> tuple[Split, bool]:
        name = version if isinstance(version, str) else version.name
        deps = self.deps if versions is None else replace(self.deps, versions=versions)
        return self._in_transaction(
            lambda s: create_split(s, deps, DatasetVersionName.parse(name, field="parent"), spec)
        )

    def get(self, name: str) -> Split:
        return self._in_transaction(lambda s: get_split(s, name))

    def list(
        self, *, dataset_id: str, version_id: str, page_size: int, page_token: str
    ) -> tuple[list[Split], str]:
        return self._in_transaction(
            lambda s: list_splits(
                s,
                dataset_id=dataset_id,
                version_id=version_id,
                page_size=page_size,
                page_token=page_token,
            )
        )

    def set_policy(self, policy: SplitPolicy, *, request_id: str = "") -> SplitPolicy:
        return self._in_transaction(lambda s: set_split_policy(s, policy, request_id=request_id))

    def policy(self, dataset_id: str) -> SplitPolicy:
        return self._in_transaction(lambda s: get_split_policy(s, dataset_id))

    def staged_events(self) -> list[events_pb2.SplitCreated]:
        with self.deps.sessions() as session:
            rows = session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)).all()
        return [
            Envelope.decode(row.envelope(), events_pb2.SplitCreated)
            for row in rows
            if row.topic == "tuneline.splitter.v1.SplitCreated"
        ]

    def split_count(self) -> int:
        with self.deps.sessions() as session:
            return session.scalar(select(func.count()).select_from(SplitRecord)) or 0

    def manifests(self) -> list[Path]:
        return sorted((self.artifacts.root / "splits").rglob("manifest.json"))

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def splitter(tmp_path: Path, database_url: str) -> Iterator[SplitterHarness]:
    engine = create_database_engine(database_url)
    create_schema(engine, [SplitterBase.metadata])
    registry = CollectorRegistry()
    artifacts = LocalArtifactStore(tmp_path / "splitter" / "artifacts", readable_roots=[tmp_path])
    yield SplitterHarness(
        data_dir=tmp_path,
        deps=SplitterDeps(
            sessions=create_session_factory(engine),
            artifacts=artifacts,
            metrics=SplitterMetrics(registry),
            source=SOURCE,
        ),
        artifacts=artifacts,
        registry=registry,
    )
    engine.dispose()


def _version(splitter: SplitterHarness, dataset: str, rows, **kwargs) -> DatasetVersionRef:
    return version_from_event(write_dataset_version(splitter.data_dir, dataset, rows, **kwargs))


@functools.cache
def _corpus() -> tuple[dict[str, str], ...]:
    return tuple(rotten_tomatoes_rows(with_group=True))


def _reviews(count: int = 600) -> list[dict[str, str]]:
    """``count`` real reviews spread over the corpus (so over many movies, the groups)."""
    corpus = _corpus()
    return [dict(row) for row in corpus[:: len(corpus) // count][:count]]


def test_a_new_version_is_split_by_its_policy_with_one_event(splitter: SplitterHarness) -> None:
    version = _version(splitter, "reviews", _reviews())
    split = splitter.consume(version)

    assert split is not None
    assert split.name.startswith(f"{version.name}/splits/s-")
    assert split.spec == SplitSpec()  # no policy set: the defaults
    assert [s.part for s in split.part_stats] == [Part.TRAIN, Part.VALIDATION]
    assert sum(s.rows for s in split.part_stats) == version.row_count
    assert split.overlap_count == 0

    manifest_path = splitter.artifacts.local_path(split.manifest_uri)
    data = manifest_path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == split.manifest_sha256
    manifest = json.loads(data)
    assert manifest["dataset_artifact_uri"] == version.artifact_uri
    assert {p: s["rows"] for p, s in manifest["stats"].items()} == {
        "train": split.part_stats[0].rows,
        "validation": split.part_stats[1].rows,
        "test": 0,
    }
    # the movie is the group: no movie's reviews straddle parts
    movie_of = {}
    for line in splitter.artifacts.local_path(version.artifact_uri).read_text().splitlines():
        row = json.loads(line)
        movie_of[row["id"]] = row["group"]
    train_movies = {movie_of[i] for i in manifest["parts"]["train"]}
    validation_movies = {movie_of[i] for i in manifest["parts"]["validation"]}
    assert train_movies
    assert validation_movies
    assert not train_movies & validation_movies

    (event,) = splitter.staged_events()
    assert event.split == split.name
    assert event.dataset == "datasets/reviews"
    assert event.dataset_version == version.name
    assert event.dataset_content_sha256 == version.content_sha256
    assert event.dataset_artifact_uri == version.artifact_uri
    assert event.task_type == common_pb2.TASK_TYPE_CLASSIFICATION
    assert event.manifest_uri == split.manifest_uri
    assert event.manifest_sha256 == split.manifest_sha256
    assert event.spec.strategy == resources_pb2.SPLIT_STRATEGY_HASH
    assert [p.row_count for p in event.parts] == [s.rows for s in split.part_stats]
    assert {c.label: c.count for c in event.parts[0].label_distribution} == (
        manifest["stats"]["train"]["labels"]
    )
    assert event.overlap_count == 0
    assert splitter.metric("tuneline_splits_created_total", strategy="HASH", trigger="event") == 1
    assert splitter.metric("tuneline_split_rows_total", strategy="HASH") == version.row_count
    assert splitter.metric("tuneline_split_duration_seconds_count", strategy="HASH") == 1


def test_the_same_version_announced_twice_makes_one_split(splitter: SplitterHarness) -> None:
    version = _version(splitter, "reviews", _reviews(200))
    first = splitter.consume(version)
    assert first is not None
    assert splitter.consume(version) is None
    assert splitter.split_count() == 1
    assert len(splitter.staged_events()) == 1
    assert len(splitter.manifests()) == 1
    assert splitter.metric("tuneline_split_versions_not_split_total", reason="already_seen") == 1


def test_create_split_is_idempotent_per_version_and_spec(splitter: SplitterHarness) -> None:
    version = _version(splitter, "reviews", _reviews(300))
    from_event = splitter.consume(version)
    assert from_event is not None

    # the policy's spec, asked for explicitly: the same split, nothing new
    again, created = splitter.create(version, SplitSpec())
    assert (again, created) == (from_event, False)
    # no spec: the dataset's policy, which is still the default
    assert splitter.create(version) == (from_event, False)

    stratified = SplitSpec(
        strategy=SplitStrategy.STRATIFIED, ratios=SplitRatios(0.7, 0.2, 0.1), seed=5
    )
    new, created = splitter.create(version, stratified)
    assert created
    assert new.name != from_event.name
    assert [s.part for s in new.part_stats] == [Part.TRAIN, Part.VALIDATION, Part.TEST]
    assert splitter.create(version, stratified) == (new, False)
    assert [e.split for e in splitter.staged_events()] == [from_event.name, new.name]
    assert (
        splitter.metric("tuneline_splits_created_total", strategy="STRATIFIED", trigger="rpc") == 1
    )


def test_stratified_split_keeps_label_ratios_on_real_reviews(splitter: SplitterHarness) -> None:
    # without groups each distinct review text is its own group: ratios hold per label
    rows = [{"text": r["text"], "label": r["label"]} for r in _reviews(1000)]
    version = _version(splitter, "reviews", rows)
    splitter.consume(version)
    split, _ = splitter.create(version, SplitSpec(strategy=SplitStrategy.STRATIFIED, seed=1))
    train, validation = split.part_stats
    for label, total in Counter(row["label"] for row in rows).items():
        assert train.labels[label] + validation.labels[label] == total
        assert abs(validation.labels[label] - total * 0.2) <= 2, (label, validation.labels)


def test_auto_split_disabled_records_the_version_for_create_split(
    splitter: SplitterHarness,
) -> None:
    splitter.set_policy(SplitPolicy(dataset_id="reviews", auto_split_disabled=True))
    version = _version(splitter, "reviews", _reviews(100))
    assert splitter.consume(version) is None
    assert splitter.split_count() == 0
    split, created = splitter.create(version)
    assert created
    assert split.dataset_version == version.name
    assert (
        splitter.metric("tuneline_split_versions_not_split_total", reason="auto_split_disabled")
        == 1
    )


def test_the_policy_drives_automatic_splits(splitter: SplitterHarness) -> None:
    spec = SplitSpec(strategy=SplitStrategy.STRATIFIED, ratios=SplitRatios(0.6, 0.2, 0.2), seed=9)
    splitter.set_policy(SplitPolicy(dataset_id="reviews", spec=spec))
    split = splitter.consume(_version(splitter, "reviews", _reviews(200)))
    assert split is not None
    assert split.spec == spec
    # another dataset keeps the defaults
    ungrouped = [{"text": r["text"], "label": r["label"]} for r in _reviews(50)]
    other = splitter.consume(_version(splitter, "other", ungrouped))
    assert other is not None
    assert other.spec == SplitSpec()


def test_a_version_too_small_to_split_is_recorded_not_split(splitter: SplitterHarness) -> None:
    version = _version(splitter, "tiny", [{"text": "only one", "label": "fresh"}])
    assert splitter.consume(version) is None
    assert splitter.metric("tuneline_split_versions_not_split_total", reason="unsplittable") == 1
    with pytest.raises(UnsplittableVersion) as raised:
        splitter.create(version, SplitSpec(seed=1))
    assert raised.value.violations[0].type == "TOO_FEW_GROUPS"
    assert splitter.split_count() == 0
    assert splitter.staged_events() == []
    assert splitter.manifests() == []
    assert splitter.artifacts.temp_entries() == []


def test_content_that_does_not_match_its_event_is_refused(splitter: SplitterHarness) -> None:
    version = _version(splitter, "reviews", _reviews(50))
    path = splitter.artifacts.local_path(version.artifact_uri)
    path.write_bytes(path.read_bytes().replace(b"fresh", b"Fresh", 1))
    with pytest.raises(UnreadableDatasetContent, match="sha256"):
        splitter.consume(version)
    # nothing of the failed attempt stays: not even the version (the consumer will retry)
    with pytest.raises(NotFound):
        splitter.create(version)
    assert splitter.manifests() == []
    assert splitter.staged_events() == []


def test_an_artifact_outside_the_data_dir_is_refused(
    splitter: SplitterHarness, tmp_path_factory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    version = version_from_event(write_dataset_version(elsewhere, "reviews", _reviews(20)))
    with pytest.raises(UnreadableDatasetContent, match="outside the artifact store"):
        splitter.consume(version)


def test_a_malformed_row_names_its_line(splitter: SplitterHarness) -> None:
    version = _version(splitter, "reviews", [*_reviews(5), {"text": "no label here"}])
    with pytest.raises(MalformedDatasetRow) as raised:
        splitter.consume(version)
    assert raised.value.line == 6


def test_causal_lm_versions_split_on_prompts(splitter: SplitterHarness) -> None:
    rows: list[dict[str, object]] = [
        {"prompt": f"Question {i % 40}?", "completion": f"Answer {i}"} for i in range(120)
    ]
    rows += [
        {
            "messages": [
                {"role": "user", "content": f"question {i}?"},
                {"role": "assistant", "content": "x"},
            ]
        }
        for i in range(40)
    ]
    version = _version(splitter, "chat", rows, task_type=common_pb2.TASK_TYPE_CAUSAL_LM)
    split = splitter.consume(version)
    assert split is not None
    # "Question 3?" as a prompt and as a chat message are one group of 4 rows
    assert split.group_count == 40
    assert all(s.labels == {} for s in split.part_stats)


def test_unknown_versions_are_not_found(splitter: SplitterHarness) -> None:
    with pytest.raises(NotFound, match="datasets/reviews/versions/nope"):
        splitter.create("datasets/reviews/versions/nope")
    with pytest.raises(NotFound):
        splitter.get("datasets/reviews/versions/nope/splits/s-1")


def test_list_splits_pages_newest_first(splitter: SplitterHarness) -> None:
    first = _version(splitter, "reviews", _reviews(60))
    second = _version(splitter, "reviews", _reviews(80))
    made = [splitter.consume(first), splitter.consume(second)]
    made.append(splitter.create(first, SplitSpec(seed=1))[0])
    names = [s.name for s in reversed(made) if s is not None]

    seen, token = [], ""
    while True:
        page, token = splitter.list(
            dataset_id="reviews", version_id="-", page_size=2, page_token=token
        )
        assert len(page) <= 2
        seen += [s.name for s in page]
        if not token:
            break
    assert seen == names

    first_version_id = first.name.rsplit("/", 1)[1]
    page, token = splitter.list(
        dataset_id="reviews",
        version_id=first_version_id,
        page_size=0,
        page_token="",
    )
    assert [s.name for s in page] == [names[0], names[2]]
    assert token == ""


def test_list_splits_refuses_foreign_tokens_and_negative_sizes(splitter: SplitterHarness) -> None:
    for version in (
        _version(splitter, "reviews", _reviews(60)),
        _version(splitter, "reviews", _reviews(70)),
    ):
        splitter.consume(version)
    _, token = splitter.list(dataset_id="reviews", version_id="-", page_size=1, page_token="")
    assert token
    with pytest.raises(InvalidArgument) as raised:
        splitter.list(dataset_id="other", version_id="-", page_size=1, page_token=token)
    assert raised.value.violations[0].field == "page_token"
    with pytest.raises(InvalidArgument) as raised:
        splitter.list(dataset_id="reviews", version_id="-", page_size=-1, page_token="")
    assert raised.value.violations[0].field == "page_size"


def test_split_policy_defaults_set_and_invalid_input(splitter: SplitterHarness) -> None:
    default = splitter.policy("reviews")
    assert default == SplitPolicy(dataset_id="reviews")
    assert default.update_time is None

    spec = SplitSpec(strategy=SplitStrategy.STRATIFIED, ratios=SplitRatios(0.7, 0.2, 0.1), seed=3)
    stored = splitter.set_policy(SplitPolicy("reviews", spec))
    assert stored.spec == spec
    assert stored.update_time is not None
    assert splitter.policy("reviews") == stored

    with pytest.raises(InvalidArgument) as raised:
        splitter.set_policy(SplitPolicy("reviews", SplitSpec(ratios=SplitRatios(0.9, 0.2))))
    assert [(v.field, v.reason) for v in raised.value.violations] == [
        ("split_policy.spec.ratios", "RATIOS_DO_NOT_SUM_TO_ONE")
    ]
    assert splitter.policy("reviews") == stored, "left unchanged"


def test_a_split_policy_set_retried_with_its_request_id_changes_nothing_twice(
    splitter: SplitterHarness,
) -> None:
    """What a channel retry after a lost response does: the first answer again, no change."""
    first_spec = SplitSpec(seed=1)
    first = splitter.set_policy(SplitPolicy("reviews", first_spec), request_id="retry-me")
    retried = splitter.set_policy(SplitPolicy("reviews", first_spec), request_id="retry-me")
    assert retried == first, "not written again (same update_time)"
    later = splitter.set_policy(
        SplitPolicy("reviews", SplitSpec(seed=2)), request_id="someone-else"
    )
    late_retry = splitter.set_policy(SplitPolicy("reviews", first_spec), request_id="retry-me")
    assert late_retry == later, "a late retry does not undo the later change"
    with pytest.raises(InvalidArgument) as reused:
        splitter.set_policy(SplitPolicy("movies", first_spec), request_id="retry-me")
    [violation] = reused.value.violations
    assert (violation.field, violation.reason) == ("request_id", "REQUEST_ID_REUSED")
    assert "datasets/reviews/splitPolicy" in violation.description
    assert splitter.policy("movies").update_time is None
    with pytest.raises(InvalidArgument) as too_long:
        splitter.set_policy(SplitPolicy("reviews", first_spec), request_id="x" * 129)
    assert [v.reason for v in too_long.value.violations] == ["TOO_LONG"]


def test_a_split_whose_transaction_rolls_back_is_not_counted(splitter: SplitterHarness) -> None:
    version = _version(splitter, "reviews", _reviews(100))
    with splitter.deps.sessions() as session, session.begin():
        split = on_dataset_versioned(session, splitter.deps, version)
        assert split is not None
        session.rollback()
    assert splitter.split_count() == 0
    assert splitter.staged_events() == []
    assert splitter.metric("tuneline_splits_created_total", strategy="HASH", trigger="event") == 0


def test_create_split_losing_a_race_returns_the_winner(
    splitter: SplitterHarness, monkeypatch
) -> None:
    version = _version(splitter, "reviews", _reviews(100))
    winner = splitter.consume(version)
    assert winner is not None
    # as if a concurrent call stored the split between this call's lookup and its insert
    real_get_split = SplitterRepository.get_split
    lookups = iter([None])
    monkeypatch.setattr(
        SplitterRepository,
        "get_split",
        lambda self, name: next(lookups, None) or real_get_split(self, name),
    )
    # the servicer owns CreateSplit's transaction, and runs it again when its insert lost
    answer = SplitterServicer(splitter.deps).CreateSplit(
        service_pb2.CreateSplitRequest(parent=version.name, spec=spec_to_proto(SplitSpec())),
        context=None,
    )
    assert (answer.split, answer.created) == (split_to_proto(winner), False)
    assert splitter.split_count() == 1
    assert len(splitter.staged_events()) == 1
    assert splitter.metric("tuneline_splits_created_total", strategy="HASH", trigger="rpc") == 0


class _FakeDatasetService:
    """The dataset service as DatasetLookup answers for it: versions it stored, LookupError
    while it is down."""

    def __init__(self, *versions: DatasetVersionRef, down: bool = False) -> None:
        self.versions = {v.name: v for v in versions}
        self.down = down
        self.asked: list[str] = []

    def fetch(self, name: str) -> DatasetVersionRef | None:
        self.asked.append(name)
        if self.down:
            raise LookupError("the dataset service could not be asked (UNAVAILABLE)")
        return self.versions.get(name)


def _create_asking(
    splitter: SplitterHarness, name: str, dataset_service: _FakeDatasetService, spec=None
):
    return splitter.create(name, spec, versions=dataset_service)


def test_create_split_asks_the_dataset_service_about_a_version_not_announced_yet(
    splitter: SplitterHarness,
) -> None:
    version = _version(splitter, "reviews", _reviews(300))
    dataset_service = _FakeDatasetService(version)
    spec = SplitSpec(strategy=SplitStrategy.STRATIFIED, seed=3)

    split, created = _create_asking(splitter, version.name, dataset_service, spec)

    assert created
    assert dataset_service.asked == [version.name]
    assert split.dataset_version == version.name
    assert split.dataset_content_sha256 == version.content_sha256
    assert [e.split for e in splitter.staged_events()] == [split.name]
    # what was asked is not recorded: DatasetVersioned, when it arrives, still splits the
    # version by its policy
    by_policy = splitter.consume(version)
    assert by_policy is not None
    assert by_policy.spec == SplitSpec()
    assert splitter.split_count() == 2
    # known now: nothing more is asked
    again, created_again = _create_asking(splitter, version.name, dataset_service, spec)
    assert (again, created_again) == (split, False)
    assert dataset_service.asked == [version.name]


def test_a_version_the_dataset_service_lacks_is_not_found_and_a_down_one_unavailable(
    splitter: SplitterHarness,
) -> None:
    name = "datasets/reviews/versions/v0123456789abcdef"
    with pytest.raises(NotFound):
        _create_asking(splitter, name, _FakeDatasetService())
    with pytest.raises(Unavailable) as unavailable:
        _create_asking(splitter, name, _FakeDatasetService(down=True))
    assert name in unavailable.value.message
    assert splitter.split_count() == 0
    assert splitter.staged_events() == []
