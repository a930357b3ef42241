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
* **causal_lm, messages** — the conversation rendered once with the tokenizer's chat template
  and tokenized once; every assistant turn (its content and end-of-turn marker, as the template
  writes them) carries loss, everything else is ``-100``. Which tokens are the assistant's comes
  from the template's own ``{% generation %}`` blocks when it has them
  (``return_assistant_tokens_mask``); otherwise from character spans of the rendered text
  mapped onto tokens by their offsets: the span between the conversation rendered up to the
  turn with and without it when the template renders prefixes consistently, else where the
  turn's content is found in the rendering (plus the special token that closes it). A row whose
  assistant turns cannot be found is skipped and counted (:class:`SkipReason`), not fatal.

Truncation to ``max_length`` keeps the beginning of a classification text; for causal-LM rows
it keeps the completion's beginning and as much of the prompt's *end* as fits (the prompt keeps
at least half the budget when it is that long), and the special tokens the tokenizer puts
around a prompt (a BOS, say) stay where the model expects them. A causal-LM row left with no
loss token is skipped and counted too (see :func:`encode_dataset_rows`).

Labels follow the Hugging Face convention: ``labels[i]`` is the target at position ``i``;
losses compare ``logits[:, :-1]`` with ``labels[:, 1:]``. Torch-free: a tokenizer is any
object with the ``transformers`` tokenizer call interface.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from shared.modeling.data import Row
from shared.modeling.errors import DataUnavailable
from shared.task_types import TaskType

#: Label id of a token that carries no loss (PyTorch's ``CrossEntropyLoss`` ignore index).
IGNORE_INDEX = -100
#: A chat template that marks assistant text itself (TRL / transformers ``{% generation %}``).
_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


class SkipReason(StrEnum):
    """Why :func:`encode_dataset_rows` left a row out (the job goes on without it)."""

    #: The chat template does not let the assistant's tokens be told apart from the rest.
    UNMASKABLE_CHAT = "UNMASKABLE_CHAT"
    #: Truncation to ``max_length`` left no completion token to learn from.
    NO_LOSS_TOKEN = "NO_LOSS_TOKEN"  # noqa: S105 - a reason, not a password


class UnmaskableChat(DataUnavailable):
    """A messages row whose assistant turns cannot be located in its rendering: a row-level
    problem (:attr:`SkipReason.UNMASKABLE_CHAT`), not a reason to fail a job."""


class Tokenizer(Protocol):
    """The part of a ``transformers`` tokenizer encoding needs."""

    eos_token_id: int | None
    bos_token_id: int | None
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


def row_slice(row: Row) -> str:
    """The row's slice: its `slice`, else its first tag, else "" (no slice)."""
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
        slice=row_slice(row),
    )


