"""The Alertmanager webhook: a firing alert naming a model rolls its production back.

``POST {webhook_path}`` with Alertmanager's webhook JSON (version 4) and
``Authorization: Bearer <token>``. Each alert is handled in its own transaction before the
response is sent, so a 200 means every rollback it caused is committed (and its
ModelRolledBack is in the outbox); Alertmanager retries anything else.

Answers: 200 with a JSON summary (one outcome per alert: ``rolled_back``, ``duplicate``,
``resolved``, ``not_production``, ``unknown_model``, ``no_model_label``,
``no_rollback_target``, ``frozen``, ``ignored`` — an alert not labelled ``action="rollback"``
or not on TUNELINE_REGISTRY_ROLLBACK_ALERT_NAMES is acknowledged and does nothing); 401 without
the right token; 400 for a body that is not the webhook format (a negative or malformed
Content-Length, JSON nested deeper than :attr:`WebhookLimits.max_json_depth`); 404 for another
path; 405 for another method; 411/413 for a missing or oversized body; 503 when
:attr:`WebhookLimits.max_connections` are open already; 500 when the database failed
(Alertmanager retries; the same incident still rolls back once). Runs as a background component
of the service on the stdlib ``ThreadingHTTPServer``.

A client cannot hold a thread: every read waits at most ``read_timeout_seconds`` and the whole
request (headers and body) must arrive within ``request_timeout_seconds``, so a client that
trickles bytes or never finishes its body is cut. One request per connection.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import socket
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.registry.domain.alerts import parse_alertmanager_payload
from services.registry.handlers import rollback
from services.registry.handlers.deps import RegistryDeps

log = logging.getLogger(__name__)

_CONTENT_LENGTH = re.compile(r"^[0-9]{1,18}$")
_BUSY_BODY = b'{"error":"too many connections"}\n'
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n"
    + f"Content-Length: {len(_BUSY_BODY)}\r\n\r\n".encode()
    + _BUSY_BODY
)


@dataclass(frozen=True)
class WebhookLimits:
    """What one client may cost the webhook (TUNELINE_REGISTRY_WEBHOOK_*)."""

    max_connections: int = 32
    read_timeout_seconds: float = 10.0
    request_timeout_seconds: float = 30.0
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32


def json_nesting_depth(body: bytes) -> int:
    """How deeply arrays and objects nest in ``body`` (brackets inside strings do not count).

    A linear scan done before parsing, so a deeply nested body is refused without recursing.
    """
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


class _CappedHTTPServer(ThreadingHTTPServer):
    """A thread per connection up to a cap; beyond it a 503 is written at once and closed."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, *, max_connections: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request: socket.socket) -> None:
        log.warning("alert webhook refused a connection: too many open")
        try:
            request.settimeout(1.0)
            request.sendall(_BUSY_RESPONSE)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)


