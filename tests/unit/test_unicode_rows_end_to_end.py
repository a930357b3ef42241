"""Rows of arbitrary Unicode text through every service: dataset → splitter → trainer → evaluator.

Real tweets hold U+0085, U+2028 and U+2029; the dataset service accepted them and every training
job on them failed, because the trainer's reader split the canonical JSONL where Unicode sees a
line break. Here rows whose text holds those (and astral characters, combining marks, tabs and
line ends) are uploaded to the dataset service's handlers, announced to the splitter's, trained
on for two steps by the trainer's engine and scored by the evaluator's, all in-process on a
tiny model: every service must see every row, unchanged.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.dataset.adapters.protos import dataset_versioned
from services.dataset.domain.characters import first_control_character, is_blank
from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.reports import SourceKind
from services.dataset.domain.rules import Severity
from services.dataset.handlers.datasets import create_dataset
from services.dataset.handlers.ingest import IngestRequest, upload_version
from services.evaluator.adapters.engine import score
from services.evaluator.adapters.scoring import RowSource, ScoringJob, SubjectRole, SubjectSpec
from services.evaluator.domain.evaluation import BaseModelRef as EvaluatorModelRef
from services.evaluator.domain.evaluation import ScoringSettings
from services.evaluator.domain.outcomes import ClassificationOutcomes
from services.splitter.adapters.metrics import SplitterMetrics
from services.splitter.adapters.protos import version_from_event
from services.splitter.adapters.tables import SplitterBase
from services.splitter.domain import DatasetVersionName, SplitSpec, SplitStrategy
from services.splitter.handlers import SplitterDeps, create_split, on_dataset_versioned
from services.trainer.adapters.engine.loop import run_training
from services.trainer.adapters.engine.signals import StopSignals
from services.trainer.domain.config import (
    AdapterSpec,
    BaseModelRef,
    CheckpointPolicy,
    Hyperparameters,
    StoppingRules,
    resolve_adapter,
    resolve_checkpointing,
    resolve_hyperparameters,
    resolve_stopping,
)
from services.trainer.domain.worker_messages import (
    WorkerCheckpoint,
    WorkerMessage,
    WorkerPlan,
    WorkerStarted,
)
from shared.artifacts import LocalArtifactStore
from shared.db import create_database_engine, create_schema, create_session_factory
from shared.input_text import normalize_input_text
from shared.modeling import load_split_rows, resolve_base_model
from shared.task_types import TaskType
from tests.fixtures.datasets import make_dataset_deps
from tests.fixtures.trainer_data import build_tiny_bert

#: Characters ``str.splitlines`` breaks at that the dataset service keeps as text.
SEPARATORS = ("\x85", "\u2028", "\u2029", "\n", "\r", "\r\n")
_char = st.one_of(
    st.characters(codec="utf-8", exclude_categories=("Cs",)).filter(
        lambda c: first_control_character(c) < 0
    ),
    st.sampled_from(["\u0301", "\u200d", "\U0001f3ac", "\U00010348", "\t", '"', "\\"]),
)
_words = st.text(_char, min_size=1, max_size=12).filter(lambda text: not is_blank(text))
#: Text with at least one line separator in it, and something visible around it (distinct
#: texts, so that a split has enough groups to leave no part empty).
_texts = st.tuples(_words, st.sampled_from(SEPARATORS), _words).map("".join)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_tiny_bert(root / "bert")
    return root


def _rows(texts: list[str]) -> list[dict[str, Any]]:
    return [
        {"text": text, "label": "neg\u2028" if i % 2 else "pos", "slice": f"s\u2029{i % 3}"}
        for i, text in enumerate(texts)
    ]


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["text"], row["label"], row["slice"]


#: Tweet-like openings with little in common, one per row of the explicit example.
_TOPICS = [
    "rain again on the morning commute",
    "new phone battery lasts two days",
    "our team won the derby last night",
    "baked sourdough bread for the first time",
    "the museum opens a dinosaur wing",
    "traffic jam near the harbour bridge",
    "learning to play the cello at forty",
    "volcano footage from the research ship",
    "garden tomatoes finally turning red",
    "late train, missed the whole concert",
    "cat knocked the plant off the shelf",
    "snow forecast for the mountain pass",
]


@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a failure is plain enough unshrunk
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(texts=st.lists(_texts, min_size=10, max_size=14, unique_by=normalize_input_text))
@example(
    texts=[
        # distinct enough that near-duplicate grouping keeps them apart (the splitter needs
        # at least two groups), each with one separator and the same awkward characters
        f"{topic}{sep}caf\u00e9 \U0001f3ac e\u0301 \u0928\u093f {chr(0x1F600 + i)}"
        for i, (topic, sep) in enumerate(zip(_TOPICS, SEPARATORS * 2, strict=True))
    ]
)
def test_every_service_sees_every_row_unchanged(models_root: Path, texts: list[str]) -> None:
    rows = _rows(texts)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)

        # the dataset service: an upload as a producer writes it, the characters raw
        deps = make_dataset_deps(root / "dataset")
        policy = SchemaPolicy(
            min_rows_per_class=1,
            rule_severities={"conflicting_labels": Severity.WARNING},
        )
        with deps.sessions.begin() as session:
            dataset = create_dataset(
                session, deps, dataset_id="tweets", task_type=TaskType.CLASSIFICATION, policy=policy
            )
        upload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
        result = upload_version(
            deps,
            IngestRequest(dataset=dataset.name, source_kind=SourceKind.UPLOAD),
            iter([upload]),
        )
        version = result.version
        assert version is not None
        assert version.row_count == len(rows)
        dataset_path = deps.store.local_path(version.artifact_uri)
        deps.sessions.kw["bind"].dispose()

        # the splitter: DatasetVersioned, then a stratified split (no part is left empty)
        engine = create_database_engine(f"sqlite:///{root / 'splitter.db'}")
        create_schema(engine, [SplitterBase.metadata])
        store = LocalArtifactStore(root / "splitter", readable_roots=[root])
        splitter = SplitterDeps(
            sessions=create_session_factory(engine),
            artifacts=store,
            metrics=SplitterMetrics(CollectorRegistry()),
            source="test",
        )
        announced = version_from_event(dataset_versioned(version))
        with splitter.sessions.begin() as session:
            on_dataset_versioned(session, splitter, announced)
        with splitter.sessions.begin() as session:
            split, _ = create_split(
                session,
                splitter,
                DatasetVersionName.parse(version.name, field="parent"),
                SplitSpec(strategy=SplitStrategy.STRATIFIED),
            )
        engine.dispose()
        manifest_path = store.local_path(split.manifest_uri)
        parts = load_split_rows(
            manifest_path, dataset_path, expected_manifest_sha256=split.manifest_sha256
        )
        every_row = parts.train + parts.validation + parts.test
        assert Counter(_key(row) for row in every_row) == Counter(_key(row) for row in rows)

        # the trainer: a two-step job on the split
        model = resolve_base_model(model_name="bert", models_root=models_root)
        stopping = resolve_stopping(StoppingRules(eval_every_n_steps=2), 2)
        plan = WorkerPlan(
            job="trainingJobs/unicode",
            task_type=TaskType.CLASSIFICATION,
            model_dir=str(model.path),
            base_model=BaseModelRef(
                model_name="bert",
                files_sha256=model.files_sha256,
                model_type=model.model_type,
                architecture=model.architecture,
            ),
            manifest_path=str(manifest_path),
            manifest_sha256=split.manifest_sha256,
            dataset_path=str(dataset_path),
            adapter=resolve_adapter(AdapterSpec(rank=4), TaskType.CLASSIFICATION, model.model_type),
            hyperparameters=resolve_hyperparameters(
                Hyperparameters(batch_size=4, learning_rate=1e-2, max_steps=2), 128
            ),
            stopping=stopping,
            checkpointing=resolve_checkpointing(CheckpointPolicy(), stopping),
            artifact_root=str(root / "trainer"),
            artifact_prefix="jobs/unicode",
            cpu_threads=1,
        )
        messages: list[WorkerMessage] = []
        run_training(plan, messages.append, StopSignals())
        (started,) = [m for m in messages if isinstance(m, WorkerStarted)]
        assert (started.train_examples, started.validation_examples) == (
            len(parts.train),
            len(parts.validation),
        )
        final = [m for m in messages if isinstance(m, WorkerCheckpoint)][-1]
        assert final.step == 2

        # the evaluator: the trained checkpoint on the validation part
        adapter = LocalArtifactStore(root / "trainer").local_path(final.artifact_uri)
        job = ScoringJob(
            evaluation="evaluations/unicode",
            task_type=TaskType.CLASSIFICATION,
            subjects=(
                SubjectSpec(
                    "candidate",
                    SubjectRole.CANDIDATE,
                    EvaluatorModelRef(model_name="bert"),
                    str(adapter),
                ),
            ),
            sets=(
                RowSource(
                    set_key="validation",
                    dataset_path=str(dataset_path),
                    dataset_sha256=version.content_sha256,
                    manifest_path=str(manifest_path),
                    manifest_sha256=split.manifest_sha256,
                    part="validation",
                ),
            ),
            scoring=ScoringSettings(max_generation_examples=0, max_new_tokens=1, max_seq_length=64),
            batch_size=4,
            models_root=str(models_root),
            device="cpu",
            max_batch_tokens=256,
        )
        scored = score(job).outcomes[("candidate", "validation")]
        assert isinstance(scored, ClassificationOutcomes)
        assert list(scored.example_ids) == [row["id"] for row in parts.validation]
        assert list(scored.true_labels) == [row["label"] for row in parts.validation]
