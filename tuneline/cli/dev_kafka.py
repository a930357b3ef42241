"""``tuneline dev kafka start|stop|status``: a real single-node Kafka broker on loopback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tuneline.cli.output import console, err_console
from tuneline.devtools.kafka import (
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_PORT,
    LocalKafka,
    LocalKafkaError,
)
from tuneline.devtools.stack import stack_home

app = typer.Typer(
    help=(
        "A local single-node Apache Kafka 4 (KRaft) broker, from jars Maven resolves from "
        "Maven Central once and caches."
    ),
    no_args_is_help=True,
)


def default_home() -> Path:
    """``$TUNELINE_HOME/kafka``, else ``./.tuneline/kafka``."""
    return stack_home(os.environ) / "kafka"


HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Broker state directory (config, data, logs, pid). "
        "Default: $TUNELINE_HOME/kafka, else ./.tuneline/kafka.",
        show_default=False,
    ),
]
PortOpt = Annotated[
    int,
    typer.Option("--port", envvar="TUNELINE_KAFKA_PORT", help="Broker (PLAINTEXT) port."),
]
ControllerPortOpt = Annotated[
    int,
    typer.Option(
        "--controller-port",
        envvar="TUNELINE_KAFKA_CONTROLLER_PORT",
        help="KRaft controller port.",
    ),
]


def _broker(home: Path | None, port: int, controller_port: int) -> LocalKafka:
    return LocalKafka(home=home or default_home(), port=port, controller_port=controller_port)


@app.command()
def start(
    home: HomeOpt = None,
    port: PortOpt = DEFAULT_PORT,
    controller_port: ControllerPortOpt = DEFAULT_CONTROLLER_PORT,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the broker to serve metadata.")
    ] = 120.0,
) -> None:
    """Provision (first time), format (first time) and start the broker; wait until it is ready."""
    kafka = _broker(home, port, controller_port)
    reused = kafka.running_pid() is not None
    if not reused and not kafka.is_provisioned():
        console.print(f"Resolving Apache Kafka's jars with Maven into {kafka.libs_dir} ...")
    try:
        bootstrap = kafka.start(timeout=timeout)
    except LocalKafkaError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    status = kafka.status()
    if reused:
        console.print(f"Kafka already running on [bold]{bootstrap}[/bold] (pid {status.pid}).")
    else:
        console.print(
            f"Kafka listening on [bold]{bootstrap}[/bold] (pid {status.pid}); "
            f"started in {kafka.startup_seconds:.1f} s."
        )
    console.print(f"home: {kafka.home}\nlog:  {kafka.server_log}")


@app.command()
def stop(
    home: HomeOpt = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait after SIGTERM before SIGKILL.")
    ] = 30.0,
) -> None:
    """Stop the broker started from --home (SIGTERM, then SIGKILL after --timeout)."""
    kafka = _broker(home, DEFAULT_PORT, DEFAULT_CONTROLLER_PORT)
    status = kafka.status()
    if kafka.stop(timeout=timeout):
        console.print(f"Kafka on {status.bootstrap} (pid {status.pid}) stopped.")
    else:
        console.print(f"Kafka is not running (home {kafka.home}).")


@app.command()
def status(
    home: HomeOpt = None,
    port: PortOpt = DEFAULT_PORT,
    controller_port: ControllerPortOpt = DEFAULT_CONTROLLER_PORT,
) -> None:
    """Say whether the broker from --home runs, its pid, bootstrap and start-up time.

    Exits 0 when it runs and 3 when it does not.
    """
    kafka = _broker(home, port, controller_port)
    st = kafka.status()
    if st.running:
        took = f"; started in {st.startup_seconds:.1f} s" if st.startup_seconds else ""
        console.print(f"Kafka running on [bold]{st.bootstrap}[/bold] (pid {st.pid}{took}).")
        console.print(f"home: {st.home}")
    else:
        console.print(f"Kafka is not running (home {st.home}).")
        raise typer.Exit(3)


@app.command()
def provision() -> None:
    """Resolve Apache Kafka's jars with Maven into the cache (once; later calls do nothing)."""
    kafka = _broker(None, DEFAULT_PORT, DEFAULT_CONTROLLER_PORT)
    try:
        libs = kafka.provision()
    except LocalKafkaError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"Kafka jars ready in {libs}")
