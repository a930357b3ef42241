"""Draft a schema migration from the models: ``python -m tuneline.devtools.migrations
<plumbing|service> "what changed"``.

Migrates an empty in-memory SQLite database to the branch's head, compares it with the models
and writes the difference as a new revision in the branch's folder (see
:mod:`shared.migrations`). Read the draft before committing it: renames come out as a drop and
an add, and data moves are never guessed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import import_module

from sqlalchemy import create_engine

from shared.events.tables import PlumbingBase
from shared.migrations import PLUMBING, migrate, service_migrations, write_revision


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    branch, message = argv
    engine = create_engine("sqlite://")
    if branch == "plumbing":
        versions, metadatas = PLUMBING, [PlumbingBase.metadata]
        migrate(engine, service_migrations("dataset"), "plumbing@head", stamp=False)
    else:
        spec = import_module(f"services.{branch}.bootstrap").SPEC
        versions, metadatas = service_migrations(branch), list(spec.tables)
        migrate(engine, versions, "heads", stamp=False)
    path = write_revision(engine, branch, versions, metadatas, message)
    print(path or "the models match the migrations: nothing to write")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
