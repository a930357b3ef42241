"""What the evaluator asks the registry, over gRPC with a deadline, in its own words.

The registry owns models (their evaluation sets and gate policies) and the ``production``
alias; the evaluator asks through the SDK's :class:`~tuneline.client.registry.RegistryClient`
(deadline on every call, retries on UNAVAILABLE) and gets domain objects back. A registry that
does not answer is :class:`DependencyUnavailable` — the evaluation waits and asks again — while
an answer that the model or checkpoint does not exist is final.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from services.evaluator.adapters import protos
from services.evaluator.domain.evaluation import (
    DependencyUnavailable,
    FailureReason,
    ModelSpec,
    RegisteredCheckpoint,
    UnknownToRegistry,
)
from tuneline.client.errors import (
    DeadlineExceededError,
    NotFoundError,
    TunelineError,
    UnavailableError,
)
from tuneline.client.registry import RegistryClient, alias_name

T = TypeVar("T")


class RegistryGateway:
    """Models, the production checkpoint and registered checkpoints, from the registry."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client

    def _ask(self, resource_type: str, name: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except NotFoundError:
            raise UnknownToRegistry(resource_type, name) from None
        except (UnavailableError, DeadlineExceededError) as error:
            raise DependencyUnavailable(
                FailureReason.BASELINE_UNAVAILABLE, f"the registry did not answer: {error}"
            ) from error
        except TunelineError as error:
            raise DependencyUnavailable(
                FailureReason.BASELINE_UNAVAILABLE, f"the registry refused the request: {error}"
            ) from error

    def model(self, name: str) -> ModelSpec:
        """The model's task, base model, evaluation sets and gate policy."""
        model = self._ask("model", name, lambda: self._client.get_model(name))
        return protos.model_spec_from_proto(model)

    def production(self, model: str) -> RegisteredCheckpoint | None:
        """The checkpoint ``production`` points at now, or ``None`` when it was never set."""
        name = alias_name(model)
        alias = self._ask("alias", name, lambda: self._client.get_alias(name))
        return protos.registered_checkpoint_from_alias(alias)

    def checkpoint(self, name: str) -> RegisteredCheckpoint:
        """A registered checkpoint, ``models/{m}/checkpoints/{c}``."""
        checkpoint = self._ask("checkpoint", name, lambda: self._client.get_checkpoint(name))
        return protos.registered_checkpoint_from_proto(checkpoint)

    def close(self) -> None:
        self._client.close()
