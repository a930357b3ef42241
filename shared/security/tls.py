"""TLS credentials for gRPC servers and clients, from PEM files.

Servers use gRPC's dynamic credentials: before each new handshake gRPC asks
:class:`ReloadingServerCertificates` for a newer configuration, which it returns when the
certificate, key or client CA file changed (cert-manager renewing a Secret), so certificates
rotate without a restart. Connections already open keep the certificate they began with.

Clients have no such hook in gRPC Python: :class:`ReloadingChannelCredentials` notices that
their CA, certificate or key file changed and builds new credentials, and
:class:`shared.grpc.reloading_channel.ReloadingChannel` moves new calls onto a channel made
from them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from shared.security.files import FileStamp, file_stamp

log = logging.getLogger(__name__)


def _read_certificates(path: Path) -> bytes:
    """The PEM certificates in ``path``, refused (ValueError) when half-written or not PEM, so
    gRPC never sees a file caught mid-rotation."""
    pem = path.read_bytes()
    x509.load_pem_x509_certificates(pem)
    return pem


def _read_private_key(path: Path) -> bytes:
    pem = path.read_bytes()
    load_pem_private_key(pem, password=None)
    return pem


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
        chain = _read_certificates(self._cert_file)
        key = _read_private_key(self._key_file)
        client_ca = _read_certificates(self._client_ca_file) if self._client_ca_file else None
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
        root_certificates=_read_certificates(ca_file) if ca_file else None,
        private_key=_read_private_key(key_file) if key_file else None,
        certificate_chain=_read_certificates(cert_file) if cert_file else None,
    )


class ReloadingChannelCredentials:
    """A client's TLS credentials (:func:`channel_credentials`), built again whenever its CA,
    certificate or key file changed (cert-manager renewing the mounted Secret)."""

    def __init__(
        self,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        self._ca_file = ca_file
        self._cert_file = cert_file
        self._key_file = key_file
        self.files = tuple(f for f in (ca_file, cert_file, key_file) if f is not None)
        self._stamps = self._read_stamps()
        self.initial = self._credentials()  # bad files fail channel creation loudly

    def _read_stamps(self) -> tuple[FileStamp, ...]:
        return tuple(file_stamp(f) for f in self.files)

    def _credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(
            ca_file=self._ca_file, cert_file=self._cert_file, key_file=self._key_file
        )

    def fetch(self) -> grpc.ChannelCredentials | None:
        """New credentials when the files changed since the last ones, else ``None``."""
        try:
            stamps = self._read_stamps()
            if stamps == self._stamps:
                return None
            credentials = self._credentials()
        except (OSError, ValueError) as error:
            # mid-rotation (a file missing or partial): keep the previous credentials, and
            # since the stamps were not taken, look again at the next check
            log.warning("client TLS files unreadable; keeping the previous ones", exc_info=error)
            return None
        self._stamps = stamps
        log.info("client TLS credentials reloaded", extra={"cert_file": str(self._cert_file)})
        return credentials
