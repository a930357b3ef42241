"""Python code generation for the protobuf contracts under ``proto/``.

The stubs are generated in-process by ``grpc_tools.protoc`` so that the protoc version (and with
it the protobuf runtime version that ``*_pb2.py`` files check at import) is pinned by the
``grpcio-tools`` distribution rather than by whatever ``protoc`` happens to be on ``PATH``.

For a proto file ``proto/tuneline/<service>/v1/<name>.proto`` the generator writes, below an
output root:

- ``tuneline/<service>/v1/<name>_pb2.py`` and ``<name>_pb2.pyi`` (messages, typed by mypy-protobuf);
- ``tuneline/<service>/v1/<name>_pb2_grpc.py`` and ``<name>_pb2_grpc.pyi``, only for files that
  declare a service (grpc_tools would otherwise emit an import-only ``_pb2_grpc.py`` per file);
- empty ``__init__.py`` files in ``tuneline/<service>/`` and ``tuneline/<service>/v1/``, so the
  stubs import as ``tuneline.<service>.v1.service_pb2`` with no path patching. The top-level
  ``tuneline/__init__.py`` is hand-written and never touched.

The output depends only on the proto sources and the installed generator versions, so the drift
check (``tuneline dev protos check`` and ``tests/unit/test_contracts.py``) can compare bytes.
"""

from __future__ import annotations

import importlib.resources
import re
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

#: The top-level Python package (and proto package prefix) the stubs belong to.
ROOT_PACKAGE = "tuneline"

#: Suffixes of the files protoc and its plugins write for one proto file.
MESSAGE_SUFFIXES = ("_pb2.py", "_pb2.pyi")
SERVICE_SUFFIXES = ("_pb2_grpc.py", "_pb2_grpc.pyi")

# A version directory in the AIP sense: v1, v2, v1beta1, v2alpha. Only such directories (and
# their parents below ``tuneline/``) hold generated code, which is what keeps the stale-file scan
# away from hand-written packages such as ``tuneline/cli``.
_VERSION_DIR = re.compile(r"v\d+(?:(?:alpha|beta)\d*)?")
# A top-level ``service Name {`` declaration. Comments never start a line with ``service``.
_SERVICE_DECLARATION = re.compile(r"^\s*service\s+\w+\s*\{", re.MULTILINE)


class GenerationError(RuntimeError):
    """protoc failed, a plugin is missing, or an expected output was not written."""


def proto_sources(proto_root: Path) -> list[Path]:
    """Return every ``.proto`` file of the ``tuneline`` packages below ``proto_root``, sorted."""
    return sorted((proto_root / ROOT_PACKAGE).rglob("*.proto"))


def well_known_types_include() -> Path:
    """Return grpc_tools' copy of the well-known types (``google/protobuf/*.proto``)."""
    return Path(str(importlib.resources.files("grpc_tools") / "_proto"))


def generate(proto_root: Path, out_root: Path) -> list[Path]:
    """Generate the Python stubs of every proto file below ``proto_root`` into ``out_root``.

    ``proto_root`` is the buf module root (the directory holding ``buf.yaml``); imports are
    resolved relative to it, exactly as buf resolves them. Returns the paths written (stubs and
    ``__init__.py`` files), sorted. Files that a previous generation wrote but this one did not
    are left alone; see :func:`stale_files`.
    """
    proto_root = proto_root.resolve()
    out_root = out_root.resolve()
    sources = proto_sources(proto_root)
    if not sources:
        raise GenerationError(f"no .proto files below {proto_root / ROOT_PACKAGE}")
    with_services = [path for path in sources if declares_service(path)]

    out_root.mkdir(parents=True, exist_ok=True)
    includes = [f"--proto_path={proto_root}", f"--proto_path={well_known_types_include()}"]
    _protoc(
        [
            *includes,
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--python_out={out_root}",
            f"--mypy_out={out_root}",
            "--mypy_opt=quiet",  # otherwise it prints a line per file on stderr
            *map(str, sources),
        ]
    )
    if with_services:
        _protoc(
            [
                *includes,
                f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
                f"--grpc_python_out={out_root}",
                f"--mypy_grpc_out={out_root}",
                "--mypy_grpc_opt=quiet",
                *map(str, with_services),
            ]
        )

    written = expected_outputs(proto_root, out_root)
    for init in (path for path in written if path.name == "__init__.py"):
        init.write_bytes(b"")
    missing = [path for path in written if not path.is_file()]
    if missing:
        raise GenerationError(f"protoc did not write: {', '.join(map(str, missing))}")
    return written


