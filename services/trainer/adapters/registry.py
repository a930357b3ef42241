"""Asking the registry about a job's target model (over gRPC, with a deadline).

A job trains an adapter *for* a registered model: one for a model the registry does not know (a
typo) would train for nothing and fail only at evaluation. The trainer asks before it queues,
and learns the model's budget in the same answer: the registry owns the model's limits, the
trainer enforces them (it alone knows what runs cost), so a client cannot skip a budget by not
mentioning it.
"""

from __future__ import annotations

import logging

from services.trainer.adapters.protos import budget_from_proto
from services.trainer.domain.costs import Budget
from shared.errors import FieldViolation
from tuneline.client.errors import NotFoundError, TunelineError
from tuneline.client.registry import RegistryClient

log = logging.getLogger(__name__)


class RegistryModels:
    """``lookup`` returns the model's budget, None when the registry has no such model; raises
    :class:`LookupError` when the registry cannot be asked."""

    def __init__(self, target: str, *, timeout: float) -> None:
        self.target = target
        self.timeout = timeout

    def lookup(self, name: str) -> Budget | None:
        try:
            with RegistryClient(self.target, timeout=self.timeout) as registry:
                model = registry.get_model(name)
        except NotFoundError:
            return None
        except TunelineError as error:
            log.warning(
                "registry lookup failed",
                extra={"model": name, "target": self.target, "error": str(error)},
            )
            raise LookupError(f"the registry could not be asked ({error.code.name})") from error
        # the registry validated the budget when the model was created
        ignored: list[FieldViolation] = []
        return budget_from_proto(model.budget, "model.budget", ignored)
