"""The registry's domain rules: promotion decisions, rollback targets, alerts, floors, names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.evaluator.domain.gate import GatePolicy, PairedSet, judge
from services.evaluator.domain.gate import Verdict as GateVerdict
from services.evaluator.domain.outcomes import ClassificationOutcomes
from services.registry.domain.alerts import (
    AlertNotice,
    alert_concerns_production,
    parse_alertmanager_payload,
    parse_rfc3339,
)
from services.registry.domain.events import BaseModelSource, base_model_mismatch
from services.registry.domain.live_quality import (
    LIVE_QUALITY_MIN_TRIALS,
    LiveQualityRule,
    is_past_floor,
    judge_live_quality,
)
from services.registry.domain.model import (
    MoveTrigger,
    PromotionPolicy,
    ReviewState,
    Verdict,
    parse_alias_name,
    registry_checkpoint_id,
)
from services.registry.domain.promotion import (
    CheckpointOfJob,
    Comparison,
    Decision,
    EvaluationFacts,
    decide_on_evaluation,
    significant_drops,
)
from services.registry.domain.reviews import FourEyesConflict, four_eyes_conflict
from services.registry.domain.rollback import (
    NO_ROLLBACK_TARGET,
    ProductionMove,
    choose_rollback_target,
    production_stack,
)
from shared.errors import FailedPrecondition, InvalidArgument
from shared.task_types import TaskType
from tuneline.client.alerts import alertmanager_notification

PROMO, ROLLBACK = MoveTrigger.PROMOTION, MoveTrigger.ROLLBACK_REGRESSION


def _history(*steps: tuple[MoveTrigger, str]) -> list[ProductionMove]:
    moves, current = [], ""
    for revision, (trigger, to) in enumerate(steps, start=1):
        moves.append(ProductionMove(revision, current, to, trigger))
        current = to
    return moves


# -- rollback targets -------------------------------------------------------------------------


def test_rollback_goes_to_the_previous_stint_and_then_the_one_before():
    moves = _history((PROMO, "a"), (PROMO, "b"), (PROMO, "c"))
    assert choose_rollback_target(moves, model="m", rolled_back=set()) == "b"
    moves = _history((PROMO, "a"), (PROMO, "b"), (PROMO, "c"), (ROLLBACK, "b"))
    assert production_stack(moves) == ["a", "b"]
    assert choose_rollback_target(moves, model="m", rolled_back={"c"}) == "a"


def test_rollback_skips_checkpoints_that_were_rolled_back_for_a_regression():
    moves = _history((PROMO, "a"), (PROMO, "b"), (PROMO, "c"))
    assert choose_rollback_target(moves, model="m", rolled_back={"b"}) == "a"


def test_a_manual_rollback_is_an_undo_not_a_way_back_to_the_newer_checkpoint():
    # a → b, manual rollback to a: rolling back again must not "return" to b
    moves = _history((PROMO, "a"), (PROMO, "b"), (MoveTrigger.ROLLBACK_MANUAL, "a"))
    with pytest.raises(FailedPrecondition) as raised:
        choose_rollback_target(moves, model="m", rolled_back=set())
    assert raised.value.violations[0].type == NO_ROLLBACK_TARGET


def test_re_promoting_an_old_checkpoint_keeps_the_one_in_between_as_target():
    moves = _history((PROMO, "a"), (PROMO, "b"), (MoveTrigger.MANUAL, "a"))
    assert production_stack(moves) == ["a", "b", "a"]
    assert choose_rollback_target(moves, model="m", rolled_back=set()) == "b"


@pytest.mark.parametrize(
    "moves",
    [
        [],
        _history((PROMO, "a")),
        _history((PROMO, "a"), (PROMO, "b"), (ROLLBACK, "a")),
    ],
    ids=["never-promoted", "single-checkpoint", "already-rolled-back-to-the-first"],
)
def test_no_earlier_good_checkpoint_is_a_failed_precondition(moves):
    with pytest.raises(FailedPrecondition) as raised:
        choose_rollback_target(moves, model="models/m", rolled_back={"b"})
    assert raised.value.violations[0].type == NO_ROLLBACK_TARGET
    assert raised.value.violations[0].subject == "models/m"


@pytest.mark.parametrize(
    ("target", "problem"),
    [("c", "production now"), ("z", "never production"), ("b", "rolled back")],
)
def test_an_explicit_target_must_have_been_good_production_before(target, problem):
    moves = _history((PROMO, "a"), (PROMO, "b"), (PROMO, "c"))
    with pytest.raises(FailedPrecondition, match=problem):
        choose_rollback_target(
            moves,
            model="m",
            rolled_back={"b"},
            ever_production={"a", "b", "c"},
            explicit_target=target,
        )
    assert (
        choose_rollback_target(
            moves,
            model="m",
            rolled_back={"b"},
            ever_production={"a", "b", "c"},
            explicit_target="a",
        )
        == "a"
    )


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("promote"), st.sampled_from("abcdef")),
            st.tuples(st.just("rollback"), st.just("")),
        ),
        max_size=30,
    )
)
def test_replaying_history_always_ends_on_the_checkpoint_production_points_at(operations):
    """Whatever the sequence, the stack's top is production and rollbacks follow the rule."""
    moves: list[ProductionMove] = []
    production, bad = "", set()
    for operation, checkpoint in operations:
        if operation == "promote":
            if checkpoint == production:
                continue
            moves.append(ProductionMove(len(moves) + 1, production, checkpoint, PROMO))
            production = checkpoint
        else:
            try:
                target = choose_rollback_target(moves, model="m", rolled_back=bad)
            except FailedPrecondition:
                continue
            assert target != production
            assert target not in bad
            bad.add(production)
            moves.append(ProductionMove(len(moves) + 1, production, target, ROLLBACK))
            production = target
        assert production_stack(moves)[-1] == production


