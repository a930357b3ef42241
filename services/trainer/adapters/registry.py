"""Asking the registry whether a job's target model exists (over gRPC, with a deadline).

A job trains an adapter *for* a registered model: one for a model the registry does not know (a
typo) would train for nothing and fail only at evaluation. The trainer asks before it queues.
"""

from __future__ import annotations

import logging

from tuneline.client.errors import NotFoundError, TunelineError
from tuneline.client.registry import RegistryClient

log = logging.getLogger(__name__)


class RegistryModels:
    """``exists`` says whether the registry has the model; raises :class:`LookupError` when
    the registry cannot be asked."""

    def __init__(self, target: str, *, timeout: float) -> None:
        self.target = target
        self.timeout = timeout

    def exists(self, name: str) -> bool:
        try:
            with RegistryClient(self.target, timeout=self.timeout) as registry:
                registry.get_model(name)
        except NotFoundError:
            return False
        except TunelineError as error:
            log.warning(
                "registry lookup failed",
                extra={"model": name, "target": self.target, "error": str(error)},
            )
            raise LookupError(f"the registry could not be asked ({error.code.name})") from error
        return True
