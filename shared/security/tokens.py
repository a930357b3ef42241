"""Bearer tokens: JWTs verified against the keys of a JWKS file.

The JWKS file is what an OIDC provider publishes at its ``jwks_uri`` (mounted from a Secret or
synced by a sidecar), so any provider can issue Tuneline tokens. A token must carry the
configured issuer and audience, an expiry, and a ``sub``; its roles come from one claim
(``roles`` by default). The file is re-read when it changes, so keys rotate without a restart,
and a verified token is remembered until it expires, so a caller pays the signature check once
per token rather than once per call.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from shared.security.files import FileStamp, file_stamp

#: Asymmetric algorithms only: a shared-secret (HS*) key in a JWKS would let anyone who can
#: read the file mint tokens.
ALLOWED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "EdDSA",
)
_CACHE_SIZE = 4096


class InvalidToken(Exception):
    """The token is malformed, expired, signed by an unknown key or for someone else."""


@dataclass(frozen=True)
class VerifiedToken:
    subject: str
    roles: frozenset[str]
    expires_at: float


class JwtVerifier:
    """Verifies bearer JWTs; thread-safe."""

    def __init__(
        self,
        jwks_file: Path,
        *,
        issuer: str,
        audience: str,
        roles_claim: str = "roles",
        leeway_seconds: float = 30.0,
        refresh_seconds: float = 1.0,
    ) -> None:
        self._jwks_file = jwks_file
        self._issuer = issuer
        self._audience = audience
        self._roles_claim = roles_claim
        self._leeway = leeway_seconds
        self._refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._stamp: FileStamp | None = None
        self._checked_at = 0.0
        self._verified: OrderedDict[str, VerifiedToken] = OrderedDict()
        self._load_keys()

    def _load_keys(self) -> None:
        stamp = file_stamp(self._jwks_file)
        keys = jwt.PyJWKSet.from_dict(json.loads(self._jwks_file.read_text())).keys
        self._keys = {key.key_id: key for key in keys}
        if len(keys) == 1:
            self._keys.setdefault(None, keys[0])  # a token without `kid` may use the only key
        self._stamp = stamp
        self._verified.clear()  # a removed key must stop working at once

    def _refresh(self) -> None:
        """Re-read the JWKS when the file changed (looked at once per ``refresh_seconds``)."""
        now = time.monotonic()
        if now - self._checked_at < self._refresh_seconds:
            return
        self._checked_at = now
        if file_stamp(self._jwks_file) != self._stamp:
            # half-written or broken: keep the last good keys until it is fixed
            with contextlib.suppress(OSError, ValueError, jwt.PyJWKError, jwt.PyJWKSetError):
                self._load_keys()

    def verify(self, token: str) -> VerifiedToken:
        """The token's subject and roles; :class:`InvalidToken` when it must not be trusted."""
        with self._lock:
            self._refresh()
            cached = self._verified.get(token)
            if cached is not None and cached.expires_at > time.time():
                self._verified.move_to_end(token)
                return cached
            keys = self._keys
        verified = self._check(token, keys)
        with self._lock:
            self._verified[token] = verified
            if len(self._verified) > _CACHE_SIZE:
                self._verified.popitem(last=False)
        return verified

    def _check(self, token: str, keys: dict[str | None, jwt.PyJWK]) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
            key = keys.get(header.get("kid"))
            if key is None:
                raise InvalidToken("the token is signed by a key that is not in the JWKS")
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=list(ALLOWED_ALGORITHMS),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from error
        roles = claims.get(self._roles_claim, [])
        if isinstance(roles, str):
            roles = roles.split()
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidToken(f"claim {self._roles_claim!r} must be a list of role names")
        # `exp` is required above; the cache forgets the token when it expires (no leeway)
        return VerifiedToken(str(claims["sub"]), frozenset(roles), float(claims["exp"]))