# -- promotion decisions ----------------------------------------------------------------------


def _comparison(delta: float, lower: float, upper: float, **kwargs) -> Comparison:
    return Comparison(
        metric=kwargs.get("metric", "accuracy"),
        slice=kwargs.get("slice", ""),
        evaluation_set="",
        delta=delta,
        ci_lower=lower,
        ci_upper=upper,
        higher_is_better=kwargs.get("higher_is_better", True),
        gated=kwargs.get("gated", True),
    )


def _facts(**overrides) -> EvaluationFacts:
    values = {
        "policy": PromotionPolicy.AUTOMATIC,
        "verdict": Verdict.PASSED,
        "comparisons": [_comparison(0.02, 0.0, 0.04)],
        "baseline_checkpoint": "models/m/checkpoints/a",
        "production_checkpoint": "models/m/checkpoints/a",
        "candidate_checkpoint": "models/m/checkpoints/b",
        "candidate_rolled_back": False,
        "candidate_review": ReviewState.NOT_REQUIRED,
    }
    values.update(overrides)
    return EvaluationFacts(**values)


def test_a_passed_evaluation_at_least_as_good_as_production_promotes():
    assert decide_on_evaluation(_facts()).decision is Decision.PROMOTE


def test_a_first_checkpoint_compared_with_the_base_model_promotes():
    facts = _facts(baseline_checkpoint="", production_checkpoint="")
    assert decide_on_evaluation(facts).decision is Decision.PROMOTE


def test_a_noisy_drop_that_is_not_significant_still_promotes():
    facts = _facts(comparisons=[_comparison(-0.004, -0.02, 0.012)])
    assert decide_on_evaluation(facts).decision is Decision.PROMOTE


def test_a_significant_drop_within_tolerance_holds_the_promotion():
    facts = _facts(comparisons=[_comparison(-0.006, -0.009, -0.003, slice="negation")])
    outcome = decide_on_evaluation(facts)
    assert outcome.decision is Decision.HOLD
    assert "negation" in outcome.reason


