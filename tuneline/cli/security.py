"""``tuneline --tls-ca … --token-file …``: how the commands authenticate to the services.

Each option is also its ``TUNELINE_TLS_*``/``TUNELINE_AUTH_*`` variable, the ones the SDK reads
(:class:`shared.grpc.ClientSecurity`); an option given on the command line is put in the
environment for the commands it runs, so every client they build uses it. Without any, the
commands call a secured local stack (``tuneline up``) with the credentials it made for them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Annotated

import typer

from tuneline.devtools.stack import running_stack

_FILE = {"exists": True, "dir_okay": False, "readable": True}


def connection_options(
    ctx: typer.Context,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-ca",
            help="CA bundle to trust for the services.",
            envvar="TUNELINE_TLS_CA_FILE",
            **_FILE,
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            help="Client certificate (mutual TLS).",
            envvar="TUNELINE_TLS_CERT_FILE",
            **_FILE,
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key", help="Key of --tls-cert.", envvar="TUNELINE_TLS_KEY_FILE", **_FILE
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="File holding a bearer JWT sent on every call (over TLS only).",
            envvar="TUNELINE_AUTH_TOKEN_FILE",
            **_FILE,
        ),
    ] = None,
    tls_server_name: Annotated[
        str | None,
        typer.Option(
            "--tls-server-name",
            help="Host name to check the services' certificates against.",
            envvar="TUNELINE_TLS_SERVER_NAME",
        ),
    ] = None,
) -> None:
    """Tuneline: turn a labelled dataset into a promoted, reversible fine-tuned adapter."""
    chosen = {
        "TUNELINE_TLS_CA_FILE": tls_ca,
        "TUNELINE_TLS_CERT_FILE": tls_cert,
        "TUNELINE_TLS_KEY_FILE": tls_key,
        "TUNELINE_AUTH_TOKEN_FILE": token_file,
        "TUNELINE_TLS_SERVER_NAME": tls_server_name,
    }
    before = {variable: os.environ.get(variable) for variable in _SECURITY_VARIABLES}
    for variable, value in chosen.items():
        if value is not None:
            os.environ[variable] = str(value)
    use_local_stack_credentials(os.environ)
    # the command's settings end with it (a process that runs several, like tests, keeps its own)
    ctx.call_on_close(lambda: _restore(before))


def _restore(before: Mapping[str, str | None]) -> None:
    for variable, value in before.items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value


#: Any of these set: the caller chose how to authenticate; a local stack's files stay unused.
_CHOSEN_SECURITY = (
    "TUNELINE_TLS_CA_FILE",
    "TUNELINE_TLS_CERT_FILE",
    "TUNELINE_AUTH_TOKEN",
    "TUNELINE_AUTH_TOKEN_FILE",
)
#: Every variable a command's options or a local stack's credentials may set.
_SECURITY_VARIABLES = (
    *_CHOSEN_SECURITY,
    "TUNELINE_AUTH_MODE",
    "TUNELINE_TLS_KEY_FILE",
    "TUNELINE_TLS_SERVER_NAME",
)


def use_local_stack_credentials(env: MutableMapping[str, str]) -> None:
    """Call a secured stack that ``tuneline up`` runs from ``TUNELINE_HOME`` with the
    credentials it made for the command line, unless the caller chose others."""
    if any(env.get(variable) for variable in _CHOSEN_SECURITY):
        return
    stack = running_stack(env)
    credentials = stack.client_credentials() if stack is not None else None
    if credentials is not None:
        env.update(credentials.client_environment())