def _special_frame(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer adds before and after a text (e.g. ``[BOS]`` and
    nothing, or ``[CLS]`` and ``[SEP]``), found by encoding a probe with and without them."""
    probe = "a"
    framed = _ids(tokenizer, probe, special=True)
    plain = _ids(tokenizer, probe, special=False)
    for start in range(len(framed) - len(plain) + 1):
        if framed[start : start + len(plain)] == plain:
            return framed[:start], framed[start + len(plain) :]
    return [], []


def _keep_end(ids: list[int], budget: int, frame: tuple[list[int], list[int]]) -> list[int]:
    """``ids`` cut to ``budget`` tokens from the front, keeping the special tokens of ``frame``
    that ``ids`` starts and ends with (a BOS stays first): the model never saw a prompt
    without them in pre-training, and generation starts from the same ids."""
    if len(ids) <= budget:
        return ids
    head, tail = frame
    if ids[: len(head)] != head:
        head = []
    if not tail or ids[len(ids) - len(tail) :] != tail:
        tail = []
    body_budget = budget - len(head) - len(tail)
    if body_budget < 0:
        return ids[len(ids) - budget :]
    body = ids[len(head) : len(ids) - len(tail)]
    return head + body[len(body) - body_budget :] + tail


def _fit(
    tokenizer: Tokenizer, prompt: list[int], completion: list[int], max_length: int
) -> tuple[list[int], list[int]]:
    """Truncate prompt (from its start, its special tokens kept) and completion (from its end)
    to ``max_length``."""
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion
    prompt_budget = min(len(prompt), max(max_length // 2, max_length - len(completion)))
    completion_budget = max_length - prompt_budget
    kept = _keep_end(prompt, prompt_budget, _special_frame(tokenizer))
    return kept, completion[:completion_budget]


def _render(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]], *, prompt: bool) -> str:
    rendered = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=prompt
    )
    return str(rendered)


@dataclass(frozen=True)
class _Span:
    """Characters of the rendered conversation that carry loss."""

    start: int
    end: int
    #: Found by its content: the special token right after it (end of turn) carries loss too.
    with_closing_token: bool = False


def _assistant_spans(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]], full: str
) -> list[_Span]:
    """Where each assistant turn is in ``full`` (the whole conversation rendered).

    Prefix-consistent templates: the turn is what rendering ``messages[: i + 1]`` adds to
    ``messages[:i]`` with the generation prompt. Others (a system prompt moved into the last
    user turn, reasoning stripped from earlier turns …): the turn's content, at the same
    occurrence as in the rendering that ends with the turn. Raises :class:`UnmaskableChat`.
    """
    spans: list[_Span] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = _render(tokenizer, messages[:index], prompt=True) if index else ""
        through = _render(tokenizer, messages[: index + 1], prompt=False)
        if full.startswith(through) and through.startswith(before) and len(before) >= cursor:
            spans.append(_Span(len(before), len(through)))
            cursor = len(through)
            continue
        content = str(message.get("content", "")).strip()
        at = through.rfind(content) if content else -1
        if at < 0:
            raise UnmaskableChat(
                f"assistant turn {index} is not in the chat template's rendering of the "
                "conversation; cannot tell its tokens apart"
            )
        found = -1
        for _ in range(through.count(content, 0, at) + 1):  # the same occurrence in full
            found = full.find(content, found + 1)
            if found < 0:
                break
        if found < cursor:
            raise UnmaskableChat(
                f"the chat template renders assistant turn {index} differently in the whole "
                "conversation; cannot tell its tokens apart"
            )
        spans.append(_Span(found, found + len(content), with_closing_token=True))
        cursor = found + len(content)
    return spans


def _tokens_with_offsets(
    tokenizer: Tokenizer, text: str, spans: Sequence[_Span]
) -> tuple[list[int], list[tuple[int, int]]]:
    """``text`` tokenized once, with each token's character offsets. A tokenizer without
    offsets (a slow one) tokenizes the text piecewise at the span bounds instead, and each
    token gets its piece's offsets."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [(int(a), int(b)) for a, b in encoded["offset_mapping"]]
        return [int(t) for t in encoded["input_ids"]], offsets
    bounds = sorted({0, len(text), *(b for span in spans for b in (span.start, span.end))})
    ids: list[int] = []
    offsets = []
    for start, end in itertools.pairwise(bounds):
        piece = _ids(tokenizer, text[start:end], special=False)
        ids += piece
        offsets += [(start, end)] * len(piece)
    return ids, offsets


def _special_ids(tokenizer: Tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens: the named ones and every added token marked
    special (end-of-turn markers such as ``<|im_end|>`` or ``<|eot_id|>`` are often only that)."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", ()) or ()}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return ids | {int(i) for i, token in added.items() if getattr(token, "special", False)}


