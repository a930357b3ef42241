"""The README's configuration table and the code read the same variables.

Every environment variable a settings class reads (``CommonSettings`` and each service's
``settings.py``) has a row, and every variable in the table is read: by a settings class, by
the command line (``TUNELINE_<SERVICE>_TARGET``), or by name somewhere in the code
(``TUNELINE_HOME``, the local broker's variables, the test fixtures'). ``TUNELINE_<SERVICE>_…``
rows stand for all five services. Variables are spelled out in full, so this test (and a
reader searching for one) finds them.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from shared.settings import CommonSettings, ServiceSettings
from tuneline.cli.endpoints import target

REPO = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent.name for p in (REPO / "services").glob("*/settings.py"))
#: Where variables are read by name (``os.environ``, typer's ``envvar=``, constants).
SOURCES = ("shared", "services", "tuneline", "tests/fixtures", "tests/conftest.py")
_VARIABLE = re.compile(r"^TUNELINE_[A-Z][A-Z0-9_]*[A-Z0-9]$")


def _table_first_cells() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "the README has a configuration table"
    return [row.split("|")[1] for row in rows]


def _documented() -> set[str]:
    variables = set()
    for cell in _table_first_cells():
        for name in re.findall(r"`([^`]+)`", cell):
            assert name.startswith("TUNELINE_"), f"spell {name!r} out in full: {cell}"
            expanded = (
                [name.replace("<SERVICE>", s.upper()) for s in SERVICES]
                if "<SERVICE>" in name
                else [name]
            )
            variables.update(expanded)
    return variables


def _env_names(settings: type[BaseSettings]) -> set[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = set()
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        names.add((alias or f"{prefix}{field_name}").upper())
    return names


def _settings_variables() -> set[str]:
    variables = _env_names(CommonSettings)
    for service in SERVICES:
        module = importlib.import_module(f"services.{service}.settings")
        classes = [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, ServiceSettings)
            and value is not ServiceSettings
        ]
        assert classes, f"services/{service}/settings.py has a ServiceSettings class"
        for settings in classes:
            variables |= _env_names(settings)
    return variables


def _variables_read_by_name() -> set[str]:
    found = set()
    for source in SOURCES:
        path = REPO / source
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            if file.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
                is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
                if is_text and _VARIABLE.match(node.value):
                    found.add(node.value)
    return found


def _cli_targets() -> set[str]:
    """The ``TUNELINE_<SERVICE>_TARGET`` variables, as the command line really reads them."""
    read = set()
    for service in SERVICES:
        variable = f"TUNELINE_{service.upper()}_TARGET"
        if target(service, {variable: "probe.invalid:1"}) == "probe.invalid:1":
            read.add(variable)
    assert len(read) == len(SERVICES)
    return read


def test_every_setting_has_a_row() -> None:
    missing = _settings_variables() - _documented()
    assert not missing, f"settings missing from the README's configuration table: {missing}"


def test_every_row_names_a_variable_that_is_read() -> None:
    read = _settings_variables() | _variables_read_by_name() | _cli_targets()
    unread = _documented() - read
    assert not unread, f"the README documents variables nothing reads: {unread}"


def test_every_variable_read_by_name_has_a_row() -> None:
    missing = _variables_read_by_name() - _documented()
    assert not missing, f"variables read by name but not documented: {missing}"


@pytest.mark.parametrize("service", SERVICES)
def test_services_are_found_and_expanded(service: str) -> None:
    assert f"TUNELINE_{service.upper()}_GRPC_PORT" in _documented()
