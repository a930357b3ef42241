"""A local certificate authority and the credentials ``tuneline up`` and ``tuneline demo`` run
with, made with ``cryptography``.

A local stack is secured like a production one: every service gets a server-and-client
certificate naming it as ``spiffe://tuneline.local/service/<name>`` (which the access policy
maps to that service's role), every call is mutual TLS, and the command line gets its own
certificate, ``spiffe://tuneline.local/user/local-admin``, bound to every person's role by a
policy file beside it. Everything lives under the stack's home (``pki/``, keys 0600): a CA made
once and reused, so certificates a person copied elsewhere stay valid; leaf certificates are
issued again when they are missing or close to expiry.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The SPIFFE trust domain of local stacks.
LOCAL_TRUST_DOMAIN = "tuneline.local"
#: The command line's identity in a local stack, and the roles the stack's policy gives it.
LOCAL_ADMIN = "local-admin"
LOCAL_ADMIN_ROLES = ("viewer", "editor", "reviewer", "operator")
#: Lifetimes: the CA outlives many stacks; leaves are renewed at ``up`` within the margin.
CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=90)
RENEW_MARGIN = dt.timedelta(days=7)
#: The name servers' certificates carry and clients check (with 127.0.0.1 and ``::1``).
LOCAL_SERVER_NAME = "localhost"


def spiffe_id(kind: str, name: str, trust_domain: str = LOCAL_TRUST_DOMAIN) -> str:
    """``spiffe://<trust domain>/<kind>/<name>``, e.g. ``…/service/registry``."""
    return f"spiffe://{trust_domain}/{kind}/{name}"


@dataclass(frozen=True)
class IssuedCertificate:
    cert_file: Path
    key_file: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by its owner only, replacing any older file at once."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _valid_until(path: Path) -> dt.datetime | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


class CertificateAuthority:
    """A self-signed CA whose certificate and key live in ``folder`` (``ca.pem``, ``ca-key.pem``):
    loaded when they are there and valid, else made."""

    def __init__(
        self,
        folder: Path,
        name: str = "Tuneline local CA",
        *,
        lifetime: dt.timedelta = CA_LIFETIME,
        leaf_lifetime: dt.timedelta = LEAF_LIFETIME,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.leaf_lifetime = leaf_lifetime
        self.ca_file = folder / "ca.pem"
        key_file = folder / "ca-key.pem"
        now = dt.datetime.now(dt.UTC)
        valid_until = _valid_until(self.ca_file)
        if valid_until is not None and valid_until > now + RENEW_MARGIN and key_file.exists():
            self.certificate = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
            loaded = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            self._key = loaded
            return
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        _write_private(key_file, _pem_key(self._key))
        self.ca_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        file_stem: str,
        *,
        uri: str | None = None,
        common_name: str | None = None,
        server: bool = False,
    ) -> IssuedCertificate:
        """A leaf certificate for client and server use; ``server=True`` adds the loopback
        names (``localhost``, 127.0.0.1, ::1) a local server is reached by."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        names: list[x509.GeneralName] = []
        if uri:
            names.append(x509.UniformResourceIdentifier(uri))
        if server:
            names += [
                x509.DNSName(LOCAL_SERVER_NAME),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or file_stem)])
            )
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + self.leaf_lifetime)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        issued = IssuedCertificate(
            self.folder / f"{file_stem}.pem", self.folder / f"{file_stem}-key.pem"
        )
        _write_private(issued.key_file, _pem_key(key))
        issued.cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return issued

    def issue_unless_current(
        self, file_stem: str, *, uri: str, server: bool = False
    ) -> IssuedCertificate:
        """The leaf at ``file_stem`` if it exists, was signed by this CA and is not close to
        expiry; else a new one (:meth:`issue`)."""
        issued = IssuedCertificate(
            self.folder / f"{file_stem}.pem", self.folder / f"{file_stem}-key.pem"
        )
        valid_until = _valid_until(issued.cert_file)
        if valid_until is not None and issued.key_file.exists():
            current = x509.load_pem_x509_certificate(issued.cert_file.read_bytes())
            fresh = valid_until > dt.datetime.now(dt.UTC) + RENEW_MARGIN
            if fresh and current.issuer == self.certificate.subject:
                return issued
        return self.issue(file_stem, uri=uri, server=server)


@dataclass(frozen=True)
class LocalCredentials:
    """A local stack's PKI: the CA, a certificate per service, the command line's, the policy."""

    folder: Path
    ca_file: Path
    policy_file: Path
    cli: IssuedCertificate

    def service(self, name: str) -> IssuedCertificate:
        return IssuedCertificate(self.folder / f"{name}.pem", self.folder / f"{name}-key.pem")

    def service_environment(self, name: str) -> dict[str, str]:
        """What service ``name`` runs with: TLS with its certificate, mutual TLS required of
        callers, the local policy, auth enforced."""
        issued = self.service(name)
        return {
            "TUNELINE_AUTH_MODE": "enforce",
            "TUNELINE_TLS_CERT_FILE": str(issued.cert_file),
            "TUNELINE_TLS_KEY_FILE": str(issued.key_file),
            "TUNELINE_TLS_CA_FILE": str(self.ca_file),
            "TUNELINE_TLS_CLIENT_CA_FILE": str(self.ca_file),
            "TUNELINE_TLS_SERVER_NAME": LOCAL_SERVER_NAME,
            "TUNELINE_AUTH_POLICY_FILE": str(self.policy_file),
        }

    def client_environment(self) -> dict[str, str]:
        """What the command line and the SDK use to call the stack as the local admin."""
        return {
            "TUNELINE_AUTH_MODE": "enforce",  # the stack is secured, whatever else said
            "TUNELINE_TLS_CA_FILE": str(self.ca_file),
            "TUNELINE_TLS_CERT_FILE": str(self.cli.cert_file),
            "TUNELINE_TLS_KEY_FILE": str(self.cli.key_file),
            "TUNELINE_TLS_SERVER_NAME": LOCAL_SERVER_NAME,
        }


def ensure_local_credentials(folder: Path, services: Sequence[str]) -> LocalCredentials:
    """The PKI under ``folder``, made or renewed as needed (see the module docstring)."""
    authority = CertificateAuthority(folder)
    for name in services:
        authority.issue_unless_current(name, uri=spiffe_id("service", name), server=True)
    cli = authority.issue_unless_current("cli", uri=spiffe_id("user", LOCAL_ADMIN))
    policy_file = folder / "policy.json"
    policy = {"bindings": {spiffe_id("user", LOCAL_ADMIN): list(LOCAL_ADMIN_ROLES)}}
    policy_file.write_text(json.dumps(policy, indent=2) + "\n")
    return LocalCredentials(
        folder=folder, ca_file=authority.ca_file, policy_file=policy_file, cli=cli
    )


def local_credentials(folder: Path) -> LocalCredentials | None:
    """The credentials a secured stack made under ``folder``; None when it made none."""
    credentials = LocalCredentials(
        folder=folder,
        ca_file=folder / "ca.pem",
        policy_file=folder / "policy.json",
        cli=IssuedCertificate(folder / "cli.pem", folder / "cli-key.pem"),
    )
    needed = (credentials.ca_file, credentials.cli.cert_file, credentials.cli.key_file)
    return credentials if all(path.exists() for path in needed) else None
