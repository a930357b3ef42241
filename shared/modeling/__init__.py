"""Base models, data and adapters as the trainer and the evaluator both need them.

The evaluator must load a base model plus an adapter and encode rows exactly as training did;
this package is the one implementation both use. Modules:

* :mod:`shared.modeling.models` — resolve a base model by name (under the models root) or by
  path (inside the allowed roots), refuse unsafe folders (pickle weights, remote code, escaping
  symlinks), hash model folders for lineage (:func:`folder_sha256`);
* :mod:`shared.modeling.data` — read a split manifest and the canonical JSONL into train /
  validation / test rows, checking digests;
* :mod:`shared.modeling.encoding` — encode rows for a task (classification: text → label id;
  causal LM: prompt tokens masked with ``-100``, chat template for ``messages``; rows that
  cannot be used are skipped and counted by reason), and the generation prompt for
  exact-match scoring;
* :mod:`shared.modeling.adapters` — the ``tuneline_adapter.json`` every checkpoint carries
  (task, label order, max length, base model digest);
* :mod:`shared.modeling.loading` *(imports torch)* — tokenizer, base model for a task,
  PEFT adapter, whole checkpoint;
* :mod:`shared.modeling.batching` *(imports torch)* — padded and packed batches;
* :mod:`shared.modeling.packaged` — ``tuneline models prepare``: the packaged models of DATA.md.

Importing this package (and the torch-free modules above) does not import torch.

Scoring a checkpoint exactly as it was trained (what the evaluator does)::

    from shared.modeling import encode_rows, load_split_rows
    from shared.modeling.batching import pad_batch
    from shared.modeling.loading import load_checkpoint

    loaded = load_checkpoint(adapter_dir, models_root=models_root, device="cpu")
    meta = loaded.metadata  # task, label order, max length, base model digest
    rows = load_split_rows(manifest, dataset, expected_manifest_sha256=sha).validation
    examples = encode_rows(
        loaded.tokenizer, rows, meta.task, max_length=meta.max_seq_length, labels=meta.labels
    )
    batch = pad_batch(examples[:32], loaded.tokenizer.pad_token_id)
    logits = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
"""

from shared.modeling.adapters import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    METADATA_FILE,
    AdapterMetadata,
    check_adapter_folder,
    read_adapter_metadata,
    write_adapter_metadata,
)
from shared.modeling.data import (
    Row,
    SplitManifest,
    SplitRows,
    classification_labels,
    load_split_rows,
    read_canonical_rows,
    read_split_manifest,
    select_rows,
)
from shared.modeling.encoding import (
    IGNORE_INDEX,
    EncodedExample,
    EncodedRows,
    GenerationPrompt,
    SkipReason,
    UnmaskableChat,
    encode_dataset_rows,
    encode_rows,
    generation_prompt,
)
from shared.modeling.errors import (
    DataUnavailable,
    InvalidModelReference,
    ModelingError,
    ModelLoadFailed,
    ModelNotFound,
    ModelRefused,
)
from shared.modeling.models import (
    FolderHashCache,
    ResolvedModel,
    check_model_folder,
    default_models_root,
    file_sha256,
    folder_sha256,
    folder_size_bytes,
    resolve_base_model,
)

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "IGNORE_INDEX",
    "METADATA_FILE",
    "AdapterMetadata",
    "DataUnavailable",
    "EncodedExample",
    "EncodedRows",
    "FolderHashCache",
    "GenerationPrompt",
    "InvalidModelReference",
    "ModelLoadFailed",
    "ModelNotFound",
    "ModelRefused",
    "ModelingError",
    "ResolvedModel",
    "Row",
    "SkipReason",
    "SplitManifest",
    "SplitRows",
    "UnmaskableChat",
    "check_adapter_folder",
    "check_model_folder",
    "classification_labels",
    "default_models_root",
    "encode_dataset_rows",
    "encode_rows",
    "file_sha256",
    "folder_sha256",
    "folder_size_bytes",
    "generation_prompt",
    "load_split_rows",
    "read_adapter_metadata",
    "read_canonical_rows",
    "read_split_manifest",
    "resolve_base_model",
    "select_rows",
    "write_adapter_metadata",
]