def expected_outputs(proto_root: Path, out_root: Path) -> list[Path]:
    """Return the files :func:`generate` writes for the sources below ``proto_root``, sorted."""
    outputs: set[Path] = set()
    for source in proto_sources(proto_root):
        relative = source.relative_to(proto_root).with_suffix("")
        stem = out_root / relative
        suffixes = MESSAGE_SUFFIXES + (SERVICE_SUFFIXES if declares_service(source) else ())
        outputs.update(stem.parent / f"{stem.name}{suffix}" for suffix in suffixes)
        # Every package directory below ``tuneline/`` needs an ``__init__.py``; ``tuneline``
        # itself is hand-written, hence ``parents[1:]`` of ``tuneline/<service>/v1/<name>``.
        for package in relative.parents[:-2]:
            outputs.add(out_root / package / "__init__.py")
    return sorted(outputs)


def generated_files(out_root: Path) -> list[Path]:
    """Return the files below ``out_root`` that generation owns, whoever wrote them, sorted.

    These are the stubs and ``__init__.py`` files in every ``tuneline/<package>/<version>/``
    directory, plus ``tuneline/<package>/__init__.py`` of such packages.
    """
    found: set[Path] = set()
    package_root = out_root / ROOT_PACKAGE
    if not package_root.is_dir():
        return []
    for version_dir in sorted(package_root.glob("*/*/")):
        if not version_dir.is_dir() or not _VERSION_DIR.fullmatch(version_dir.name):
            continue
        for path in version_dir.iterdir():
            if path.is_file() and (path.name == "__init__.py" or _is_stub(path.name)):
                found.add(path)
        package_init = version_dir.parent / "__init__.py"
        if package_init.is_file():
            found.add(package_init)
    return sorted(found)


def stale_files(out_root: Path, written: list[Path]) -> list[Path]:
    """Return generated-looking files below ``out_root`` that ``written`` does not include."""
    keep = {path.resolve() for path in written}
    return [path for path in generated_files(out_root) if path.resolve() not in keep]


def compare_trees(fresh_root: Path, committed_root: Path) -> list[str]:
    """Compare freshly generated stubs with committed ones; return one line per difference.

    Each line is ``changed: <path>``, ``missing: <path>`` (generated but not committed) or
    ``stale: <path>`` (committed but no longer generated), with paths relative to the roots.
    An empty list means the committed stubs are current.
    """
    fresh = {path.relative_to(fresh_root) for path in generated_files(fresh_root)}
    committed = {path.relative_to(committed_root) for path in generated_files(committed_root)}
    differences = [f"missing: {path}" for path in sorted(fresh - committed)]
    differences += [
        f"changed: {path}"
        for path in sorted(fresh & committed)
        if (fresh_root / path).read_bytes() != (committed_root / path).read_bytes()
    ]
    differences += [f"stale: {path}" for path in sorted(committed - fresh)]
    return differences


def declares_service(proto_file: Path) -> bool:
    """Tell whether a proto file declares at least one service."""
    return _SERVICE_DECLARATION.search(proto_file.read_text(encoding="utf-8")) is not None


def _is_stub(name: str) -> bool:
    return name.endswith(MESSAGE_SUFFIXES + SERVICE_SUFFIXES)


def _plugin(name: str) -> Path:
    """Locate a protoc plugin script installed by a Python distribution (mypy-protobuf).

    The interpreter's own ``bin`` directory comes first: a test run as ``.venv/bin/python -m
    pytest`` need not have the virtual environment on ``PATH``.
    """
    beside_interpreter = Path(sys.executable).parent / name
    if beside_interpreter.is_file():
        return beside_interpreter
    on_path = shutil.which(name)
    if on_path is None:
        raise GenerationError(f"{name} not found; install mypy-protobuf in this environment")
    return Path(on_path)


def _protoc(arguments: list[str]) -> None:
    # ``main`` expects argv, program name first; it reports errors on stderr and returns non-zero.
    status = protoc.main(["grpc_tools.protoc", *arguments])
    if status != 0:
        raise GenerationError(f"protoc exited with status {status} (see the messages above)")
