"""The parity check's decisions: is what was evaluated what will serve? (torch-free)

Three parts, each a :class:`ParityFinding`:

* numeric parity — the merged model (adapter folded into the base weights) against the
  unmerged one on a bounded subset of the evaluation set: fp32 max |Δlogit| and bf16
  agreement (labels for classification, greedy tokens for causal LM), against
  :class:`ParityGoals`. The measuring is done by the engine; this module only judges.
* the serving profile's lint — what the target engine would refuse or silently change:
  an adapter rank over its ``max_lora_rank``, DoRA where it has none, ``modules_to_save``
  weights it drops, a training length over its maximum.
* the tokenizer fingerprint — the trainer's record against the profile's serving tokenizer:
  another tokenizer, another chat template, other end-of-turn ids, another max length.

Without a profile the lint and fingerprint parts are SKIPPED (the reason says so); the numeric
parity still runs. Any FAILED part fails the whole check, and a failed check blocks promotion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from shared.stats.proportions import wilson_bounds


class ParityVerdict(StrEnum):
    PASSED = "PASSED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class ParityKind(IntEnum):
    """The parts of the check, in report order (numbers as in ``ParityCheckKind``)."""

    FP32_LOGITS = 1
    BF16_AGREEMENT = 2
    ADAPTER_RANK = 3
    DORA = 4
    MODULES_TO_SAVE = 5
    MAX_SEQUENCE_LENGTH = 6
    TOKENIZER = 7
    CHAT_TEMPLATE = 8
    END_OF_TURN = 9
    TOKENIZER_MAX_LENGTH = 10


class ServingWeights(StrEnum):
    ADAPTER = "ADAPTER"
    MERGED = "MERGED"


@dataclass(frozen=True)
class TokenizerFacts:
    """A tokenizer fingerprint (see ``tuneline.common.v1.TokenizerFingerprint``); in a serving
    profile, empty / zero fields mean "not compared"."""

    tokenizer_name: str = ""
    tokenizer_sha256: str = ""
    chat_template_sha256: str = ""
    end_of_turn_token_ids: tuple[int, ...] = ()
    max_sequence_length: int = 0


@dataclass(frozen=True)
class ServingProfileSpec:
    """The target engine's constraints (``tuneline.common.v1.ServingProfile``)."""

    engine: str = ""
    weights: ServingWeights = ServingWeights.ADAPTER
    #: ``FP32``, ``BF16``, ``FP16``; empty: the engine's default (taken to be half precision).
    dtype: str = ""
    max_lora_rank: int = 0
    supports_dora: bool = False
    supports_modules_to_save: bool = False
    max_sequence_length: int = 0
    serving_tokenizer: TokenizerFacts | None = None
    revision: int = 0


@dataclass(frozen=True)
class AdapterFacts:
    """What the candidate adapter is, read from its folder by the engine."""

    rank: int
    use_dora: bool
    modules_to_save: tuple[str, ...]
    max_sequence_length: int


@dataclass(frozen=True)
class ParityMeasurement:
    """Merged versus unmerged on the checked examples, as the engine measured it."""

    fp32_max_abs_logit_delta: float
    bf16_agreement: float
    bf16_compared_count: int
    example_count: int


@dataclass(frozen=True)
class ParityGoals:
    """What numeric parity must meet (the issue's goals by default)."""

    fp32_tolerance: float = 1e-4
    #: Share of labels (CLASSIFICATION) that must agree in bf16.
    bf16_min_label_agreement: float = 0.995
    #: Share of greedy tokens (CAUSAL_LM) that must agree in bf16.
    bf16_min_token_agreement: float = 0.99

    #: One-sided confidence with which bf16 agreement must be SHOWN below the goal to fail.
    #: A subset of 64 rows cannot measure 99.5 %: one flipped near-tie would read as 98.4 %.
    #: Like the regression gate, parity fails on evidence, not on a point estimate.
    bf16_confidence: float = 0.95

    def bf16_min_agreement(self, *, causal_lm: bool) -> float:
        return self.bf16_min_token_agreement if causal_lm else self.bf16_min_label_agreement


@dataclass(frozen=True)
class ParityFinding:
    kind: ParityKind
    verdict: ParityVerdict
    reason: str


@dataclass(frozen=True)
class ParityResult:
    """The whole check, as recorded on the evaluation."""

    verdict: ParityVerdict
    findings: tuple[ParityFinding, ...]
    fp32_max_abs_logit_delta: float = 0.0
    bf16_agreement: float = 0.0
    bf16_compared_count: int = 0
    example_count: int = 0
    fp32_tolerance: float = 0.0
    bf16_min_agreement: float = 0.0
    merged_artifact_uri: str = ""
    merged_sha256: str = ""
    serving_profile_revision: int = 0

    @property
    def failures(self) -> tuple[ParityFinding, ...]:
        return tuple(f for f in self.findings if f.verdict is ParityVerdict.FAILED)

    def summary(self) -> str:
        """One line for humans: the failed parts' reasons, or the verdict."""
        failed = self.failures
        if failed:
            return "parity failed: " + "; ".join(f.reason for f in failed)
        return f"parity {self.verdict.value.lower()}"


