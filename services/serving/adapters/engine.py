"""The torch engine: a checkpoint loaded with :mod:`shared.modeling` (the only torch importer
of the service), answering one request at a time on the model it was loaded as.

Encoding is the training encoding: classification texts are tokenised as
:func:`shared.modeling.encoding.encode_classification` does (truncated at the checkpoint's max
length, input ids and attention mask only); prompts as the evaluator's exact-match scoring does
(:func:`shared.modeling.encoding.generation_prompt`), so what serves is what was evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from services.serving.domain import Release, ReleaseRefused
from services.serving.domain.releases import Generation, RefusalReason
from shared.modeling import FolderHashCache, ModelingError, generation_prompt
from shared.modeling.loading import LoadedModel, load_checkpoint, resolve_device
from shared.modeling.tokenizer_fingerprint import (
    TokenizerFingerprintRecord,
    end_of_turn_token_ids,
    fingerprint_tokenizer,
)
from shared.task_types import TaskType


class TorchModel:
    """A loaded checkpoint (base model + PEFT adapter, eval mode) on one device."""

    def __init__(self, loaded: LoadedModel) -> None:
        if loaded.metadata is None:
            raise ReleaseRefused(RefusalReason.LOAD_FAILED, "the artifact is not a checkpoint")
        self._loaded = loaded
        self._metadata = loaded.metadata
        self._tokenizer = loaded.tokenizer
        self._model = loaded.model
        self._device = loaded.device
        self._end_of_turn = end_of_turn_token_ids(self._tokenizer, loaded.base.path)
        self._pad_id = int(self._tokenizer.pad_token_id)

    @property
    def task(self) -> TaskType:
        return self._metadata.task

    @property
    def labels(self) -> Sequence[str]:
        return self._metadata.labels

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def max_length(self) -> int:
        return self._metadata.max_seq_length

    def classify(self, text: str) -> list[float]:
        ids = self._tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        input_ids = torch.tensor([ids], dtype=torch.long, device=self._device)
        with torch.inference_mode():
            logits = self._model(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids)
            ).logits
            return torch.softmax(logits[0].float(), dim=-1).tolist()

    def generate(self, prompt: str, max_new_tokens: int) -> Generation:
        budget = max(2, self.max_length - max_new_tokens)
        ids = generation_prompt(
            self._tokenizer, {"id": "", "prompt": prompt, "completion": ""}, max_length=budget
        ).prompt_ids
        input_ids = torch.tensor([ids], dtype=torch.long, device=self._device)
        with torch.inference_mode():
            output = self._model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=self._pad_id,
                eos_token_id=list(self._end_of_turn) or None,
            )
        new = [int(t) for t in output[0, len(ids) :]]
        ended = bool(new) and new[-1] in self._end_of_turn
        text = self._tokenizer.decode(new[:-1] if ended else new, skip_special_tokens=True)
        return Generation(text=str(text), token_count=len(new), ended_turn=ended)

    def fingerprint(self) -> TokenizerFingerprintRecord:
        base = self._loaded.base
        return fingerprint_tokenizer(
            self._tokenizer,
            name=base.model_name or base.path.name,
            max_sequence_length=self.max_length,
            model_dir=base.path,
        )


class TorchModelLoader:
    """Loads checkpoint folders: base model resolved under the models root (digest checked
    against the adapter's metadata), task head, adapter; CPU by default, CUDA when present."""

    def __init__(
        self,
        *,
        models_root: Path,
        allowed_roots: Sequence[Path] = (),
        device: str | None = None,
    ) -> None:
        self._models_root = models_root
        self._allowed_roots = list(allowed_roots)
        self._device = resolve_device(device)
        self._hashes = FolderHashCache()

    def load(self, folder: Path, release: Release) -> TorchModel:
        try:
            loaded = load_checkpoint(
                folder,
                models_root=self._models_root,
                allowed_roots=self._allowed_roots,
                device=self._device,
                hashes=self._hashes,
            )
        except ModelingError as error:
            raise ReleaseRefused(
                RefusalReason.LOAD_FAILED, f"cannot load {release.checkpoint}: {error}"
            ) from error
        return TorchModel(loaded)