def test_a_significant_rise_of_loss_holds_but_a_drop_of_loss_does_not():
    worse = _comparison(0.05, 0.02, 0.08, metric="loss", higher_is_better=False)
    better = _comparison(-0.05, -0.08, -0.02, metric="loss", higher_is_better=False)
    assert decide_on_evaluation(_facts(comparisons=[worse])).decision is Decision.HOLD
    assert decide_on_evaluation(_facts(comparisons=[better])).decision is Decision.PROMOTE


def test_ungated_comparisons_do_not_block():
    facts = _facts(comparisons=[_comparison(-0.3, -0.4, -0.2, gated=False)])
    assert decide_on_evaluation(facts).decision is Decision.PROMOTE


def _family_member(delta: float, standard_error: float, weight: float, **kwargs) -> Comparison:
    return Comparison(
        metric=kwargs.get("metric", "accuracy"),
        slice=kwargs.get("slice", ""),
        evaluation_set="",
        delta=delta,
        ci_lower=delta - 1.645 * standard_error,
        ci_upper=delta + 1.645 * standard_error,
        higher_is_better=True,
        gated=True,
        standard_error=standard_error,
        family_weight=weight,
        confidence_level=0.90,
    )


def test_one_unlucky_slice_among_many_does_not_hold_the_promotion():
    # alone, a drop of 2 standard errors is significant (and its interval excludes zero)...
    unlucky = _family_member(-0.006, 0.003, 0.2 / 17, slice="s07")
    assert unlucky.interval_shows_drop
    assert decide_on_evaluation(_facts(comparisons=[unlucky])).decision is Decision.HOLD
    # ...but not as one of the gate's family of 18, where Holm counts every comparison
    others = [_family_member(0.0, 0.003, 0.2 / 17, slice=f"s{i:02d}") for i in range(16)]
    primary = _family_member(0.001, 0.002, 0.8)
    facts = _facts(comparisons=[primary, unlucky, *others])
    assert decide_on_evaluation(facts).decision is Decision.PROMOTE
    # a clear drop still holds, in the family too
    clear = _family_member(-0.02, 0.003, 0.2 / 17, slice="negation")
    held = decide_on_evaluation(_facts(comparisons=[primary, clear, *others]))
    assert held.decision is Decision.HOLD
    assert "negation" in held.reason


def test_the_registry_uses_the_gates_own_rule_and_family():
    # 10,000 examples, 0.5 points worse for sure: within the 1-point tolerance, so the gate
    # PASSES it; but it is not at least as good as production, so it is not auto-promoted
    n, base_wrong = 10_000, 1000
    truth = tuple("fresh" if i % 2 == 0 else "rotten" for i in range(n))

    def outcomes(wrong: int) -> ClassificationOutcomes:
        flip = {"fresh": "rotten", "rotten": "fresh"}
        return ClassificationOutcomes(
            example_ids=tuple(f"r-{i}" for i in range(n)),
            slices=("",) * n,
            true_labels=truth,
            predicted_labels=tuple(flip[t] if i < wrong else t for i, t in enumerate(truth)),
            losses=np.zeros(n),
        )

    result = judge(
        [PairedSet("", outcomes(base_wrong + 50), outcomes(base_wrong))],
        GatePolicy.resolve(TaskType.CLASSIFICATION),
    )
    assert result.verdict is GateVerdict.PASSED
    comparisons = [
        Comparison(
            metric=c.metric,
            slice=c.slice,
            evaluation_set=c.evaluation_set,
            delta=c.delta,
            ci_lower=c.delta_ci_lower,
            ci_upper=c.delta_ci_upper,
            higher_is_better=c.higher_is_better,
            gated=c.family_weight > 0,
            standard_error=c.standard_error,
            family_weight=c.family_weight,
            confidence_level=c.confidence_level,
        )
        for c in result.comparisons
    ]
    drops = significant_drops(comparisons)
    assert {c.metric for c in drops} == {"accuracy", "macro_f1"}
    assert decide_on_evaluation(_facts(comparisons=comparisons)).decision is Decision.HOLD


