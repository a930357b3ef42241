"""The tokenizer fingerprint a checkpoint is trained with (torch-free).

Serving a model with another tokenizer, chat template, end-of-turn token or max length than
training used changes its outputs without any error. The trainer records this fingerprint with
each checkpoint (in ``tuneline_adapter.json`` and on ``Checkpoint``/``CheckpointReady``); the
evaluator's parity check compares it with the serving profile, and a serving process can
compare it with the tokenizer it loaded.

``tokenizer_sha256`` hashes the tokenizer's *content*, not its files: the backend's JSON
(vocabulary, merges, normaliser, pre-tokeniser, added tokens) with sorted keys, minus the
run-time padding/truncation state, plus the special tokens that give ids a meaning. The same
tokenizer saved by two library versions (different file layouts) hashes the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Chat-template tokens that end a turn, in the families Tuneline's packaged models use and
#: the common others; one counts when the template writes it and the vocabulary has it.
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
)
#: Special tokens whose ids matter to the model (pad is masked by attention mask: not hashed).
_MEANINGFUL_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "cls_token")
_GENERATION_CONFIG_FILE = "generation_config.json"


@dataclass(frozen=True)
class TokenizerFingerprintRecord:
    """``tuneline.common.v1.TokenizerFingerprint`` as plain data (JSON-able)."""

    tokenizer_name: str
    tokenizer_sha256: str
    chat_template_sha256: str
    end_of_turn_token_ids: tuple[int, ...]
    max_sequence_length: int

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["end_of_turn_token_ids"] = list(self.end_of_turn_token_ids)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TokenizerFingerprintRecord:
        return cls(
            tokenizer_name=str(doc.get("tokenizer_name", "")),
            tokenizer_sha256=str(doc.get("tokenizer_sha256", "")),
            chat_template_sha256=str(doc.get("chat_template_sha256", "")),
            end_of_turn_token_ids=tuple(int(i) for i in doc.get("end_of_turn_token_ids", ())),
            max_sequence_length=int(doc.get("max_sequence_length", 0)),
        )


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_content_sha256(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's canonical content (see the module doc)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        content: Any = json.loads(backend.to_str())
        content.pop("truncation", None)
        content.pop("padding", None)
    else:  # a slow (pure Python) tokenizer: its vocabulary is its content
        content = sorted(tokenizer.get_vocab().items())
    special = {
        name: str(getattr(tokenizer, name, None) or "") for name in _MEANINGFUL_SPECIAL_TOKENS
    }
    canonical = json.dumps(
        {"content": content, "special_tokens": special},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return _sha256_text(canonical)


def chat_template_sha256(tokenizer: Any) -> str:
    """SHA-256 of the chat template text; empty when the tokenizer has none."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return ""
    if not isinstance(template, str):  # named templates: a dict of name -> text
        template = json.dumps(template, sort_keys=True, ensure_ascii=False)
    return _sha256_text(template)


def _generation_config_eos_ids(model_dir: Path | None) -> list[int]:
    if model_dir is None:
        return []
    try:
        doc = json.loads((model_dir / _GENERATION_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    eos = doc.get("eos_token_id") if isinstance(doc, dict) else None
    if isinstance(eos, int):
        return [eos]
    if isinstance(eos, list):
        return [i for i in eos if isinstance(i, int)]
    return []


def end_of_turn_token_ids(tokenizer: Any, model_dir: Path | None = None) -> tuple[int, ...]:
    """Every id that ends a turn: the tokenizer's eos, the generation config's eos ids and the
    chat template's end-of-turn tokens, sorted."""
    ids: set[int] = set()
    if isinstance(getattr(tokenizer, "eos_token_id", None), int):
        ids.add(tokenizer.eos_token_id)
    ids.update(_generation_config_eos_ids(model_dir))
    template = getattr(tokenizer, "chat_template", None)
    if template:
        text = template if isinstance(template, str) else json.dumps(template)
        vocabulary = tokenizer.get_vocab()
        ids.update(
            vocabulary[token]
            for token in END_OF_TURN_TOKENS
            if token in text and token in vocabulary
        )
    return tuple(sorted(ids))


def fingerprint_tokenizer(
    tokenizer: Any, *, name: str, max_sequence_length: int, model_dir: Path | None = None
) -> TokenizerFingerprintRecord:
    """The fingerprint of ``tokenizer`` (loaded from ``model_dir``) used at
    ``max_sequence_length`` tokens."""
    return TokenizerFingerprintRecord(
        tokenizer_name=name,
        tokenizer_sha256=tokenizer_content_sha256(tokenizer),
        chat_template_sha256=chat_template_sha256(tokenizer),
        end_of_turn_token_ids=end_of_turn_token_ids(tokenizer, model_dir),
        max_sequence_length=int(max_sequence_length),
    )


#: The key of the fingerprint in ``AdapterMetadata.extra`` (``tuneline_adapter.json``).
METADATA_KEY = "tokenizer_fingerprint"


def tokenizer_fingerprint_extra(record: TokenizerFingerprintRecord | None) -> dict[str, Any]:
    """The ``AdapterMetadata.extra`` entry that carries ``record`` (none without one)."""
    return {METADATA_KEY: record.to_json()} if record is not None else {}


def tokenizer_fingerprint_from_extra(extra: dict[str, Any]) -> TokenizerFingerprintRecord | None:
    """The fingerprint an adapter folder recorded; None for folders written before it."""
    doc = extra.get(METADATA_KEY)
    return TokenizerFingerprintRecord.from_json(doc) if isinstance(doc, dict) else None
