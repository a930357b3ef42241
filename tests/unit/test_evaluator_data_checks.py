"""The evaluator's data checks on real data with injected faults.

Real reviews (rotten tomatoes) and real question/answer pairs (chatterbot-corpus):
paraphrases of evaluation rows leaked into training make the evaluation contaminated (and a
PASSED verdict INSUFFICIENT_DATA); an evaluation set missing a label or a slice is a coverage
finding; an evaluation set from another domain is a shift, two halves of one set are not.
Embeddings come from the packaged MiniLM encoder through the shared TextEmbedder.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from services.evaluator.adapters.data_check_protos import (
    data_checks_from_proto,
    data_checks_to_proto,
)
from services.evaluator.adapters.engine import score
from services.evaluator.adapters.scoring import (
    DataChecksJob,
    RowSource,
    ScoringJob,
    SubjectRole,
    SubjectSpec,
)
from services.evaluator.domain.data_checks import (
    Coverage,
    DataCheckPolicy,
    DataChecks,
    DataCheckStatus,
    Shift,
    check_contamination,
    check_coverage,
    judge_shift,
)
from services.evaluator.domain.evaluation import BaseModelRef, ScoringSettings
from services.evaluator.domain.gate import Verdict
from shared.input_text import near_duplicate_text, normalize_input_text
from shared.modeling import resolve_base_model
from shared.modeling.embeddings import TextEmbedder
from shared.modeling.encoding import row_slice
from shared.modeling.models import default_models_root
from shared.modeling.packaged import ENCODER
from shared.near_duplicates import near_duplicate_groups
from shared.stats.two_sample import classifier_two_sample_test, far_from_reference
from shared.task_types import TaskType
from tests.fixtures.datasets import rotten_tomatoes_rows
from tests.fixtures.trainer_data import (
    build_tiny_bert,
    chatterbot_rows,
    sentiment_rows,
    write_split,
)
from tuneline.cli.evals import print_data_checks
from tuneline.cli.output import console

POLICY = DataCheckPolicy()
SUBSTITUTES = ("truly", "rather", "picture", "story", "somewhat", "utterly")


def paraphrase(text: str, rng: random.Random) -> str:
    """Two words swapped for others: a leak that exact matching does not see."""
    tokens = text.split()
    for position in rng.sample(range(len(tokens)), 2):
        tokens[position] = rng.choice([w for w in SUBSTITUTES if w != tokens[position]])
    return " ".join(tokens)


def distinct_reviews(count: int) -> list[dict[str, Any]]:
    """``count`` distinct real reviews of 15+ words, with ids, alternating over the file."""
    seen: set[str] = set()
    rows = []
    for row in rotten_tomatoes_rows():
        key = normalize_input_text(row["text"])
        if len(key.split()) >= 15 and key not in seen:
            seen.add(key)
            rows.append({**row, "id": f"rt-{len(rows)}"})
        if len(rows) == count:
            break
    return rows


@pytest.fixture(scope="module")
def reviews() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training, evaluation): 800 and 200 different reviews."""
    rows = distinct_reviews(1000)
    return rows[:800], rows[800:]


def test_clean_reviews_are_not_contaminated(reviews):
    training, evaluation = reviews
    found = check_contamination(evaluation, training, POLICY)
    assert found.status is DataCheckStatus.PASSED
    assert found.share <= POLICY.contamination_max_share


def test_paraphrase_leaks_of_evaluation_rows_make_it_contaminated_and_withhold_a_pass(reviews):
    training, evaluation = reviews
    rng = random.Random(7)
    leaked = evaluation[:12]
    poisoned = training + [
        {"id": f"leak-{i}", "text": paraphrase(row["text"], rng), "label": row["label"]}
        for i, row in enumerate(leaked)
    ]
    # exact matching alone would see none of them
    assert not {near_duplicate_text(r) for r in leaked} & {near_duplicate_text(r) for r in poisoned}

    found = check_contamination(evaluation, poisoned, POLICY)

    assert found.status is DataCheckStatus.FLAGGED
    assert found.contaminated_rows >= len(leaked)
    assert set(found.row_ids) >= {row["id"] for row in leaked}
    assert found.share > POLICY.contamination_max_share
    assert f"{found.contaminated_rows} of 200 evaluation rows" in found.reason

    checks = DataChecks(
        "datasets/d/versions/v/splits/s",
        found,
        Coverage(DataCheckStatus.PASSED, ""),
        Shift(DataCheckStatus.SKIPPED, "off"),
    )
    verdict, effect = checks.applied_to(Verdict.PASSED)
    assert verdict is Verdict.INSUFFICIENT_DATA
    assert effect.verdict_effect.startswith("PASSED withheld: the evaluation set is contaminated")
    # a regression shown in spite of memorised rows stands
    assert checks.applied_to(Verdict.REGRESSED) == (Verdict.REGRESSED, checks)