def _chat_tokens(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]]
) -> tuple[list[int], list[int]]:
    """(ids, labels) of a conversation: loss on the assistant's tokens only."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise DataUnavailable("messages rows need a tokenizer with a chat template")
    if not any(message.get("role") == "assistant" for message in messages):
        raise DataUnavailable("a messages row has no assistant message to learn from")
    if (
        isinstance(template, str)
        and _GENERATION_BLOCK.search(template)
        and getattr(tokenizer, "is_fast", False)
    ):
        encoded = tokenizer.apply_chat_template(
            list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = [int(t) for t in encoded["input_ids"]]
        mask = list(encoded["assistant_masks"])
        if not any(mask):
            raise UnmaskableChat("the chat template's generation blocks mark no assistant token")
        return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
    full = _render(tokenizer, messages, prompt=False)
    spans = _assistant_spans(tokenizer, messages, full)
    ids, offsets = _tokens_with_offsets(tokenizer, full, spans)
    special = _special_ids(tokenizer)
    labels = [IGNORE_INDEX] * len(ids)
    current, inside = 0, False  # spans and offsets are both in order: one pass over the tokens
    for index, (start, end) in enumerate(offsets):
        while current < len(spans) and start >= spans[current].end:
            span = spans[current]
            # the end-of-turn token right after a span found by its content
            if (
                span.with_closing_token
                and inside
                and ids[index] in special
                and not full[span.end : start].strip()
            ):
                labels[index] = ids[index]
            current, inside = current + 1, False
        if current == len(spans):
            break
        if end > spans[current].start:
            labels[index] = ids[index]
            inside = True
    if all(label == IGNORE_INDEX for label in labels):
        raise UnmaskableChat("no token of the rendered conversation is an assistant token")
    return ids, labels


def encode_causal_lm(tokenizer: Tokenizer, row: Row, *, max_length: int) -> EncodedExample:
    """Encode a causal-LM row (``prompt`` + ``completion``, or ``messages``)."""
    row_id = str(row.get("id"))
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataUnavailable(f"row {row_id!r}: messages must be a list of objects")
        ids, labels = _chat_tokens(tokenizer, messages)
        # the beginning is kept (a BOS the template writes stays first)
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
        prompt, completion = _fit(tokenizer, prompt, completion, max_length)
        ids = prompt + completion
        labels = [IGNORE_INDEX] * len(prompt) + completion
    return EncodedExample(
        row_id=row_id,
        input_ids=tuple(ids),
        labels=tuple(labels),
        weight=_row_weight(row),
        slice=row_slice(row),
    )


@dataclass(frozen=True)
class EncodedRows:
    """The encoded examples of some rows, and the rows left out, by reason."""

    examples: list[EncodedExample]
    #: Row ids left out, by reason, in row order.
    skipped: dict[SkipReason, list[str]] = field(default_factory=dict)


def encode_dataset_rows(
    tokenizer: Tokenizer,
    rows: Sequence[Row],
    task: TaskType | str,
    *,
    max_length: int,
    labels: Sequence[str] = (),
) -> EncodedRows:
    """Encode every row for ``task``; ``labels`` is the class order (classification only).

    Every classification row is kept. A causal-LM row is skipped, and named under its
    :class:`SkipReason`, when truncation leaves it no loss token (it would contribute nothing
    but compute) or when the chat template does not let its assistant turns be found. Anything
    else wrong with the data (a missing field, an invalid weight, no chat template at all)
    raises :class:`DataUnavailable`.
    """
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    kind = TaskType(task)
    if kind is TaskType.CLASSIFICATION:
        label_to_id = {label: index for index, label in enumerate(labels)}
        return EncodedRows(
            [
                encode_classification(tokenizer, row, label_to_id, max_length=max_length)
                for row in rows
            ]
        )
    encoded = EncodedRows([])
    for row in rows:
        try:
            example = encode_causal_lm(tokenizer, row, max_length=max_length)
        except UnmaskableChat:
            encoded.skipped.setdefault(SkipReason.UNMASKABLE_CHAT, []).append(str(row.get("id")))
            continue
        if example.loss_tokens > 0:
            encoded.examples.append(example)
        else:
            encoded.skipped.setdefault(SkipReason.NO_LOSS_TOKEN, []).append(example.row_id)
    return encoded


def encode_rows(
    tokenizer: Tokenizer,
    rows: Sequence[Row],
    task: TaskType | str,
    *,
    max_length: int,
    labels: Sequence[str] = (),
) -> list[EncodedExample]:
    """The examples of :func:`encode_dataset_rows` (the rows it skips left out)."""
    return encode_dataset_rows(tokenizer, rows, task, max_length=max_length, labels=labels).examples


@dataclass(frozen=True)
class GenerationPrompt:
    """What to generate from and what the answer should be, for exact-match scoring."""

    row_id: str
    prompt_ids: tuple[int, ...]
    reference: str


def generation_prompt(tokenizer: Tokenizer, row: Row, *, max_length: int) -> GenerationPrompt:
    """The prompt ids a causal-LM row's answer is generated from, encoded as in training.

    prompt/completion rows: the prompt's ids (special tokens included, the end kept when
    longer than ``max_length``, its special tokens with it); reference = ``completion``.
    messages rows: the conversation before the last assistant turn rendered with the
    generation prompt (its end kept, and a leading BOS); reference = that turn's content.
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
        if len(ids) > max_length:
            bos = tokenizer.bos_token_id
            ids = _keep_end(ids, max_length, ([bos] if bos is not None else [], []))
    else:
        ids = _ids(tokenizer, str(row["prompt"]), special=True)
        reference = str(row["completion"])
        if len(ids) > max_length:
            ids = _keep_end(ids, max_length, _special_frame(tokenizer))
    return GenerationPrompt(str(row.get("id")), tuple(ids), reference)
