"""What an adapter folder says about itself, beyond what PEFT writes.

A checkpoint folder holds PEFT's ``adapter_config.json`` + ``adapter_model.safetensors`` and a
small ``tuneline_adapter.json`` (:class:`AdapterMetadata`): the task, the class labels in index
order (a classification head's outputs mean nothing without them), the maximum sequence length
it was trained with, and the base model it belongs to (name or path, files digest). With it a
checkpoint is self-describing: :func:`shared.modeling.loading.load_checkpoint` needs nothing
else. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared.modeling.errors import ModelLoadFailed, ModelRefused
from shared.modeling.models import PICKLE_SUFFIXES
from shared.task_types import TaskType

METADATA_FILE = "tuneline_adapter.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class AdapterMetadata:
    """The Tuneline-specific facts of an adapter folder.

    ``labels`` is the class order of a classification head (index i ↔ ``labels[i]``), empty
    for causal LM. ``base_model_name``/``base_model_path`` say how the base model was named
    (one is set); ``base_model_files_sha256`` pins its exact files.
    """

    task_type: str
    labels: list[str]
    max_seq_length: int
    base_model_files_sha256: str
    base_model_name: str = ""
    base_model_path: str = ""
    base_model_type: str = ""
    training_job: str = ""
    step: int = 0
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> TaskType:
        return TaskType(self.task_type)


def write_adapter_metadata(folder: Path, metadata: AdapterMetadata) -> None:
    """Write ``tuneline_adapter.json`` into an adapter folder (sorted keys: stable bytes)."""
    text = json.dumps(asdict(metadata), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    (folder / METADATA_FILE).write_text(text, encoding="utf-8")


def read_adapter_metadata(folder: Path) -> AdapterMetadata:
    """Read ``tuneline_adapter.json``; :class:`ModelLoadFailed` when missing or malformed."""
    path = folder / METADATA_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        metadata = AdapterMetadata(**doc)
        TaskType(metadata.task_type)
    except OSError as error:
        # no folder in messages: they reach API clients (a failed job or evaluation)
        raise ModelLoadFailed(f"the adapter's {METADATA_FILE}: {error.strerror}") from error
    except (ValueError, TypeError) as error:
        raise ModelLoadFailed(f"the adapter has no valid {METADATA_FILE}: {error}") from error
    if metadata.format_version > FORMAT_VERSION:
        raise ModelLoadFailed(
            f"the adapter's {METADATA_FILE} has format {metadata.format_version}; this code "
            f"reads up to {FORMAT_VERSION}"
        )
    return metadata


def check_adapter_folder(folder: Path) -> None:
    """Refuse an adapter folder that is incomplete or holds pickle files."""
    if not folder.is_dir():
        raise ModelLoadFailed(f"no adapter folder {folder.name!r}")
    pickles = tuple(
        p.name for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES
    )
    if pickles:
        raise ModelRefused(f"the adapter holds pickle files {pickles}", pickles)
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ModelLoadFailed(f"the adapter lacks {name}")
