"""``tuneline up`` and ``tuneline down``: the local stack in separate processes."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tuneline.cli.output import console, err_console
from tuneline.devtools.kafka import LocalKafkaError
from tuneline.devtools.stack import (
    DEFAULT_HOME,
    HOME_VARIABLE,
    LocalStack,
    StackAlreadyRunning,
    StackError,
    StackPorts,
    StackState,
)

HomeOpt = Annotated[
    Path,
    typer.Option("--home", envvar=HOME_VARIABLE, help="Where the stack keeps its state."),
]


def _print_endpoints(state: StackState) -> None:
    table = Table(title="Tuneline is up", title_justify="left")
    table.add_column("service")
    table.add_column("gRPC")
    table.add_column("metrics")
    table.add_column("other")
    for service in state.services:
        extra = ", ".join(f"{k} 127.0.0.1:{p}" for k, p in service.extra_ports.items())
        table.add_row(
            service.name, service.target, f"127.0.0.1:{service.metrics_port}/metrics", extra
        )
    console.print(table)
    console.print(f"Kafka: {state.kafka_bootstrap}")
    console.print(f"data:  {state.data_dir}")
    console.print(f"logs:  {Path(state.services[0].log).parent}/<service>.log")
    console.print(f"webhook token: {Path(state.home) / 'webhook-token'}")
    credentials = state.client_credentials()
    if credentials is None:
        console.print("[yellow]insecure: plaintext gRPC, no authentication[/yellow]")
    else:
        console.print(
            f"secured: mutual TLS, calls authorised; CA {credentials.ca_file}, the commands' "
            f"certificate {credentials.cli.cert_file} (local-admin)"
        )


def _ports(
    kafka_port: int | None,
    kafka_controller_port: int | None,
    grpc_port_base: int | None,
    metrics_port_base: int | None,
    webhook_port: int | None,
) -> StackPorts:
    """The documented variables, then the options over them (a base replaces every
    per-service port variable of its kind)."""
    ports = StackPorts.from_environment(os.environ)
    if kafka_port is not None:
        ports = replace(ports, kafka=kafka_port)
    if kafka_controller_port is not None:
        ports = replace(ports, kafka_controller=kafka_controller_port)
    if grpc_port_base is not None:
        ports = replace(ports, grpc_base=grpc_port_base, grpc={})
    if metrics_port_base is not None:
        ports = replace(ports, metrics_base=metrics_port_base, metrics={})
    if webhook_port is not None:
        ports = replace(ports, webhook=webhook_port)
    return ports


def up(
    home: HomeOpt = DEFAULT_HOME,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Return once everything is SERVING.")
    ] = False,
    kafka_port: Annotated[
        int | None,
        typer.Option(help="Kafka broker port (default: $TUNELINE_KAFKA_PORT, or 19092)."),
    ] = None,
    kafka_controller_port: Annotated[
        int | None,
        typer.Option(
            help="Kafka controller port (default: $TUNELINE_KAFKA_CONTROLLER_PORT, or 19093)."
        ),
    ] = None,
    grpc_port_base: Annotated[
        int | None,
        typer.Option(
            help="gRPC port of dataset, the others following (default: each "
            "$TUNELINE_<SERVICE>_GRPC_PORT, or 50051 and on)."
        ),
    ] = None,
    metrics_port_base: Annotated[
        int | None,
        typer.Option(
            help="Metrics port of dataset, the others following (default: each "
            "$TUNELINE_<SERVICE>_METRICS_PORT, or 9101 and on)."
        ),
    ] = None,
    webhook_port: Annotated[
        int | None,
        typer.Option(
            help="Registry's Alertmanager webhook (default: $TUNELINE_REGISTRY_WEBHOOK_PORT, "
            "or 9095)."
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Plaintext gRPC and no authentication or authorisation (debugging only).",
        ),
    ] = False,
) -> None:
    """Start Kafka and the services, wait until all are SERVING; Ctrl-C stops them.

    Secured by default, as production runs: a local CA under HOME/pki issues each service a
    certificate, every call is mutual TLS and authorised, and the other commands call the
    stack with the certificate made for them (local-admin: viewer, editor, reviewer,
    operator). Ports: the options, else the variables the services read
    (TUNELINE_<SERVICE>_GRPC_PORT …), else the defaults. Other commands find the services and
    the credentials through the home's stack.json.
    """
    try:
        ports = _ports(
            kafka_port, kafka_controller_port, grpc_port_base, metrics_port_base, webhook_port
        )
    except StackError as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    stack = LocalStack(home, ports, secure=not insecure)
    try:
        with console.status("Starting Kafka and the services…"):
            state = stack.up()
    except StackAlreadyRunning as running:
        err_console.print(f"[yellow]{running}[/yellow]; `tuneline down` stops it.")
        _print_endpoints(running.state)
        raise typer.Exit(1) from None
    except (StackError, LocalKafkaError) as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    _print_endpoints(state)
    if detach:
        return
    console.print("Press Ctrl-C to stop.")
    stopping = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    exited = None
    while not stopping and not (exited := stack.first_exited()):
        time.sleep(0.5)
    if exited:
        err_console.print(f"[red]{exited[0]} exited with {exited[1]}[/red]; stopping the stack.")
    with console.status("Stopping…"):
        stack.down(state)
    console.print("Stopped.")
    if exited:
        raise typer.Exit(1)


def down(home: HomeOpt = DEFAULT_HOME) -> None:
    """Stop the stack started from --home (services drain first, then Kafka)."""
    stack = LocalStack(home)
    state = stack.running()
    if state is None:
        console.print("No Tuneline stack is running.")
        stack.kafka.stop()
        return
    supervisor_alive = state.pid != os.getpid() and _signal(state.pid)
    if supervisor_alive:  # a foreground `up` does the shutdown itself
        deadline = time.monotonic() + 60
        while stack.state_path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    if stack.running():
        stack.down(state)
    console.print("Stopped.")


def _signal(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True
