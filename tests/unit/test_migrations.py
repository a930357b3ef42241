"""Schema migrations: an empty database migrated to head has exactly the models' schema.

Run for the plumbing tables and every service, on SQLite and PostgreSQL. When this fails, the
models changed without a migration: draft one with
``python -m tuneline.devtools.migrations <service|plumbing> "what changed"``, read it, commit it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from shared.db import create_database_engine, create_schema
from shared.events.tables import PlumbingBase
from shared.migrations import schema_differences, upgrade_schema

SERVICES = ["dataset", "splitter", "trainer", "evaluator", "registry", "serving"]


def _tables(service: str) -> list:
    return list(import_module(f"services.{service}.bootstrap").SPEC.tables)


@pytest.mark.parametrize("service", SERVICES)
def test_an_empty_database_migrated_to_head_matches_the_models(
    service: str, database_url: str
) -> None:
    engine = create_database_engine(database_url)
    try:
        upgrade_schema(engine, service, _tables(service))
        with engine.connect() as connection:
            differences = schema_differences(connection, [PlumbingBase.metadata])
            assert differences == [], f"plumbing models without a migration: {differences}"
            differences = schema_differences(connection, _tables(service))
            assert differences == [], f"{service} models without a migration: {differences}"
    finally:
        engine.dispose()


def test_upgrading_again_changes_nothing(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        upgrade_schema(engine, "registry", _tables("registry"))
        with engine.connect() as connection:
            before = sorted(connection.execute(text("SELECT version_num FROM alembic_version")))
        upgrade_schema(engine, "registry", _tables("registry"))
        with engine.connect() as connection:
            after = sorted(connection.execute(text("SELECT version_num FROM alembic_version")))
        assert before == after
        assert len(after) == 2, "one head per branch: plumbing and the service"
    finally:
        engine.dispose()


def test_a_database_from_before_migrations_is_stamped_not_recreated(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        create_schema(engine, _tables("dataset"))  # how every release before migrations began
        assert "alembic_version" not in inspect(engine).get_table_names()
        upgrade_schema(engine, "dataset", _tables("dataset"))
        with engine.connect() as connection:
            stamped = connection.execute(text("SELECT count(*) FROM alembic_version")).scalar()
            assert stamped == 2
            assert schema_differences(connection, _tables("dataset")) == []
    finally:
        engine.dispose()


def test_a_service_started_with_migrate_only_migrates_and_exits(tmp_path: Path) -> None:
    """What a deploy step or Kubernetes init container runs before the new version serves."""
    database = tmp_path / "registry.db"
    environment = {
        **os.environ,
        "TUNELINE_REGISTRY_DATABASE_URL": f"sqlite:///{database}",
        "TUNELINE_DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "services.registry.entrypoints.main", "migrate"],
        env=environment,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    engine = create_database_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            assert schema_differences(connection, _tables("registry")) == []
            stamped = connection.execute(text("SELECT count(*) FROM alembic_version")).scalar()
            assert stamped == 2
    finally:
        engine.dispose()