def test_a_baseline_production_has_moved_away_from_proves_nothing():
    facts = _facts(production_checkpoint="models/m/checkpoints/z")
    outcome = decide_on_evaluation(facts)
    assert outcome.decision is Decision.HOLD
    assert "re-evaluate" in outcome.reason


@pytest.mark.parametrize("verdict", [Verdict.REGRESSED, Verdict.INSUFFICIENT_DATA, Verdict.FAILED])
def test_only_passed_moves_anything(verdict):
    assert decide_on_evaluation(_facts(verdict=verdict)).decision is Decision.NONE
    manual = _facts(verdict=verdict, policy=PromotionPolicy.MANUAL)
    assert decide_on_evaluation(manual).decision is Decision.NONE


def test_manual_policy_waits_for_review_and_a_reviewed_checkpoint_stays_reviewed():
    manual = _facts(policy=PromotionPolicy.MANUAL)
    assert decide_on_evaluation(manual).decision is Decision.AWAIT_REVIEW
    rejected = _facts(policy=PromotionPolicy.MANUAL, candidate_review=ReviewState.REJECTED)
    assert decide_on_evaluation(rejected).decision is Decision.NONE


def test_stale_or_rolled_back_or_already_production_never_promotes():
    assert decide_on_evaluation(_facts(is_latest_evaluation=False)).decision is Decision.NONE
    assert decide_on_evaluation(_facts(candidate_rolled_back=True)).decision is Decision.HOLD
    same = _facts(candidate_checkpoint="models/m/checkpoints/a")
    assert decide_on_evaluation(same).decision is Decision.NONE


def test_a_checkpoint_whose_training_was_cancelled_or_failed_is_never_promoted_automatically():
    outcome = decide_on_evaluation(_facts(candidate_training_interrupted=True))
    assert outcome.decision is Decision.HOLD
    assert "cancelled or failed" in outcome.reason
    # a person may still look at it: MANUAL review is not automatic promotion
    manual = _facts(policy=PromotionPolicy.MANUAL, candidate_training_interrupted=True)
    assert decide_on_evaluation(manual).decision is Decision.AWAIT_REVIEW


def test_within_a_job_the_checkpoint_with_the_lowest_validation_loss_wins_in_any_order():
    best = CheckpointOfJob("trainingJobs/j", 1.20)
    later_worse = CheckpointOfJob("trainingJobs/j", 1.35)
    # the best passed first and is production: a worse one of the same job passing later holds
    held = decide_on_evaluation(_facts(candidate_job=later_worse, production_job=best))
    assert held.decision is Decision.HOLD
    assert "only the best checkpoint of a job" in held.reason
    assert "1.2" in held.reason
    # the worse one passed first: the best one still replaces it when it passes
    assert (
        decide_on_evaluation(_facts(candidate_job=best, production_job=later_worse)).decision
        is Decision.PROMOTE
    )
    # an equal loss does not churn production
    assert (
        decide_on_evaluation(_facts(candidate_job=best, production_job=best)).decision
        is Decision.HOLD
    )
    # another job, or no validation loss to compare, is judged on the evaluation alone
    other_job = CheckpointOfJob("trainingJobs/k", 1.50)
    unvalidated = CheckpointOfJob("trainingJobs/j", None)
    for candidate, production in ((other_job, best), (unvalidated, best), (later_worse, None)):
        facts = _facts(candidate_job=candidate, production_job=production)
        assert decide_on_evaluation(facts).decision is Decision.PROMOTE


# -- alerts -----------------------------------------------------------------------------------

START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_alertmanager_payload_is_read_with_nanosecond_times_and_labels():
    payload = alertmanager_notification("sentiment", fingerprint="abc123", starts_at=START)
    (notice,) = parse_alertmanager_payload(payload)
    assert notice.firing
    assert notice.model_id == "sentiment"
    assert notice.starts_at == START
    assert notice.idempotency_key == f"alert:abc123:{START.isoformat()}"
    assert notice.cause == "alert:abc123"
    assert "below its floor" in notice.reason


