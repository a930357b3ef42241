"""LocalKafka's generated broker configuration and its prerequisite checks (no network, no JVM)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tuneline.devtools import kafka as local_kafka
from tuneline.devtools.kafka import KafkaPrerequisiteError, LocalKafka, LocalKafkaCluster


def _read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            props[key] = value
    return props


@pytest.fixture
def kafka(tmp_path: Path) -> LocalKafka:
    return LocalKafka(
        home=tmp_path / "home", port=29092, controller_port=29093, cache_dir=tmp_path / "libs"
    )


def test_server_properties_describe_a_single_node_kraft_broker_on_loopback(
    kafka: LocalKafka,
) -> None:
    props = _read_properties(kafka.write_config())

    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:29093"
    assert "controller.quorum.voters" not in props  # --standalone needs the dynamic quorum
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert props["log.dirs"] == str(kafka.home / "data")
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["num.partitions"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    assert int(props["log.segment.bytes"]) <= 64 * 1024 * 1024
    assert kafka.bootstrap == "127.0.0.1:29092"


def test_overrides_win_and_log4j_writes_to_a_file_in_home(kafka: LocalKafka) -> None:
    kafka.overrides = {"num.partitions": "3"}
    props = _read_properties(kafka.write_config())
    assert props["num.partitions"] == "3"

    log4j = kafka.log4j_path.read_text()
    assert f"{kafka.home / 'logs'}/server.log" in log4j
    assert "Console" not in log4j


def test_format_and_broker_commands(kafka: LocalKafka, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")

    fmt = kafka.format_command("MkU3OEVBNTcwNTJENDM2Qk")
    main = fmt.index("kafka.tools.StorageTool")
    assert fmt[main + 1 :] == [
        "format",
        "--config",
        str(kafka.config_path),
        "--cluster-id",
        "MkU3OEVBNTcwNTJENDM2Qk",
        "--standalone",
        "--ignore-formatted",
    ]
    broker = kafka.java_command("kafka.Kafka", str(kafka.config_path))
    assert broker[0] == "/usr/bin/java"
    assert broker[1:3] == ["-Xmx512m", "-Xms256m"]
    assert broker[broker.index("-cp") + 1] == f"{kafka.libs_dir}/*"
    assert broker[-2:] == ["kafka.Kafka", str(kafka.config_path)]
    assert f"-Dlog4j2.configurationFile={kafka.log4j_path}" in broker


def test_cluster_ids_look_like_kafka_uuids() -> None:
    ids = {local_kafka.new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(cid) == 22 and not cid.startswith("-") for cid in ids)


def test_missing_java_says_what_to_install(
    kafka: LocalKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)

    with pytest.raises(KafkaPrerequisiteError, match=r"Java 17\+.*Install"):
        kafka.provision()
    with pytest.raises(KafkaPrerequisiteError, match="java"):
        kafka.start(timeout=1)
    assert not kafka.home.exists()  # nothing was written before the check


def test_missing_maven_says_what_to_install(
    kafka: LocalKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/java" if name == "java" else None)

    with pytest.raises(KafkaPrerequisiteError, match=r"Maven.*Install Apache Maven"):
        kafka.provision()


def test_cache_dir_defaults_per_version_and_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(local_kafka.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    version = local_kafka.kafka_version()
    assert version.startswith("4.")
    assert LocalKafka(home=tmp_path).libs_dir == tmp_path / "xdg/tuneline/kafka" / version / "libs"

    monkeypatch.setenv(local_kafka.CACHE_ENV, str(tmp_path / "jars"))
    assert LocalKafka(home=tmp_path).libs_dir == tmp_path / "jars"


def test_status_without_a_broker(kafka: LocalKafka) -> None:
    st = kafka.status()
    assert not st.running
    assert st.pid is None
    assert st.bootstrap == "127.0.0.1:29092"
    assert kafka.stop() is False


def _fake_maven(tmp_path: Path) -> Path:
    """A stand-in ``mvn`` that 'resolves' one jar into -Dkafka.libs.dir and logs its argv."""
    script = tmp_path / "mvn"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/mvn.calls\n'
        'for a in "$@"; do case "$a" in -Dkafka.libs.dir=*) dir="${a#-Dkafka.libs.dir=}";; '
        "esac; done\n"
        'mkdir -p "$dir" && touch "$dir/kafka_2.13-4.1.1.jar"\n'
    )
    script.chmod(0o755)
    return script


def test_provision_runs_maven_once_and_again_when_the_pom_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mvn = _fake_maven(tmp_path)
    pom = tmp_path / "pom.xml"
    pom.write_text(
        "<project><properties><kafka.version>4.1.1</kafka.version></properties></project>"
    )
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: str(mvn) if name == "mvn" else "/bin/java")
    kafka = LocalKafka(home=tmp_path / "home", cache_dir=tmp_path / "cache/libs", pom=pom)

    assert not kafka.is_provisioned()
    assert kafka.provision() == tmp_path / "cache/libs"
    assert (tmp_path / "cache/libs/kafka_2.13-4.1.1.jar").is_file()
    kafka.provision()
    calls = (tmp_path / "mvn.calls").read_text().splitlines()
    assert len(calls) == 1
    assert calls[0].split()[:5] == ["-q", "-B", "-f", str(pom), "dependency:copy-dependencies"]

    pom.write_text(pom.read_text().replace("</project>", "<!-- changed --></project>"))
    assert not kafka.is_provisioned()
    kafka.provision()
    assert kafka.is_provisioned()
    assert len((tmp_path / "mvn.calls").read_text().splitlines()) == 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["libs"]


def test_a_jar_dir_without_a_marker_is_used_as_is(tmp_path: Path) -> None:
    libs = tmp_path / "jars"
    libs.mkdir()
    (libs / "kafka_2.13-4.1.1.jar").touch()
    assert LocalKafka(home=tmp_path / "home", cache_dir=libs).is_provisioned()


def test_a_cluster_node_is_a_voter_of_one_static_quorum_with_replicated_internal_topics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = LocalKafkaCluster(
        home=tmp_path / "cluster", port=39092, controller_port=39093, cache_dir=tmp_path / "libs"
    )
    assert [(n.node_id, n.port, n.controller_port) for n in cluster.nodes] == [
        (1, 39092, 39093),
        (2, 39094, 39095),
        (3, 39096, 39097),
    ]
    assert cluster.bootstrap == "127.0.0.1:39092,127.0.0.1:39094,127.0.0.1:39096"
    second = cluster.node(2)
    assert second.home == tmp_path / "cluster" / "node-2"
    props = _read_properties(second.write_config())
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:39093,2@127.0.0.1:39095,3@127.0.0.1:39097"
    )
    assert "controller.quorum.bootstrap.servers" not in props
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:39094,CONTROLLER://127.0.0.1:39095"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["min.insync.replicas"] == "2"
    assert props["default.replication.factor"] == "3"

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    fmt = second.format_command("MkU3OEVBNTcwNTJENDM2Qk")
    assert "--standalone" not in fmt  # a static quorum is formatted without it
    assert "-Xmx256m" in second.java_command("kafka.Kafka", str(second.config_path))

    assert LocalKafkaCluster.from_home(tmp_path / "cluster") is None  # not started yet


def test_a_cluster_of_one_and_explicit_ports(tmp_path: Path) -> None:
    single = LocalKafkaCluster(home=tmp_path / "one", brokers=1, cache_dir=tmp_path / "libs")
    props = _read_properties(single.nodes[0].write_config())
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"
    with pytest.raises(ValueError, match="port pairs"):
        LocalKafkaCluster(home=tmp_path / "two", brokers=2, node_ports=[(1, 2)])