def _finding(kind: ParityKind, failed: bool, bad: str, good: str) -> ParityFinding:
    verdict = ParityVerdict.FAILED if failed else ParityVerdict.PASSED
    return ParityFinding(kind, verdict, bad if failed else good)


def numeric_findings(
    measurement: ParityMeasurement, goals: ParityGoals, *, causal_lm: bool
) -> list[ParityFinding]:
    """fp32 max |Δlogit| and bf16 agreement against the goals."""
    delta, tolerance = measurement.fp32_max_abs_logit_delta, goals.fp32_tolerance
    unit = "greedy tokens" if causal_lm else "labels"
    minimum = goals.bf16_min_agreement(causal_lm=causal_lm)
    agreement, compared = measurement.bf16_agreement, measurement.bf16_compared_count
    level = goals.bf16_confidence
    upper = _agreement_upper_bound(agreement, compared, level)
    shown = f"{agreement:.2%} of {compared} {unit} (upper {level:.0%} bound {upper:.2%})"
    return [
        _finding(
            ParityKind.FP32_LOGITS,
            not delta <= tolerance,  # NaN fails
            f"merged vs unmerged fp32 max |Δlogit| {delta:.3g} is over {tolerance:.3g}",
            f"merged vs unmerged fp32 max |Δlogit| {delta:.3g} is within {tolerance:.3g}",
        ),
        _finding(
            ParityKind.BF16_AGREEMENT,
            not upper >= minimum,  # NaN fails
            f"merged and unmerged agree on {shown} in bf16, shown under {minimum:.2%}",
            f"merged and unmerged agree on {shown} in bf16, not shown under {minimum:.2%}",
        ),
    ]


def _agreement_upper_bound(agreement: float, compared: int, level: float) -> float:
    """One-sided upper Wilson bound of the agreement share; NaN when nothing was compared."""
    if compared <= 0 or not 0.0 <= agreement <= 1.0:
        return math.nan
    agreeing = round(agreement * compared)
    return wilson_bounds(agreeing, compared, 2 * level - 1)[1]


def _skipped(kinds: Sequence[ParityKind], reason: str) -> list[ParityFinding]:
    return [ParityFinding(kind, ParityVerdict.SKIPPED, reason) for kind in kinds]


_LINT_KINDS = (
    ParityKind.ADAPTER_RANK,
    ParityKind.DORA,
    ParityKind.MODULES_TO_SAVE,
    ParityKind.MAX_SEQUENCE_LENGTH,
)
_FINGERPRINT_KINDS = (
    ParityKind.TOKENIZER,
    ParityKind.CHAT_TEMPLATE,
    ParityKind.END_OF_TURN,
    ParityKind.TOKENIZER_MAX_LENGTH,
)


def lint_profile(adapter: AdapterFacts, profile: ServingProfileSpec) -> list[ParityFinding]:
    """What the engine would refuse or silently change about this adapter."""
    engine = profile.engine or "the serving engine"
    findings: list[ParityFinding] = []
    if profile.weights is ServingWeights.MERGED:
        # a merged model has no rank, no DoRA split and no separate saved modules
        findings += _skipped(
            _LINT_KINDS[:3], f"{engine} serves merged weights: the adapter is folded in"
        )
    else:
        limit = profile.max_lora_rank
        findings.append(
            _finding(
                ParityKind.ADAPTER_RANK,
                limit > 0 and adapter.rank > limit,
                f"adapter rank {adapter.rank} is over {engine}'s max_lora_rank {limit}",
                f"adapter rank {adapter.rank} is within {engine}'s limit"
                if limit > 0
                else f"{engine} has no rank limit",
            )
        )
        findings.append(
            _finding(
                ParityKind.DORA,
                adapter.use_dora and not profile.supports_dora,
                f"the adapter is DoRA and {engine} does not serve DoRA",
                "the adapter is DoRA and the engine serves DoRA"
                if adapter.use_dora
                else "the adapter is not DoRA",
            )
        )
        saved = ", ".join(adapter.modules_to_save)
        findings.append(
            _finding(
                ParityKind.MODULES_TO_SAVE,
                bool(adapter.modules_to_save) and not profile.supports_modules_to_save,
                f"the adapter trains modules_to_save ({saved}) and {engine} drops them",
                f"modules_to_save ({saved}) are loaded by the engine"
                if adapter.modules_to_save
                else "the adapter has no modules_to_save",
            )
        )
    limit = profile.max_sequence_length
    trained = adapter.max_sequence_length
    findings.append(
        _finding(
            ParityKind.MAX_SEQUENCE_LENGTH,
            limit > 0 and trained > limit,
            f"trained on sequences up to {trained} tokens; {engine} accepts at most {limit}",
            f"trained length {trained} is within {engine}'s {limit}"
            if limit > 0
            else f"{engine} has no length limit",
        )
    )
    return findings


