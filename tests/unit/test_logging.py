"""configure_logging: JSON lines tagged with the service, console mode, no duplicate handlers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared.logging import configure_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    kafka = logging.getLogger("kafka")
    saved = (list(root.handlers), root.level, kafka.level)
    yield
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
    root.setLevel(saved[1])
    kafka.setLevel(saved[2])


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    lines = stream.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


def test_json_mode_writes_one_object_per_line() -> None:
    stream = io.StringIO()
    configure_logging("dataset", "INFO", "json", stream)

    logging.getLogger("tuneline.test").info("stored %s rows", 12)
    logging.getLogger("other.module").warning("second line")

    first, second = _json_lines(stream)
    assert first["level"] == "INFO"
    assert first["logger"] == "tuneline.test"
    assert first["message"] == "stored 12 rows"
    assert first["service"] == "dataset"
    assert isinstance(first["time"], str)
    assert first["time"]
    assert {"time", "level", "logger", "message", "service"} <= set(first)
    # The original names are renamed, not duplicated.
    assert not {"asctime", "levelname", "name"} & set(first)
    assert second["level"] == "WARNING"
    assert second["logger"] == "other.module"


def test_json_mode_includes_extra_fields() -> None:
    stream = io.StringIO()
    configure_logging("trainer", "INFO", "json", stream)

    logging.getLogger("t").info(
        "event applied", extra={"event_id": "e-1", "topic": "tuneline.x.v1.Y", "attempt": 2}
    )

    (line,) = _json_lines(stream)
    assert line["event_id"] == "e-1"
    assert line["topic"] == "tuneline.x.v1.Y"
    assert line["attempt"] == 2
    assert line["service"] == "trainer"


def test_json_mode_message_with_newline_stays_one_line() -> None:
    stream = io.StringIO()
    configure_logging("svc", "INFO", "json", stream)

    logging.getLogger("t").error("first\nsecond")

    (line,) = _json_lines(stream)
    assert line["message"] == "first\nsecond"


def test_json_mode_includes_exception_traceback() -> None:
    stream = io.StringIO()
    configure_logging("svc", "INFO", "json", stream)

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("t").exception("failed")

    (line,) = _json_lines(stream)
    assert line["message"] == "failed"
    assert "RuntimeError: boom" in str(line["exc_info"])


def test_level_filters_records() -> None:
    stream = io.StringIO()
    configure_logging("svc", "warning", "json", stream)

    logging.getLogger("t").info("hidden")
    logging.getLogger("t").debug("hidden too")
    logging.getLogger("t").warning("shown")

    lines = _json_lines(stream)
    assert [line["message"] for line in lines] == ["shown"]
    assert logging.getLogger().level == logging.WARNING


def test_kafka_logger_is_quieted_to_warning() -> None:
    stream = io.StringIO()
    configure_logging("svc", "DEBUG", "json", stream)

    logging.getLogger("kafka.conn").info("connecting")
    logging.getLogger("kafka.conn").warning("lost broker")

    assert [line["message"] for line in _json_lines(stream)] == ["lost broker"]


def test_console_mode_is_human_readable() -> None:
    stream = io.StringIO()
    configure_logging("registry", "INFO", "console", stream)

    logging.getLogger("tuneline.registry").warning("model %s promoted", "m1")

    (line,) = stream.getvalue().splitlines()
    assert "WARNING" in line
    assert "[registry]" in line
    assert "tuneline.registry: model m1 promoted" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_calling_twice_does_not_duplicate_lines() -> None:
    first_stream = io.StringIO()
    second_stream = io.StringIO()
    root = logging.getLogger()
    before = len(root.handlers)

    configure_logging("svc", "INFO", "json", first_stream)
    handler = configure_logging("svc2", "INFO", "json", second_stream)
    logging.getLogger("t").info("once")

    assert len(root.handlers) == before + 1
    assert handler in root.handlers
    assert first_stream.getvalue() == ""
    (line,) = _json_lines(second_stream)
    assert line["message"] == "once"
    assert line["service"] == "svc2"


def test_reconfiguring_keeps_foreign_handlers() -> None:
    foreign_stream = io.StringIO()
    foreign = logging.StreamHandler(foreign_stream)
    root = logging.getLogger()
    root.addHandler(foreign)
    try:
        configure_logging("svc", "INFO", "json", io.StringIO())
        configure_logging("svc", "INFO", "console", io.StringIO())
        assert foreign in root.handlers
        logging.getLogger("t").info("to both")
        assert "to both" in foreign_stream.getvalue()
    finally:
        root.removeHandler(foreign)
