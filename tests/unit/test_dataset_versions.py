"""Accepted content: content-addressed versions, the canonical JSONL, lineage, the outbox event."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from services.dataset.adapters.sources import ImportSources
from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.reports import Outcome, SourceKind
from services.dataset.domain.rules import Severity
from services.dataset.handlers.datasets import create_dataset, get_dataset
from services.dataset.handlers.deps import DatasetDeps
from services.dataset.handlers.ingest import (
    IngestRequest,
    IngestResult,
    import_version,
    upload_version,
)
from services.dataset.handlers.versions import get_report
from services.dataset.settings import DatasetSettings
from shared.errors import InvalidArgument, NotFound, PermissionDenied
from shared.events import Envelope, OutboxEvent
from shared.task_types import TaskType
from tests.fixtures.datasets import (
    make_dataset_deps,
    rotten_tomatoes_rows,
    stored_artifacts,
    to_jsonl,
)
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2, resources_pb2

BASE = rotten_tomatoes_rows(40)


@pytest.fixture
def deps(tmp_path: Path, database_url: str) -> Iterator[DatasetDeps]:
    deps = make_dataset_deps(tmp_path, database_url=database_url)
    yield deps
    deps.sessions.kw["bind"].dispose()


def create(deps: DatasetDeps, task: TaskType = TaskType.CLASSIFICATION, **policy: Any) -> None:
    severities = {rule: Severity(level) for rule, level in policy.pop("severities", {}).items()}
    with deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="reviews",
            task_type=task,
            policy=SchemaPolicy(rule_severities=severities, **policy),
        )


def upload(deps: DatasetDeps, content: bytes, *, chunk: int = 777, **request: Any) -> IngestResult:
    chunks = [content[i : i + chunk] for i in range(0, len(content), chunk)]
    return upload_version(
        deps,
        IngestRequest(dataset="datasets/reviews", source_kind=SourceKind.UPLOAD, **request),
        iter(chunks),
    )


def artifact_lines(deps: DatasetDeps, result: IngestResult) -> list[dict[str, Any]]:
    assert result.version is not None
    data = deps.store.local_path(result.version.artifact_uri).read_bytes()
    return [json.loads(line) for line in data.splitlines()]


def outbox(deps: DatasetDeps) -> list[tuple[Envelope, events_pb2.DatasetVersioned]]:
    with deps.sessions() as session:
        rows = session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)).all()
        envelopes = [row.envelope() for row in rows]
    return [(e, e.decode(events_pb2.DatasetVersioned)) for e in envelopes]


def canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def derived_id(row: dict[str, Any]) -> str:
    return "r-" + hashlib.sha256(canonical(row).encode()).hexdigest()[:16]


def test_the_artifact_is_the_canonical_jsonl_and_its_hash_names_the_version(
    deps: DatasetDeps,
) -> None:
    create(deps)
    rows = [*BASE[:5], {"text": "Ünïcödé “quotes” and\ttabs", "label": "fresh"}, *BASE[5:]]
    result = upload(deps, to_jsonl(rows))
    version = result.version
    assert version is not None
    data = deps.store.local_path(version.artifact_uri).read_bytes()
    expected = "".join(canonical({**row, "id": derived_id(row)}) + "\n" for row in rows)
    assert data == expected.encode()
    assert version.content_sha256 == hashlib.sha256(data).hexdigest()
    assert version.byte_count == len(data)
    assert version.name == f"datasets/reviews/versions/v-{version.content_sha256[:20]}"
    assert version.row_count == len(rows)
    assert version.label_distribution == (("fresh", 23), ("rotten", 18))
    assert version.lineage.source_sha256 == hashlib.sha256(to_jsonl(rows)).hexdigest()
    assert stored_artifacts(deps.store.root) == [deps.store.local_path(version.artifact_uri)]


def test_crlf_and_a_bom_give_the_same_version_with_no_second_event(deps: DatasetDeps) -> None:
    create(deps)
    plain = to_jsonl(BASE)
    first = upload(deps, plain)
    for variant in (to_jsonl(BASE, newline="\r\n"), b"\xef\xbb\xbf" + plain):
        again = upload(deps, variant, chunk=1)  # even a BOM split over three chunks
        assert again.version == first.version
        assert not again.created
        assert again.report.dataset_version == first.version.name  # type: ignore[union-attr]
        assert again.report.name != first.report.name  # every upload has its own report
    bom_report = again.report
    assert [(f.rule.value, f.severity, f.line_numbers) for f in bom_report.findings] == [
        ("bom", Severity.INFO, (1,))
    ]
    assert len(outbox(deps)) == 1
    with deps.sessions() as session:
        assert get_dataset(session, "datasets/reviews").version_count == 1
    assert len(stored_artifacts(deps.store.root)) == 1, "one artifact, no temp files"


def test_different_rows_or_order_give_a_different_version(deps: DatasetDeps) -> None:
    create(deps)
    first = upload(deps, to_jsonl(BASE))
    reordered = upload(deps, to_jsonl([BASE[1], BASE[0], *BASE[2:]]))
    assert reordered.created
    assert reordered.version != first.version
    assert reordered.version.lineage.parent_version == first.version.name  # type: ignore[union-attr]


def test_exact_repeats_are_kept_with_numbered_ids_and_reported(deps: DatasetDeps) -> None:
    create(deps)
    rows = [*BASE, BASE[0], BASE[3], BASE[0]]
    result = upload(deps, to_jsonl(rows))
    ids = [row["id"] for row in artifact_lines(deps, result)]
    base_id = derived_id(BASE[0])
    assert ids[0] == base_id
    assert ids[-3:] == [f"{base_id}~2", f"{derived_id(BASE[3])}~2", f"{base_id}~3"]
    assert len(set(ids)) == len(ids)
    (finding,) = result.report.findings
    assert (finding.rule.value, finding.severity, finding.count) == (
        "duplicate_row",
        Severity.WARNING,
        3,
    )
    assert finding.line_numbers == (41, 42, 43)
    assert result.report.summary.warning_rules == ("duplicate_row",)


def test_uploaded_ids_are_kept_and_repeats_of_them_numbered(deps: DatasetDeps) -> None:
    create(deps)
    rows = [dict(row, id=f"rt-{i}") for i, row in enumerate(BASE)]
    result = upload(deps, to_jsonl([*rows, rows[7]]))
    ids = [row["id"] for row in artifact_lines(deps, result)]
    assert ids == [*(f"rt-{i}" for i in range(40)), "rt-7~2"]


def test_optional_fields_tags_weight_and_unknown_fields(deps: DatasetDeps) -> None:
    create(deps)
    rows = [dict(row) for row in BASE]
    rows[0].update(group="movie-1", tags=["short", "quote"], weight=2, movie="x")
    rows[1].update(slice="long", weight=0.5)
    result = upload(deps, to_jsonl(rows))
    first, second = artifact_lines(deps, result)[:2]
    assert first == {
        "group": "movie-1",
        "id": derived_id({k: v for k, v in first.items() if k != "id"}),
        "label": "fresh",
        "slice": "short",
        "tags": ["short", "quote"],
        "text": BASE[0]["text"],
        "weight": 2,
    }
    assert second["slice"] == "long"
    assert result.version.slice_distribution == (("long", 1), ("short", 1))  # type: ignore[union-attr]
    (finding,) = result.report.findings
    assert (finding.rule.value, finding.line_numbers) == ("unknown_field", (1,))


def test_causal_lm_prompt_completion_and_chat_rows(deps: DatasetDeps) -> None:
    create(deps, TaskType.CAUSAL_LM)
    rows = [
        {"prompt": "What is 2 + 2?", "completion": "4"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"content": "Hi!", "role": "user"},
                {"role": "assistant", "content": "Hello."},
            ],
            "tags": ["greetings"],
        },
    ]
    result = upload(deps, to_jsonl(rows))
    assert result.version is not None
    assert result.version.label_distribution == ()
    assert result.version.slice_distribution == (("greetings", 1),)
    stored = artifact_lines(deps, result)
    assert stored[1]["messages"][1] == {"content": "Hi!", "role": "user"}
    assert [row["id"] for row in stored] == [
        derived_id({k: v for k, v in row.items() if k != "id"}) for row in stored
    ]


def test_the_label_set_is_derived_from_the_first_version(deps: DatasetDeps) -> None:
    create(deps)
    upload(deps, to_jsonl(BASE))
    with deps.sessions() as session:
        policy = get_dataset(session, "datasets/reviews").policy
    assert (policy.label_set, policy.label_set_derived) == (("fresh", "rotten"), True)
    with pytest.raises(InvalidArgument) as caught:
        upload(deps, to_jsonl([*BASE, {"text": "so-so", "label": "meh"}]))
    assert [v.field for v in caught.value.violations] == ["label_not_in_set"]


def test_a_declared_label_set_is_kept(deps: DatasetDeps) -> None:
    create(deps, label_set=("rotten", "fresh"))
    upload(deps, to_jsonl(BASE))
    with deps.sessions() as session:
        policy = get_dataset(session, "datasets/reviews").policy
    assert (policy.label_set, policy.label_set_derived) == (("fresh", "rotten"), False)


def test_lineage_parent_uploader_source_and_the_event(deps: DatasetDeps) -> None:
    create(deps)
    first = upload(deps, to_jsonl(BASE[:30]), source="v1.jsonl", uploader="alice@example.com")
    second = upload(deps, to_jsonl(BASE), source="v2.jsonl")
    assert first.version is not None
    assert second.version is not None
    assert first.version.lineage.parent_version == ""
    assert second.version.lineage.parent_version == first.version.name
    assert (first.version.lineage.uploader, first.version.lineage.source) == (
        "alice@example.com",
        "v1.jsonl",
    )
    explicit = upload(deps, to_jsonl(BASE[:35]), parent_version=first.version.name)
    assert explicit.version.lineage.parent_version == first.version.name  # type: ignore[union-attr]
    with deps.sessions() as session:
        dataset = get_dataset(session, "datasets/reviews")
    assert (dataset.version_count, dataset.latest_version) == (3, explicit.version.name)  # type: ignore[union-attr]

    events = outbox(deps)
    assert len(events) == 3
    envelope, event = events[1]
    assert (envelope.subject, envelope.source, envelope.type) == (
        second.version.name,
        "tuneline/dataset",
        "tuneline.dataset.v1.DatasetVersioned",
    )
    assert event.dataset_version == second.version.name
    assert event.dataset == "datasets/reviews"
    assert event.content_sha256 == second.version.content_sha256
    assert (event.row_count, event.byte_count) == (40, second.version.byte_count)
    assert event.task_type == common_pb2.TASK_TYPE_CLASSIFICATION
    assert [(c.label, c.count) for c in event.label_distribution] == [("fresh", 22), ("rotten", 18)]
    assert event.artifact_uri == second.version.artifact_uri
    assert event.report == second.report.name
    assert event.report_summary.outcome == resources_pb2.VALIDATION_OUTCOME_ACCEPTED
    assert event.lineage.parent_version == first.version.name
    assert event.lineage.source == "v2.jsonl"
    assert event.lineage.source_kind == resources_pb2.DATASET_SOURCE_KIND_UPLOAD
    assert event.event_time.ToDatetime().year >= 2025


def test_a_parent_from_another_dataset_is_not_found(deps: DatasetDeps) -> None:
    create(deps)
    with pytest.raises(NotFound):
        upload(deps, to_jsonl(BASE), parent_version="datasets/other/versions/v-1")
    assert stored_artifacts(deps.store.root) == []


def test_validate_only_stores_the_report_and_nothing_else(deps: DatasetDeps) -> None:
    create(deps)
    result = upload(deps, to_jsonl(BASE), validate_only=True)
    assert (result.version, result.created) == (None, False)
    with deps.sessions() as session:
        report = get_report(session, result.report.name)
    assert report.validate_only
    assert report.summary.outcome is Outcome.ACCEPTED
    with deps.sessions() as session:
        assert get_dataset(session, "datasets/reviews").version_count == 0
    assert stored_artifacts(deps.store.root) == []
    assert outbox(deps) == []


def test_import_reads_files_inside_the_allowed_roots_only(tmp_path: Path) -> None:
    shared_folder = tmp_path / "imports"
    shared_folder.mkdir()
    deps = make_dataset_deps(tmp_path / "svc", import_roots=[shared_folder])
    create(deps)
    source = shared_folder / "reviews.jsonl"
    source.write_bytes(to_jsonl(BASE))
    result = import_version(
        deps,
        IngestRequest(
            dataset="datasets/reviews", source_kind=SourceKind.IMPORT, source=source.as_uri()
        ),
    )
    assert result.created
    assert result.version.lineage.source == source.as_uri()  # type: ignore[union-attr]
    assert result.version.lineage.source_kind is SourceKind.IMPORT  # type: ignore[union-attr]

    outside = tmp_path / "elsewhere.jsonl"
    outside.write_bytes(to_jsonl(BASE))
    escape = shared_folder / "link.jsonl"
    escape.symlink_to(outside)
    for uri in (outside.as_uri(), escape.as_uri(), "s3://bucket/x.jsonl"):
        with pytest.raises(InvalidArgument) as caught:
            import_version(
                deps,
                IngestRequest(
                    dataset="datasets/reviews", source_kind=SourceKind.IMPORT, source=uri
                ),
            )
        assert caught.value.violations[0].field == "source_uri"
    with pytest.raises(NotFound):
        import_version(
            deps,
            IngestRequest(
                dataset="datasets/reviews",
                source_kind=SourceKind.IMPORT,
                source=(shared_folder / "missing.jsonl").as_uri(),
            ),
        )
    deps.sessions.kw["bind"].dispose()


def _import(deps: DatasetDeps, uri: str) -> object:
    return import_version(
        deps, IngestRequest(dataset="datasets/reviews", source_kind=SourceKind.IMPORT, source=uri)
    )


def test_imports_never_follow_a_symlink_even_inside_the_roots(tmp_path: Path) -> None:
    root = tmp_path / "imports"
    (root / "real").mkdir(parents=True)
    deps = make_dataset_deps(tmp_path / "svc", import_roots=[root])
    create(deps)
    source = root / "real" / "reviews.jsonl"
    source.write_bytes(to_jsonl(BASE))
    (root / "link.jsonl").symlink_to(source)  # the last component is a link
    (root / "linked-folder").symlink_to(root / "real", target_is_directory=True)
    for link in (root / "link.jsonl", root / "linked-folder" / "reviews.jsonl"):
        with pytest.raises(PermissionDenied) as caught:
            _import(deps, link.as_uri())
        assert caught.value.metadata == {"field": "source_uri", "reason": "SYMLINK_REFUSED"}
    assert _import(deps, source.as_uri()).created  # type: ignore[attr-defined]
    deps.sessions.kw["bind"].dispose()


def test_imports_refuse_dot_dot_fifos_folders_and_the_data_dir(tmp_path: Path) -> None:
    root = tmp_path / "imports"
    root.mkdir()
    deps = make_dataset_deps(tmp_path / "svc", import_roots=[root])
    create(deps)
    with pytest.raises(InvalidArgument) as caught:
        _import(deps, f"{root.as_uri()}/../svc/dataset.db")
    assert caught.value.violations[0].reason == "INVALID_PATH"
    os.mkfifo(root / "pipe.jsonl")  # opening it must neither hang nor read
    (root / "folder.jsonl").mkdir()
    for name in ("pipe.jsonl", "folder.jsonl"):
        with pytest.raises(PermissionDenied) as denied:
            _import(deps, (root / name).as_uri())
        assert denied.value.metadata["reason"] == "NOT_A_REGULAR_FILE"
    deps.sessions.kw["bind"].dispose()


def test_no_folder_is_an_import_root_by_default(tmp_path: Path) -> None:
    """The wiring adds nothing to TUNELINE_DATASET_IMPORT_ROOTS (the data dir neither: the
    dataset service's integration test imports its own database and is refused)."""
    settings = DatasetSettings()
    assert settings.import_roots == []
    sources = ImportSources(settings.import_roots)
    with pytest.raises(InvalidArgument) as caught:
        sources.resolve((tmp_path / "registry" / "registry.db").as_uri())
    assert caught.value.violations[0].reason == "OUTSIDE_IMPORT_ROOTS"


def test_ingest_metrics(deps: DatasetDeps) -> None:
    create(deps)
    content = to_jsonl([*BASE, BASE[0]])
    upload(deps, content)
    upload(deps, content)
    with pytest.raises(InvalidArgument):
        upload(deps, b"nope\n")
    registry = deps.metrics.registry

    def value(name: str, **labels: str) -> float:
        found = registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    assert value("tuneline_dataset_ingest_bytes_total", source="upload") == 2 * len(content) + 5
    assert value("tuneline_dataset_ingest_rows_total", source="upload", outcome="created") == 41
    assert value("tuneline_dataset_ingests_total", source="upload", outcome="created") == 1
    assert value("tuneline_dataset_ingests_total", source="upload", outcome="unchanged") == 1
    assert value("tuneline_dataset_ingests_total", source="upload", outcome="rejected") == 1
    assert (
        value(
            "tuneline_dataset_validation_findings_total", rule="duplicate_row", severity="warning"
        )
        == 2
    )
    assert (
        value(
            "tuneline_dataset_validation_findings_total", rule="not_json_object", severity="error"
        )
        == 1
    )
    assert (
        value("tuneline_dataset_ingest_duration_seconds_count", source="upload", outcome="created")
        == 1
    )
