"""Who is calling, and may they: transport security, caller identity, authorisation.

* :mod:`shared.security.identity` — the verified :class:`Principal` of the current call;
* :mod:`shared.security.certificates` — identities read from X.509 certificates (SPIFFE URI or CN);
* :mod:`shared.security.tokens` — bearer JWTs verified against a JWKS file;
* :mod:`shared.security.policy` — roles, the role → RPC table, deny by default;
* :mod:`shared.security.tls` — server and client credentials, reloaded when the files change.

The gRPC interceptor that puts these together lives in :mod:`shared.grpc.auth`.
"""

from shared.security.identity import Principal, acting_as, caller_name, current_principal
from shared.security.policy import AccessPolicy, load_access_policy

__all__ = [
    "AccessPolicy",
    "Principal",
    "acting_as",
    "caller_name",
    "current_principal",
    "load_access_policy",
]