def test_a_few_leaks_below_the_share_are_reported_but_do_not_contaminate(reviews):
    training, evaluation = reviews
    rng = random.Random(8)
    poisoned = [*training, {"id": "leak", "text": paraphrase(evaluation[0]["text"], rng)}]
    found = check_contamination(evaluation, poisoned, POLICY)
    assert found.contaminated_rows >= 1
    assert evaluation[0]["id"] in found.row_ids
    assert found.status is DataCheckStatus.PASSED  # 1 of 200 = 0.5 % <= 1 %


def distinct_conversations() -> list[dict[str, Any]]:
    """The chatterbot pairs whose text is in no near-duplicate group (the corpus repeats many
    pairs across its files), of 60+ characters, with ids."""
    rows = [{**row, "id": f"cb-{i}"} for i, row in enumerate(chatterbot_rows())]
    by_text = {near_duplicate_text(row) or "": row for row in reversed(rows)}
    texts = list(by_text)
    grouped = {texts[i] for group in near_duplicate_groups(texts) for i in group}
    return [row for text, row in by_text.items() if text not in grouped and len(text) >= 60]


def test_causal_lm_leaks_compare_prompt_and_completion():
    rows = distinct_conversations()
    rng = random.Random(3)
    rng.shuffle(rows)
    training, evaluation = rows[:400], rows[400:500]
    assert check_contamination(evaluation, training, POLICY).status is DataCheckStatus.PASSED

    leaked = [
        {
            "id": f"leak-{i}",
            "prompt": row["prompt"].replace("?", " ?"),
            "completion": paraphrase(row["completion"], rng)
            if len(row["completion"].split()) >= 8
            else row["completion"] + " indeed",
        }
        for i, row in enumerate(evaluation[:5])
    ]
    found = check_contamination(evaluation, training + leaked, POLICY)
    assert found.status is DataCheckStatus.FLAGGED
    assert {r["id"] for r in evaluation[:5]} <= set(found.row_ids)


def test_an_evaluation_set_missing_a_label_is_a_coverage_finding(reviews):
    training, evaluation = reviews
    narrow = [row for row in evaluation if row["label"] == "fresh"]
    found = check_coverage(narrow, training, row_slice)
    assert found.status is DataCheckStatus.FLAGGED
    assert found.untested_labels == ("rotten",)
    counts = {c.value: c for c in found.labels}
    assert counts["rotten"].evaluation_rows == 0
    assert counts["rotten"].training_rows == sum(r["label"] == "rotten" for r in training)
    assert "'rotten'" in found.reason

    assert check_coverage(evaluation, training, row_slice).status is DataCheckStatus.PASSED


def test_slices_trained_on_but_never_evaluated_are_listed():
    rows = [{**row, "id": f"cb-{i}"} for i, row in enumerate(chatterbot_rows())]
    training = rows
    evaluation = [r for r in rows if r["slice"] not in {"botprofile", "food"}][:100]
    found = check_coverage(evaluation, training, row_slice)
    assert found.status is DataCheckStatus.FLAGGED
    assert {"botprofile", "food"} <= set(found.untested_slices)
    assert not found.labels  # causal LM rows have no label


# -- shift -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embed():
    """MiniLM sentence embeddings (the packaged encoder), via the shared TextEmbedder."""
    try:
        model = resolve_base_model(model_name=ENCODER, models_root=default_models_root())
    except Exception as error:  # noqa: BLE001 - the packaged model is prepared by `tuneline models prepare`
        pytest.skip(f"packaged encoder unavailable: {error}")
    embedder = TextEmbedder.load(model, device="cpu")
    return lambda rows: embedder.embed([near_duplicate_text(r) or "" for r in rows]).astype(
        np.float64
    )


def test_two_halves_of_one_set_are_not_a_shift(embed):
    rows = distinct_reviews(900)
    random.Random(1).shuffle(rows)
    training, evaluation = embed(rows[:600]), embed(rows[600:])
    shift = judge_shift(
        classifier_two_sample_test(training, evaluation, permutations=100),
        far_from_reference(training, evaluation),
        POLICY,
    )
    assert shift.status is DataCheckStatus.PASSED, shift.reason
    assert abs(shift.effect_size) < POLICY.shift_min_effect
    assert shift.far_share <= POLICY.far_max_share


