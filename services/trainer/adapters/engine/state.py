"""Resumable training state: saved beside each checkpoint, restored on resume (imports torch).

A state folder holds

* ``trainable.safetensors`` — every trainable parameter (LoRA matrices, DoRA magnitudes, the
  classification head copies) by name;
* ``optimizer.safetensors`` — AdamW's per-parameter tensors (``state.<index>.<name>``);
* ``rng.safetensors`` — the torch CPU and CUDA generator states and numpy's key array;
* ``state.json`` — everything else: the optimizer's param groups, the data position
  (epoch, step within it), tokens seen, early-stopping memory, loss accumulators, elapsed time,
  the fp16 gradient scaler's state (its loss scale and growth tracker), Python's and the rest of
  numpy's generator state.

Tensors are safetensors and the rest JSON: nothing in a state folder is unpickled.

Random generators are restored in one defined order: Python's ``random``, numpy, torch's CPU
generator, then each CUDA device's, by device index (``cuda.10`` after ``cuda.9``).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"


@dataclass
class LoopPosition:
    """Where a run is: optimizer steps done, and the data position of the next step."""

    step: int = 0
    epoch_index: int = 0
    step_in_epoch: int = 0
    tokens_seen: int = 0
    best_validation_loss: float | None = None
    stale_validations: int = 0
    last_validation_loss: float | None = None
    #: Sum and count of training losses since the last checkpoint (its ``train_loss``).
    checkpoint_loss_sum: float = 0.0
    checkpoint_loss_steps: int = 0
    last_train_loss: float = 0.0
    elapsed_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


_CUDA_PREFIX = "cuda."
_NUMPY_KEYS = "numpy.keys"


def _rng_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every generator's state: tensors (for safetensors) and plain values (for JSON)."""
    version, python_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    tensors = {
        "cpu": torch.get_rng_state(),
        _NUMPY_KEYS: torch.from_numpy(np.asarray(keys, dtype=np.int64)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{_CUDA_PREFIX}{index}"] = cuda_state
    plain = {
        "python": [version, list(python_state), gauss],
        "numpy": [name, int(position), int(has_gauss), float(cached)],
    }
    return tensors, plain


def _restore_rng(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    """Python, numpy, torch CPU, then CUDA devices in index order (states of older folders
    lack the first two: those generators are left alone)."""
    if "python" in plain:
        version, python_state, gauss = plain["python"]
        random.setstate((version, tuple(python_state), gauss))
    if "numpy" in plain and _NUMPY_KEYS in tensors:
        name, position, has_gauss, cached = plain["numpy"]
        keys = tensors[_NUMPY_KEYS].numpy().astype(np.uint32)
        np.random.set_state((name, keys, position, has_gauss, cached))
    torch.set_rng_state(tensors["cpu"])
    cuda = sorted(
        (int(key.removeprefix(_CUDA_PREFIX)), state)
        for key, state in tensors.items()
        if key.startswith(_CUDA_PREFIX)
    )
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state for _, state in cuda][: torch.cuda.device_count()])


def save_training_state(
    folder: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    position: LoopPosition,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write the state folder (see module docstring) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: p.detach().to("cpu").contiguous() for name, p in _trainable(model).items()},
        str(folder / TRAINABLE_FILE),
    )
    optimizer_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in optimizer_state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    save_file(tensors, str(folder / OPTIMIZER_FILE))
    rng_tensors, rng_plain = _rng_states()
    save_file(rng_tensors, str(folder / RNG_FILE))
    document = {
        "position": asdict(position),
        "param_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
        "rng": rng_plain,
        # fp16: without its loss scale a resume starts again from 2**16 and skips steps
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
    }
    (folder / STATE_FILE).write_text(json.dumps(document, sort_keys=True), encoding="utf-8")


def load_training_state(
    folder: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> LoopPosition:
    """Restore parameters, optimizer, gradient scaler and RNG from ``folder``; returns the loop
    position."""
    document = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    trainable = _trainable(model)
    saved = load_file(str(folder / TRAINABLE_FILE))
    if set(saved) != set(trainable):
        missing = sorted(set(trainable) - set(saved))[:3]
        unexpected = sorted(set(saved) - set(trainable))[:3]
        raise ValueError(
            f"training state does not match the model (missing {missing}, unexpected {unexpected})"
        )
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(saved[name].to(parameter.device, parameter.dtype))
    tensors = load_file(str(folder / OPTIMIZER_FILE))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in document.get("optimizer_scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": document["param_groups"]})
    if scaler is not None and document.get("grad_scaler"):
        scaler.load_state_dict(document["grad_scaler"])
    _restore_rng(load_file(str(folder / RNG_FILE)), document.get("rng", {}))
    return LoopPosition(**document["position"])
