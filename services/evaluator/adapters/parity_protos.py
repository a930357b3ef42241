"""The parity check's domain values to and from ``tuneline.common.v1`` messages."""

from __future__ import annotations

from services.evaluator.domain.parity import (
    ParityFinding,
    ParityKind,
    ParityResult,
    ParityVerdict,
    ServingProfileSpec,
    ServingWeights,
    TokenizerFacts,
)
from tuneline.common.v1 import resources_pb2 as common_pb2


def tokenizer_facts_from_proto(message: common_pb2.TokenizerFingerprint) -> TokenizerFacts:
    return TokenizerFacts(
        tokenizer_name=message.tokenizer_name,
        tokenizer_sha256=message.tokenizer_sha256,
        chat_template_sha256=message.chat_template_sha256,
        end_of_turn_token_ids=tuple(message.end_of_turn_token_ids),
        max_sequence_length=message.max_sequence_length,
    )


def serving_profile_from_proto(message: common_pb2.ServingProfile) -> ServingProfileSpec:
    return ServingProfileSpec(
        engine=message.engine,
        weights=(
            ServingWeights.MERGED
            if message.weights == common_pb2.SERVING_WEIGHTS_MERGED
            else ServingWeights.ADAPTER
        ),
        dtype=(
            common_pb2.Precision.Name(message.dtype).removeprefix("PRECISION_")
            if message.dtype != common_pb2.PRECISION_UNSPECIFIED
            else ""
        ),
        max_lora_rank=message.max_lora_rank,
        supports_dora=message.supports_dora,
        supports_modules_to_save=message.supports_modules_to_save,
        max_sequence_length=message.max_sequence_length,
        serving_tokenizer=(
            tokenizer_facts_from_proto(message.serving_tokenizer)
            if message.HasField("serving_tokenizer")
            else None
        ),
        revision=message.revision,
    )


def _verdict_to_proto(verdict: ParityVerdict) -> common_pb2.ParityVerdict.ValueType:
    return common_pb2.ParityVerdict.Value(f"PARITY_VERDICT_{verdict.value}")


def _verdict_from_proto(value: int) -> ParityVerdict:
    name = common_pb2.ParityVerdict.Name(common_pb2.ParityVerdict.ValueType(value))
    return ParityVerdict(name.removeprefix("PARITY_VERDICT_"))


def parity_to_proto(result: ParityResult) -> common_pb2.ParityCheck:
    return common_pb2.ParityCheck(
        verdict=_verdict_to_proto(result.verdict),
        findings=[
            common_pb2.ParityFinding(
                kind=common_pb2.ParityCheckKind.ValueType(int(f.kind)),
                verdict=_verdict_to_proto(f.verdict),
                reason=f.reason,
            )
            for f in result.findings
        ],
        fp32_max_abs_logit_delta=result.fp32_max_abs_logit_delta,
        bf16_agreement=result.bf16_agreement,
        bf16_compared_count=result.bf16_compared_count,
        example_count=result.example_count,
        fp32_tolerance=result.fp32_tolerance,
        bf16_min_agreement=result.bf16_min_agreement,
        merged_artifact_uri=result.merged_artifact_uri,
        merged_sha256=result.merged_sha256,
        serving_profile_revision=result.serving_profile_revision,
    )


def parity_from_proto(message: common_pb2.ParityCheck) -> ParityResult | None:
    """None for an evaluation stored before parity existed (verdict unset)."""
    if message.verdict == common_pb2.PARITY_VERDICT_UNSPECIFIED:
        return None
    return ParityResult(
        verdict=_verdict_from_proto(message.verdict),
        findings=tuple(
            ParityFinding(ParityKind(f.kind), _verdict_from_proto(f.verdict), f.reason)
            for f in message.findings
        ),
        fp32_max_abs_logit_delta=message.fp32_max_abs_logit_delta,
        bf16_agreement=message.bf16_agreement,
        bf16_compared_count=message.bf16_compared_count,
        example_count=message.example_count,
        fp32_tolerance=message.fp32_tolerance,
        bf16_min_agreement=message.bf16_min_agreement,
        merged_artifact_uri=message.merged_artifact_uri,
        merged_sha256=message.merged_sha256,
        serving_profile_revision=message.serving_profile_revision,
    )
