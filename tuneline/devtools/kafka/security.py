"""A secured local broker: TLS from a local CA, SCRAM users (one per service), ACLs."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from shared.events.acls import SERVICES, kafka_principal
from tuneline.devtools.kafka.probes import LOOPBACK
from tuneline.devtools.local_pki import CertificateAuthority

#: The SCRAM mechanism of a secured local broker, and its super user (it creates the ACLs).
SCRAM_MECHANISM = "SCRAM-SHA-512"
KAFKA_ADMIN_USER = "admin"
_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


@dataclass(frozen=True)
class BrokerSecurity:
    """What a secured local broker runs with: a ``SASL_SSL`` listener (TLS from a local CA,
    SCRAM-SHA-512 users), the controller listener behind SASL ``PLAIN`` with the admin's
    password, and KRaft's StandardAuthorizer denying whatever no ACL allows.

    One SCRAM user per service (named after it) plus :data:`KAFKA_ADMIN_USER`, the super user;
    each password lives in ``folder/users/<name>.password`` (0600), which is what
    ``TUNELINE_KAFKA_PASSWORD_FILE`` points a process at. Made once under ``folder`` and
    reused, so a restarted broker keeps its users.
    """

    folder: Path
    ca_file: Path
    #: The broker's PEM key store: its private key, then its certificate.
    keystore_file: Path
    passwords: Mapping[str, str]
    admin: str = KAFKA_ADMIN_USER

    @classmethod
    def ensure(cls, folder: Path, users: Iterable[str] = SERVICES) -> BrokerSecurity:
        """The CA, broker certificate and users under ``folder``, made where missing."""
        folder = Path(folder).expanduser().absolute()
        authority = CertificateAuthority(folder / "pki", name="Tuneline local Kafka CA")
        broker = authority.issue("broker", common_name="localhost", server=True)
        keystore = folder / "pki" / "broker-keystore.pem"
        keystore.write_bytes(broker.key_file.read_bytes() + broker.cert_file.read_bytes())
        keystore.chmod(0o600)
        user_dir = folder / "users"
        user_dir.mkdir(parents=True, exist_ok=True)
        passwords: dict[str, str] = {}
        for user in (KAFKA_ADMIN_USER, *users):
            path = user_dir / f"{user}.password"
            if not path.is_file():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(24) + "\n")
            passwords[user] = path.read_text().strip()
        return cls(
            folder=folder,
            ca_file=authority.ca_file,
            keystore_file=keystore,
            passwords=MappingProxyType(passwords),
        )

    def password_file(self, user: str) -> Path:
        return self.folder / "users" / f"{user}.password"

    def client_environment(self, user: str) -> dict[str, str]:
        """The ``TUNELINE_KAFKA_*`` variables a process logging in as ``user`` runs with."""
        if user not in self.passwords:
            raise KeyError(f"no Kafka user {user!r}")
        return {
            "TUNELINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "TUNELINE_KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
            "TUNELINE_KAFKA_USERNAME": user,
            "TUNELINE_KAFKA_PASSWORD_FILE": str(self.password_file(user)),
            "TUNELINE_KAFKA_SSL_CAFILE": str(self.ca_file),
        }

    def client_security(self, user: str, password: str | None = None) -> dict[str, object]:
        """kafka-python settings logging in as ``user`` (with ``password`` instead of the
        real one, to try a wrong one)."""
        return {
            "security_protocol": "SASL_SSL",
            "ssl_cafile": str(self.ca_file),
            "ssl_check_hostname": True,
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": self.passwords[user] if password is None else password,
        }

    def scram_arguments(self) -> list[str]:
        """``--add-scram`` arguments of ``kafka-storage format``: KRaft keeps SCRAM users in
        its metadata log, so they exist from the first start (the broker's own login too)."""
        arguments: list[str] = []
        for user, password in sorted(self.passwords.items()):
            arguments += ["--add-scram", f'{SCRAM_MECHANISM}=[name={user},password="{password}"]']
        return arguments

    def listener_properties(self, port: int, controller_port: int) -> dict[str, str]:
        """The broker settings of the secured listeners and the authorizer."""
        admin_password = self.passwords[self.admin]
        scram_login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{self.admin}" password="{admin_password}";'
        )
        # the controller listener cannot use SCRAM (its users live in the metadata it
        # serves); PLAIN with the admin's password keeps it closed to anonymous clients
        plain_login = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{self.admin}" password="{admin_password}" '
            f'user_{self.admin}="{admin_password}";'
        )
        return {
            "listeners": f"SASL_SSL://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
            "advertised.listeners": f"SASL_SSL://{LOOPBACK}:{port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": SCRAM_MECHANISM,
            f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": scram_login,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain_login,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore_file),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
            "authorizer.class.name": _AUTHORIZER,
            "super.users": kafka_principal(self.admin),
            "allow.everyone.if.no.acl.found": "false",
        }