def test_model_label_may_be_the_full_resource_name_and_resolved_is_not_firing():
    payload = alertmanager_notification(
        "models/sentiment", fingerprint="f", starts_at=START, status="resolved"
    )
    payload["commonLabels"] = {}
    (notice,) = parse_alertmanager_payload(payload)
    assert notice.model_id == "sentiment"
    assert not notice.firing


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.update(version="3"), "version"),
        (lambda p: p.update(alerts={}), "list"),
        (lambda p: p["alerts"][0].pop("fingerprint"), "fingerprint"),
        (lambda p: p["alerts"][0].update(startsAt="yesterday"), "startsAt"),
        (lambda p: p["alerts"][0].update(status="pending"), "status"),
    ],
)
def test_malformed_payloads_are_refused(mutate, message):
    payload = alertmanager_notification("m", fingerprint="f", starts_at=START)
    mutate(payload)
    with pytest.raises(ValueError, match=message):
        parse_alertmanager_payload(payload)
    with pytest.raises(ValueError, match="object"):
        parse_alertmanager_payload([payload])


def test_rfc3339_offsets_are_normalised_to_utc():
    assert parse_rfc3339("2025-03-01T14:00:00+02:00") == START
    with pytest.raises(ValueError, match="offset"):
        parse_rfc3339("2025-03-01T12:00:00")


def _notice(checkpoint_id: str = "", starts_at: datetime = START) -> AlertNotice:
    return AlertNotice("f", "firing", starts_at, "m", checkpoint_id, "", "")


def test_an_alert_naming_another_checkpoint_does_not_concern_production():
    concerns, why = alert_concerns_production(
        _notice("old"), production_checkpoint_id="new", production_since=START
    )
    assert not concerns
    assert "old" in why
    concerns, _ = alert_concerns_production(
        _notice("new"), production_checkpoint_id="new", production_since=START + timedelta(hours=1)
    )
    assert concerns


def test_an_alert_that_started_before_production_moved_is_about_the_previous_checkpoint():
    late = alert_concerns_production(
        _notice(), production_checkpoint_id="b", production_since=START + timedelta(seconds=1)
    )
    assert late == (False, "the alert started before the current production checkpoint went live")
    assert alert_concerns_production(
        _notice(), production_checkpoint_id="b", production_since=START - timedelta(seconds=1)
    ) == (True, "")
    assert not alert_concerns_production(
        _notice(), production_checkpoint_id="", production_since=None
    )[0]


# -- floors and names -------------------------------------------------------------------------


def test_floors_are_floors_for_fractions_and_ceilings_for_losses():
    assert is_past_floor("accuracy", 0.69, 0.7)
    assert not is_past_floor("accuracy", 0.7, 0.7)
    assert is_past_floor("loss", 0.9, 0.8)
    assert not is_past_floor("loss", 0.7, 0.8)
    assert not is_past_floor("accuracy", 0.1, None)


def test_counted_live_quality_waits_for_its_minimum_then_compares_the_upper_bound():
    few = judge_live_quality(10, LIVE_QUALITY_MIN_TRIALS - 1, floor=0.7)
    assert few.upper_bound < 0.7  # 10 right of 99: clearly bad, but too few to act on
    assert not few.below_floor
    bad = judge_live_quality(45, 100, floor=0.7)
    assert bad.lower_bound < bad.rate < bad.upper_bound < 0.7
    assert bad.below_floor
    assert bad.confidence_level == pytest.approx(0.99)
    # 66 % of 400 is below a floor of 0.7, but not surely: the sequence does not exclude it
    unsure = judge_live_quality(264, 400, floor=0.7)
    assert unsure.rate < 0.7 < unsure.upper_bound
    assert not unsure.below_floor
    assert not judge_live_quality(45, 100, floor=None).below_floor


