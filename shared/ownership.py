"""The rules of an owner and a budget, checked alike by every service that stores one.

Datasets, models and training policies carry an owner (``tuneline.common.v1.Owner``): a team,
a contact and a runbook link. The team becomes the ``owner`` label of alerts (a Prometheus
label value and an Alertmanager route), so it must be a plain identifier. Budgets
(``tuneline.common.v1.Budget``) are positive amounts of money.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import urlsplit

from shared.errors import FieldViolation

#: An owning team: lower_snake or kebab case, usable as a label value and a route matcher.
TEAM = re.compile(r"^[a-z]([a-z0-9_-]{0,61}[a-z0-9])?$")
MAX_CONTACT = 200
MAX_RUNBOOK_URI = 2000
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True)
class Owner:
    """Who answers for a resource, and their runbook (see ``tuneline.common.v1.Owner``)."""

    team: str = ""
    contact: str = ""
    runbook_uri: str = ""

    def problems(self, prefix: str) -> list[FieldViolation]:
        return validate_owner(self.team, self.contact, self.runbook_uri, prefix)


def validate_owner(team: str, contact: str, runbook_uri: str, prefix: str) -> list[FieldViolation]:
    """Every problem of an owner at ``prefix`` (e.g. ``model.owner``); an empty owner is fine."""
    problems: list[FieldViolation] = []
    if team and not TEAM.match(team):
        problems.append(
            FieldViolation(
                f"{prefix}.team",
                f"{team!r} must match {TEAM.pattern} (it becomes the alerts' `owner` label)",
                "INVALID_FORMAT",
            )
        )
    if len(contact) > MAX_CONTACT:
        problems.append(
            FieldViolation(f"{prefix}.contact", f"at most {MAX_CONTACT} characters", "TOO_LONG")
        )
    if len(runbook_uri) > MAX_RUNBOOK_URI:
        problems.append(
            FieldViolation(
                f"{prefix}.runbook_uri", f"at most {MAX_RUNBOOK_URI} characters", "TOO_LONG"
            )
        )
    elif runbook_uri:
        parts = urlsplit(runbook_uri)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            problems.append(
                FieldViolation(
                    f"{prefix}.runbook_uri",
                    f"{runbook_uri!r} is not an http(s) URL",
                    "INVALID_FORMAT",
                )
            )
    return problems


def money_amount(units: int, nanos: int) -> Decimal:
    """``Money`` units and nanos as one Decimal."""
    return Decimal(units) + Decimal(nanos) / Decimal(1_000_000_000)


def money_parts(amount: Decimal) -> tuple[int, int]:
    """One Decimal as ``Money``'s units and nanos, both with its sign (:func:`money_amount`'s
    inverse, to the nano)."""
    nanos_total = int((amount * Decimal(1_000_000_000)).to_integral_value())
    units, nanos = divmod(abs(nanos_total), 1_000_000_000)
    sign = -1 if nanos_total < 0 else 1
    return sign * units, sign * nanos


def validate_budget(limits: Mapping[str, tuple[str, int, int]], path: str) -> list[FieldViolation]:
    """Every problem of a budget at ``path``, given its set limits by field name
    (``max_cost_per_run`` …) as ``(currency_code, units, nanos)``: each a positive amount, all
    in one currency (the trainer compares them with its prices)."""
    problems: list[FieldViolation] = []
    for name, (currency_code, units, nanos) in limits.items():
        problems += validate_limit(currency_code, units, nanos, f"{path}.{name}")
    if len({currency for currency, _units, _nanos in limits.values()}) > 1:
        problems.append(
            FieldViolation(
                f"{path}.max_cost_per_month.currency_code",
                "must be the currency of max_cost_per_run",
                "CURRENCY_MISMATCH",
            )
        )
    return problems


def validate_limit(currency_code: str, units: int, nanos: int, field: str) -> list[FieldViolation]:
    """Every problem of one budget limit (a ``Money`` at ``field``): a currency code and a
    positive amount with consistent signs."""
    problems: list[FieldViolation] = []
    if not _CURRENCY.match(currency_code):
        problems.append(
            FieldViolation(
                f"{field}.currency_code",
                "required: a three-letter ISO 4217 code, e.g. USD",
                "INVALID_FORMAT",
            )
        )
    if not -999_999_999 <= nanos <= 999_999_999 or (units and nanos and (units > 0) != (nanos > 0)):
        problems.append(
            FieldViolation(f"{field}.nanos", "out of range or of another sign", "INVALID_MONEY")
        )
    elif money_amount(units, nanos) <= 0:
        problems.append(FieldViolation(field, "must be a positive amount", "NOT_POSITIVE"))
    return problems
