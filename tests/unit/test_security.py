"""Caller identities, bearer tokens and the role table, without a server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from shared.grpc import ClientSecurity, GrpcServerMetrics, build_grpc_server
from shared.grpc.auth import SecurityNotConfigured
from shared.security import AccessPolicy, Principal, acting_as, caller_name, load_access_policy
from shared.security.certificates import certificate_identity
from shared.security.policy import DEFAULT_ROLES, PolicyFileError
from shared.security.tokens import InvalidToken, JwtVerifier
from shared.settings import CommonSettings
from tests.fixtures.pki import LocalCA, TokenIssuer, spiffe_id

PROMOTE = "tuneline.registry.v1.RegistryService/PromoteCheckpoint"
GET_ALIAS = "tuneline.registry.v1.RegistryService/GetAlias"


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_a_certificate_names_its_spiffe_id_else_its_common_name(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path)
    service = ca.issue("svc", uri=spiffe_id("service", "trainer"), common_name="ignored")
    person = ca.issue("person", common_name="alice")
    assert certificate_identity(_load(service.cert_file)) == spiffe_id("service", "trainer")
    assert certificate_identity(_load(person.cert_file)) == "alice"


def test_roles_come_from_claims_bindings_and_service_identities() -> None:
    policy = AccessPolicy(bindings={"alice": frozenset({"reviewer"})})
    assert policy.roles_of("alice", ["viewer"]) == {"viewer", "reviewer"}
    assert policy.roles_of(spiffe_id("service", "evaluator")) == {"service:evaluator"}
    assert policy.roles_of(spiffe_id("service", "nonesuch")) == frozenset()
    assert policy.allows({"reviewer"}, PROMOTE)
    assert not policy.allows({"viewer", "editor", "operator"}, PROMOTE)
    assert not policy.allows({"no-such-role"}, GET_ALIAS)


def test_the_policy_file_replaces_roles_and_adds_bindings(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(
        json.dumps(
            {
                "roles": {"viewer": ["tuneline.registry.v1.RegistryService/*"]},
                "bindings": {"bob": ["viewer"]},
            }
        )
    )
    policy = load_access_policy(path)
    assert policy.allows(policy.roles_of("bob"), PROMOTE)  # a service-wide grant
    assert policy.roles["reviewer"] == DEFAULT_ROLES["reviewer"]  # the rest stays


@pytest.mark.parametrize(
    "document",
    [[], {"roles": {"viewer": "GetAlias"}}, {"bindings": {"bob": [1]}}, {"rules": {}}],
)
def test_a_malformed_policy_file_is_refused(tmp_path: Path, document: object) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    with pytest.raises(PolicyFileError):
        load_access_policy(path)


def _verifier(issuer: TokenIssuer) -> JwtVerifier:
    return JwtVerifier(
        issuer.jwks_file, issuer=issuer.issuer, audience="tuneline", refresh_seconds=0
    )


def test_a_token_gives_its_subject_and_roles(tmp_path: Path) -> None:
    issuer = TokenIssuer(tmp_path / "jwks.json")
    verified = _verifier(issuer).verify(issuer.token("alice", ["reviewer"]))
    assert (verified.subject, verified.roles) == ("alice", {"reviewer"})


def test_a_token_without_expiry_is_refused(tmp_path: Path) -> None:
    issuer = TokenIssuer(tmp_path / "jwks.json")
    token = issuer.token("alice")
    claims = jwt.decode(token, options={"verify_signature": False})
    del claims["exp"]
    unsigned_exp = jwt.encode(claims, issuer._key, algorithm="ES256", headers={"kid": "k1"})
    with pytest.raises(InvalidToken):
        _verifier(issuer).verify(unsigned_exp)


def test_a_symmetric_token_is_refused_whatever_its_key(tmp_path: Path) -> None:
    """HS256 keyed with the public JWK, the classic algorithm confusion, signed by hand."""
    issuer = TokenIssuer(tmp_path / "jwks.json")

    def part(value: object) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")

    claims = {"sub": "mallory", "iss": issuer.issuer, "aud": "tuneline", "exp": time.time() + 60}
    signing_input = part({"alg": "HS256", "kid": "k1"}) + b"." + part(claims)
    secret = issuer.jwks_file.read_bytes()
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    forged = signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")
    with pytest.raises(InvalidToken):
        _verifier(issuer).verify(forged.decode())


def test_keys_rotate_with_the_jwks_file(tmp_path: Path) -> None:
    old = TokenIssuer(tmp_path / "jwks.json", key_id="old")
    verifier = _verifier(old)
    old_token = old.token("alice", ["viewer"])
    verifier.verify(old_token)
    new = TokenIssuer(tmp_path / "next.json", key_id="new")
    with pytest.raises(InvalidToken):
        verifier.verify(new.token("alice"))
    (tmp_path / "next.json").replace(tmp_path / "jwks.json")  # the old key is withdrawn
    assert verifier.verify(new.token("alice")).subject == "alice"
    with pytest.raises(InvalidToken):  # and a token cached under it stops working at once
        verifier.verify(old_token)


def test_the_recorded_caller_is_the_verified_one() -> None:
    assert caller_name("declared") == "declared"  # no auth on this server
    with acting_as(Principal("alice", frozenset({"reviewer"}), "certificate")):
        assert caller_name("mallory") == "alice"
    assert caller_name("declared") == "declared"


@pytest.mark.parametrize(
    ("settings", "tls"),
    [
        ({"auth_mode": "insecure", "auth_token": "t", "tls_ca_file": "ca.pem"}, False),
        ({"auth_mode": "enforce"}, False),  # nothing configured: plaintext, which servers refuse
        ({"auth_mode": "enforce", "auth_token": "t"}, True),
        ({"auth_mode": "enforce", "tls_ca_file": "ca.pem"}, True),
        ({"auth_mode": "enforce", "tls_cert_file": "me.pem", "tls_key_file": "k.pem"}, True),
    ],
)
def test_clients_speak_tls_once_anything_is_configured(settings: dict[str, str], tls: bool) -> None:
    assert ClientSecurity.from_settings(CommonSettings(**settings)).tls is tls  # type: ignore[arg-type]


def test_a_server_nobody_configured_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: without TUNELINE_AUTH_MODE=insecure (tests/conftest.py sets it) a server
    with no TLS settings is not built at all."""
    monkeypatch.delenv("TUNELINE_AUTH_MODE")
    assert CommonSettings().auth_mode == "enforce"
    with pytest.raises(SecurityNotConfigured):
        build_grpc_server(
            host="127.0.0.1",
            port=0,
            services=[],
            metrics=GrpcServerMetrics(CollectorRegistry()),
        )
