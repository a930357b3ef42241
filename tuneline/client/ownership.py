"""Building the owner and the budget that datasets, models and training policies carry.

``owner("support-ml", "#support-ml", "https://runbooks.example.com/support")`` and
``budget(per_run="5", per_month="100")`` give the ``tuneline.common.v1`` messages to put in
``Dataset.owner`` (or ``DatasetClient.create_dataset(owner=…)``), ``Model.owner`` and
``Model.budget``, ``TrainingPolicy.owner`` and ``TrainingPolicy.budget``.
"""

from __future__ import annotations

from decimal import Decimal

from shared.ownership import money_parts
from tuneline.common.v1 import resources_pb2 as common_pb2


def owner(team: str, contact: str = "", runbook_uri: str = "") -> common_pb2.Owner:
    """Who answers for a resource: ``team`` becomes the ``owner`` label of its alerts."""
    return common_pb2.Owner(team=team, contact=contact, runbook_uri=runbook_uri)


def money(amount: Decimal | str | float, currency: str = "USD") -> common_pb2.Money:
    """``Decimal("1.75")`` as ``Money`` (units and nanos with the same sign)."""
    units, nanos = money_parts(Decimal(str(amount)))
    return common_pb2.Money(currency_code=currency, units=units, nanos=nanos)


def budget(
    *,
    per_run: Decimal | str | float | None = None,
    per_month: Decimal | str | float | None = None,
    currency: str = "USD",
) -> common_pb2.Budget:
    """Spending limits; None leaves a limit unset (no limit)."""
    message = common_pb2.Budget()
    if per_run is not None:
        message.max_cost_per_run.CopyFrom(money(per_run, currency))
    if per_month is not None:
        message.max_cost_per_month.CopyFrom(money(per_month, currency))
    return message
