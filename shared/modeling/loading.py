"""Loading tokenizers, base models for a task, and PEFT adapters (imports torch).

Every load goes through the safety rules of :mod:`shared.modeling.models`: the folder was
checked when it was resolved, weights are read with ``use_safetensors=True``, remote code is
never trusted (``trust_remote_code=False``) and nothing is fetched from a hub
(``local_files_only=True``).

The evaluator's usual entry points:

* :func:`load_checkpoint` — a checkpoint folder (an artifact of ``CheckpointReady``) → the base
  model with the adapter on it, its tokenizer and its :class:`AdapterMetadata`;
* :func:`load_base_model` — the bare base model for the same task (the baseline when nothing is
  in production);

then :func:`shared.modeling.encoding.encode_rows` and :func:`shared.modeling.batching.pad_batch`
to score rows exactly as they were trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from shared.modeling.adapters import AdapterMetadata, check_adapter_folder, read_adapter_metadata
from shared.modeling.errors import ModelLoadFailed
from shared.modeling.models import FolderHashCache, ResolvedModel, resolve_base_model
from shared.task_types import TaskType

#: Keyword arguments of every ``from_pretrained`` call: local safetensors, never remote code.
SAFE_LOAD_KWARGS: dict[str, Any] = {
    "trust_remote_code": False,
    "local_files_only": True,
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` picks ``cuda`` when present, else ``cpu``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    """The weights' dtype for ``device``: bf16 on CUDA (where supported), fp32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder, with a pad token guaranteed.

    Tokenizers without one (Llama-style) get their EOS token as pad token; padding is always
    masked by attention mask, never by token id, so this is safe.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, **SAFE_LOAD_KWARGS)
    except (OSError, ValueError, KeyError) as error:
        # the model by its folder's name, not its path: messages reach API clients
        raise ModelLoadFailed(
            f"cannot load the tokenizer of model {model_dir.name!r}: {error}"
        ) from error
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelLoadFailed(
                f"the tokenizer of model {model_dir.name!r} has neither pad nor EOS token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    model: ResolvedModel,
    task: TaskType | str,
    *,
    labels: Sequence[str] = (),
    pad_token_id: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    head_seed: int = 0,
) -> PreTrainedModel:
    """The base model with the head ``task`` needs, on ``device`` in ``dtype``.

    classification: ``AutoModelForSequenceClassification`` with ``len(labels)`` outputs
    (``id2label`` from ``labels``); its head is new, initialised from ``head_seed`` so that a
    bare baseline scores the same every time. causal_lm: ``AutoModelForCausalLM``.
    ``pad_token_id`` (the tokenizer's) is written into the config: sequence classifiers of
    decoder models find the last real token with it.
    """
    kind = TaskType(task)
    target = resolve_device(device)
    kwargs: dict[str, Any] = {
        **SAFE_LOAD_KWARGS,
        "use_safetensors": True,
        "dtype": dtype or default_dtype(target),
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if pad_token_id is not None:
        kwargs["pad_token_id"] = pad_token_id
    try:
        if kind is TaskType.CLASSIFICATION:
            if len(labels) < 2:
                raise ModelLoadFailed("classification needs at least two labels")
            kwargs["num_labels"] = len(labels)
            kwargs["id2label"] = dict(enumerate(labels))
            kwargs["label2id"] = {label: index for index, label in enumerate(labels)}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(head_seed)
                loaded = AutoModelForSequenceClassification.from_pretrained(model.path, **kwargs)
        else:
            loaded = AutoModelForCausalLM.from_pretrained(model.path, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        shown = model.model_name or model.model_path or model.path.name
        raise ModelLoadFailed(f"cannot load model {shown!r} for {kind.value}: {error}") from error
    return loaded.to(target)


def load_adapter(base: PreTrainedModel, adapter_dir: Path, *, trainable: bool = False) -> PeftModel:
    """Put the PEFT adapter in ``adapter_dir`` on ``base`` (``PeftModel.from_pretrained``).

    The folder must hold ``adapter_config.json`` and ``adapter_model.safetensors`` and no
    pickle file. The model is in eval mode unless ``trainable``.
    """
    check_adapter_folder(adapter_dir)
    try:
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadFailed(f"cannot load the adapter: {error}") from error
    if not trainable:
        model.eval()
    return model


@dataclass
class LoadedModel:
    """A model ready to score rows: the module, its tokenizer, the base model it stands on,
    and (for a checkpoint) the adapter's metadata."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    base: ResolvedModel
    metadata: AdapterMetadata | None
    device: torch.device


def load_checkpoint(
    adapter_dir: Path,
    *,
    models_root: Path,
    allowed_roots: Sequence[Path] = (),
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    hashes: FolderHashCache | None = None,
) -> LoadedModel:
    """Load a checkpoint folder for evaluation: its base model (resolved from the folder's
    metadata, files digest verified), the task head, the adapter on top, in eval mode.

    Raises :class:`ModelLoadFailed` when the base model's files no longer match the digest the
    adapter was trained on, and the errors of :func:`resolve_base_model`.
    """
    metadata = read_adapter_metadata(adapter_dir)
    base = resolve_base_model(
        model_name=metadata.base_model_name,
        model_path=metadata.base_model_path,
        models_root=models_root,
        allowed_roots=allowed_roots,
        hashes=hashes,
    )
    if base.files_sha256 != metadata.base_model_files_sha256:
        raise ModelLoadFailed(
            f"base model {base.model_name or base.model_path!r} has files_sha256 "
            f"{base.files_sha256}, but the adapter was "
            f"trained on {metadata.base_model_files_sha256}"
        )
    tokenizer = load_tokenizer(base.path)
    target = resolve_device(device)
    model = load_base_model(
        base,
        metadata.task,
        labels=metadata.labels,
        pad_token_id=tokenizer.pad_token_id,
        device=target,
        dtype=dtype,
    )
    return LoadedModel(load_adapter(model, adapter_dir), tokenizer, base, metadata, target)
