"""Where ``tuneline up`` puts the services, and where the command line then finds them.

No process starts here: the plan, the environment each service would get, and the lookup of a
stack through its home's ``stack.json`` (written here as ``tuneline up`` writes it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tuneline.cli.endpoints import target
from tuneline.devtools.stack import (
    PEER_TARGETS,
    SERVICE_NAMES,
    LocalStack,
    ServiceProcess,
    StackError,
    StackPorts,
    StackState,
)


def test_with_nothing_set_each_service_gets_its_settings_default_port() -> None:
    ports = StackPorts.from_environment({})
    assert {name: ports.grpc_port(name) for name in SERVICE_NAMES} == {
        "dataset": 50051,
        "splitter": 50052,
        "trainer": 50053,
        "evaluator": 50054,
        "registry": 50055,
        "serving": 50056,
    }
    assert [ports.metrics_port(name) for name in SERVICE_NAMES] == [
        9101,
        9102,
        9103,
        9104,
        9105,
        9106,
    ]
    assert (ports.kafka, ports.kafka_controller, ports.webhook) == (19092, 19093, 9095)


def test_up_plans_the_ports_the_documented_variables_set(tmp_path: Path) -> None:
    env = {
        "TUNELINE_KAFKA_PORT": "29092",
        "TUNELINE_KAFKA_CONTROLLER_PORT": "29093",
        "TUNELINE_TRAINER_GRPC_PORT": "61053",
        "TUNELINE_REGISTRY_METRICS_PORT": "61105",
        "TUNELINE_REGISTRY_WEBHOOK_PORT": "61095",
    }
    stack = LocalStack(tmp_path / "home", StackPorts.from_environment(env))
    planned = {s.name: s for s in stack.plan()}
    assert planned["trainer"].grpc_port == 61053
    assert planned["splitter"].grpc_port == 50052, "the others keep their defaults"
    assert planned["registry"].metrics_port == 61105
    assert planned["registry"].extra_ports == {"webhook": 61095}
    assert (stack.kafka.port, stack.kafka.controller_port) == (29092, 29093)
    assert stack.kafka_bootstrap == "127.0.0.1:29092"


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-1"])
def test_a_port_variable_that_is_not_a_port_is_refused(value: str) -> None:
    with pytest.raises(StackError, match="TUNELINE_DATASET_GRPC_PORT"):
        StackPorts.from_environment({"TUNELINE_DATASET_GRPC_PORT": value})


def test_every_service_is_told_where_its_peers_listen(tmp_path: Path) -> None:
    ports = StackPorts(grpc_base=41000, grpc={"registry": 42000})
    stack = LocalStack(tmp_path / "home", ports)
    planned = {s.name: s for s in stack.plan()}
    envs = {name: stack._service_env(service, {}) for name, service in planned.items()}
    assert envs["splitter"]["TUNELINE_SPLITTER_DATASET_TARGET"] == "127.0.0.1:41000"
    assert envs["trainer"]["TUNELINE_TRAINER_SPLITTER_TARGET"] == "127.0.0.1:41001"
    assert envs["trainer"]["TUNELINE_TRAINER_REGISTRY_TARGET"] == "127.0.0.1:42000"
    assert envs["evaluator"]["TUNELINE_EVALUATOR_REGISTRY_TARGET"] == "127.0.0.1:42000"
    # the registry confirms every PASSED verdict with the evaluator
    assert envs["registry"]["TUNELINE_REGISTRY_EVALUATOR_TARGET"] == "127.0.0.1:41003"
    assert envs["trainer"]["TUNELINE_TRAINER_GRPC_PORT"] == "41002"
    for name, peers in PEER_TARGETS.items():
        for setting, _peer in peers:
            assert f"TUNELINE_{name.upper()}_{setting}" in envs[name]


def test_replicas_get_their_own_ports_and_logs_and_peers_reach_all_of_them(
    tmp_path: Path,
) -> None:
    ports = StackPorts(grpc_base=41000, metrics_base=45000)
    stack = LocalStack(
        tmp_path / "home",
        ports,
        services=("dataset", "splitter", "registry"),
        replicas={"dataset": 2},
    )
    planned = stack.plan()
    assert stack.plan() is planned, "planned once: the ports of replicas do not move"
    assert [s.instance for s in planned] == ["dataset", "dataset-1", "splitter", "registry"]
    first, second = planned[0], planned[1]
    assert (first.grpc_port, first.metrics_port) == (41000, 45000)
    taken = {p for s in planned for p in (s.grpc_port, s.metrics_port, *s.extra_ports.values())}
    assert len(taken) == 9, "every process listens on ports of its own"
    assert Path(second.log).name == "dataset-1.log"
    both = f"ipv4:127.0.0.1:{first.grpc_port},127.0.0.1:{second.grpc_port}"
    assert stack.peer_target("dataset") == both
    assert stack.peer_target("registry") == "127.0.0.1:41004"
    splitter_env = stack._service_env(planned[2], {})
    assert splitter_env["TUNELINE_SPLITTER_DATASET_TARGET"] == both
    with pytest.raises(StackError, match="trainer is not part of this stack"):
        stack.peer_target("trainer")


@pytest.mark.parametrize(
    ("services", "replicas"), [(("dataset", "nosuch"), {}), (SERVICE_NAMES, {"dataset": 0})]
)
def test_a_stack_of_unknown_services_or_no_replicas_is_refused(
    tmp_path: Path, services: tuple[str, ...], replicas: dict[str, int]
) -> None:
    with pytest.raises(StackError):
        LocalStack(tmp_path / "home", services=services, replicas=replicas)


def _write_running_stack(home: Path) -> None:
    """A stack.json as ``tuneline up`` writes it, its supervisor alive (this process)."""
    home.mkdir(parents=True)
    services = [
        ServiceProcess(name=name, grpc_port=43000 + i, metrics_port=44000 + i)
        for i, name in enumerate(SERVICE_NAMES)
    ]
    StackState(
        home=str(home),
        pid=os.getpid(),
        kafka_bootstrap="127.0.0.1:29092",
        data_dir=str(home / "data"),
        services=services,
    ).save(home / "stack.json")


def test_the_cli_finds_a_running_stack_through_its_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _write_running_stack(home)
    env = {"TUNELINE_HOME": str(home)}
    assert target("registry", env) == "127.0.0.1:43004"
    assert target("dataset", env) == "127.0.0.1:43000"
    # an explicit target still wins
    assert target("registry", {**env, "TUNELINE_REGISTRY_TARGET": "registry:50055"}) == (
        "registry:50055"
    )


def test_without_a_stack_the_cli_uses_the_services_own_port_variables(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert target("trainer", {"TUNELINE_HOME": str(home)}) == "127.0.0.1:50053"
    moved = {"TUNELINE_HOME": str(home), "TUNELINE_TRAINER_GRPC_PORT": "61053"}
    assert target("trainer", moved) == "127.0.0.1:61053"
    # a stack.json whose processes are gone is not a running stack
    _write_running_stack(home)
    state = StackState.load(home / "stack.json")
    assert state is not None
    state.pid = 0
    state.save(home / "stack.json")
    assert target("trainer", moved) == "127.0.0.1:61053"
