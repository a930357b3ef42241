"""The one-way flow of every service, enforced (DESIGN.md section 6).

entrypoints → handlers → domain; adapters implement what handlers need. So:

- ``domain`` imports no SQL, gRPC, Kafka or ML framework, and no generated ``_pb2`` module;
- ``adapters`` never import ``handlers`` or ``entrypoints``;
- ``handlers`` never import ``entrypoints``;
- ``shared/`` never imports ``services/``, and no service imports another service.

The imports are read from the source (``ast``), top-level and function-local alike, so a lazy
import inside a function is held to the same rules.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists())
#: Third-party roots the domain must not depend on.
FRAMEWORKS = {"sqlalchemy", "grpc", "kafka", "torch", "transformers", "peft", "google"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module (or module.name), dotted
    line: int

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[Import]:
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.append(Import(module, target, node.lineno))
            found += [Import(module, f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _layer(module: str) -> str | None:
    """``domain``/``handlers``/``adapters``/``entrypoints`` for a module of a service."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[0] == "services":
        return parts[2]
    return None


def _all_imports(folder: str) -> list[Import]:
    return [found for path in sorted((ROOT / folder).rglob("*.py")) for found in _imports(path)]


def _service_of(target: str) -> str | None:
    parts = target.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "services" else None


def test_the_contracts_see_every_service() -> None:
    assert {"dataset", "splitter", "trainer", "evaluator", "registry", "serving"} <= set(SERVICES)
    # the reader below understands relative imports the way Python does
    assert _imports(ROOT / "services" / "trainer" / "__init__.py") is not None


@pytest.mark.parametrize("service", SERVICES)
def test_the_domain_imports_no_framework_and_no_generated_code(service: str) -> None:
    wrong = [
        str(found)
        for found in _all_imports(f"services/{service}")
        if _layer(found.module) == "domain"
        and (
            found.target.split(".")[0] in FRAMEWORKS
            or found.target.split(".")[0] == "tuneline"
            or found.target.endswith("_pb2")
            or "_pb2." in found.target
        )
    ]
    assert wrong == []


@pytest.mark.parametrize("service", SERVICES)
def test_the_layers_only_point_inwards(service: str) -> None:
    forbidden = {
        "adapters": {"handlers", "entrypoints"},
        "handlers": {"entrypoints"},
        "domain": {"handlers", "entrypoints", "adapters"},
    }
    wrong = [
        str(found)
        for found in _all_imports(f"services/{service}")
        if (layer := _layer(found.module)) in forbidden
        and _service_of(found.target) == service
        and _layer(found.target) in forbidden[layer]
    ]
    assert wrong == []


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_never_imports_another_service(service: str) -> None:
    wrong = [
        str(found)
        for found in _all_imports(f"services/{service}")
        if _service_of(found.target) not in (None, service)
    ]
    assert wrong == []


def test_shared_never_imports_a_service() -> None:
    wrong = [str(found) for found in _all_imports("shared") if found.target.startswith("services")]
    assert wrong == []


#: Benchmarks that still borrow from the test tree (data loaders, PEFT adapters, the PKI, event
#: builders, fault drills). A benchmark is a script of its own; what it shares with the tests
#: belongs outside ``tests/`` (as the waiting helper, ``tuneline.devtools.waiting``, does). The
#: set only shrinks: a new benchmark, or one taken off it, must not import ``tests``.
BENCHES_STILL_IMPORTING_TESTS = {
    "bench.authz_overhead",
    "bench.eval_throughput",
    "bench.faults",
    "bench.ingest",
    "bench.label_audit",
    "bench.parity",
    "bench.rollback_latency",
    "bench.serving_throughput",
}


def test_no_other_benchmark_imports_the_tests() -> None:
    wrong = [
        str(found)
        for found in _all_imports("bench")
        if found.target.split(".")[0] == "tests"
        and found.module not in BENCHES_STILL_IMPORTING_TESTS
    ]
    assert wrong == []


#: What a service's folder holds besides its four layers (each a module or a package).
SERVICE_ROOT_MODULES = {"__init__.py", "bootstrap.py", "settings.py"}
LAYERS = {"domain", "handlers", "adapters", "entrypoints"}


@pytest.mark.parametrize("service", SERVICES)
def test_every_module_of_a_service_lives_in_a_layer(service: str) -> None:
    folder = ROOT / "services" / service
    wrong = [
        f"services/{service}/{entry.name}"
        for entry in sorted(folder.iterdir())
        if entry.name not in SERVICE_ROOT_MODULES
        and entry.name != "__pycache__"
        and entry.name.removesuffix(".py") not in LAYERS
    ]
    assert wrong == []


#: Services whose handlers are a package (the splitter's few fit one module).
HANDLER_PACKAGES = [s for s in SERVICES if (ROOT / "services" / s / "handlers").is_dir()]


@pytest.mark.parametrize("service", HANDLER_PACKAGES)
def test_a_handlers_package_re_exports_nothing(service: str) -> None:
    """Entrypoints, bootstrap and tests import each handler from the module that defines it,
    so one name has one import path."""
    init = ROOT / "services" / service / "handlers" / "__init__.py"
    wrong = [str(found) for found in _imports(init)]
    assert wrong == []


def _generated(target: str) -> bool:
    return target.endswith(("_pb2", "_pb2_grpc")) or "_pb2." in target or "_pb2_grpc." in target


@pytest.mark.parametrize("service", SERVICES)
def test_handlers_import_no_generated_code(service: str) -> None:
    """Handlers work on domain values; the entrypoints and ``adapters/protos.py`` convert."""
    wrong = [
        str(found)
        for found in _all_imports(f"services/{service}")
        if _layer(found.module) == "handlers" and _generated(found.target)
    ]
    assert wrong == []


def test_the_registry_handlers_take_commands_not_requests() -> None:
    """The registry's servicer turns each request into a domain command and wraps the result in
    the response, so no handler sees the RPC layer's messages (``service_pb2``)."""
    wrong = [
        str(found)
        for found in _all_imports("services/registry")
        if _layer(found.module) == "handlers" and "service_pb2" in found.target
    ]
    assert wrong == []
