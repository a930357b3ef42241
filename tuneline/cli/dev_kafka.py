"""``tuneline dev kafka start|stop|status``: a real Kafka broker (or a three-broker cluster) on
loopback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tuneline.cli.output import console, err_console
from tuneline.devtools.kafka import (
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_PORT,
    BrokerSecurity,
    LocalKafka,
    LocalKafkaCluster,
    LocalKafkaError,
)
from tuneline.devtools.stack import stack_home

app = typer.Typer(
    help=(
        "A local Apache Kafka 4 (KRaft) broker, or a cluster of brokers (--brokers 3), from "
        "jars Maven resolves from Maven Central once and caches."
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


BrokersOpt = Annotated[
    int,
    typer.Option(
        "--brokers",
        envvar="TUNELINE_KAFKA_BROKERS",
        min=1,
        help=(
            "Brokers to run: 1, or a KRaft cluster whose node i listens on --port + 2i "
            "(controller --controller-port + 2i); services then create topics with "
            "replication factor min(3, brokers) and min.insync.replicas 2 where there are 3."
        ),
    ),
]


SaslSslOpt = Annotated[
    bool,
    typer.Option(
        "--sasl-ssl",
        envvar="TUNELINE_KAFKA_SASL_SSL",
        help=(
            "Listen SASL_SSL only: TLS from a local CA, a SCRAM-SHA-512 user per service (plus "
            "admin, the super user), and topic ACLs so each service writes only its own "
            "topics. CA and password files live under <home>/security. The users are made "
            "when the storage is formatted: a home first started without it needs a new one."
        ),
    ),
]


def _broker(
    home: Path | None, port: int, controller_port: int, *, sasl_ssl: bool = False
) -> LocalKafka:
    home = home or default_home()
    security = BrokerSecurity.ensure(home / "security") if sasl_ssl else None
    return LocalKafka(home=home, port=port, controller_port=controller_port, security=security)


def _cluster(home: Path | None) -> LocalKafkaCluster | None:
    """The cluster started from ``home``, if that home holds one."""
    return LocalKafkaCluster.from_home(home or default_home())


def _start_cluster(
    home: Path | None, brokers: int, port: int, controller_port: int, timeout: float
) -> None:
    cluster = LocalKafkaCluster(
        home=home or default_home(), brokers=brokers, port=port, controller_port=controller_port
    )
    if not cluster.nodes[0].is_provisioned():
        console.print(
            f"Resolving Apache Kafka's jars with Maven into {cluster.nodes[0].libs_dir} ..."
        )
    try:
        bootstrap = cluster.start(timeout=timeout)
    except LocalKafkaError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"Kafka cluster of {brokers} brokers on [bold]{bootstrap}[/bold]; started in "
        f"{cluster.startup_seconds:.1f} s."
    )
    console.print(f"home: {cluster.home}\nexport TUNELINE_KAFKA_BOOTSTRAP={bootstrap}")


@app.command()
def start(
    home: HomeOpt = None,
    port: PortOpt = DEFAULT_PORT,
    controller_port: ControllerPortOpt = DEFAULT_CONTROLLER_PORT,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the broker to serve metadata.")
    ] = 120.0,
    brokers: BrokersOpt = 1,
    sasl_ssl: SaslSslOpt = False,
) -> None:
    """Provision (first time), format (first time) and start the broker(s); wait until ready."""
    if brokers > 1:
        if sasl_ssl:
            err_console.print("[red]error:[/red] --sasl-ssl runs a single broker (--brokers 1)")
            raise typer.Exit(2)
        _start_cluster(home, brokers, port, controller_port, timeout)
        return
    kafka = _broker(home, port, controller_port, sasl_ssl=sasl_ssl)
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
    if kafka.security is not None:
        console.print(
            "SASL_SSL with ACLs; a service logs in as itself (TUNELINE_KAFKA_USERNAME=<service>, "
            f"password file {kafka.security.folder / 'users'}/<service>.password). As admin:"
        )
        console.print(f"export TUNELINE_KAFKA_BOOTSTRAP={bootstrap}")
        for name, value in kafka.security.client_environment(kafka.security.admin).items():
            console.print(f"export {name}={value}")


@app.command()
def stop(
    home: HomeOpt = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait after SIGTERM before SIGKILL.")
    ] = 30.0,
) -> None:
    """Stop the broker(s) started from --home (SIGTERM, then SIGKILL after --timeout)."""
    cluster = _cluster(home)
    if cluster is not None:
        running = cluster.running()
        if cluster.stop(timeout=timeout):
            console.print(f"Kafka cluster nodes {running} on {cluster.bootstrap} stopped.")
        else:
            console.print(f"Kafka is not running (home {cluster.home}).")
        return
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

    Exits 0 when it runs and 3 when it does not (a cluster: when none of its nodes runs).
    """
    cluster = _cluster(home)
    if cluster is not None:
        running = cluster.running()
        if not running:
            console.print(f"Kafka is not running (home {cluster.home}).")
            raise typer.Exit(3)
        console.print(
            f"Kafka cluster: nodes {running} of {len(cluster.nodes)} running on "
            f"[bold]{cluster.bootstrap}[/bold]."
        )
        console.print(f"home: {cluster.home}")
        return
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
