"""Datasets and their policies; Get and paged List of datasets, versions and reports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.dataset.adapters.protos import dataset_to_proto
from services.dataset.domain.label_audit import (
    DEFAULT_MAX_NOISE_RATE as DEFAULT_MAX_LABEL_NOISE_RATE,
)
from services.dataset.domain.label_audit import LabelAuditAction
from services.dataset.domain.policy import (
    DEFAULT_MAX_IMBALANCE_RATIO,
    DEFAULT_MAX_LABEL_CHURN,
    DEFAULT_MAX_TEXT_LENGTH,
    DEFAULT_MIN_ROWS_PER_CLASS,
    DEFAULT_MIN_SHARED_ROWS_FOR_CHURN,
    SchemaPolicy,
)
from services.dataset.domain.reports import Outcome, SourceKind
from services.dataset.domain.rules import Severity
from services.dataset.handlers.datasets import create_dataset, get_dataset, list_datasets
from services.dataset.handlers.deps import DatasetDeps
from services.dataset.handlers.ingest import IngestRequest, upload_version
from services.dataset.handlers.versions import get_version, list_reports, list_versions
from shared.errors import AlreadyExists, InvalidArgument, NotFound
from shared.ownership import Owner
from shared.task_types import TaskType
from tests.fixtures.datasets import make_dataset_deps, rotten_tomatoes_rows, to_jsonl


@pytest.fixture
def deps(tmp_path: Path, database_url: str) -> Iterator[DatasetDeps]:
    deps = make_dataset_deps(tmp_path, database_url=database_url)
    yield deps
    deps.sessions.kw["bind"].dispose()


def create(deps: DatasetDeps, dataset_id: str, task: TaskType = TaskType.CLASSIFICATION) -> None:
    with deps.sessions.begin() as session:
        create_dataset(session, deps, dataset_id=dataset_id, task_type=task, policy=SchemaPolicy())


def test_create_resolves_defaults_and_get_returns_the_same(deps: DatasetDeps) -> None:
    with deps.sessions.begin() as session:
        created = create_dataset(
            session,
            deps,
            dataset_id="reviews",
            task_type=TaskType.CLASSIFICATION,
            policy=SchemaPolicy(
                label_set=("rotten", "fresh"), rule_severities={"duplicate_row": Severity.ERROR}
            ),
            display_name="Rotten Tomatoes",
        )
    assert created.name == "datasets/reviews"
    assert created.policy == SchemaPolicy(
        label_set=("fresh", "rotten"),
        max_text_length=DEFAULT_MAX_TEXT_LENGTH,
        min_rows_per_class=DEFAULT_MIN_ROWS_PER_CLASS,
        max_imbalance_ratio=DEFAULT_MAX_IMBALANCE_RATIO,
        rule_severities={"duplicate_row": Severity.ERROR},
        max_label_churn=DEFAULT_MAX_LABEL_CHURN,
        min_shared_rows_for_churn=DEFAULT_MIN_SHARED_ROWS_FOR_CHURN,
        label_audit_action=LabelAuditAction.BLOCK,
        max_label_noise_rate=DEFAULT_MAX_LABEL_NOISE_RATE,
    )
    with deps.sessions() as session:
        assert get_dataset(session, "datasets/reviews") == created
    with pytest.raises(AlreadyExists):
        create(deps, "reviews")


def test_invalid_ids_names_and_policies_name_every_field(deps: DatasetDeps) -> None:
    for bad_id in ("Reviews", "1st", "a_b", "x" * 64, "trailing-"):
        with pytest.raises(InvalidArgument) as caught:
            create(deps, bad_id)
        assert caught.value.violations[0].field == "dataset_id"
    with pytest.raises(InvalidArgument) as caught, deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="ok",
            task_type=TaskType.CAUSAL_LM,
            policy=SchemaPolicy(
                label_set=("a", "a"),
                max_text_length=-1,
                max_imbalance_ratio=0.5,
                rule_severities={"no_such_rule": Severity.ERROR, "not_utf8": Severity.WARNING},
            ),
        )
    assert {v.field: v.reason for v in caught.value.violations} == {
        "dataset.schema_policy.max_text_length": "OUT_OF_RANGE",
        "dataset.schema_policy.max_imbalance_ratio": "OUT_OF_RANGE",
        "dataset.schema_policy.label_set": "DUPLICATE",
        "dataset.schema_policy.rule_severities[no_such_rule]": "UNKNOWN_RULE",
        "dataset.schema_policy.rule_severities[not_utf8]": "NOT_OVERRIDABLE",
    }
    with pytest.raises(InvalidArgument), deps.sessions() as session:
        get_dataset(session, "reviews")  # not a resource name
    with pytest.raises(NotFound), deps.sessions() as session:
        get_dataset(session, "datasets/absent")


def test_a_dataset_keeps_its_owner_and_refuses_one_that_cannot_route_alerts(
    deps: DatasetDeps,
) -> None:
    owner = Owner("support-ml", "#support-ml", "https://runbooks.example.com/reviews")
    with deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="reviews",
            task_type=TaskType.CLASSIFICATION,
            policy=SchemaPolicy(),
            owner=owner,
        )
    with deps.sessions() as session:
        stored = get_dataset(session, "datasets/reviews")
    assert stored.owner == owner
    assert dataset_to_proto(stored).owner.runbook_uri == owner.runbook_uri
    with pytest.raises(InvalidArgument) as raised, deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="other",
            task_type=TaskType.CLASSIFICATION,
            policy=SchemaPolicy(),
            owner=Owner("Support ML", "x" * 201, "ftp://runbooks"),
        )
    assert {v.field for v in raised.value.violations} == {
        "dataset.owner.team",
        "dataset.owner.contact",
        "dataset.owner.runbook_uri",
    }


def test_list_datasets_pages_by_name_and_filters_by_task(deps: DatasetDeps) -> None:
    for name in ("delta", "alpha", "echo", "charlie", "bravo"):
        create(deps, name, TaskType.CAUSAL_LM if name == "charlie" else TaskType.CLASSIFICATION)
    names, token = [], ""
    while True:
        with deps.sessions() as session:
            page, token = list_datasets(session, page_size=2, page_token=token, task_type=None)
        assert len(page) <= 2
        names += [d.dataset_id for d in page]
        if not token:
            break
    assert names == ["alpha", "bravo", "charlie", "delta", "echo"]
    with deps.sessions() as session:
        classification, _ = list_datasets(
            session, page_size=0, page_token="", task_type=TaskType.CLASSIFICATION
        )
    assert [d.dataset_id for d in classification] == ["alpha", "bravo", "delta", "echo"]
    with deps.sessions() as session:
        _, token = list_datasets(session, page_size=1, page_token="", task_type=None)
    # a token replayed with another filter
    with pytest.raises(InvalidArgument), deps.sessions() as session:
        list_datasets(session, page_size=1, page_token=token, task_type=TaskType.CAUSAL_LM)


def test_versions_and_reports_list_newest_first_in_pages(deps: DatasetDeps) -> None:
    create(deps, "reviews")
    rows = rotten_tomatoes_rows(60)
    created = []
    for size in (40, 45, 50):
        result = upload_version(
            deps,
            IngestRequest(dataset="datasets/reviews", source_kind=SourceKind.UPLOAD),
            [to_jsonl(rows[:size])],
        )
        created.append(result.version.name)  # type: ignore[union-attr]
    with pytest.raises(InvalidArgument):
        upload_version(
            deps,
            IngestRequest(dataset="datasets/reviews", source_kind=SourceKind.UPLOAD),
            [b"[]\n"],
        )
    with deps.sessions() as session:
        first, token = list_versions(session, parent="datasets/reviews", page_size=2, page_token="")
    with deps.sessions() as session:
        rest, last = list_versions(
            session, parent="datasets/reviews", page_size=2, page_token=token
        )
    assert [v.name for v in [*first, *rest]] == created[::-1]
    assert last == ""
    with deps.sessions() as session:
        assert get_version(session, created[0]).row_count == 40

    with deps.sessions() as session:
        everything, _ = list_reports(
            session, parent="datasets/reviews", page_size=0, page_token="", outcome=None
        )
    assert [r.summary.outcome for r in everything] == [Outcome.REJECTED] + [Outcome.ACCEPTED] * 3
    with deps.sessions() as session:
        accepted, _ = list_reports(
            session, parent="datasets/reviews", page_size=0, page_token="", outcome=Outcome.ACCEPTED
        )
    assert [r.dataset_version for r in accepted] == created[::-1]
    with pytest.raises(NotFound), deps.sessions() as session:
        list_versions(session, parent="datasets/absent", page_size=0, page_token="")
    with pytest.raises(NotFound), deps.sessions() as session:
        get_version(session, "datasets/reviews/versions/v-0000")
