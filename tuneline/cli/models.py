"""``tuneline models``: Registered models: create, show, list, prepare (packaged base models)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import json_format
from rich.table import Table

from tuneline.cli.choices import TaskChoice, task_label
from tuneline.cli.endpoints import target
from tuneline.cli.output import console, err_console, print_message, reported_errors
from tuneline.cli.ownership import (
    ContactOption,
    CurrencyOption,
    MaxCostPerMonthOption,
    MaxCostPerRunOption,
    OwnerOption,
    RunbookOption,
    budget_option,
    owner_option,
)
from tuneline.client.registry import RegistryClient, model_name
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.registry.v1 import resources_pb2

app = typer.Typer(
    help="Registered models: create, show, list, prepare (packaged base models).",
    no_args_is_help=True,
)


class Policy(StrEnum):
    automatic = "automatic"
    manual = "manual"


class Part(StrEnum):
    train = "train"
    validation = "validation"
    test = "test"


_POLICIES = {
    Policy.automatic: resources_pb2.PROMOTION_POLICY_AUTOMATIC,
    Policy.manual: resources_pb2.PROMOTION_POLICY_MANUAL,
}
_PARTS = {
    Part.train: common_pb2.SPLIT_PART_TRAIN,
    Part.validation: common_pb2.SPLIT_PART_VALIDATION,
    Part.test: common_pb2.SPLIT_PART_TEST,
}


def _client() -> RegistryClient:
    return RegistryClient(target("registry"))


def _gate(spec: str) -> common_pb2.MetricGate:
    """``accuracy=0.01`` or ``accuracy=0.01:0.7`` (tolerance, then minimum absolute score)."""
    metric, _, numbers = spec.partition("=")
    tolerance, _, floor = numbers.partition(":")
    try:
        gate = common_pb2.MetricGate(metric=metric.strip(), tolerance=float(tolerance or 0))
        if floor:
            gate.min_absolute_score = float(floor)
    except ValueError:
        raise typer.BadParameter(
            f"{spec!r}: use METRIC=TOLERANCE[:MIN_SCORE], e.g. accuracy=0.01:0.7"
        ) from None
    return gate


def _golden(spec: str) -> common_pb2.EvaluationSet:
    """``LABEL=datasets/d/versions/v`` or ``LABEL=datasets/d/versions/v/splits/s``."""
    label, _, where = spec.partition("=")
    if not where:
        raise typer.BadParameter(
            f"{spec!r}: use LABEL=DATASET_VERSION or LABEL=DATASET_VERSION/splits/SPLIT"
        )
    version, _, split = where.partition("/splits/")
    return common_pb2.EvaluationSet(
        label=label, dataset_version=version, split=where if split else ""
    )


@app.command()
def create(
    model_id: Annotated[str, typer.Argument(help="The model id, e.g. sentiment.")],
    task: Annotated[TaskChoice | None, typer.Option(help="The task type.")] = None,
    base_model: Annotated[
        str | None, typer.Option(help="Base model folder name in the models root.")
    ] = None,
    base_model_path: Annotated[
        str | None, typer.Option(help="Absolute path of the base model folder instead.")
    ] = None,
    eval_dataset_version: Annotated[
        str | None,
        typer.Option(help="The pinned regression suite: datasets/{d}/versions/{v}."),
    ] = None,
    eval_split: Annotated[
        str | None, typer.Option(help="A split of that version (…/splits/{s}); default all rows.")
    ] = None,
    eval_part: Annotated[Part, typer.Option(help="The part of the split.")] = Part.validation,
    golden: Annotated[
        list[str] | None,
        typer.Option(
            help="Extra golden set, LABEL=DATASET_VERSION or LABEL=…/splits/S; repeatable."
        ),
    ] = None,
    gate: Annotated[
        list[str] | None,
        typer.Option(
            help="Gated metric, METRIC=TOLERANCE[:MIN_SCORE]; repeatable (default: task's)."
        ),
    ] = None,
    significance: Annotated[
        float, typer.Option(help="Significance level of the paired test (0: 0.05).")
    ] = 0.0,
    min_slice_size: Annotated[int, typer.Option(help="Smallest slice judged (0: 30).")] = 0,
    min_examples: Annotated[int, typer.Option(help="Fewest examples to judge (0: 50).")] = 0,
    policy: Annotated[Policy, typer.Option(help="How checkpoints reach production.")] = (
        Policy.manual
    ),
    display_name: Annotated[str, typer.Option(help="Human-readable name.")] = "",
    description: Annotated[str, typer.Option(help="Free-text description.")] = "",
    from_json: Annotated[
        Path | None,
        typer.Option(
            help="A tuneline.registry.v1.Model in JSON; the other options are then ignored.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    serving_profile: Annotated[
        Path | None,
        typer.Option(
            help="A tuneline.common.v1.ServingProfile in JSON: the engine's constraints the "
            "parity check lints against (see `tuneline models set-serving-profile`).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    owner_team: OwnerOption = "",
    owner_contact: ContactOption = "",
    runbook: RunbookOption = "",
    max_cost_per_run: MaxCostPerRunOption = None,
    max_cost_per_month: MaxCostPerMonthOption = None,
    budget_currency: CurrencyOption = "USD",
) -> None:
    """Create a model: its task, base model, evaluation set, gate and promotion policy, its
    owner and runbook, and its training budget."""
    if from_json is not None:
        model = json_format.Parse(from_json.read_text(encoding="utf-8"), resources_pb2.Model())
    else:
        model = resources_pb2.Model(
            display_name=display_name,
            description=description,
            promotion_policy=_POLICIES[policy],
            golden_sets=[_golden(g) for g in golden or []],
            gate_policy=common_pb2.GatePolicy(
                metrics=[_gate(g) for g in gate or []],
                significance_level=significance,
                min_slice_size=min_slice_size,
                min_examples=min_examples,
            ),
        )
        if task is not None:
            model.task_type = task.to_proto()
        if base_model is not None:
            model.base_model.model_name = base_model
        elif base_model_path is not None:
            model.base_model.model_path = base_model_path
        if eval_dataset_version is not None:
            model.evaluation_set.dataset_version = eval_dataset_version
            if eval_split:
                model.evaluation_set.split = eval_split
                model.evaluation_set.part = _PARTS[eval_part]
    if serving_profile is not None:
        model.serving_profile.CopyFrom(_serving_profile(serving_profile))
    if (owner := owner_option(owner_team, owner_contact, runbook)) is not None:
        model.owner.CopyFrom(owner)
    budget = budget_option(max_cost_per_run, max_cost_per_month, budget_currency)
    if budget is not None:
        model.budget.CopyFrom(budget)
    with reported_errors(), _client() as client:
        created = client.create_model(model_id, model)
    err_console.print(f"[green]created[/green] {created.name}")
    print_message(created)


def _serving_profile(path: Path) -> common_pb2.ServingProfile:
    try:
        return json_format.Parse(path.read_text(encoding="utf-8"), common_pb2.ServingProfile())
    except json_format.ParseError as error:
        raise typer.BadParameter(f"{path}: not a ServingProfile in JSON: {error}") from None


@app.command("set-serving-profile")
def set_serving_profile(
    name: Annotated[str, typer.Argument(help="sentiment or models/sentiment")],
    profile: Annotated[
        Path | None,
        typer.Argument(
            help='A tuneline.common.v1.ServingProfile in JSON, e.g. {"engine": "vllm-0.6", '
            '"maxLoraRank": 16, "supportsDora": false, "maxSequenceLength": 4096}.',
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the model's profile.")] = False,
) -> None:
    """Set the serving engine's constraints that the parity check lints each checkpoint
    against before promotion (adapter or merged weights, max LoRA rank, DoRA,
    modules_to_save, max length, the serving tokenizer)."""
    if (profile is None) == (not clear):
        raise typer.BadParameter("give a profile file, or --clear")
    message = _serving_profile(profile) if profile is not None else None
    with reported_errors(), _client() as client:
        model = client.set_serving_profile(model_name(name), message)
    revision = model.serving_profile.revision
    err_console.print(
        f"[green]serving profile {'set' if message else 'cleared'}[/green] on {model.name}"
        + (f" (revision {revision})" if message else "")
    )
    print_message(model.serving_profile)


@app.command()
def unfreeze(
    name: Annotated[str, typer.Argument(help="sentiment or models/sentiment")],
    reason: Annotated[str, typer.Option("--reason", help="Why automation may act again.")],
) -> None:
    """Let automation promote and roll back the model again after the rollback circuit
    breaker froze it (too many automatic rollbacks in its window)."""
    with reported_errors(), _client() as client:
        before = client.get_model(model_name(name))
        model = client.unfreeze_automation(model_name(name), reason=reason)
    if before.HasField("automation_freeze"):
        err_console.print(f"[green]automation unfrozen[/green] on {model.name}")
    else:
        err_console.print(f"{model.name} was not frozen: nothing changed")


@app.command()
def show(name: Annotated[str, typer.Argument(help="sentiment or models/sentiment")]) -> None:
    """Show a model: definition, gate, policy, and what production and candidate point at."""
    with reported_errors(), _client() as client:
        print_message(client.get_model(model_name(name)))


@app.command("list")
def list_models(
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many.")] = 50,
) -> None:
    """List models by name, with their policy and production checkpoint."""
    table = Table("model", "task", "policy", "production", "candidate")
    with reported_errors(), _client() as client:
        for index, model in enumerate(client.list_models(page_size=min(limit, 100))):
            if index == limit:
                break
            table.add_row(
                model.name,
                task_label(model.task_type),
                resources_pb2.PromotionPolicy.Name(model.promotion_policy)
                .removeprefix("PROMOTION_POLICY_")
                .lower(),
                model.production_checkpoint.rsplit("/", 1)[-1] or "-",
                model.candidate_checkpoint.rsplit("/", 1)[-1] or "-",
            )
    console.print(table)
