"""TLS credentials for gRPC servers and clients, from PEM files.

Servers use gRPC's dynamic credentials: before each new handshake gRPC asks
:class:`ReloadingServerCertificates` for a newer configuration, which it returns when the
certificate, key or client CA file changed (cert-manager renewing a Secret), so certificates
rotate without a restart. Connections already open keep the certificate they began with.
Clients read the files when they build a channel; a new channel picks up new files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from shared.security.files import FileStamp, file_stamp

log = logging.getLogger(__name__)


class ReloadingServerCertificates:
    """The server's certificate configuration, re-read whenever one of its files changes."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> None:
        self._files = tuple(f for f in (cert_file, key_file, client_ca_file) if f is not None)
        self._cert_file = cert_file
        self._key_file = key_file
        self._client_ca_file = client_ca_file
        self._stamps = self._read_stamps()
        self.initial = self._configuration()  # fails start-up loudly when the files are bad

    def _read_stamps(self) -> tuple[FileStamp, ...]:
        return tuple(file_stamp(f) for f in self._files)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        chain = self._cert_file.read_bytes()
        key = self._key_file.read_bytes()
        x509.load_pem_x509_certificates(chain)  # refuse a half-written file before gRPC sees it
        load_pem_private_key(key, password=None)
        client_ca = self._client_ca_file.read_bytes() if self._client_ca_file else None
        if client_ca is not None:
            x509.load_pem_x509_certificates(client_ca)
        return grpc.ssl_server_certificate_configuration([(key, chain)], client_ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration when the files changed, else ``None``."""
        try:
            stamps = self._read_stamps()
            if stamps == self._stamps:
                return None
            configuration = self._configuration()
        except (OSError, ValueError) as error:
            # mid-rotation (one file new, one missing or partial): keep serving the old one
            log.warning("TLS files unreadable; keeping the previous certificate", exc_info=error)
            return None
        self._stamps = stamps
        log.info("TLS certificate reloaded", extra={"cert_file": str(self._cert_file)})
        return configuration


def server_credentials(
    cert_file: Path,
    key_file: Path,
    *,
    client_ca_file: Path | None = None,
    require_client_cert: bool = True,
) -> grpc.ServerCredentials:
    """TLS server credentials; mutual TLS when ``client_ca_file`` is set and required."""
    certificates = ReloadingServerCertificates(cert_file, key_file, client_ca_file)
    return grpc.dynamic_ssl_server_credentials(
        certificates.initial,
        certificates.fetch,  # type: ignore[arg-type]  # grpc-stubs omit the documented None
        require_client_authentication=client_ca_file is not None and require_client_cert,
    )


def channel_credentials(
    *, ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS client credentials: trust ``ca_file`` (else the system roots), present a client
    certificate when ``cert_file`` and ``key_file`` are set."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both TLS_CERT_FILE and TLS_KEY_FILE")
    return grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes() if ca_file else None,
        private_key=key_file.read_bytes() if key_file else None,
        certificate_chain=cert_file.read_bytes() if cert_file else None,
    )
