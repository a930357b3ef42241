"""``tuneline --tls-ca … --token-file …``: how the commands authenticate to the services.

Each option is also its ``TUNELINE_TLS_*``/``TUNELINE_AUTH_*`` variable, the ones the SDK reads
(:class:`shared.grpc.ClientSecurity`); an option given on the command line is put in the
environment for the commands it runs, so every client they build uses it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

_FILE = {"exists": True, "dir_okay": False, "readable": True}


def connection_options(
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
    for variable, value in chosen.items():
        if value is not None:
            os.environ[variable] = str(value)
