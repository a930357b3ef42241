"""Identities read from X.509 certificates.

The identity of a certificate is its first SPIFFE URI SAN (``spiffe://tuneline.local/service/
registry``), else its first URI SAN, else its subject common name. Parsing is cached per
certificate, so a long-lived connection pays it once, not per call.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography import x509
from cryptography.x509.oid import NameOID


def certificate_identity(certificate: x509.Certificate) -> str | None:
    """The identity a certificate names, or ``None`` when it names none."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    spiffe = [uri for uri in uris if uri.startswith("spiffe://")]
    if spiffe or uris:
        return (spiffe or uris)[0]
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        value = names[0].value
        return value if isinstance(value, str) else value.decode()
    return None


@lru_cache(maxsize=1024)
def pem_identity(pem: bytes) -> str | None:
    """:func:`certificate_identity` of a PEM certificate (the peer's, from the TLS session)."""
    return certificate_identity(x509.load_pem_x509_certificate(pem))
