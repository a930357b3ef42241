"""The Alertmanager webhook: a firing alert naming a model rolls its production back.

``POST {webhook_path}`` with Alertmanager's webhook JSON (version 4) and
``Authorization: Bearer <token>``. Each alert is handled in its own transaction before the
response is sent, so a 200 means every rollback it caused is committed (and its
ModelRolledBack is in the outbox); Alertmanager retries anything else.

Answers: 200 with a JSON summary (one outcome per alert: ``rolled_back``, ``duplicate``,
``resolved``, ``not_production``, ``unknown_model``, ``no_model_label``,
``no_rollback_target``); 401 without the right token; 400 for a body that is not the webhook
format; 404 for another path; 405 for another method; 411/413 for a missing or oversized
body; 500 when the database failed (Alertmanager retries; the same incident still rolls back
once). Runs as a background component of the service on the stdlib ``ThreadingHTTPServer``.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy.orm import Session, sessionmaker

from services.registry import handlers
from services.registry.domain import parse_alertmanager_payload
from services.registry.handlers import RegistryDeps

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class AlertWebhookServer:
    """A background component: ``start()`` binds and serves, ``stop()`` shuts down."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str,
        token: str,
        sessions: sessionmaker[Session],
        deps: RegistryDeps,
    ) -> None:
        if not token:
            raise ValueError("the alert webhook needs a bearer token")
        self._host, self._requested_port, self.path = host, port, path
        self._token = token.encode()
        self._sessions = sessions
        self._deps = deps
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
        server = ThreadingHTTPServer((self._host, self._requested_port), self._handler_class())
        server.daemon_threads = True
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
            with self._sessions() as session, session.begin():
                outcome = handlers.on_alert(session, self._deps, notice)
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

        class Handler(BaseHTTPRequestHandler):
            server_version = "tuneline-registry-webhook"
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                log.debug("webhook request: " + format, *args)

            def _reply(self, status: HTTPStatus, body: dict[str, object]) -> None:
                data = json.dumps(body, separators=(",", ":")).encode()
                self.send_response(status)
                if status == HTTPStatus.UNAUTHORIZED:
                    self.send_header("WWW-Authenticate", 'Bearer realm="tuneline-registry"')
                self.send_header("Content-Type", "application/json")
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
                try:
                    length = int(length_header)
                except ValueError:
                    self._reply(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"})
                    return
                if length > MAX_BODY_BYTES:
                    self.close_connection = True
                    self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
                    return
                body = self.rfile.read(length)
                try:
                    document = json.loads(body)
                    results = webhook.handle_alerts(document)
                except ValueError as error:
                    self._reply(HTTPStatus.BAD_REQUEST, {"error": str(error)})
                    return
                except Exception:  # answer 500 so Alertmanager retries
                    log.exception("webhook failed to apply alerts")
                    self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
                    return
                self._reply(HTTPStatus.OK, {"alerts": results})

        return Handler
