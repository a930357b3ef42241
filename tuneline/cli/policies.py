"""``tuneline policies``: training policies (every split of a dataset trains a job for a model):
list, get, and set one, with its owner, runbook and budgets."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from shared.names import TRAINING_POLICY
from tuneline.cli.endpoints import target
from tuneline.cli.output import console, print_message, reported_errors
from tuneline.cli.ownership import (
    ContactOption,
    MaxCostPerMonthOption,
    MaxCostPerRunOption,
    OwnerOption,
    RunbookOption,
    budget_option,
)
from tuneline.client.errors import NotFoundError
from tuneline.client.names import qualified
from tuneline.client.trainer import TrainerClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.trainer.v1 import resources_pb2

app = typer.Typer(
    help="Training policies: which dataset trains which model, their owners and budgets.",
    no_args_is_help=True,
)


def _client() -> TrainerClient:
    return TrainerClient(target("trainer"))


def _policy_name(policy: str) -> str:
    """``reviews`` or ``trainingPolicies/reviews`` → ``trainingPolicies/reviews``."""
    return qualified(TRAINING_POLICY, policy)


def _money(money: common_pb2.Money) -> str:
    return f"{money.units + money.nanos / 1e9:.2f} {money.currency_code}"


def _budget_text(budget: common_pb2.Budget) -> str:
    limits = []
    if budget.HasField("max_cost_per_run"):
        limits.append(f"{_money(budget.max_cost_per_run)}/run")
    if budget.HasField("max_cost_per_month"):
        limits.append(f"{_money(budget.max_cost_per_month)}/month")
    return ", ".join(limits) or "-"


def _base_model_text(template: resources_pb2.TrainingJobTemplate) -> str:
    return template.base_model.model_name or template.base_model.model_path or "-"


def _merged_owner(stored: common_pb2.Owner, team: str, contact: str, runbook: str) -> None:
    """Replace in ``stored`` the owner fields an option gives; keep the others."""
    if team:
        stored.team = team
    if contact:
        stored.contact = contact
    if runbook:
        stored.runbook_uri = runbook


def _merged_budget(
    stored: common_pb2.Budget, per_run: str | None, per_month: str | None, currency: str | None
) -> None:
    """Replace in ``stored`` the limits an option gives; keep the others. The currency defaults
    to the stored budget's (USD when there is none)."""
    kept_currency = (
        stored.max_cost_per_run.currency_code or stored.max_cost_per_month.currency_code or "USD"
    )
    given = budget_option(per_run, per_month, currency or kept_currency)
    if given is None:
        return
    if given.HasField("max_cost_per_run"):
        stored.max_cost_per_run.CopyFrom(given.max_cost_per_run)
    if given.HasField("max_cost_per_month"):
        stored.max_cost_per_month.CopyFrom(given.max_cost_per_month)


@app.command("list")
def list_policies(
    dataset: Annotated[str, typer.Option(help="Only policies of this dataset.")] = "",
) -> None:
    """List training policies by name, with what they train, their owner and budget."""
    table = Table("policy", "dataset", "target model", "base model", "owner", "budget", "enabled")
    with reported_errors(), _client() as client:
        for policy in client.list_training_policies(dataset=dataset):
            owner = policy.owner.team
            if policy.owner.contact:
                owner = f"{owner} ({policy.owner.contact})" if owner else policy.owner.contact
            table.add_row(
                policy.name,
                policy.dataset,
                policy.target_model,
                _base_model_text(policy.job_template),
                owner or "-",
                _budget_text(policy.budget),
                "no" if policy.disabled else "yes",
            )
    console.print(table)


@app.command()
def get(
    policy: Annotated[str, typer.Argument(help="The policy: trainingPolicies/{p} or its id.")],
) -> None:
    """Show a policy: what it trains, its job template, owner, runbook and budget (as JSON)."""
    with reported_errors(), _client() as client:
        print_message(client.get_training_policy(_policy_name(policy)))


@app.command("set")
def set_policy(
    policy: Annotated[str, typer.Argument(help="The policy: trainingPolicies/{p} or its id.")],
    dataset: Annotated[
        str, typer.Option(help="The dataset whose splits train: datasets/{d}.")
    ] = "",
    target_model: Annotated[
        str, typer.Option("--target-model", help="The registry model it trains: models/{m}.")
    ] = "",
    base_model: Annotated[
        str,
        typer.Option(
            "--base-model",
            help="A model name under the models root, or an absolute path inside an allowed root.",
        ),
    ] = "",
    owner_team: OwnerOption = "",
    owner_contact: ContactOption = "",
    runbook: RunbookOption = "",
    max_cost_per_run: MaxCostPerRunOption = None,
    max_cost_per_month: MaxCostPerMonthOption = None,
    budget_currency: Annotated[
        str | None,
        typer.Option(
            "--budget-currency",
            help="ISO 4217 code of the budget amounts (default: the stored budget's, else USD).",
        ),
    ] = None,
    no_budget: Annotated[
        bool, typer.Option("--no-budget", help="Remove the policy's budget.")
    ] = False,
    enabled: Annotated[
        bool | None,
        typer.Option("--enabled/--disabled", help="Whether new splits make jobs."),
    ] = None,
) -> None:
    """Create a policy, or change an existing one: options given replace what they name, the
    rest (job template included) is kept. A new policy needs --dataset, --target-model and
    --base-model; every other job setting takes the server's default."""
    name = _policy_name(policy)
    with reported_errors(), _client() as client:
        try:
            stored = client.get_training_policy(name)
        except NotFoundError:
            missing = [
                option
                for option, value in (
                    ("--dataset", dataset),
                    ("--target-model", target_model),
                    ("--base-model", base_model),
                )
                if not value
            ]
            if missing:
                raise typer.BadParameter(
                    f"{name} does not exist yet: a new policy needs {', '.join(missing)}",
                    param_hint=missing[0],
                ) from None
            stored = resources_pb2.TrainingPolicy(name=name)
        if dataset:
            stored.dataset = dataset
        if target_model:
            stored.target_model = target_model
        if base_model:
            stored.job_template.base_model.Clear()
            if base_model.startswith("/"):
                stored.job_template.base_model.model_path = base_model
            else:
                stored.job_template.base_model.model_name = base_model
        _merged_owner(stored.owner, owner_team, owner_contact, runbook)
        if no_budget:
            stored.ClearField("budget")
        _merged_budget(stored.budget, max_cost_per_run, max_cost_per_month, budget_currency)
        if enabled is not None:
            stored.disabled = not enabled
        for output_only in ("create_time", "update_time"):
            stored.ClearField(output_only)
        saved = client.set_training_policy(stored)
    console.print(
        f"set [bold]{saved.name}[/bold]: every split of {saved.dataset} trains "
        f"{saved.target_model} on {_base_model_text(saved.job_template)}; owner "
        f"{saved.owner.team or '-'}, budget {_budget_text(saved.budget)}"
        + ("" if not saved.disabled else " (disabled)")
    )
