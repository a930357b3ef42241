"""Turning canonical rows into token ids and loss targets, the same way for training and
evaluation.

The trainer trains on what these functions produce and the evaluator must score on exactly the
same encoding, so both call them:

* **classification** — ``text`` → ``tokenizer(text, truncation=True, max_length=…)`` (special
  tokens included); ``label`` → its index in the label list the adapter was trained with
  (:attr:`AdapterMetadata.labels <shared.modeling.adapters.AdapterMetadata>`).
* **causal_lm, prompt/completion** (plain text, as TRL's prompt-completion format) — the
  prompt's tokens (with the tokenizer's special tokens, e.g. a BOS) followed by the
  completion's tokens and the EOS token; ``labels`` copy the ids with ``-100`` on every prompt
  token, so only completion tokens (and EOS) carry loss. Prompt and completion are tokenized
  separately, so the boundary is exact and generation from the prompt ids is comparable with
  the completion.
* **causal_lm, messages** — rendered with the tokenizer's chat template; every assistant turn
  (its content and end-of-turn marker, as the template writes them) carries loss, everything
  else is ``-100``.

Truncation to ``max_length`` keeps the beginning of a classification text; for causal-LM rows
it keeps the completion's beginning and as much of the prompt's *end* as fits (the prompt keeps
at least half the budget when it is that long). A causal-LM row left with no loss token is
dropped (see :func:`encode_rows`).

Labels follow the Hugging Face convention: ``labels[i]`` is the target at position ``i``;
losses compare ``logits[:, :-1]`` with ``labels[:, 1:]``. Torch-free: a tokenizer is any
object with the ``transformers`` tokenizer call interface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from shared.modeling.data import Row
from shared.modeling.errors import DataUnavailable

#: Label id of a token that carries no loss (PyTorch's ``CrossEntropyLoss`` ignore index).
IGNORE_INDEX = -100


class TaskKind(StrEnum):
    """The learning problem, as the canonical rows describe it."""

    CLASSIFICATION = "classification"
    CAUSAL_LM = "causal_lm"


class Tokenizer(Protocol):
    """The part of a ``transformers`` tokenizer encoding needs."""

    eos_token_id: int | None
    chat_template: Any

    def __call__(self, text: str, **kwargs: Any) -> Mapping[str, Any]: ...

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class EncodedExample:
    """One row, encoded.

    ``input_ids`` are the token ids. For causal LM, ``labels`` are aligned with them
    (``-100`` = no loss) and ``label`` is ``None``; for classification ``label`` is the class
    index and ``labels`` is ``None``. ``weight`` is the row's ``weight`` (default 1.0) and
    ``slice`` its ``slice`` (or first tag), for per-slice metrics.
    """

    row_id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...] | None = None
    label: int | None = None
    weight: float = 1.0
    slice: str = ""

    @property
    def length(self) -> int:
        """Tokens in the example (no padding)."""
        return len(self.input_ids)

    @property
    def loss_tokens(self) -> int:
        """Positions that carry loss after the shift: completion tokens for causal LM, one for
        classification."""
        if self.labels is None:
            return 1
        return sum(1 for t in self.labels[1:] if t != IGNORE_INDEX)


def _ids(tokenizer: Tokenizer, text: str, *, special: bool) -> list[int]:
    return [int(t) for t in tokenizer(text, add_special_tokens=special)["input_ids"]]


def _row_slice(row: Row) -> str:
    if isinstance(row.get("slice"), str):
        return str(row["slice"])
    tags = row.get("tags")
    if isinstance(tags, list) and tags and isinstance(tags[0], str):
        return tags[0]
    return ""


def _row_weight(row: Row) -> float:
    weight = row.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        raise DataUnavailable(f"row {row.get('id')!r} has an invalid weight {weight!r}")
    return float(weight)


def encode_classification(
    tokenizer: Tokenizer, row: Row, label_to_id: Mapping[str, int], *, max_length: int
) -> EncodedExample:
    """Encode a classification row (``text``, ``label``)."""
    try:
        text, label = str(row["text"]), str(row["label"])
    except KeyError as error:
        raise DataUnavailable(f"classification row {row.get('id')!r} lacks {error}") from error
    if label not in label_to_id:
        raise DataUnavailable(f"row {row['id']!r} has label {label!r} outside the label set")
    ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    return EncodedExample(
        row_id=str(row["id"]),
        input_ids=tuple(int(t) for t in ids),
        label=label_to_id[label],
        weight=_row_weight(row),
        slice=_row_slice(row),
    )


def _fit(prompt: list[int], completion: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Truncate prompt (from its start) and completion (from its end) to ``max_length``."""
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion
    prompt_budget = min(len(prompt), max(max_length // 2, max_length - len(completion)))
    completion_budget = max_length - prompt_budget
    return prompt[len(prompt) - prompt_budget :], completion[:completion_budget]


def _render(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]], *, prompt: bool) -> str:
    rendered = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=prompt
    )
    return str(rendered)


