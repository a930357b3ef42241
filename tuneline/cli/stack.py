"""``tuneline up`` and ``tuneline down``: the local stack in separate processes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tuneline.cli.output import console, err_console
from tuneline.devtools.kafka import LocalKafkaError
from tuneline.devtools.stack import (
    LocalStack,
    StackAlreadyRunning,
    StackError,
    StackPorts,
    StackState,
)

HomeOpt = Annotated[
    Path,
    typer.Option("--home", envvar="TUNELINE_HOME", help="Where the stack keeps its state."),
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


def up(
    home: HomeOpt = Path(".tuneline"),
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Return once everything is SERVING.")
    ] = False,
    kafka_port: Annotated[int, typer.Option(help="Kafka broker port.")] = 19092,
    kafka_controller_port: Annotated[int, typer.Option(help="Kafka controller port.")] = 19093,
    grpc_port_base: Annotated[
        int, typer.Option(help="gRPC port of dataset; the others follow.")
    ] = 50051,
    metrics_port_base: Annotated[
        int, typer.Option(help="Metrics port of dataset; the others follow.")
    ] = 9101,
    webhook_port: Annotated[int, typer.Option(help="Registry's Alertmanager webhook.")] = 9095,
) -> None:
    """Start Kafka and the five services, wait until all are SERVING; Ctrl-C stops them."""
    ports = StackPorts(
        kafka=kafka_port,
        kafka_controller=kafka_controller_port,
        grpc_base=grpc_port_base,
        metrics_base=metrics_port_base,
        webhook=webhook_port,
    )
    stack = LocalStack(home, ports)
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


def down(home: HomeOpt = Path(".tuneline")) -> None:
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
