"""shared.modeling, the part the trainer and the evaluator share: model resolution and safety,
folder digests, split reading, and encoding rows exactly as training sees them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from shared.modeling import (
    IGNORE_INDEX,
    DataUnavailable,
    InvalidModelReference,
    ModelNotFound,
    ModelRefused,
    SkipReason,
    encode_dataset_rows,
    encode_rows,
    folder_sha256,
    generation_prompt,
    load_split_rows,
    resolve_base_model,
)
from shared.task_types import TaskType
from tests.fixtures.trainer_data import build_tiny_bert, build_tiny_llama, write_split


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_tiny_bert(root / "bert")
    build_tiny_llama(root / "llama")
    return root


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, shared.modeling; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert result.stdout.strip() == "False"


def test_folder_digest_is_sha256sum_of_the_sorted_file_list(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_bytes(b"bee")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"\x00\x01")
    lines = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {path}\n"
        for path, data in sorted({"b.txt": b"bee", "sub/a.bin": b"\x00\x01"}.items())
    )
    assert folder_sha256(tmp_path) == hashlib.sha256(lines.encode()).hexdigest()
    (tmp_path / "b.txt").write_bytes(b"bee!")
    assert folder_sha256(tmp_path) != hashlib.sha256(lines.encode()).hexdigest()


def test_models_resolve_by_name_or_by_path_inside_the_roots(models: Path) -> None:
    by_name = resolve_base_model(model_name="bert", models_root=models)
    assert by_name.path == (models / "bert").resolve()
    assert by_name.model_type == "bert"
    assert by_name.architecture == "BertModel"
    assert by_name.files_sha256 == folder_sha256(models / "bert")
    by_path = resolve_base_model(model_path=str(models / "llama"), models_root=models)
    assert by_path.model_type == "llama"
    with pytest.raises(ModelNotFound):
        resolve_base_model(model_name="absent", models_root=models)
    with pytest.raises(InvalidModelReference, match="not a folder name"):
        resolve_base_model(model_name="../bert", models_root=models)


def test_paths_outside_the_allowed_roots_are_refused(models: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    build_tiny_bert(elsewhere)
    with pytest.raises(InvalidModelReference, match="outside the allowed model roots"):
        resolve_base_model(model_path=str(elsewhere), models_root=models)
    allowed = resolve_base_model(
        model_path=str(elsewhere), models_root=models, allowed_roots=[tmp_path]
    )
    assert allowed.model_type == "bert"
    with pytest.raises(InvalidModelReference, match="not absolute"):
        resolve_base_model(model_path="relative/bert", models_root=models)


def test_pickles_remote_code_and_escaping_links_are_refused(models: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    pickled = root / "pickled"
    build_tiny_bert(pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ModelRefused, match="pickle") as raised:
        resolve_base_model(model_name="pickled", models_root=root)
    assert raised.value.files == ("pytorch_model.bin",)
    # the name is fine, the folder is not: a refusal of what is on disk
    assert not isinstance(raised.value, InvalidModelReference)

    no_safetensors = root / "bare"
    no_safetensors.mkdir()
    (no_safetensors / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelRefused, match=r"no \*\.safetensors"):
        resolve_base_model(model_name="bare", models_root=root)

    remote = root / "remote"
    build_tiny_bert(remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelRefused, match="remote code"):
        resolve_base_model(model_name="remote", models_root=root)

    linked = root / "linked"
    build_tiny_bert(linked)
    (tmp_path / "secret.txt").write_text("outside")
    (linked / "notes.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ModelRefused, match="linking outside"):
        resolve_base_model(model_name="linked", models_root=root)


def test_split_rows_are_read_and_checked_against_their_digests(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "text": f"t{i}", "label": "ab"[i % 2]} for i in range(20)]
    written = write_split(tmp_path, rows, validation_fraction=0.3)
    split = load_split_rows(
        written.manifest_path,
        written.dataset_path,
        expected_manifest_sha256=written.manifest_sha256,
    )
    assert [r["id"] for r in split.train] == written.train_ids
    assert [r["id"] for r in split.validation] == written.validation_ids
    assert split.labels == ["a", "b"]
    with pytest.raises(DataUnavailable, match="sha256"):
        load_split_rows(
            written.manifest_path, written.dataset_path, expected_manifest_sha256="0" * 64
        )
    written.dataset_path.write_bytes(written.dataset_path.read_bytes().replace(b"t1", b"t9"))
    with pytest.raises(DataUnavailable, match="sha256"):
        load_split_rows(written.manifest_path, written.dataset_path)


def test_classification_rows_encode_text_and_label_index(models: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models / "bert")
    rows = [{"id": "a", "text": "A fine film " * 40, "label": "pos", "slice": "long"}]
    (example,) = encode_rows(
        tokenizer, rows, TaskType.CLASSIFICATION, max_length=16, labels=["neg", "pos"]
    )
    assert example.label == 1
    assert example.length == 16  # truncated
    assert example.input_ids[0] == tokenizer.cls_token_id
    assert example.slice == "long"
    with pytest.raises(DataUnavailable, match="outside the label set"):
        encode_rows(
            tokenizer,
            [{"id": "b", "text": "x", "label": "meh"}],
            "classification",
            max_length=16,
            labels=["neg", "pos"],
        )


def test_causal_rows_carry_loss_on_completion_tokens_only(models: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models / "llama")
    row = {"id": "q", "prompt": "what is the answer?", "completion": "forty two"}
    (example,) = encode_rows(tokenizer, [row], TaskType.CAUSAL_LM, max_length=64)
    prompt_ids = tokenizer("what is the answer?")["input_ids"]
    completion_ids = tokenizer("forty two", add_special_tokens=False)["input_ids"]
    assert list(example.input_ids) == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert example.labels is not None
    assert list(example.labels[: len(prompt_ids)]) == [IGNORE_INDEX] * len(prompt_ids)
    assert list(example.labels[len(prompt_ids) :]) == [*completion_ids, tokenizer.eos_token_id]
    assert example.loss_tokens == len(completion_ids) + 1
    prompt = generation_prompt(tokenizer, row, max_length=64)
    assert list(prompt.prompt_ids) == prompt_ids
    assert prompt.reference == "forty two"


def test_long_causal_rows_keep_the_completion_start_and_the_prompt_end(models: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models / "llama")
    row = {"id": "q", "prompt": "one two three four five six seven eight", "completion": "nine ten"}
    (example,) = encode_rows(tokenizer, [row], TaskType.CAUSAL_LM, max_length=8)
    assert example.length == 8
    assert example.labels is not None
    kept_completion = [t for t in example.labels if t != IGNORE_INDEX]
    completion = tokenizer("nine ten", add_special_tokens=False)["input_ids"]
    assert kept_completion == [*completion, tokenizer.eos_token_id]
    full_prompt = tokenizer(row["prompt"])["input_ids"]  # [CLS] one … eight [SEP]
    kept_prompt = list(example.input_ids[: example.length - len(kept_completion)])
    # the prompt's end survives, inside the special tokens the tokenizer puts around it
    assert kept_prompt[0] == tokenizer.cls_token_id
    assert kept_prompt[-1] == full_prompt[-1] == tokenizer.sep_token_id
    assert kept_prompt[1:] == full_prompt[len(full_prompt) - len(kept_prompt) + 1 :]


def test_chat_rows_carry_loss_on_assistant_turns_only(models: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models / "llama")
    messages = [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "hi friend"},
        {"role": "user", "content": "bye now"},
        {"role": "assistant", "content": "see you"},
    ]
    (example,) = encode_rows(
        tokenizer, [{"id": "c", "messages": messages}], "causal_lm", max_length=128
    )
    assert example.labels is not None
    learned = tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    assert "hi friend" in learned
    assert "see you" in learned
    assert "hello" not in learned
    assert "bye" not in learned
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(example.input_ids) == tokenizer.decode(
        tokenizer(full, add_special_tokens=False)["input_ids"]
    )
    prompt = generation_prompt(tokenizer, {"id": "c", "messages": messages}, max_length=128)
    assert prompt.reference == "see you"
    assert "bye now" in tokenizer.decode(prompt.prompt_ids)


def test_rows_with_nothing_to_learn_are_dropped(models: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models / "llama")
    with pytest.raises(DataUnavailable, match="no assistant message"):
        encode_rows(
            tokenizer,
            [{"id": "x", "messages": [{"role": "user", "content": "hi"}]}],
            "causal_lm",
            max_length=32,
        )


# -- a tiny Llama-style tokenizer: a BOS before every prompt, chat markers as special tokens --


_WORDS = (  # noqa: SIM905 - one string split once reads better than a word list
    "one two three four five six seven eight nine ten what is the answer hello there hi friend "
    "bye now see you be brief question okay"
).split()
_SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]


@pytest.fixture(scope="module")
def bos_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level, with ``<s>`` added before every text (like Llama's tokenizer) and
    ``<|end|>`` closing each chat turn."""
    vocab = {token: index for index, token in enumerate([*_SPECIALS, *_WORDS, "?", ":", "."])}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    core.add_special_tokens([AddedToken(t, special=True) for t in _SPECIALS])
    core.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def _chat(tokenizer: PreTrainedTokenizerFast, template: str) -> PreTrainedTokenizerFast:
    copy = deepcopy(tokenizer)
    copy.chat_template = template
    return copy