class AlertWebhookServer:
    """A background component: ``start()`` binds and serves, ``stop()`` shuts down."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str,
        token: str,
        deps: RegistryDeps,
        limits: WebhookLimits | None = None,
    ) -> None:
        if not token:
            raise ValueError("the alert webhook needs a bearer token")
        self._host, self._requested_port, self.path = host, port, path
        self._token = token.encode()
        self._deps = deps
        self.limits = limits or WebhookLimits()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (after ``start``; useful with port 0)."""
        if self._server is None:
            raise RuntimeError("the webhook is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}{self.path}"

    def start(self) -> None:
        server = _CappedHTTPServer(
            (self._host, self._requested_port),
            self._handler_class(),
            max_connections=self.limits.max_connections,
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="alert-webhook",
            daemon=True,
        )
        self._thread.start()
        log.info("alert webhook listening", extra={"url": self.url})

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(5)
        self._server = None

    def authorized(self, header: str | None) -> bool:
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)

    def handle_alerts(self, document: object) -> list[dict[str, str]]:
        """Apply every alert of a notification; ValueError for a malformed one (nothing done)."""
        notices = parse_alertmanager_payload(document)
        results = []
        for notice in notices:
            with self._deps.sessions() as session, session.begin():
                outcome = rollback.on_alert(session, self._deps, notice)
            if self._deps.metrics:
                self._deps.metrics.alerts.labels(outcome).inc()
            log.info(
                "alert handled",
                extra={
                    "fingerprint": notice.fingerprint,
                    "model": notice.model_id,
                    "status": notice.status,
                    "outcome": outcome,
                },
            )
            results.append(
                {"fingerprint": notice.fingerprint, "model": notice.model_id, "outcome": outcome}
            )
        return results

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        webhook = self
        limits = self.limits

        class Handler(BaseHTTPRequestHandler):
            server_version = "tuneline-registry-webhook"
            protocol_version = "HTTP/1.1"
            #: every read of the socket waits at most this long (StreamRequestHandler applies it)
            timeout = limits.read_timeout_seconds

            def setup(self) -> None:
                super().setup()
                # a client trickling bytes under the read timeout is still cut at the deadline
                self._deadline = threading.Timer(limits.request_timeout_seconds, self._cut)
                self._deadline.daemon = True
                self._deadline.start()

            def _cut(self) -> None:
                log.warning("alert webhook cut a request that was too slow to arrive")
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _request_arrived(self) -> None:
                self._deadline.cancel()

            def finish(self) -> None:
                self._deadline.cancel()
                with contextlib.suppress(OSError):  # the client is gone or was cut
                    super().finish()

            def log_message(self, format: str, *args: object) -> None:
                log.debug("webhook request: " + format, *args)

            def _reply(self, status: HTTPStatus, body: dict[str, object]) -> None:
                data = json.dumps(body, separators=(",", ":")).encode()
                self._request_arrived()
                self.close_connection = True
                self.send_response(status)
                if status == HTTPStatus.UNAUTHORIZED:
                    self.send_header("WWW-Authenticate", 'Bearer realm="tuneline-registry"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if webhook._deps.metrics:
                    webhook._deps.metrics.webhook_requests.labels(str(int(status))).inc()

            def _refuse_other_methods(self) -> None:
                self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use POST"})

            do_GET = do_PUT = do_DELETE = do_PATCH = _refuse_other_methods  # noqa: N815

            def do_POST(self) -> None:  # noqa: PLR0911 - one early answer per HTTP error
                if self.path.split("?", 1)[0] != webhook.path:
                    self._reply(HTTPStatus.NOT_FOUND, {"error": f"POST alerts to {webhook.path}"})
                    return
                if not webhook.authorized(self.headers.get("Authorization")):
                    self._reply(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
                    return
                length_header = self.headers.get("Content-Length")
                if length_header is None:
                    self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
                    return
                if not _CONTENT_LENGTH.match(length_header.strip()):
                    self._reply(
                        HTTPStatus.BAD_REQUEST,
                        {"error": "Content-Length must be a non-negative decimal integer"},
                    )
                    return
                length = int(length_header)
                if length > limits.max_body_bytes:
                    self._reply(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        {"error": f"body over {limits.max_body_bytes} bytes"},
                    )
                    return
                try:
                    body = self.rfile.read(length)
                except OSError:  # read timeout, or cut at the request deadline
                    self.close_connection = True
                    return
                if len(body) < length:  # the client closed (or was cut) before its body ended
                    self.close_connection = True
                    return
                self._request_arrived()
                if json_nesting_depth(body) > limits.max_json_depth:
                    self._reply(
                        HTTPStatus.BAD_REQUEST,
                        {"error": f"JSON nested deeper than {limits.max_json_depth} levels"},
                    )
                    return
                try:
                    document = json.loads(body)
                    results = webhook.handle_alerts(document)
                except (ValueError, RecursionError) as error:
                    self._reply(HTTPStatus.BAD_REQUEST, {"error": str(error)})
                    return
                except Exception:  # answer 500 so Alertmanager retries
                    log.exception("webhook failed to apply alerts")
                    self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
                    return
                self._reply(HTTPStatus.OK, {"alerts": results})

        return Handler
