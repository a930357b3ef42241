"""Validation of a model definition (CreateModel) and of a serving profile (SetServingProfile):
every problem at once, by field path.

Returns the model with its defaults resolved (the gate policy's task defaults, the MANUAL
promotion policy, the VALIDATION part), so what is stored and shown is what applies. The
handlers hand the definitions over as the bytes the commands carry and store the bytes this
returns (:func:`definition_to_store`, :func:`serving_profile_problems`,
:func:`with_serving_profile`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from services.registry.adapters.protos import (
    base_model_from_proto,
    policy_from_proto,
    task_type_from_proto,
)
from services.registry.adapters.tables import ModelRow
from services.registry.domain.events import BaseModelSource
from services.registry.domain.model import PromotionPolicy, model_name
from shared import names
from shared.errors import FieldViolation, InvalidArgument
from shared.ownership import validate_budget, validate_owner
from shared.task_types import TaskType
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.registry.v1 import resources_pb2

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_LABEL = re.compile(r"^[a-z0-9]+([_-][a-z0-9]+)*$")
_MODEL_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

_METRICS: dict[TaskType, tuple[str, ...]] = {
    TaskType.CLASSIFICATION: ("loss", "accuracy", "macro_f1"),
    TaskType.CAUSAL_LM: ("loss", "token_accuracy", "exact_match"),
}
_DEFAULT_GATES: dict[TaskType, tuple[tuple[str, float], ...]] = {
    TaskType.CLASSIFICATION: (("accuracy", 0.01), ("macro_f1", 0.01)),
    TaskType.CAUSAL_LM: (("token_accuracy", 0.01), ("loss", 0.05)),
}
DEFAULT_SIGNIFICANCE_LEVEL = 0.05
DEFAULT_MIN_SLICE_SIZE = 30
DEFAULT_MIN_EXAMPLES = 50
DEFAULT_BOOTSTRAP_RESAMPLES = 1000


def _known_metric(task_type: TaskType, metric: str) -> bool:
    if metric in _METRICS[task_type]:
        return True
    return (
        task_type is TaskType.CLASSIFICATION
        and metric.startswith("recall/")
        and len(metric) > len("recall/")
    )


def _check_evaluation_set(
    evaluation_set: common_pb2.EvaluationSet, path: str, *, primary: bool
) -> list[FieldViolation]:
    problems = []
    version = evaluation_set.dataset_version
    if not version:
        problems.append(FieldViolation(f"{path}.dataset_version", "required", "REQUIRED"))
    else:
        problems += names.DATASET_VERSION.violations(version, field=f"{path}.dataset_version")
    split = evaluation_set.split
    is_split_of_version = names.SPLIT.matches(split) and split.startswith(f"{version}/splits/")
    if split and version and not is_split_of_version:
        problems.append(
            FieldViolation(
                f"{path}.split",
                f"{split!r} is not a split of {version} ({version}/splits/{{split}})",
                "INVALID_NAME",
            )
        )
    if evaluation_set.part not in common_pb2.SplitPart.values():
        problems.append(FieldViolation(f"{path}.part", "unknown split part", "INVALID_ENUM"))
    if primary and evaluation_set.label:
        problems.append(
            FieldViolation(f"{path}.label", "the primary set has no label", "NOT_ALLOWED")
        )
    if not primary:
        if not evaluation_set.label:
            problems.append(
                FieldViolation(f"{path}.label", "a golden set needs a label", "REQUIRED")
            )
        elif not _LABEL.match(evaluation_set.label) or len(evaluation_set.label) > 63:
            problems.append(
                FieldViolation(
                    f"{path}.label",
                    f"{evaluation_set.label!r} is not lower_snake or kebab case (at most 63)",
                    "INVALID_FORMAT",
                )
            )
    return problems


def _resolve_evaluation_set(evaluation_set: common_pb2.EvaluationSet) -> None:
    if evaluation_set.split and evaluation_set.part == common_pb2.SPLIT_PART_UNSPECIFIED:
        evaluation_set.part = common_pb2.SPLIT_PART_VALIDATION


def _check_base_model(base: common_pb2.BaseModel, path: str) -> list[FieldViolation]:
    source = base.WhichOneof("source")
    if source is None:
        return [FieldViolation(path, "set exactly one of model_name or model_path", "REQUIRED")]
    problems = []
    if source == "model_name" and not _MODEL_FOLDER.match(base.model_name):
        problems.append(
            FieldViolation(
                f"{path}.model_name",
                f"{base.model_name!r} is not a folder name inside the models root",
                "INVALID_FORMAT",
            )
        )
    if source == "model_path" and not base.model_path.startswith("/"):
        problems.append(
            FieldViolation(f"{path}.model_path", "must be an absolute path", "INVALID_FORMAT")
        )
    if base.files_sha256 and not _SHA256.match(base.files_sha256):
        problems.append(
            FieldViolation(
                f"{path}.files_sha256", "must be 64 lowercase hexadecimal digits", "INVALID_FORMAT"
            )
        )
    return problems


def _check_gate_policy(
    gate: common_pb2.GatePolicy, task_type: TaskType | None, path: str
) -> list[FieldViolation]:
    problems = []
    seen: set[str] = set()
    for index, metric_gate in enumerate(gate.metrics):
        field = f"{path}.metrics[{index}]"
        name = metric_gate.metric
        if not name:
            problems.append(FieldViolation(f"{field}.metric", "required", "REQUIRED"))
        elif task_type is not None and not _known_metric(task_type, name):
            known = ", ".join(_METRICS[task_type])
            extra = ", recall/<label>" if task_type is TaskType.CLASSIFICATION else ""
            problems.append(
                FieldViolation(
                    f"{field}.metric",
                    f"{name!r} is not a metric of this task ({known}{extra})",
                    "UNKNOWN_METRIC",
                )
            )
        elif name in seen:
            problems.append(
                FieldViolation(f"{field}.metric", f"{name!r} is gated twice", "DUPLICATE")
            )
        seen.add(name)
        if not math.isfinite(metric_gate.tolerance) or metric_gate.tolerance < 0:
            problems.append(
                FieldViolation(f"{field}.tolerance", "must be a finite number >= 0", "OUT_OF_RANGE")
            )
        if metric_gate.HasField("min_absolute_score"):
            score = metric_gate.min_absolute_score
            fraction = name != "loss"
            if not math.isfinite(score) or score < 0 or (fraction and score > 1):
                problems.append(
                    FieldViolation(
                        f"{field}.min_absolute_score",
                        "must be in [0, 1]" if fraction else "must be a finite number >= 0",
                        "OUT_OF_RANGE",
                    )
                )
    if gate.significance_level != 0 and not 0 < gate.significance_level < 0.5:
        problems.append(
            FieldViolation(
                f"{path}.significance_level", "must be in (0, 0.5) (0: default)", "OUT_OF_RANGE"
            )
        )
    problems += _check_gate_roles(gate, task_type, path)
    for name in ("min_slice_size", "min_examples"):
        if getattr(gate, name) < 0:
            problems.append(
                FieldViolation(f"{path}.{name}", "must be >= 1 (0: default)", "OUT_OF_RANGE")
            )
    if gate.bootstrap_resamples != 0 and gate.bootstrap_resamples < 100:
        problems.append(
            FieldViolation(
                f"{path}.bootstrap_resamples", "must be >= 100 (0: default)", "OUT_OF_RANGE"
            )
        )
    if gate.test not in common_pb2.SignificanceTest.values():
        problems.append(FieldViolation(f"{path}.test", "unknown test", "INVALID_ENUM"))
    return problems


def _check_gate_roles(
    gate: common_pb2.GatePolicy, task_type: TaskType | None, path: str
) -> list[FieldViolation]:
    """The primary metric is one of the gated ones; gated slices are named once each."""
    problems = []
    defaults = _DEFAULT_GATES[task_type] if task_type is not None else ()
    gated = [g.metric for g in gate.metrics] or [m for m, _ in defaults]
    if gate.primary_metric and gate.primary_metric not in gated:
        problems.append(
            FieldViolation(
                f"{path}.primary_metric",
                f"{gate.primary_metric!r} is not one of the gated metrics ({', '.join(gated)})",
                "NOT_GATED",
            )
        )
    slices: set[str] = set()
    for index, slice_name in enumerate(gate.gated_slices):
        field = f"{path}.gated_slices[{index}]"
        if not slice_name.strip():
            problems.append(FieldViolation(field, "must not be empty", "REQUIRED"))
        elif len(slice_name) > 200:
            problems.append(FieldViolation(field, "at most 200 characters", "TOO_LONG"))
        elif slice_name in slices:
            problems.append(FieldViolation(field, f"{slice_name!r} is listed twice", "DUPLICATE"))
        slices.add(slice_name)
    return problems


def _resolve_gate_policy(gate: common_pb2.GatePolicy, task_type: TaskType) -> None:
    if not gate.metrics:
        for metric, tolerance in _DEFAULT_GATES[task_type]:
            gate.metrics.add(metric=metric, tolerance=tolerance)
    gate.significance_level = gate.significance_level or DEFAULT_SIGNIFICANCE_LEVEL
    gate.min_slice_size = gate.min_slice_size or DEFAULT_MIN_SLICE_SIZE
    gate.min_examples = gate.min_examples or DEFAULT_MIN_EXAMPLES
    gate.bootstrap_resamples = gate.bootstrap_resamples or DEFAULT_BOOTSTRAP_RESAMPLES
    if not gate.HasField("seed"):
        gate.seed = 0
    gate.primary_metric = gate.primary_metric or gate.metrics[0].metric


def _check_budget(budget: common_pb2.Budget, path: str) -> list[FieldViolation]:
    limits = {
        name: (limit.currency_code, limit.units, limit.nanos)
        for name in ("max_cost_per_run", "max_cost_per_month")
        if budget.HasField(name) and (limit := getattr(budget, name)) is not None
    }
    return validate_budget(limits, path)


def validate_new_model(  # noqa: PLR0912 - one branch per field rule
    model_id: str, model: resources_pb2.Model | None
) -> resources_pb2.Model:
    """The model to store for CreateModel, or INVALID_ARGUMENT listing every violation."""
    problems: list[FieldViolation] = []
    if not model_id:
        problems.append(FieldViolation("model_id", "required", "REQUIRED"))
    else:
        problems += names.id_violations(model_id, field="model_id", reason="INVALID_FORMAT")
    if model is None:
        problems.append(FieldViolation("model", "required", "REQUIRED"))
        raise InvalidArgument("the model is invalid", problems)
    if len(model.display_name) > 200:
        problems.append(FieldViolation("model.display_name", "at most 200 characters", "TOO_LONG"))
    if len(model.description) > 4000:
        problems.append(FieldViolation("model.description", "at most 4000 characters", "TOO_LONG"))
    task_type = task_type_from_proto(model.task_type)
    if task_type is None:
        problems.append(
            FieldViolation("model.task_type", "required: CLASSIFICATION or CAUSAL_LM", "REQUIRED")
        )
    if not model.HasField("base_model"):
        problems.append(FieldViolation("model.base_model", "required", "REQUIRED"))
    else:
        problems += _check_base_model(model.base_model, "model.base_model")
    if not model.HasField("evaluation_set"):
        problems.append(
            FieldViolation(
                "model.evaluation_set",
                "required: the pinned dataset version (and split) every checkpoint is gated on",
                "REQUIRED",
            )
        )
    else:
        problems += _check_evaluation_set(
            model.evaluation_set, "model.evaluation_set", primary=True
        )
    labels: set[str] = set()
    for index, golden in enumerate(model.golden_sets):
        path = f"model.golden_sets[{index}]"
        problems += _check_evaluation_set(golden, path, primary=False)
        if golden.label and golden.label in labels:
            problems.append(
                FieldViolation(f"{path}.label", f"{golden.label!r} is used twice", "DUPLICATE")
            )
        labels.add(golden.label)
    problems += _check_gate_policy(model.gate_policy, task_type, "model.gate_policy")
    if model.promotion_policy not in resources_pb2.PromotionPolicy.values():
        problems.append(FieldViolation("model.promotion_policy", "unknown policy", "INVALID_ENUM"))
    owner = model.owner
    problems += validate_owner(owner.team, owner.contact, owner.runbook_uri, "model.owner")
    problems += _check_budget(model.budget, "model.budget")
    if model.HasField("serving_profile"):
        problems += check_serving_profile(model.serving_profile, "model.serving_profile")
    if problems or task_type is None:  # a model without a task type has a problem listed
        raise InvalidArgument(f"the model {model_name(model_id)} is invalid", problems)

    resolved = resources_pb2.Model()
    resolved.CopyFrom(model)
    for output_only in (
        "name",
        "production_checkpoint",
        "candidate_checkpoint",
        "create_time",
        "update_time",
        "creator",  # the verified caller, set by create_model: never the request's word
    ):
        resolved.ClearField(output_only)
    _resolve_evaluation_set(resolved.evaluation_set)
    for golden in resolved.golden_sets:
        _resolve_evaluation_set(golden)
    _resolve_gate_policy(resolved.gate_policy, task_type)
    if resolved.promotion_policy == resources_pb2.PROMOTION_POLICY_UNSPECIFIED:
        resolved.promotion_policy = resources_pb2.PROMOTION_POLICY_MANUAL
    if resolved.HasField("serving_profile"):
        resolved.serving_profile.CopyFrom(resolved_serving_profile(resolved.serving_profile, 1))
    return resolved


@dataclass(frozen=True)
class DefinitionToStore:
    """What CreateModel stores: the resolved definition and the columns read from it."""

    #: The resolved ``Model`` message, serialized deterministically.
    definition: bytes
    #: The contract's ``TaskType`` number, as the models table keeps it.
    task_type: int
    promotion_policy: PromotionPolicy


def definition_to_store(
    model_id: str, definition: bytes | None, *, creator: str
) -> DefinitionToStore:
    """:func:`validate_new_model` on a requested definition, with ``creator`` recorded in it."""
    requested = None if definition is None else resources_pb2.Model.FromString(definition)
    resolved = validate_new_model(model_id, requested)
    resolved.creator = creator
    return DefinitionToStore(
        definition=resolved.SerializeToString(deterministic=True),
        task_type=resolved.task_type,
        promotion_policy=policy_from_proto(resolved.promotion_policy),
    )


#: The longest sequence a serving profile may state (a sanity bound, not an engine's).
_MAX_PROFILE_SEQUENCE_LENGTH = 10_000_000


def check_serving_profile(profile: common_pb2.ServingProfile, path: str) -> list[FieldViolation]:
    """What is nonsensical in a serving profile (every violation, with its field path)."""
    problems: list[FieldViolation] = []
    if len(profile.engine) > 200:
        problems.append(FieldViolation(f"{path}.engine", "at most 200 characters", "TOO_LONG"))
    if profile.weights not in common_pb2.ServingWeights.values():
        problems.append(FieldViolation(f"{path}.weights", "unknown weights kind", "INVALID_ENUM"))
    if profile.dtype not in common_pb2.Precision.values():
        problems.append(FieldViolation(f"{path}.dtype", "unknown dtype", "INVALID_ENUM"))
    if profile.max_lora_rank < 0:
        problems.append(
            FieldViolation(f"{path}.max_lora_rank", "must be >= 0 (0: no limit)", "OUT_OF_RANGE")
        )
    for name, value in (
        ("max_sequence_length", profile.max_sequence_length),
        ("serving_tokenizer.max_sequence_length", profile.serving_tokenizer.max_sequence_length),
    ):
        if not 0 <= value <= _MAX_PROFILE_SEQUENCE_LENGTH:
            problems.append(
                FieldViolation(
                    f"{path}.{name}",
                    f"must be in [0, {_MAX_PROFILE_SEQUENCE_LENGTH}] (0: not limited)",
                    "OUT_OF_RANGE",
                )
            )
    tokenizer = profile.serving_tokenizer
    for name in ("tokenizer_sha256", "chat_template_sha256"):
        value = getattr(tokenizer, name)
        if value and not _SHA256.match(value):
            problems.append(
                FieldViolation(
                    f"{path}.serving_tokenizer.{name}",
                    "must be a lowercase hexadecimal SHA-256 (64 characters)",
                    "INVALID_FORMAT",
                )
            )
    if any(token_id < 0 for token_id in tokenizer.end_of_turn_token_ids):
        problems.append(
            FieldViolation(
                f"{path}.serving_tokenizer.end_of_turn_token_ids",
                "token ids are >= 0",
                "OUT_OF_RANGE",
            )
        )
    if len(tokenizer.tokenizer_name) > 300:
        problems.append(
            FieldViolation(
                f"{path}.serving_tokenizer.tokenizer_name", "at most 300 characters", "TOO_LONG"
            )
        )
    return problems


def resolved_serving_profile(
    profile: common_pb2.ServingProfile, revision: int
) -> common_pb2.ServingProfile:
    """The profile as stored: defaults resolved, end-of-turn ids sorted, ``revision`` set."""
    resolved = common_pb2.ServingProfile()
    resolved.CopyFrom(profile)
    if resolved.weights == common_pb2.SERVING_WEIGHTS_UNSPECIFIED:
        resolved.weights = common_pb2.SERVING_WEIGHTS_ADAPTER
    if resolved.HasField("serving_tokenizer"):
        ids = sorted(set(resolved.serving_tokenizer.end_of_turn_token_ids))
        del resolved.serving_tokenizer.end_of_turn_token_ids[:]
        resolved.serving_tokenizer.end_of_turn_token_ids.extend(ids)
    resolved.revision = revision
    return resolved


def serving_profile_problems(profile: bytes) -> list[FieldViolation]:
    """:func:`check_serving_profile` on a requested profile (field paths ``serving_profile.*``)."""
    return check_serving_profile(common_pb2.ServingProfile.FromString(profile), "serving_profile")


def with_serving_profile(definition: bytes, profile: bytes | None) -> bytes:
    """A stored definition with ``profile`` as its next revision (``None`` clears it)."""
    model = resources_pb2.Model.FromString(definition)
    if profile is not None:
        revision = model.serving_profile.revision + 1
        requested = common_pb2.ServingProfile.FromString(profile)
        model.serving_profile.CopyFrom(resolved_serving_profile(requested, revision))
    else:
        model.ClearField("serving_profile")
    return model.SerializeToString(deterministic=True)


def floor_of(model: resources_pb2.Model, metric: str) -> float | None:
    """The model's floor for ``metric`` (its gate's ``min_absolute_score``), if any."""
    for gate in model.gate_policy.metrics:
        if gate.metric == metric and gate.HasField("min_absolute_score"):
            return gate.min_absolute_score
    return None


def defined_task_type(model: ModelRow) -> TaskType | None:
    """The task type of the stored model's definition."""
    return task_type_from_proto(resources_pb2.Model.FromString(model.definition).task_type)


def defined_base_model(model: ModelRow) -> BaseModelSource:
    """The base model of the stored model's definition."""
    return base_model_from_proto(resources_pb2.Model.FromString(model.definition).base_model)


def model_floor(model: ModelRow, metric: str) -> float | None:
    """:func:`floor_of` the stored model's definition."""
    return floor_of(resources_pb2.Model.FromString(model.definition), metric)