def _learned(tokenizer: PreTrainedTokenizerFast, example) -> str:
    return tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])


def test_truncating_a_long_prompt_keeps_its_bos_first(bos_tokenizer) -> None:
    row = {"id": "q", "prompt": "one two three four five six seven eight", "completion": "nine"}
    bos = bos_tokenizer.bos_token_id
    assert bos_tokenizer(row["prompt"])["input_ids"][0] == bos
    (example,) = encode_rows(bos_tokenizer, [row], TaskType.CAUSAL_LM, max_length=6)
    assert example.length == 6
    assert example.input_ids[0] == bos  # the model never saw a sequence without it
    # <s> + the prompt's end (half the budget) + the completion and EOS
    assert bos_tokenizer.decode(example.input_ids[1:]) == "six seven eight nine </s>"
    assert example.labels is not None
    assert _learned(bos_tokenizer, example) == "nine </s>"
    prompt = generation_prompt(bos_tokenizer, row, max_length=4)
    assert prompt.prompt_ids[0] == bos
    assert bos_tokenizer.decode(prompt.prompt_ids[1:]) == "six seven eight"


def test_truncating_a_chat_generation_prompt_keeps_its_bos_first(bos_tokenizer) -> None:
    tokenizer = _chat(
        bos_tokenizer,
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
        "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}",
    )
    messages = [
        {"role": "user", "content": "one two three four five six"},
        {"role": "assistant", "content": "seven"},
    ]
    prompt = generation_prompt(tokenizer, {"id": "c", "messages": messages}, max_length=4)
    assert prompt.prompt_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(prompt.prompt_ids[1:]) == "six <|end|> <|assistant|>"


