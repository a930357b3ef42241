"""Schema migrations (Alembic), applied when a service starts.

A service's database holds two independent histories, one Alembic *branch* each: the plumbing
tables every service shares (outbox, processed events, dead letters; revisions in
``shared/migrations/plumbing/``, branch ``plumbing``) and the service's own tables (revisions
in ``services/<service>/adapters/migrations/``, branch ``<service>``). :func:`upgrade_schema`
brings both to their heads. No ``alembic.ini`` or ``env.py``: the migration environment is
built here, from the service's engine.

A database created before migrations existed (tables made by ``create_all`` at start) is
brought to the baseline the same way it always was (:func:`shared.db.create_schema`) and then
stamped, so its later upgrades run as migrations.

Every schema change needs a revision: ``tests/unit/test_migrations.py`` migrates an empty
database to head and compares it with the models. :func:`write_revision` drafts one from the
difference (``python -m tuneline.devtools.migrations <service> "what changed"``); read it before
committing it.
"""

from __future__ import annotations

import re
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata, produce_migrations, render_python_code
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.types import TypeDecorator

from shared.db import create_schema
from shared.events.tables import PlumbingBase

PLUMBING = Path(__file__).resolve().parent / "plumbing"
_VERSION_TABLE = "alembic_version"
#: The advisory lock migrations hold on PostgreSQL (any fixed number; "tlmg" in ASCII).
_LOCK_KEY = 0x746C6D67


def service_migrations(service: str) -> Path:
    """Where the revisions of ``service``'s own tables live."""
    return Path(__file__).resolve().parents[2] / "services" / service / "adapters" / "migrations"


def _script(service_versions: Path) -> ScriptDirectory:
    return ScriptDirectory(PLUMBING, version_locations=[PLUMBING, service_versions])


def _render_type(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Migrations spell columns in SQLAlchemy's own types: a model's ``TypeDecorator`` may
    change or move, a revision must not."""
    if type_ == "type" and isinstance(obj, TypeDecorator):
        autogen_context.imports.add("import sqlalchemy as sa")
        return f"sa.{obj.impl_instance!r}"
    return False


def _only(metadatas: Sequence[MetaData]) -> Any:
    names = {name for metadata in metadatas for name in metadata.tables}

    def include_name(name: str | None, type_: str, _parents: Any) -> bool:
        return type_ != "table" or name in names

    return include_name


def migrate(engine: Engine, service_versions: Path, destination: str, *, stamp: bool) -> None:
    """Run (or with ``stamp``, only record) the revisions up to ``destination``."""
    config = Config()
    script = _script(service_versions)

    def steps(revision: Any, _context: Any) -> Any:
        if stamp:
            return script._stamp_revs(destination, revision)
        return script._upgrade_revs(destination, revision)

    with (
        engine.begin() as connection,
        EnvironmentContext(config, script, fn=steps, destination_rev=destination) as environment,
    ):
        environment.configure(connection=connection, version_table=_VERSION_TABLE)
        with environment.begin_transaction():
            environment.run_migrations()


@contextmanager
def _one_migrator_at_a_time(engine: Engine) -> Iterator[None]:
    """Replicas starting together on one PostgreSQL database migrate one after the other (a
    session advisory lock); the later ones find nothing left to do."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
            connection.commit()


def upgrade_schema(engine: Engine, service: str, metadatas: Sequence[MetaData]) -> None:
    """Bring the plumbing and ``service``'s tables to their newest revisions."""
    versions = service_migrations(service)
    with _one_migrator_at_a_time(engine):
        present = set(inspect(engine).get_table_names())
        known = set(PlumbingBase.metadata.tables) | {t for m in metadatas for t in m.tables}
        if _VERSION_TABLE not in present and present & known:
            # made by create_all before migrations: to the baseline the old way, then stamped
            create_schema(engine, metadatas)
            migrate(engine, versions, "heads", stamp=True)
        migrate(engine, versions, "heads", stamp=False)


def schema_differences(connection: Connection, metadatas: Sequence[MetaData]) -> list[Any]:
    """How the database differs from ``metadatas`` (empty: it matches); other tables are
    ignored."""
    differences: list[Any] = []
    for metadata in metadatas:
        context = MigrationContext.configure(
            connection, opts={"include_name": _only([metadata]), "compare_type": True}
        )
        differences.extend(compare_metadata(context, metadata))
    return differences


_TEMPLATE = '''"""{message}

Revision ID: {revision}
Revises: {down_revision}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = {down_repr}
branch_labels = {branch_repr}
depends_on = None


def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''


def write_revision(
    engine: Engine, branch: str, versions: Path, metadatas: Sequence[MetaData], message: str
) -> Path | None:
    """Draft the revision that takes ``engine``'s database (at head) to ``metadatas``, in
    ``versions``; ``None`` if nothing differs."""
    script = ScriptDirectory(PLUMBING, version_locations=[versions])
    heads = script.get_heads()
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_name": _only(metadatas),
                "compare_type": True,
                "render_item": _render_type,
            },
        )
        [metadata] = metadatas  # one declarative base per service
        migrations = produce_migrations(context, metadata)
        if migrations.upgrade_ops is None or migrations.upgrade_ops.is_empty():
            return None
        options = {"render_item": _render_type, "alembic_module_prefix": "op."}
        upgrade = render_python_code(migrations.upgrade_ops, **options)  # type: ignore[arg-type]
        downgrade = render_python_code(migrations.downgrade_ops, **options)  # type: ignore[arg-type]
    revision = uuid.uuid4().hex[:12]
    down = heads[0] if heads else None
    text = _TEMPLATE.format(
        message=message,
        revision=revision,
        down_revision=down or "(none: the first revision)",
        down_repr=repr(down),
        branch_repr=repr(None if down else (branch,)),
        upgrade=_body(upgrade),
        downgrade=_body(downgrade),
    )
    versions.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40]
    path = versions / f"{revision}_{slug}.py"
    path.write_text(text, encoding="utf-8")
    return path


def _body(code: str) -> str:
    lines = [line for line in code.splitlines() if not line.strip().startswith("# ###")]
    return textwrap.indent("\n".join(line.strip() and line[4:] for line in lines) or "pass", "    ")