def _chat_segments(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]]
) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, carries loss) segments at assistant turns."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataUnavailable("messages rows need a tokenizer with a chat template")
    segments: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = _render(tokenizer, messages[:index], prompt=True) if index else ""
        through = _render(tokenizer, messages[: index + 1], prompt=False)
        if not before.startswith(done) or not through.startswith(before):
            raise DataUnavailable(
                "the chat template does not render conversations prefix-consistently; "
                "cannot tell assistant tokens apart"
            )
        segments.append((before[len(done) :], False))
        segments.append((through[len(before) :], True))
        done = through
    if not segments:
        raise DataUnavailable("a messages row has no assistant message to learn from")
    return [(text, loss) for text, loss in segments if text]


def encode_causal_lm(tokenizer: Tokenizer, row: Row, *, max_length: int) -> EncodedExample:
    """Encode a causal-LM row (``prompt`` + ``completion``, or ``messages``)."""
    row_id = str(row.get("id"))
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataUnavailable(f"row {row_id!r}: messages must be a list of objects")
        ids: list[int] = []
        labels: list[int] = []
        for text, loss in _chat_segments(tokenizer, messages):
            piece = _ids(tokenizer, text, special=False)
            ids += piece
            labels += piece if loss else [IGNORE_INDEX] * len(piece)
        ids, labels = ids[:max_length], labels[:max_length]
    else:
        try:
            prompt_text, completion_text = str(row["prompt"]), str(row["completion"])
        except KeyError as error:
            raise DataUnavailable(f"causal-LM row {row_id!r} lacks {error}") from error
        prompt = _ids(tokenizer, prompt_text, special=True)
        completion = _ids(tokenizer, completion_text, special=False)
        if tokenizer.eos_token_id is not None:
            completion.append(int(tokenizer.eos_token_id))
        prompt, completion = _fit(prompt, completion, max_length)
        ids = prompt + completion
        labels = [IGNORE_INDEX] * len(prompt) + completion
    return EncodedExample(
        row_id=row_id,
        input_ids=tuple(ids),
        labels=tuple(labels),
        weight=_row_weight(row),
        slice=_row_slice(row),
    )


def encode_rows(
    tokenizer: Tokenizer,
    rows: Sequence[Row],
    task: TaskKind | str,
    *,
    max_length: int,
    labels: Sequence[str] = (),
) -> list[EncodedExample]:
    """Encode every row for ``task``; ``labels`` is the class order (classification only).

    Causal-LM rows that keep no loss token after truncation are dropped (they would contribute
    nothing but compute); every classification row is kept.
    """
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    kind = TaskKind(task)
    if kind is TaskKind.CLASSIFICATION:
        label_to_id = {label: index for index, label in enumerate(labels)}
        return [
            encode_classification(tokenizer, row, label_to_id, max_length=max_length)
            for row in rows
        ]
    encoded = [encode_causal_lm(tokenizer, row, max_length=max_length) for row in rows]
    return [example for example in encoded if example.loss_tokens > 0]


@dataclass(frozen=True)
class GenerationPrompt:
    """What to generate from and what the answer should be, for exact-match scoring."""

    row_id: str
    prompt_ids: tuple[int, ...]
    reference: str


def generation_prompt(tokenizer: Tokenizer, row: Row, *, max_length: int) -> GenerationPrompt:
    """The prompt ids a causal-LM row's answer is generated from, encoded as in training.

    prompt/completion rows: the prompt's ids (special tokens included, the end kept when
    longer than ``max_length``); reference = ``completion``. messages rows: the conversation
    before the last assistant turn rendered with the generation prompt; reference = that
    turn's content.
    """
    if "messages" in row:
        messages = list(row["messages"])
        last = max(
            (i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None
        )
        if last is None:
            raise DataUnavailable(f"row {row.get('id')!r} has no assistant message")
        ids = _ids(tokenizer, _render(tokenizer, messages[:last], prompt=True), special=False)
        reference = str(messages[last].get("content", ""))
    else:
        ids = _ids(tokenizer, str(row["prompt"]), special=True)
        reference = str(row["completion"])
    return GenerationPrompt(str(row.get("id")), tuple(ids[-max_length:]), reference)