def test_the_live_quality_rule_sets_the_minimum_the_error_rate_and_the_prior():
    # the defaults are the ones the module documents
    assert judge_live_quality(45, 100, 0.7) == judge_live_quality(45, 100, 0.7, LiveQualityRule())
    # a lower minimum acts on fewer outcomes; a higher one waits
    assert judge_live_quality(20, 60, 0.7, LiveQualityRule(min_trials=50)).below_floor
    assert not judge_live_quality(45, 100, 0.7, LiveQualityRule(min_trials=200)).below_floor
    # a smaller alpha widens the bounds and reports its own confidence level
    strict = judge_live_quality(45, 100, 0.7, LiveQualityRule(alpha=0.0001))
    default = judge_live_quality(45, 100, 0.7)
    assert strict.upper_bound > default.upper_bound
    assert strict.confidence_level == pytest.approx(0.9999)
    # the prior's weight pulls the bounds towards the floor it is centred on
    heavy = judge_live_quality(45, 100, 0.7, LiveQualityRule(prior_weight=2000.0))
    assert heavy.upper_bound > default.upper_bound


@pytest.mark.parametrize(
    "arguments", [{"alpha": 0.0}, {"alpha": 1.0}, {"min_trials": 0}, {"prior_weight": 0.0}]
)
def test_a_live_quality_rule_out_of_range_is_refused(arguments):
    with pytest.raises(ValueError, match="live quality"):
        LiveQualityRule(**arguments)


def test_registry_checkpoint_ids_keep_job_and_step_apart():
    assert registry_checkpoint_id("trainingJobs/a-b/checkpoints/c") == "a-b.c"
    assert registry_checkpoint_id("trainingJobs/a/checkpoints/b-c") == "a.b-c"
    with pytest.raises(ValueError, match="trainingJobs"):
        registry_checkpoint_id("models/m/checkpoints/c")


def test_alias_names_are_checked_with_the_field_named():
    assert parse_alias_name("models/m/aliases/production") == ("m", "production")
    assert parse_alias_name("models/m/aliases/-", allow_all=True) == ("m", "-")
    with pytest.raises(InvalidArgument) as raised:
        parse_alias_name("models/m/aliases/-")
    assert raised.value.violations[0].field == "name"
    with pytest.raises(InvalidArgument):
        parse_alias_name("models/M/aliases/production")


@pytest.mark.parametrize(
    ("reviewer", "job_creator", "model_creator", "conflict"),
    [
        ("bob", "bob", "ed", FourEyesConflict("training_job", "bob")),
        ("ed", "bob", "ed", FourEyesConflict("model", "ed")),
        ("ed", "ed", "ed", FourEyesConflict("training_job", "ed")),  # the nearer authorship
        ("alice", "bob", "ed", None),
        # created without auth (or by a policy, named for itself): binds no person
        ("alice", "", "", None),
        ("alice", "trainingPolicies/nightly", "ed", None),
        ("", "", "", None),  # no reviewer known (a server without auth): nothing to compare
    ],
)
def test_four_eyes_refuses_the_creator_of_the_job_or_the_model(
    reviewer: str, job_creator: str, model_creator: str, conflict: FourEyesConflict | None
) -> None:
    assert (
        four_eyes_conflict(reviewer, job_creator=job_creator, model_creator=model_creator)
        == conflict
    )


def test_a_checkpoint_on_another_base_model_than_its_models_is_named_as_such() -> None:
    model = BaseModelSource(source="model_name", value="minilm", files_sha256="a" * 64)
    same = BaseModelSource(source="model_name", value="minilm", files_sha256="")
    assert base_model_mismatch(model, same) == ""
    unsaid = BaseModelSource(source=None, value="", files_sha256="b" * 64)
    assert base_model_mismatch(model, unsaid) == ""  # an older producer: not refused
    by_path = BaseModelSource(source="model_path", value="/m", files_sha256="")
    assert base_model_mismatch(model, by_path) == (
        "trained on model_path='/m', the model's base is model_name='minilm'"
    )
    other_files = BaseModelSource(source="model_name", value="minilm", files_sha256="b" * 64)
    assert base_model_mismatch(model, other_files) == (
        "the base model's files_sha256 differs from the model's"
    )