def compare_fingerprint(
    trained: TokenizerFacts | None, serving: TokenizerFacts | None
) -> list[ParityFinding]:
    """The checkpoint's tokenizer fingerprint against the serving stack's."""
    if serving is None:
        return _skipped(_FINGERPRINT_KINDS, "the serving profile states no serving tokenizer")
    if trained is None:
        return [
            ParityFinding(
                kind, ParityVerdict.FAILED, "the checkpoint has no recorded tokenizer fingerprint"
            )
            for kind in _FINGERPRINT_KINDS
        ]
    findings: list[ParityFinding] = []
    name_differs = bool(serving.tokenizer_name) and serving.tokenizer_name != trained.tokenizer_name
    hash_differs = (
        bool(serving.tokenizer_sha256) and serving.tokenizer_sha256 != trained.tokenizer_sha256
    )
    findings.append(
        _finding(
            ParityKind.TOKENIZER,
            name_differs or hash_differs,
            f"serving tokenizer {serving.tokenizer_name or '?'} "
            f"({serving.tokenizer_sha256[:12] or 'no hash'}) is not the training tokenizer "
            f"{trained.tokenizer_name} ({trained.tokenizer_sha256[:12]})",
            f"serving uses the training tokenizer {trained.tokenizer_name}",
        )
    )
    findings.append(
        _finding(
            ParityKind.CHAT_TEMPLATE,
            serving.chat_template_sha256 != trained.chat_template_sha256,
            f"serving chat template {serving.chat_template_sha256[:12] or '(none)'} is not the "
            f"training one {trained.chat_template_sha256[:12] or '(none)'}",
            "serving uses the training chat template",
        )
    )
    findings.append(
        _finding(
            ParityKind.END_OF_TURN,
            bool(serving.end_of_turn_token_ids)
            and sorted(serving.end_of_turn_token_ids) != sorted(trained.end_of_turn_token_ids),
            f"serving stops at end-of-turn ids {sorted(serving.end_of_turn_token_ids)}, "
            f"training used {sorted(trained.end_of_turn_token_ids)}",
            "serving stops at the training end-of-turn ids",
        )
    )
    limit, used = serving.max_sequence_length, trained.max_sequence_length
    findings.append(
        _finding(
            ParityKind.TOKENIZER_MAX_LENGTH,
            limit > 0 and limit != used,
            f"serving max length {limit} is not the training max length {used}",
            f"serving max length matches training ({used})"
            if limit > 0
            else "the serving tokenizer states no max length",
        )
    )
    return findings


def judge_parity(
    *,
    measurement: ParityMeasurement | None,
    adapter: AdapterFacts,
    trained_tokenizer: TokenizerFacts | None,
    profile: ServingProfileSpec | None,
    goals: ParityGoals,
    causal_lm: bool,
    skipped_numeric_reason: str = "",
) -> ParityResult:
    """Every part of the check, and the overall verdict: FAILED when any part failed."""
    if measurement is not None:
        findings = numeric_findings(measurement, goals, causal_lm=causal_lm)
        if profile is not None and profile.dtype == "FP32":
            # merge drift in bf16 never reaches an engine that serves in fp32
            findings[1] = ParityFinding(
                ParityKind.BF16_AGREEMENT,
                ParityVerdict.SKIPPED,
                f"{profile.engine or 'the serving engine'} serves in fp32; " + findings[1].reason,
            )
    else:
        findings = _skipped(
            (ParityKind.FP32_LOGITS, ParityKind.BF16_AGREEMENT),
            skipped_numeric_reason or "numeric parity was not measured",
        )
    if profile is None:
        reason = "the model has no serving profile"
        findings += _skipped((*_LINT_KINDS, *_FINGERPRINT_KINDS), reason)
    else:
        findings += lint_profile(adapter, profile)
        findings += compare_fingerprint(trained_tokenizer, profile.serving_tokenizer)
    findings.sort(key=lambda f: f.kind)
    if any(f.verdict is ParityVerdict.FAILED for f in findings):
        verdict = ParityVerdict.FAILED
    elif measurement is not None or any(f.verdict is ParityVerdict.PASSED for f in findings):
        verdict = ParityVerdict.PASSED
    else:
        verdict = ParityVerdict.SKIPPED
    return ParityResult(
        verdict=verdict,
        findings=tuple(findings),
        fp32_max_abs_logit_delta=measurement.fp32_max_abs_logit_delta if measurement else 0.0,
        bf16_agreement=measurement.bf16_agreement if measurement else 0.0,
        bf16_compared_count=measurement.bf16_compared_count if measurement else 0,
        example_count=measurement.example_count if measurement else 0,
        fp32_tolerance=goals.fp32_tolerance,
        bf16_min_agreement=goals.bf16_min_agreement(causal_lm=causal_lm),
        serving_profile_revision=profile.revision if profile else 0,
    )
