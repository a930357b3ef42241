"""The owner and budget options that ``models create`` and ``datasets create`` share."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer

from tuneline.client.ownership import budget, owner
from tuneline.common.v1 import resources_pb2 as common_pb2

OwnerOption = Annotated[
    str,
    typer.Option("--owner", help="Owning team, e.g. support-ml: the `owner` label of its alerts."),
]
ContactOption = Annotated[
    str, typer.Option("--owner-contact", help="How to reach the owner, e.g. #support-ml.")
]
RunbookOption = Annotated[str, typer.Option("--runbook", help="The runbook's https:// URL.")]
MaxCostPerRunOption = Annotated[
    str | None,
    typer.Option(
        "--max-cost-per-run",
        help="Most one training run may cost, e.g. 5.00 (in --budget-currency); a job "
        "estimated above it is refused, a running one stopped with a checkpoint.",
    ),
]
MaxCostPerMonthOption = Annotated[
    str | None,
    typer.Option(
        "--max-cost-per-month",
        help="Most the training runs of a calendar month (UTC) may cost together.",
    ),
]
CurrencyOption = Annotated[
    str, typer.Option("--budget-currency", help="ISO 4217 code of the budget amounts.")
]


def owner_option(team: str, contact: str, runbook: str) -> common_pb2.Owner | None:
    """The ``Owner`` the options give; None when none was given."""
    return owner(team, contact, runbook) if team or contact or runbook else None


def _amount(text: str | None, option: str) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        raise typer.BadParameter(
            f"{text!r} is not an amount, e.g. 5.00", param_hint=option
        ) from None


def budget_option(
    per_run: str | None, per_month: str | None, currency: str
) -> common_pb2.Budget | None:
    """The ``Budget`` the options give; None when no limit was given."""
    if per_run is None and per_month is None:
        return None
    return budget(
        per_run=_amount(per_run, "--max-cost-per-run"),
        per_month=_amount(per_month, "--max-cost-per-month"),
        currency=currency.upper(),
    )
