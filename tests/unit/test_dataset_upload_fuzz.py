"""No upload, however broken, ends in anything but a version or INVALID_ARGUMENT with a report.

A lone surrogate escape used to crash the validation worker, and the client saw ``INTERNAL``
with no report and no line number. These fuzz the whole ingestion path in-process, thousands
of cases in all (:mod:`tests.fixtures.upload_fuzz`): first the validator alone (fast, so many
cases), then the upload handler on real SQLite and a real artifact store, checking what the
client would see and that a rejected upload stores nothing but its report.
``tests/integration/test_dataset_upload_fuzz.py`` sends a few through real gRPC.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from google.rpc import code_pb2, error_details_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from services.dataset.adapters.protos import dataset_versioned, report_to_proto, version_to_proto
from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.reports import Outcome, SourceKind
from services.dataset.domain.rules import Rule
from services.dataset.domain.validation import StreamingValidator
from services.dataset.handlers.datasets import create_dataset, get_dataset
from services.dataset.handlers.deps import DatasetDeps
from services.dataset.handlers.ingest import IngestRequest, upload_version
from services.dataset.handlers.versions import get_report, list_reports
from shared.canonical_jsonl import read_rows
from shared.errors import InvalidArgument
from shared.events import OutboxEvent
from shared.grpc.errors import to_rpc_status
from shared.task_types import TaskType
from tests.fixtures.datasets import make_dataset_deps, stored_artifacts
from tests.fixtures.upload_fuzz import json_lines, mutated_uploads, random_bytes, uploads

_POLICIES = {
    task: SchemaPolicy(min_rows_per_class=1).resolved(task)
    for task in (TaskType.CLASSIFICATION, TaskType.CAUSAL_LM)
}
_tasks = st.sampled_from(list(_POLICIES))


def _validate(content: bytes, task: TaskType, chunk: int) -> None:
    """Validate ``content`` in ``chunk``-byte pieces, and check what came out is usable."""
    written = bytearray()
    validator = StreamingValidator(
        task, _POLICIES[task], written.extend, max_line_bytes=1024, block_bytes=256
    )
    for start in range(0, len(content), chunk):
        validator.feed(content[start : start + chunk])
    result = validator.finish()
    for finding in result.findings:  # every finding can be stored and sent as it is
        assert isinstance(finding.rule, Rule)
        finding.message.encode()
        finding.field.encode()
    if not result.has_errors:
        rows = read_rows(bytes(written))  # what every service reads
        assert len(rows) == result.row_count
        canonical = bytes(written).decode()  # and all of it is UTF-8
        assert canonical.count("\n") == result.row_count


_FAST = settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(content=random_bytes, task=_tasks, chunk=st.integers(1, 400))
def test_the_validator_reports_on_random_bytes(content: bytes, task: TaskType, chunk: int) -> None:
    _validate(content, task, chunk)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=json_lines, task=_tasks, chunk=st.integers(1, 400))
def test_the_validator_reports_on_random_json(content: bytes, task: TaskType, chunk: int) -> None:
    _validate(content, task, chunk)


@_FAST
@given(content=mutated_uploads, task=_tasks, chunk=st.integers(1, 400))
def test_the_validator_reports_on_mutated_valid_rows(
    content: bytes, task: TaskType, chunk: int
) -> None:
    _validate(content, task, chunk)


# -- through the upload handler ----------------------------------------------------------------


@dataclass
class Stored:
    """What one dataset has stored, and what the service has in its outbox and spool."""

    versions: int
    reports: int
    outbox: int
    artifacts: int


def _stored(deps: DatasetDeps, dataset: str) -> Stored:
    with deps.sessions() as session:
        outbox = session.scalar(select(func.count()).select_from(OutboxEvent)) or 0
    with deps.sessions() as session:
        reports, _ = list_reports(
            session, parent=dataset, page_size=100, page_token="", outcome=None
        )
    root = deps.store.root
    artifacts = stored_artifacts(root / dataset) + stored_artifacts(root / ".tmp")
    with deps.sessions() as session:
        return Stored(
            get_dataset(session, dataset).version_count, len(reports), outbox, len(artifacts)
        )


@pytest.fixture(scope="module")
def deps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatasetDeps]:
    deps = make_dataset_deps(tmp_path_factory.mktemp("fuzz"), max_line_bytes=1024)
    yield deps
    deps.sessions.kw["bind"].dispose()


_dataset_ids = (f"fuzz-{n}" for n in itertools.count())


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(content=uploads, task=_tasks)
def test_every_upload_is_a_version_or_invalid_argument_with_a_report(
    deps: DatasetDeps, content: bytes, task: TaskType
) -> None:
    with deps.sessions.begin() as session:
        dataset = create_dataset(
            session, deps, dataset_id=next(_dataset_ids), task_type=task, policy=SchemaPolicy()
        )
    before = _stored(deps, dataset.name)
    request = IngestRequest(dataset=dataset.name, source_kind=SourceKind.UPLOAD)
    chunks = iter([content[i : i + 97] for i in range(0, len(content), 97)])
    try:
        result = upload_version(deps, request, chunks)
    except InvalidArgument as error:  # any other exception is what a client sees as INTERNAL
        status = to_rpc_status(error)
        assert status.code == code_pb2.INVALID_ARGUMENT
        info = error_details_pb2.ErrorInfo()
        assert any(d.Unpack(info) for d in status.details if d.Is(info.DESCRIPTOR))
        with deps.sessions() as session:
            report = get_report(session, info.metadata["report"])
        assert report.summary.outcome is Outcome.REJECTED
        report_to_proto(report).SerializeToString()
        after = _stored(deps, dataset.name)
        assert after == Stored(before.versions, before.reports + 1, before.outbox, before.artifacts)
        event("rejected")
        return
    event("accepted")
    assert result.version is not None
    assert result.report.summary.outcome is Outcome.ACCEPTED
    report_to_proto(result.report).SerializeToString()
    version_to_proto(result.version).SerializeToString()
    dataset_versioned(result.version).SerializeToString()
    stored = read_rows(deps.store.local_path(result.version.artifact_uri).read_bytes())
    assert len(stored) == result.version.row_count
