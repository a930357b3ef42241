"""What a job costs and what it may cost: :class:`Cost` priced per device-hour, the budgets of
models and policies, and the breaches a job's estimate would make."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal


@dataclass(frozen=True)
class Cost:
    """What a job cost so far."""

    device_seconds: float = 0.0
    tokens_processed: int = 0
    amount: Decimal = Decimal(0)
    currency: str = "USD"
    price_per_device_hour: Decimal = Decimal(0)
    device_type: str = ""
    device_count: int = 1


def compute_cost(
    *,
    device_seconds: float,
    tokens_processed: int,
    price_per_device_hour: Decimal,
    currency: str,
    device_type: str,
    device_count: int = 1,
) -> Cost:
    """``device_seconds`` (already summed over devices) priced per device-hour, rounded to
    nano-units (the contracts' Money precision)."""
    amount = (Decimal(repr(device_seconds)) / Decimal(3600) * price_per_device_hour).quantize(
        Decimal("1e-9"), rounding=ROUND_HALF_EVEN
    )
    return Cost(
        device_seconds=device_seconds,
        tokens_processed=tokens_processed,
        amount=amount,
        currency=currency,
        price_per_device_hour=price_per_device_hour,
        device_type=device_type,
        device_count=device_count,
    )


@dataclass(frozen=True)
class Budget:
    """Spending limits in ``currency``; None: no limit."""

    currency: str = ""
    per_run: Decimal | None = None
    per_month: Decimal | None = None

    @property
    def limited(self) -> bool:
        return self.per_run is not None or self.per_month is not None


@dataclass(frozen=True)
class BudgetHolder:
    """A budget and whose it is: ``models/{m}`` (from the registry) or ``trainingPolicies/{p}``."""

    holder: str
    budget: Budget


@dataclass(frozen=True)
class BudgetBreach:
    """One limit a job would exceed: ``limit`` is ``max_cost_per_run`` or
    ``max_cost_per_month``."""

    holder: str
    limit: str
    description: str


def _tighter(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def effective_budget(holders: Sequence[BudgetHolder], currency: str) -> Budget:
    """Per limit, the tightest of the holders' budgets (all in ``currency``)."""
    per_run: Decimal | None = None
    per_month: Decimal | None = None
    for held in holders:
        per_run = _tighter(per_run, held.budget.per_run)
        per_month = _tighter(per_month, held.budget.per_month)
    return Budget(currency=currency, per_run=per_run, per_month=per_month)


def budget_breaches(
    holders: Sequence[BudgetHolder],
    *,
    estimated_cost: Decimal,
    month_to_date: Mapping[str, Decimal],
    currency: str,
) -> list[BudgetBreach]:
    """Every limit a job estimated at ``estimated_cost`` would exceed: a per-run limit below the
    estimate, or a monthly limit below what the holder's jobs of this month already cost or
    have committed (``month_to_date[holder]``) plus the estimate. A budget in another currency
    than the trainer prices in cannot be compared: it is a breach too, saying so."""
    breaches: list[BudgetBreach] = []
    for held in holders:
        budget = held.budget
        if not budget.limited:
            continue
        if budget.currency != currency:
            breaches.append(
                BudgetBreach(
                    held.holder,
                    "currency_code",
                    f"the budget is in {budget.currency}, the trainer prices in {currency}",
                )
            )
            continue
        if budget.per_run is not None and estimated_cost > budget.per_run:
            breaches.append(
                BudgetBreach(
                    held.holder,
                    "max_cost_per_run",
                    f"the run is estimated at {currency} {estimated_cost:.2f}, over the per-run "
                    f"budget of {currency} {budget.per_run:.2f}",
                )
            )
        spent = month_to_date.get(held.holder, Decimal(0))
        if budget.per_month is not None and spent + estimated_cost > budget.per_month:
            breaches.append(
                BudgetBreach(
                    held.holder,
                    "max_cost_per_month",
                    f"this month's runs cost or committed {currency} {spent:.2f}; with this "
                    f"run's estimated {currency} {estimated_cost:.2f} that is over the monthly "
                    f"budget of {currency} {budget.per_month:.2f}",
                )
            )
    return breaches


def budget_exhausted(budget: Budget, cost: Cost) -> bool:
    """A running job's cost has reached its per-run budget."""
    return (
        budget.per_run is not None
        and budget.currency == cost.currency
        and cost.amount >= budget.per_run
    )


def month_start(now: datetime) -> datetime:
    """The first instant of ``now``'s calendar month (in ``now``'s time zone, UTC here)."""
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
