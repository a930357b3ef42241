"""Every call authenticated and authorised before its handler runs: :class:`AuthInterceptor`.

The interceptor finds out who is calling — a bearer JWT in ``authorization`` if the call
carries one, else the client certificate of the TLS session (SPIFFE URI SAN or CN) — and asks
the :class:`~shared.security.policy.AccessPolicy` whether one of the caller's roles may call
this RPC. No identity: ``UNAUTHENTICATED``; no role for it: ``PERMISSION_DENIED``; both with a
``google.rpc.ErrorInfo`` naming the method. Otherwise the handler runs with the caller as
:func:`~shared.security.identity.current_principal`.

``x-tuneline-principal`` metadata names the caller only when the connection itself is a
configured trusted proxy; from anyone else it is ignored.

:class:`ServerSecurity` is what :func:`~shared.grpc.server.build_grpc_server` needs: the port's
credentials and this interceptor, built from the settings — or nothing at all, but only when
``TUNELINE_AUTH_MODE=insecure`` asks for it, so a deployment that forgets to configure
security refuses to start instead of serving in the clear.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from shared.errors import PermissionDenied, Unauthenticated
from shared.grpc.errors import abort_with
from shared.grpc.interception import rewrap_handler
from shared.security.certificates import pem_identity
from shared.security.identity import Principal, acting_as
from shared.security.policy import AccessPolicy, load_access_policy
from shared.security.tls import server_credentials
from shared.security.tokens import InvalidToken, JwtVerifier
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

#: Metadata a trusted proxy uses to name the caller it authenticated.
PRINCIPAL_METADATA_KEY = "x-tuneline-principal"
_BEARER = "bearer "


class SecurityNotConfigured(ValueError):
    """``AUTH_MODE=enforce`` (the default) without the files it needs: refuse to start."""


class CallerAuthenticator:
    """Turns a call's TLS session and metadata into a verified :class:`Principal`."""

    def __init__(
        self,
        policy: AccessPolicy,
        *,
        tokens: JwtVerifier | None = None,
        trusted_proxies: frozenset[str] = frozenset(),
    ) -> None:
        self.policy = policy
        self._tokens = tokens
        self._trusted_proxies = trusted_proxies

    def authenticate(self, context: grpc.ServicerContext) -> Principal:
        """The caller, or :class:`Unauthenticated` when it proved nothing (or lied)."""
        bearer = asserted = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                bearer = value
            elif key == PRINCIPAL_METADATA_KEY and isinstance(value, str):
                asserted = value
        if bearer is not None:
            principal = self._from_token(bearer)
        else:
            certificates = context.auth_context().get("x509_pem_cert")
            identity = pem_identity(certificates[0]) if certificates else None
            if identity is None:
                raise Unauthenticated(
                    "no credentials: present a trusted client certificate or a bearer token",
                    metadata={"reason": "NO_CREDENTIALS"},
                )
            principal = Principal(identity, self.policy.roles_of(identity), "certificate")
        if asserted and principal.name in self._trusted_proxies:
            return Principal(asserted, self.policy.roles_of(asserted), "proxy")
        return principal

    def _from_token(self, header: str) -> Principal:
        if not header.lower().startswith(_BEARER):
            raise Unauthenticated(
                "the authorization metadata must be `Bearer <token>`",
                metadata={"reason": "MALFORMED_AUTHORIZATION"},
            )
        if self._tokens is None:
            raise Unauthenticated(
                "this server accepts no bearer tokens (no JWKS configured)",
                metadata={"reason": "TOKENS_NOT_ACCEPTED"},
            )
        try:
            token = self._tokens.verify(header[len(_BEARER) :].strip())
        except InvalidToken as error:
            raise Unauthenticated(
                f"invalid bearer token: {error}", metadata={"reason": "INVALID_TOKEN"}
            ) from error
        return Principal(token.subject, self.policy.roles_of(token.subject, token.roles), "token")