CONVERSATION = [
    {"role": "system", "content": "be brief ."},
    {"role": "user", "content": "what is the answer ?"},
    {"role": "assistant", "content": "hi friend"},
    {"role": "user", "content": "hello there"},
    {"role": "assistant", "content": "see you"},
]


def test_a_template_that_moves_the_system_prompt_is_masked_by_offsets(bos_tokenizer) -> None:
    """Like Mistral's: the system prompt goes into the *last* user turn, so the rendering of
    a conversation's start is not a prefix of the whole rendering."""
    tokenizer = _chat(
        bos_tokenizer,
        "{{ bos_token }}{% set last = namespace(i=0) %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}{% set last.i = loop.index %}"
        "{% endif %}{% endfor %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}<|user|> "
        "{% if loop.index == last.i and messages[0]['role'] == 'system' %}"
        "{{ messages[0]['content'] }} {% endif %}{{ m['content'] }} <|end|> "
        "{% elif m['role'] == 'assistant' %}<|assistant|> {{ m['content'] }} <|end|> "
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}",
    )
    encoded = encode_dataset_rows(
        tokenizer, [{"id": "c", "messages": CONVERSATION}], "causal_lm", max_length=128
    )
    assert encoded.skipped == {}
    (example,) = encoded.examples
    # each answer and the end-of-turn token closing it; nothing of the prompts
    assert _learned(tokenizer, example) == "hi friend <|end|> see you <|end|>"
    assert example.input_ids[0] == tokenizer.bos_token_id
    full = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert list(example.input_ids) == tokenizer(full, add_special_tokens=False)["input_ids"]


def test_a_template_with_generation_blocks_gives_its_own_assistant_mask(bos_tokenizer) -> None:
    tokenizer = _chat(
        bos_tokenizer,
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|> "
        "{% generation %}{{ m['content'] }} <|end|>{% endgeneration %} "
        "{% else %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endif %}{% endfor %}",
    )
    (example,) = encode_rows(
        tokenizer, [{"id": "c", "messages": CONVERSATION}], "causal_lm", max_length=128
    )
    assert _learned(tokenizer, example) == "hi friend <|end|> see you <|end|>"


def test_a_row_the_template_cannot_mask_is_skipped_and_counted_not_fatal(bos_tokenizer) -> None:
    """Earlier answers are replaced (as templates that strip reasoning do), so the first one
    is nowhere in the whole rendering: that row is left out, the others are trained."""
    tokenizer = _chat(
        bos_tokenizer,
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
        "<|assistant|> okay <|end|> {% else %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}",
    )
    rows = [
        {"id": "two-answers", "messages": CONVERSATION},
        {"id": "one-answer", "messages": CONVERSATION[:3]},
        {"id": "plain", "prompt": "one two", "completion": "three"},
    ]
    encoded = encode_dataset_rows(tokenizer, rows, "causal_lm", max_length=128)
    assert [e.row_id for e in encoded.examples] == ["one-answer", "plain"]
    assert encoded.skipped == {SkipReason.UNMASKABLE_CHAT: ["two-answers"]}
    assert _learned(tokenizer, encoded.examples[0]) == "hi friend <|end|>"
    # a conversation whose answer truncation cuts off is skipped and counted too
    short = encode_dataset_rows(tokenizer, rows[1:], "causal_lm", max_length=8)
    assert [e.row_id for e in short.examples] == ["plain"]
    assert short.skipped == {SkipReason.NO_LOSS_TOKEN: ["one-answer"]}
