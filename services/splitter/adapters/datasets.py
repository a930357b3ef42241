"""Asking the dataset service about a version the splitter has not heard of yet (over gRPC,
with a deadline).

A client that uploads a version and at once asks for a split of it must not get NOT_FOUND just
because DatasetVersioned has not reached the splitter yet: the dataset service, which owns the
version, answers instead.
"""

from __future__ import annotations

import logging

from services.splitter.adapters.protos import version_from_resource
from services.splitter.domain import DatasetVersionRef
from tuneline.client.dataset import DatasetClient
from tuneline.client.errors import NotFoundError, TunelineError

log = logging.getLogger(__name__)


class DatasetLookup:
    """``fetch`` returns the version, ``None`` when the dataset service does not know it;
    raises :class:`LookupError` when the dataset service cannot be asked."""

    def __init__(self, target: str, *, timeout: float) -> None:
        self.target = target
        self.timeout = timeout

    def fetch(self, name: str) -> DatasetVersionRef | None:
        try:
            with DatasetClient(self.target, timeout=self.timeout) as datasets:
                return version_from_resource(datasets.get_dataset_version(name))
        except NotFoundError:
            return None
        except TunelineError as error:
            log.warning(
                "dataset service lookup failed",
                extra={"version": name, "target": self.target, "error": str(error)},
            )
            raise LookupError(
                f"the dataset service could not be asked ({error.code.name})"
            ) from error
