"""Revision a4c9e1f7b2d6: the task types a dataset database stored in lower case
(``causal_lm``) become :class:`shared.task_types.TaskType` values (``CAUSAL_LM``), and back on
downgrade. A version's id is the hash of its rows, which hold no task type: versions stored
before the migration are found again by the same content afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from services.dataset.bootstrap import SPEC
from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.reports import SourceKind
from services.dataset.handlers.datasets import create_dataset, get_dataset
from services.dataset.handlers.deps import DatasetDeps
from services.dataset.handlers.ingest import IngestRequest, upload_version
from shared.db import create_database_engine
from shared.migrations import PLUMBING, service_migrations, upgrade_schema
from shared.task_types import TaskType
from tests.fixtures.datasets import make_dataset_deps, to_jsonl

BEFORE = "e7a1c4b9d2f3"
TABLES = ("datasets", "dataset_versions", "dataset_audits")
ROWS = [{"prompt": f"Question {i}?", "completion": f" Answer {i}."} for i in range(20)]


def _downgrade_dataset_tables(engine: Engine, destination: str) -> None:
    script = ScriptDirectory(PLUMBING, version_locations=[PLUMBING, service_migrations("dataset")])

    def steps(revision: Any, _context: Any) -> Any:
        return script._downgrade_revs(destination, revision)

    with (
        engine.begin() as connection,
        EnvironmentContext(Config(), script, fn=steps, destination_rev=destination) as environment,
    ):
        environment.configure(connection=connection, version_table="alembic_version")
        with environment.begin_transaction():
            environment.run_migrations()


def _stored(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return {
            value
            for table in TABLES
            for value in connection.execute(text(f"SELECT task_type FROM {table}")).scalars()
        }


@pytest.fixture
def migrated(tmp_path: Path, database_url: str) -> Iterator[tuple[Engine, DatasetDeps]]:
    engine = create_database_engine(database_url)
    upgrade_schema(engine, "dataset", list(SPEC.tables))
    deps = make_dataset_deps(tmp_path, database_url=database_url)
    try:
        yield engine, deps
    finally:
        deps.sessions.kw["bind"].dispose()
        engine.dispose()


def _upload(deps: DatasetDeps) -> str:
    result = upload_version(
        deps,
        IngestRequest(dataset="datasets/chat", source_kind=SourceKind.UPLOAD),
        iter([to_jsonl(ROWS)]),
    )
    assert result.version is not None
    return result.version.version_id


def test_lower_case_task_types_become_upper_case_and_versions_keep_their_ids(
    migrated: tuple[Engine, DatasetDeps],
) -> None:
    engine, deps = migrated
    with deps.sessions.begin() as session:
        create_dataset(
            session, deps, dataset_id="chat", task_type=TaskType.CAUSAL_LM, policy=SchemaPolicy()
        )
        create_dataset(
            session,
            deps,
            dataset_id="reviews",
            task_type=TaskType.CLASSIFICATION,
            policy=SchemaPolicy(),
        )
    version_id = _upload(deps)
    assert _stored(engine) == {"CAUSAL_LM", "CLASSIFICATION"}

    _downgrade_dataset_tables(engine, BEFORE)  # what the service stored before the revision
    assert _stored(engine) == {"causal_lm", "classification"}

    upgrade_schema(engine, "dataset", list(SPEC.tables))
    assert _stored(engine) == {"CAUSAL_LM", "CLASSIFICATION"}
    with deps.sessions() as session:
        assert get_dataset(session, "datasets/chat").task_type is TaskType.CAUSAL_LM
        assert get_dataset(session, "datasets/reviews").task_type is TaskType.CLASSIFICATION
    again = upload_version(
        deps,
        IngestRequest(dataset="datasets/chat", source_kind=SourceKind.UPLOAD),
        iter([to_jsonl(ROWS)]),
    )
    assert again.version is not None
    assert again.version.version_id == version_id
    assert not again.created


def test_rows_written_before_the_migration_still_read(
    migrated: tuple[Engine, DatasetDeps],
) -> None:
    """A replica still on the old schema, or a row the migration has not reached: readable."""
    engine, deps = migrated
    with deps.sessions.begin() as session:
        create_dataset(
            session, deps, dataset_id="chat", task_type=TaskType.CAUSAL_LM, policy=SchemaPolicy()
        )
    with engine.begin() as connection:
        connection.execute(text("UPDATE datasets SET task_type = 'causal_lm'"))
    with deps.sessions() as session:
        assert get_dataset(session, "datasets/chat").task_type is TaskType.CAUSAL_LM
