"""The trainer's task types in upper case (revision c7a1e4d20b93): rows written before it,
with lower-case values, are rewritten, read back as the shared TaskType, and a downgrade
restores them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy import Engine

from services.trainer.adapters.repository import TrainerRepository, dumps
from services.trainer.domain.jobs import SplitInfo
from shared.db import create_database_engine, create_session_factory
from shared.migrations import _script, migrate, service_migrations
from shared.task_types import TaskType

BEFORE = "b3d7e2a91c55"
REVISION = "c7a1e4d20b93"
SPLIT = "datasets/d/versions/v1/splits/s1"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    migrate(engine, service_migrations("trainer"), BEFORE, stamp=False)
    yield engine
    engine.dispose()


def _filler(column: sa.Column[Any]) -> Any:
    """A value for a required column the test does not care about."""
    python_type = column.type.python_type
    if python_type is datetime:
        return datetime.now(UTC)
    if python_type is str:
        return "{}" if column.name.endswith("_json") else "x"
    return python_type()


def _insert_legacy_rows(engine: Engine) -> None:
    jobs = sa.Table("trainer_jobs", sa.MetaData(), autoload_with=engine)
    row = {
        c.name: _filler(c)
        for c in jobs.columns
        if not c.nullable and c.server_default is None and c.autoincrement is not True
    }
    row |= {"name": "trainingJobs/j1", "task_type": "causal_lm"}
    split = SplitInfo(
        name=SPLIT,
        dataset="datasets/d",
        dataset_version="datasets/d/versions/v1",
        dataset_content_sha256="c" * 64,
        task_type=TaskType.CLASSIFICATION,
        manifest_uri="file:///m.json",
        manifest_sha256="d" * 64,
        dataset_artifact_uri="file:///v1.jsonl",
        train_rows=10,
        validation_rows=2,
    )
    # as the repository wrote it before this revision: the value in lower case
    info = dumps(split).replace('"task_type":"CLASSIFICATION"', '"task_type":"classification"')
    with engine.begin() as connection:
        connection.execute(jobs.insert().values(**row))
        connection.execute(
            sa.text(
                "INSERT INTO trainer_known_splits (name, dataset, info_json, create_time) "
                "VALUES (:name, :dataset, :info, :now)"
            ),
            {
                "name": SPLIT,
                "dataset": "datasets/d",
                "info": info,
                "now": datetime.now(UTC),
            },
        )


def _stored(engine: Engine) -> tuple[str, str]:
    with engine.connect() as connection:
        job_task = connection.execute(sa.text("SELECT task_type FROM trainer_jobs")).scalar_one()
        info = connection.execute(sa.text("SELECT info_json FROM trainer_known_splits"))
        split_task = json.loads(info.scalar_one())["task_type"]
    return job_task, split_task


def _downgrade(engine: Engine, destination: str) -> None:
    script = _script(service_migrations("trainer"))
    with (
        engine.begin() as connection,
        EnvironmentContext(
            Config(),
            script,
            fn=lambda revision, _context: script._downgrade_revs(destination, revision),
            destination_rev=destination,
        ) as environment,
    ):
        environment.configure(connection=connection, version_table="alembic_version")
        with environment.begin_transaction():
            environment.run_migrations()


def test_lower_case_task_types_are_rewritten_and_restored(engine: Engine) -> None:
    _insert_legacy_rows(engine)
    migrate(engine, service_migrations("trainer"), REVISION, stamp=False)
    assert _stored(engine) == ("CAUSAL_LM", "CLASSIFICATION")
    _downgrade(engine, BEFORE)
    assert _stored(engine) == ("causal_lm", "classification")


def test_a_split_remembered_in_lower_case_still_reads(engine: Engine) -> None:
    # what a row holds when nobody ran the migration yet: the shared TaskType accepts it
    _insert_legacy_rows(engine)
    with create_session_factory(engine)() as session:
        known = TrainerRepository(session).known_split(SPLIT)
    assert known is not None
    assert known.task_type is TaskType.CLASSIFICATION