class AuthInterceptor(grpc.ServerInterceptor):
    """Deny by default: authenticate, authorise, then run the handler as the caller."""

    def __init__(
        self, authenticator: CallerAuthenticator, *, open_services: frozenset[str]
    ) -> None:
        self._authenticator = authenticator
        self._open_services = open_services

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method.lstrip("/")
        if handler is None or method.rpartition("/")[0] in self._open_services:
            return handler
        authenticator = self._authenticator

        def admit(context: grpc.ServicerContext) -> Principal:
            try:
                principal = authenticator.authenticate(context)
            except Unauthenticated as error:
                error.metadata["method"] = method
                abort_with(context, error)
            if not authenticator.policy.allows(principal.roles, method):
                abort_with(
                    context,
                    PermissionDenied(
                        f"{principal.name} may not call {method}",
                        metadata={
                            "method": method,
                            "principal": principal.name,
                            "roles": ",".join(sorted(principal.roles)),
                        },
                    ),
                )
            return principal

        def wrap(behaviour: Callable[..., Any], response_streaming: bool) -> Callable[..., Any]:
            if response_streaming:

                def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    principal = admit(context)
                    with acting_as(principal):
                        yield from behaviour(request, context)

                return stream

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                principal = admit(context)
                with acting_as(principal):
                    return behaviour(request, context)

            return unary

        return rewrap_handler(handler, wrap)


@dataclass(frozen=True)
class ServerSecurity:
    """How a server's port is secured: TLS credentials (or plaintext) and the auth interceptor."""

    credentials: grpc.ServerCredentials | None
    interceptor: AuthInterceptor | None

    @classmethod
    def insecure(cls) -> ServerSecurity:
        """Plaintext and no checks: for tests and local debugging, never for a deployment."""
        return cls(credentials=None, interceptor=None)

    @classmethod
    def from_settings(cls, common: CommonSettings) -> ServerSecurity:
        """The security the settings ask for; :class:`SecurityNotConfigured` if incomplete."""
        if common.auth_mode == "insecure":
            log.warning(
                "gRPC security is OFF (TUNELINE_AUTH_MODE=insecure): plaintext, and any caller "
                "may call any RPC. Never run a deployment like this."
            )
            return cls.insecure()
        if common.tls_cert_file is None or common.tls_key_file is None:
            raise SecurityNotConfigured(
                "TUNELINE_AUTH_MODE=enforce needs TUNELINE_TLS_CERT_FILE and "
                "TUNELINE_TLS_KEY_FILE (or TUNELINE_AUTH_MODE=insecure for local debugging)"
            )
        mutual = common.tls_client_ca_file is not None and common.tls_require_client_cert
        if not mutual and common.auth_jwt_jwks_file is None:
            raise SecurityNotConfigured(
                "no caller could authenticate: set TUNELINE_TLS_CLIENT_CA_FILE (mutual TLS) "
                "and/or TUNELINE_AUTH_JWT_JWKS_FILE (bearer tokens)"
            )
        tokens = None
        if common.auth_jwt_jwks_file is not None:
            if not common.auth_jwt_issuer:
                raise SecurityNotConfigured(
                    "TUNELINE_AUTH_JWT_JWKS_FILE needs TUNELINE_AUTH_JWT_ISSUER"
                )
            tokens = JwtVerifier(
                common.auth_jwt_jwks_file,
                issuer=common.auth_jwt_issuer,
                audience=common.auth_jwt_audience,
                roles_claim=common.auth_jwt_roles_claim,
                leeway_seconds=common.auth_jwt_leeway_seconds,
            )
        authenticator = CallerAuthenticator(
            load_access_policy(common.auth_policy_file),
            tokens=tokens,
            trusted_proxies=frozenset(common.auth_trusted_proxies),
        )
        return cls(
            credentials=server_credentials(
                common.tls_cert_file,
                common.tls_key_file,
                client_ca_file=common.tls_client_ca_file,
                require_client_cert=common.tls_require_client_cert,
            ),
            interceptor=AuthInterceptor(
                authenticator, open_services=frozenset(common.auth_open_services)
            ),
        )