def test_an_evaluation_set_from_another_domain_is_a_shift(embed):
    training = embed(distinct_reviews(600))
    questions = [{**row, "id": f"cb-{i}"} for i, row in enumerate(chatterbot_rows())]
    random.Random(2).shuffle(questions)
    evaluation = embed(questions[:300])
    shift = judge_shift(
        classifier_two_sample_test(training, evaluation, permutations=100),
        far_from_reference(training, evaluation),
        POLICY,
    )
    assert shift.status is DataCheckStatus.FLAGGED
    assert shift.effect_size >= POLICY.shift_min_effect
    assert shift.p_value <= POLICY.shift_significance_level
    assert shift.far_share > POLICY.far_max_share


def test_large_samples_with_a_trivial_difference_are_not_flagged():
    """The effect size decides: a tiny mean offset is significant at n = 2,000 a side, yet
    too small to flag."""
    rng = np.random.default_rng(5)
    training = rng.normal(size=(2000, 16))
    evaluation = rng.normal(size=(2000, 16))
    evaluation[:, 0] += 0.2  # AUC about 0.556
    test = classifier_two_sample_test(training, evaluation, permutations=100)
    assert test.p_value <= POLICY.shift_significance_level
    assert test.effect_size < POLICY.shift_min_effect
    shift = judge_shift(test, far_from_reference(training, evaluation), POLICY)
    assert shift.status is DataCheckStatus.PASSED


# -- in the engine -----------------------------------------------------------------------------


def test_the_engine_runs_the_data_checks_against_the_candidates_training_rows(tmp_path):
    """Templated sentences repeat across parts (contaminated), both labels are evaluated, and
    the shift test embeds both sides with the candidate's base model."""
    models_root = tmp_path / "models"
    build_tiny_bert(models_root / "tiny-bert")
    split = write_split(tmp_path / "data", sentiment_rows(120, seed=2), validation_fraction=0.3)

    def part(name: str) -> RowSource:
        return RowSource(
            set_key=f"set-{name}",
            dataset_path=str(split.dataset_path),
            dataset_sha256=split.dataset_sha256,
            manifest_path=str(split.manifest_path),
            manifest_sha256=split.manifest_sha256,
            part=name,
        )

    job = ScoringJob(
        evaluation="evaluations/checks",
        task_type=TaskType.CLASSIFICATION,
        subjects=(
            SubjectSpec("base", SubjectRole.CANDIDATE, BaseModelRef(model_name="tiny-bert")),
        ),
        sets=(part("validation"),),
        scoring=ScoringSettings(max_generation_examples=0, max_new_tokens=1, max_seq_length=64),
        batch_size=8,
        models_root=str(models_root),
        device="cpu",
        data_checks=DataChecksJob(
            part("train"),
            "datasets/test/versions/v1/splits/s",
            DataCheckPolicy(shift_permutations=50),
        ),
    )

    checks = score(job).data_checks

    assert checks is not None
    assert checks.training_split == "datasets/test/versions/v1/splits/s"
    assert checks.contamination.status is DataCheckStatus.FLAGGED
    assert checks.contamination.training_rows == len(split.train_ids)
    assert checks.contamination.evaluation_rows == len(split.validation_ids)
    assert checks.coverage.status is DataCheckStatus.PASSED
    assert sum(c.training_rows for c in checks.coverage.labels) == len(split.train_ids)
    assert checks.shift.status is not DataCheckStatus.SKIPPED, checks.shift.reason
    assert checks.shift.permutations == 50
    assert checks.shift.evaluation_rows == len(split.validation_ids)


def test_evals_show_prints_each_check_its_untested_labels_and_the_verdict_effect(reviews):
    training, evaluation = reviews
    narrow = [row for row in evaluation if row["label"] == "fresh"]
    _, checks = DataChecks(
        "datasets/d/versions/v/splits/s",
        check_contamination(narrow, [*training, *narrow[:5]], POLICY),
        check_coverage(narrow, training, row_slice),
        Shift(DataCheckStatus.SKIPPED, "the shift check is turned off"),
    ).applied_to(Verdict.PASSED)
    message = data_checks_to_proto(checks)
    assert data_checks_from_proto(message) == checks

    with console.capture() as captured:
        print_data_checks(message)
    shown = " ".join(captured.get().split())

    assert "data checks against datasets/d/versions/v/splits/s" in shown
    assert "contamination FLAGGED 5 of" in shown
    assert "coverage FLAGGED trained on but never evaluated: labels 'rotten'" in shown
    assert "shift SKIPPED the shift check is turned off" in shown
    assert f"contaminated rows: {', '.join(r['id'] for r in narrow[:5])}" in shown
    assert "label rotten" in shown
    assert "verdict PASSED withheld" in shown
