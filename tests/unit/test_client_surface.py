"""The SDK's public surface is one shape across clients (issue #11, section 4).

Every client is exported from ``tuneline.client``; its methods are its service's RPCs in snake
case (plus a short, named list of conveniences); every ``list_*`` pages by the one default; the
clients whose resource ends in a terminal state have ``wait()`` built on one shared helper; the
names of the earlier SDK still work, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator

import grpc
import pytest

import tuneline.client
from tuneline.client.base import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_POLL_SECONDS,
    DEFAULT_WAIT_TIMEOUT,
    DeprecatedAlias,
    ServiceClient,
)
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2

#: Methods that are not one RPC each, and why they exist.
CONVENIENCES: dict[str, set[str]] = {
    # the upload RPC without waiting for its answer (cancel it, watch it run)
    "DatasetClient": {"start_upload_dataset_version", "wait"},
    # CreateTrainingJob with validate_only: what a job would be and cost
    "TrainerClient": {"estimate_training_job", "wait"},
    "EvaluatorClient": {"wait"},
    # GetAlias of models/{m}/aliases/production, the alias everyone asks about
    "RegistryClient": {"get_production_alias"},
    "SplitterClient": set(),
    "ServingClient": set(),
}
#: The clients whose resource ends in a terminal state: training jobs, evaluations, audits.
WAITING = {"DatasetClient", "TrainerClient", "EvaluatorClient"}


def _clients() -> list[type[ServiceClient]]:
    found: dict[str, type[ServiceClient]] = {}
    for module_info in pkgutil.iter_modules(tuneline.client.__path__):
        module = importlib.import_module(f"tuneline.client.{module_info.name}")
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, ServiceClient)
                and value is not ServiceClient
                and value.__module__ == module.__name__
            ):
                found[value.__name__] = value
    return sorted(found.values(), key=lambda client: client.__name__)


CLIENTS = _clients()


def _snake(rpc: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


def _public_methods(client: type[ServiceClient]) -> Iterator[str]:
    for name, value in vars(client).items():
        if not name.startswith("_") and callable(value) and not isinstance(value, DeprecatedAlias):
            yield name


def test_every_client_is_exported_from_the_package() -> None:
    assert [client.__name__ for client in CLIENTS] == sorted(CONVENIENCES)
    for client in CLIENTS:
        assert client.__name__ in tuneline.client.__all__
        assert getattr(tuneline.client, client.__name__) is client
    assert {client.service.full_name for client in CLIENTS if client.service} == {
        f"tuneline.{svc}.v1.{svc.capitalize()}Service"
        for svc in ("dataset", "splitter", "trainer", "evaluator", "registry", "serving")
    }


@pytest.mark.parametrize("client", CLIENTS, ids=lambda client: client.__name__)
def test_methods_are_the_rpcs_in_snake_case(client: type[ServiceClient]) -> None:
    assert client.service is not None
    rpcs = {_snake(method.name) for method in client.service.methods}
    methods = set(_public_methods(client))
    assert methods - rpcs == CONVENIENCES[client.__name__], "a method no RPC names"
    assert rpcs <= methods, "an RPC without a method"


@pytest.mark.parametrize("client", CLIENTS, ids=lambda client: client.__name__)
def test_every_list_pages_by_the_one_default(client: type[ServiceClient]) -> None:
    lists = [name for name in _public_methods(client) if name.startswith("list_")]
    for name in lists:
        parameter = inspect.signature(getattr(client, name)).parameters["page_size"]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameter.default == DEFAULT_PAGE_SIZE, name


@pytest.mark.parametrize("client", CLIENTS, ids=lambda client: client.__name__)
def test_wait_where_the_resource_ends(client: type[ServiceClient]) -> None:
    if client.__name__ not in WAITING:
        assert not hasattr(client, "wait")
        return
    parameters = inspect.signature(client.wait).parameters  # type: ignore[attr-defined]
    assert list(parameters) == ["self", "name", "timeout", "poll_seconds"]
    assert parameters["timeout"].default == DEFAULT_WAIT_TIMEOUT
    assert parameters["poll_seconds"].default == DEFAULT_POLL_SECONDS


def _evaluation(state: evaluator_pb2.EvaluationState.ValueType) -> evaluator_pb2.Evaluation:
    return evaluator_pb2.Evaluation(name="evaluations/e", state=state)


def test_wait_reads_until_a_terminal_state() -> None:
    states = iter(
        [
            evaluator_pb2.EVALUATION_STATE_QUEUED,
            evaluator_pb2.EVALUATION_STATE_RUNNING,
            evaluator_pb2.EVALUATION_STATE_SUCCEEDED,
        ]
    )
    asked: list[str] = []

    def get(name: str) -> evaluator_pb2.Evaluation:
        asked.append(name)
        return _evaluation(next(states))

    with ServiceClient(channel=grpc.insecure_channel("127.0.0.1:9")) as client:
        done = client._wait_until_terminal(
            get,
            "evaluations/e",
            (evaluator_pb2.EVALUATION_STATE_SUCCEEDED, evaluator_pb2.EVALUATION_STATE_FAILED),
            timeout=60,
            poll_seconds=0,
        )
    assert done.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED
    assert asked == ["evaluations/e"] * 3


def test_wait_names_the_last_state_when_time_runs_out() -> None:
    with (
        ServiceClient(channel=grpc.insecure_channel("127.0.0.1:9")) as client,
        pytest.raises(TimeoutError, match="evaluations/e is still EVALUATION_STATE_RUNNING"),
    ):
        client._wait_until_terminal(
            lambda _name: _evaluation(evaluator_pb2.EVALUATION_STATE_RUNNING),
            "evaluations/e",
            (evaluator_pb2.EVALUATION_STATE_SUCCEEDED,),
            timeout=0,
            poll_seconds=0,
        )


@pytest.mark.parametrize("client", CLIENTS, ids=lambda client: client.__name__)
def test_old_names_warn_and_are_the_new_methods(client: type[ServiceClient]) -> None:
    aliases = {name: v for name, v in vars(client).items() if isinstance(v, DeprecatedAlias)}
    with client(channel=grpc.insecure_channel("127.0.0.1:9")) as instance:
        for old, alias in aliases.items():
            with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: use {alias.new}"):
                assert getattr(instance, old) == getattr(instance, alias.new)
