"""Structured logging: one JSON object per line, tagged with the service name.

`configure_logging` is called once by each service's ``main``; libraries only ever call
``logging.getLogger(__name__)``. Extra fields passed with ``extra={...}`` become JSON keys,
so log lines can be filtered by ``event_id``, ``topic`` or ``job`` without parsing prose.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter


class _ServiceFilter(logging.Filter):
    """Stamps every record with the service that wrote it."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self._service
        return True


def configure_logging(
    service: str,
    level: str = "INFO",
    fmt: Literal["json", "console"] = "json",
    stream: object = None,
) -> logging.Handler:
    """Route the root logger to ``stream`` (stderr by default) in the chosen format.

    Replaces handlers installed by an earlier call so that calling it twice does not
    duplicate lines. Returns the installed handler (tests read from it).
    """
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}{service}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",  # ISO 8601 in UTC, from the record's creation time
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s [%(service)s] %(name)s: %(message)s")
        )
    handler.addFilter(_ServiceFilter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_tuneline", False):
            root.removeHandler(old)
    handler._tuneline = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # kafka-python is chatty at INFO about every (re)connection.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
    return handler
