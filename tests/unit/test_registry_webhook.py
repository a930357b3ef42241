"""The alert webhook against hostile clients, over real sockets (issue #13, item 4).

Slow or unfinished requests are cut, connections beyond the cap get a 503 at once, and bad
lengths or deeply nested JSON get a 4xx instead of a hang or a 500. Each test waits for the
server's answer or for it to close the connection; none asserts on elapsed time.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.registry.adapters.metrics import RegistryMetrics
from services.registry.adapters.tables import RegistryBase
from services.registry.entrypoints.alert_webhook import (
    AlertWebhookServer,
    WebhookLimits,
    json_nesting_depth,
)
from services.registry.handlers.deps import RegistryDeps
from shared.db import create_database_engine, create_schema, create_session_factory
from tuneline.client.alerts import alertmanager_notification
from tuneline.devtools.waiting import eventually

TOKEN = "webhook-test-token"
#: A safety net so a broken server fails the test instead of hanging it.
CLIENT_TIMEOUT = 20.0


def _start(
    tmp_path: Path, limits: WebhookLimits, metrics: RegistryMetrics | None = None
) -> AlertWebhookServer:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    create_schema(engine, [RegistryBase.metadata])
    webhook = AlertWebhookServer(
        host="127.0.0.1",
        port=0,
        path="/v1/alerts",
        token=TOKEN,
        deps=RegistryDeps(sessions=create_session_factory(engine), metrics=metrics),
        limits=limits,
    )
    webhook.start()
    return webhook


@pytest.fixture
def limits() -> WebhookLimits:
    return WebhookLimits()


@pytest.fixture
def webhook(tmp_path: Path, limits: WebhookLimits) -> Iterator[AlertWebhookServer]:
    server = _start(tmp_path, limits)
    yield server
    server.stop()


def _connect(webhook: AlertWebhookServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", webhook.port), timeout=CLIENT_TIMEOUT)


def _headers(length: str, *, path: str = "/v1/alerts") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw else 0


def _post(webhook: AlertWebhookServer, body: bytes, length: str | None = None) -> int:
    with _connect(webhook) as connection:
        connection.sendall(_headers(str(len(body)) if length is None else length) + body)
        return _status(_read_all(connection))


def _valid_body() -> bytes:
    payload = alertmanager_notification("unknown", fingerprint="f1", starts_at=datetime.now(UTC))
    return json.dumps(payload).encode()


def test_a_well_formed_alert_is_answered_and_the_connection_closed(webhook):
    client = http.client.HTTPConnection("127.0.0.1", webhook.port, timeout=CLIENT_TIMEOUT)
    client.request("POST", "/v1/alerts", _valid_body(), {"Authorization": f"Bearer {TOKEN}"})
    response = client.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["alerts"][0]["outcome"] == "unknown_model"
    assert response.getheader("Connection") == "close"


def test_an_alert_not_labelled_for_rollback_is_acknowledged_ignored_and_counted(tmp_path):
    prometheus = CollectorRegistry()
    webhook = _start(tmp_path, WebhookLimits(), RegistryMetrics(prometheus))
    try:
        payload = alertmanager_notification(
            "sentiment", fingerprint="f1", starts_at=datetime.now(UTC), action=""
        )
        client = http.client.HTTPConnection("127.0.0.1", webhook.port, timeout=CLIENT_TIMEOUT)
        client.request(
            "POST",
            "/v1/alerts",
            json.dumps(payload).encode(),
            {"Authorization": f"Bearer {TOKEN}"},
        )
        response = client.getresponse()
        assert response.status == 200  # acknowledged: Alertmanager must not retry it
        assert json.loads(response.read())["alerts"][0]["outcome"] == "ignored"
        ignored = prometheus.get_sample_value(
            "tuneline_registry_alerts_received_total", {"outcome": "ignored"}
        )
        assert ignored == 1
    finally:
        webhook.stop()


@pytest.mark.parametrize("length", ["-1", "-999999", "abc", "+5", "1_0", "0x10", ""])
def test_a_negative_or_non_numeric_content_length_is_a_400(webhook, length):
    assert _post(webhook, b"{}", length=length) == 400


@pytest.mark.parametrize("limits", [WebhookLimits(max_body_bytes=100)])
def test_a_body_over_the_cap_is_a_413_without_reading_it(webhook):
    with _connect(webhook) as connection:
        connection.sendall(_headers("101"))  # the body is never sent: the answer comes first
        assert _status(_read_all(connection)) == 413


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_deeply_nested_json_is_a_400_not_a_500(webhook, opening):
    closing = "]" if opening == "[" else "}"
    body = (opening * 100_000 + "1" + closing * 100_000).encode()
    assert _post(webhook, body) == 400


@pytest.mark.parametrize("limits", [WebhookLimits(max_json_depth=8)])
def test_json_as_deep_as_the_limit_is_parsed(webhook):
    assert _post(webhook, b'{"alerts": [[[[[[[1]]]]]]]}') == 400  # parsed: not the webhook format
    assert _post(webhook, b'{"alerts": [[[[[[[[1]]]]]]]]}') == 400  # refused before parsing
    assert _post(webhook, _valid_body()) == 200


@pytest.mark.parametrize("limits", [WebhookLimits(read_timeout_seconds=0.2)])
def test_a_client_that_stops_sending_its_headers_is_cut(webhook):
    with _connect(webhook) as connection:
        connection.sendall(b"POST /v1/alerts HTTP/1.1\r\nHost: x\r\n")
        assert _read_all(connection) == b""  # closed by the server, no answer owed


@pytest.mark.parametrize("limits", [WebhookLimits(read_timeout_seconds=0.2)])
def test_a_body_shorter_than_its_content_length_is_cut(webhook):
    with _connect(webhook) as connection:
        connection.sendall(_headers("500") + b'{"alerts": [')
        assert _read_all(connection) == b""


@pytest.mark.parametrize(
    "limits", [WebhookLimits(read_timeout_seconds=30.0, request_timeout_seconds=0.5)]
)
def test_a_client_trickling_bytes_under_the_read_timeout_is_cut_at_the_deadline(webhook):
    request = _headers("2000") + b" " * 2000
    sent = 0
    cut = threading.Event()

    def trickle(connection: socket.socket) -> None:
        nonlocal sent
        for byte in request:
            if cut.wait(0.02):
                return
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                return
            sent += 1

    with _connect(webhook) as connection:
        sender = threading.Thread(target=trickle, args=(connection,), daemon=True)
        sender.start()
        assert _read_all(connection) == b""
        cut.set()
        sender.join(CLIENT_TIMEOUT)
    assert sent < len(request)  # the server hung up before the request was complete


@pytest.mark.parametrize(
    "limits",
    [WebhookLimits(max_connections=2, read_timeout_seconds=30.0, request_timeout_seconds=60.0)],
)
def test_connections_over_the_cap_get_a_503_at_once(webhook):
    hogs = [_connect(webhook) for _ in range(2)]
    try:
        for hog in hogs:  # half a request line: each holds a handler thread, waiting
            hog.sendall(b"POST /v1/alerts HTTP/1.1\r\n")
        # connections are accepted in order, so the hogs hold both slots before these arrive
        for _ in range(5):
            with _connect(webhook) as extra:
                assert _status(_read_all(extra)) == 503
    finally:
        for hog in hogs:
            hog.close()

    # the slots come back when the hogs leave
    def served_status() -> int | None:
        status = _post(webhook, _valid_body())
        return None if status == 503 else status

    assert eventually(served_status, timeout=30, what="a slot freed by the hogs") == 200


def test_json_nesting_depth_ignores_brackets_in_strings():
    assert json_nesting_depth(b"1") == 0
    assert json_nesting_depth(b'{"a": [1, {"b": []}]}') == 4
    assert json_nesting_depth(b'{"a": "[[[[{{{{\\"]]]"}') == 1
    assert json_nesting_depth(b"[" * 50 + b"]" * 50) == 50
