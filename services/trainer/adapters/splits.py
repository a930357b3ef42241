"""Asking the splitter about a split the trainer has not heard of yet (over gRPC, deadline)."""

from __future__ import annotations

import logging

from services.trainer.adapters.protos import split_from_resource
from services.trainer.domain.jobs import SplitInfo
from tuneline.client.errors import NotFoundError, TunelineError
from tuneline.client.splitter import SplitterClient

log = logging.getLogger(__name__)


class SplitterLookup:
    """``fetch`` returns the split, ``None`` when the splitter does not know it; raises
    :class:`LookupError` when the splitter cannot be asked."""

    def __init__(self, target: str, *, timeout: float) -> None:
        self.target = target
        self.timeout = timeout

    def fetch(self, name: str) -> SplitInfo | None:
        try:
            with SplitterClient(self.target, timeout=self.timeout) as splitter:
                return split_from_resource(splitter.get_split(name))
        except NotFoundError:
            return None
        except TunelineError as error:
            log.warning("splitter lookup failed", extra={"split": name, "error": str(error)})
            raise LookupError(
                f"the splitter at {self.target} could not be asked: {error}"
            ) from error
