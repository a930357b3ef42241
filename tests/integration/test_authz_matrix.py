"""Every RPC of every service, for every role and for no credentials, on a real TLS server.

The RPC list comes from the generated service descriptors, so an RPC added to a .proto without
a row in ``EXPECTED`` fails :func:`test_every_rpc_has_a_decided_rule` until someone decides who
may call it; the policy denies it to everyone meanwhile. The server is a real gRPC server on
loopback with TLS and bearer tokens (shared.grpc.auth); its handlers only answer, so what is
under test is the interceptor's decision.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from shared.grpc import (
    ClientSecurity,
    GrpcServer,
    GrpcServerMetrics,
    ServerSecurity,
    build_grpc_server,
    create_channel,
)
from shared.security.policy import DEFAULT_ROLES
from shared.settings import CommonSettings
from tests.fixtures.pki import LocalCA, TokenIssuer, spiffe_id
from tests.fixtures.secured_grpc import answering_services, call_rpc, every_rpc, full_name

PEOPLE = frozenset({"viewer", "editor", "reviewer", "operator"})
READERS = PEOPLE  # every person's role includes the reads
#: The serving fleet: the `serving` role (a token) or the serving service's certificate.
SERVING = frozenset({"serving", "service:serving"})

#: Who may call what, written out from the issue's intent rather than derived from the table
#: under test: `viewer` reads and watches; `editor` datasets, splits, jobs, policies, models;
#: `reviewer` approves, rejects and promotes; `operator` rolls back, cancels and reports live
#: quality; services call exactly what their adapters call.
EXPECTED: dict[str, frozenset[str]] = {
    # dataset
    "tuneline.dataset.v1.DatasetService/CreateDataset": frozenset({"editor"}),
    "tuneline.dataset.v1.DatasetService/GetDataset": READERS,
    "tuneline.dataset.v1.DatasetService/ListDatasets": READERS,
    "tuneline.dataset.v1.DatasetService/UploadDatasetVersion": frozenset({"editor"}),
    "tuneline.dataset.v1.DatasetService/ImportDatasetVersion": frozenset({"editor"}),
    "tuneline.dataset.v1.DatasetService/GetDatasetVersion": READERS | {"service:splitter"},
    "tuneline.dataset.v1.DatasetService/ListDatasetVersions": READERS,
    "tuneline.dataset.v1.DatasetService/GetValidationReport": READERS,
    "tuneline.dataset.v1.DatasetService/ListValidationReports": READERS,
    "tuneline.dataset.v1.DatasetService/GetDatasetAudit": READERS,
    # splitter
    "tuneline.splitter.v1.SplitterService/CreateSplit": frozenset({"editor"}),
    "tuneline.splitter.v1.SplitterService/GetSplit": READERS | {"service:trainer"},
    "tuneline.splitter.v1.SplitterService/ListSplits": READERS,
    "tuneline.splitter.v1.SplitterService/SetSplitPolicy": frozenset({"editor"}),
    "tuneline.splitter.v1.SplitterService/GetSplitPolicy": READERS,
    # trainer
    "tuneline.trainer.v1.TrainerService/CreateTrainingJob": frozenset({"editor"}),
    "tuneline.trainer.v1.TrainerService/GetTrainingJob": READERS,
    "tuneline.trainer.v1.TrainerService/ListTrainingJobs": READERS,
    "tuneline.trainer.v1.TrainerService/CancelTrainingJob": frozenset({"operator"}),
    "tuneline.trainer.v1.TrainerService/WatchTrainingJob": READERS,
    "tuneline.trainer.v1.TrainerService/GetCheckpoint": READERS,
    "tuneline.trainer.v1.TrainerService/ListCheckpoints": READERS,
    "tuneline.trainer.v1.TrainerService/SetTrainingPolicy": frozenset({"editor"}),
    "tuneline.trainer.v1.TrainerService/GetTrainingPolicy": READERS,
    "tuneline.trainer.v1.TrainerService/ListTrainingPolicies": READERS,
    # evaluator
    "tuneline.evaluator.v1.EvaluatorService/EvaluateCheckpoint": frozenset({"editor"}),
    "tuneline.evaluator.v1.EvaluatorService/GetEvaluation": READERS | {"service:registry"},
    "tuneline.evaluator.v1.EvaluatorService/ListEvaluations": READERS,
    "tuneline.evaluator.v1.EvaluatorService/SetEvaluationPolicy": frozenset({"editor"}),
    "tuneline.evaluator.v1.EvaluatorService/GetEvaluationPolicy": READERS,
    # registry
    "tuneline.registry.v1.RegistryService/CreateModel": frozenset({"editor"}),
    "tuneline.registry.v1.RegistryService/SetServingProfile": frozenset({"editor"}),
    "tuneline.registry.v1.RegistryService/GetModel": READERS
    | SERVING
    | {"service:trainer", "service:evaluator"},
    "tuneline.registry.v1.RegistryService/ListModels": READERS | SERVING,
    "tuneline.registry.v1.RegistryService/GetCheckpoint": READERS | SERVING | {"service:evaluator"},
    "tuneline.registry.v1.RegistryService/ListCheckpoints": READERS,
    "tuneline.registry.v1.RegistryService/GetAlias": READERS | SERVING | {"service:evaluator"},
    "tuneline.registry.v1.RegistryService/ListAliasHistory": READERS,
    "tuneline.registry.v1.RegistryService/WatchAlias": READERS | SERVING,
    "tuneline.registry.v1.RegistryService/PromoteCheckpoint": frozenset({"reviewer"}),
    "tuneline.registry.v1.RegistryService/ApproveCheckpoint": frozenset({"reviewer"}),
    "tuneline.registry.v1.RegistryService/RejectCheckpoint": frozenset({"reviewer"}),
    "tuneline.registry.v1.RegistryService/RollbackModel": frozenset({"operator"}),
    "tuneline.registry.v1.RegistryService/ReportLiveQuality": frozenset({"operator"}) | SERVING,
    "tuneline.registry.v1.RegistryService/UnfreezeAutomation": frozenset({"operator"}),
    # serving
    "tuneline.serving.v1.ServingService/Predict": frozenset({"editor", "inference"}),
    "tuneline.serving.v1.ServingService/Generate": frozenset({"editor", "inference"}),
    "tuneline.serving.v1.ServingService/SubmitFeedback": frozenset({"editor", "inference"}),
    "tuneline.serving.v1.ServingService/GetServingState": READERS | {"inference"},
}

ROLES = sorted(DEFAULT_ROLES)
PROXY = spiffe_id("service", "edge-proxy")


@dataclass
class SecuredServer:
    server: GrpcServer
    tokens: TokenIssuer
    client: ClientSecurity

    def channel(self, token: str | None = None) -> grpc.Channel:
        security = ClientSecurity(tls=True, ca_file=self.client.ca_file, token=token)
        return create_channel(f"127.0.0.1:{self.server.port}", security=security)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServer]:
    folder: Path = tmp_path_factory.mktemp("authz")
    ca = LocalCA(folder / "pki")
    server_cert = ca.issue("server", uri=spiffe_id("service", "registry"), server=True)
    tokens = TokenIssuer(folder / "jwks.json")
    policy = folder / "policy.json"
    policy.write_text(json.dumps({"bindings": {"carol": ["reviewer"]}}))
    settings = CommonSettings(
        auth_policy_file=policy,
        auth_mode="enforce",
        tls_cert_file=server_cert.cert_file,
        tls_key_file=server_cert.key_file,
        auth_jwt_jwks_file=tokens.jwks_file,
        auth_jwt_issuer=tokens.issuer,
        auth_trusted_proxies=(PROXY,),
    )
    server = build_grpc_server(
        host="127.0.0.1",
        port=0,
        services=answering_services(),
        metrics=GrpcServerMetrics(CollectorRegistry()),
        security=ServerSecurity.from_settings(settings),
        grace_seconds=0,
    )
    server.start()
    try:
        yield SecuredServer(server, tokens, ClientSecurity(tls=True, ca_file=ca.ca_file))
    finally:
        server.stop(0)


def test_every_rpc_has_a_decided_rule() -> None:
    rpcs = {full_name(m) for m in every_rpc()}
    assert rpcs - EXPECTED.keys() == set(), "new RPCs: decide who may call them in EXPECTED"
    assert EXPECTED.keys() - rpcs == set(), "EXPECTED names RPCs that no longer exist"
    assert all(EXPECTED[rpc] for rpc in rpcs), "an RPC nobody may call is dead"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_its_rpcs(secured: SecuredServer, role: str) -> None:
    subject = f"user-{role}"
    with secured.channel(secured.tokens.token(subject, [role])) as channel:
        outcomes = {full_name(m): call_rpc(channel, m) for m in every_rpc()}
    for rpc, (code, caller) in outcomes.items():
        if role in EXPECTED[rpc]:
            assert (code, caller) == (grpc.StatusCode.OK, subject), rpc
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, rpc


def test_service_identity_from_a_token_subject(secured: SecuredServer) -> None:
    """A SPIFFE service identity holds its service role without any roles claim."""
    identity = spiffe_id("service", "evaluator")
    with secured.channel(secured.tokens.token(identity)) as channel:
        outcomes = {full_name(m): call_rpc(channel, m)[0] for m in every_rpc()}
    allowed = {rpc for rpc, code in outcomes.items() if code == grpc.StatusCode.OK}
    assert allowed == {rpc for rpc, roles in EXPECTED.items() if "service:evaluator" in roles}


def test_no_credentials_is_unauthenticated_on_every_rpc(secured: SecuredServer) -> None:
    with secured.channel() as channel:
        codes = {full_name(m): call_rpc(channel, m)[0] for m in every_rpc()}
    assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda t: t.token("mallory", ["operator"], expires_in=-120), id="expired"),
        pytest.param(lambda t: t.token("mallory", ["operator"], audience="x"), id="audience"),
        pytest.param(
            lambda t: t.token("mallory", ["operator"], iss="https://evil.test"), id="issuer"
        ),
        pytest.param(lambda t: "not-a-jwt", id="garbage"),
    ],
)
def test_untrusted_tokens_are_unauthenticated(
    secured: SecuredServer, token: Callable[[TokenIssuer], str]
) -> None:
    (rollback,) = [m for m in every_rpc() if m.name == "RollbackModel"]
    with secured.channel(token(secured.tokens)) as channel:
        assert call_rpc(channel, rollback)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_a_token_from_another_key_is_unauthenticated(
    secured: SecuredServer, tmp_path: Path
) -> None:
    forger = TokenIssuer(tmp_path / "other.json", issuer=secured.tokens.issuer)
    (rollback,) = [m for m in every_rpc() if m.name == "RollbackModel"]
    with secured.channel(forger.token("mallory", ["operator"])) as channel:
        assert call_rpc(channel, rollback)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_spoofed_principal_metadata_is_ignored(secured: SecuredServer) -> None:
    by_name = {m.name: m for m in every_rpc()}
    spoof = [("x-tuneline-principal", "carol")]  # carol is a reviewer
    with secured.channel(secured.tokens.token("viewer-bob", ["viewer"])) as channel:
        assert call_rpc(channel, by_name["GetAlias"], spoof) == (
            grpc.StatusCode.OK,
            "viewer-bob",
        )
        assert call_rpc(channel, by_name["PromoteCheckpoint"], spoof)[0] == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    with secured.channel() as channel:  # and it is no credential on its own
        assert call_rpc(channel, by_name["GetAlias"], spoof)[0] == (grpc.StatusCode.UNAUTHENTICATED)


def test_a_trusted_proxy_may_name_the_caller(secured: SecuredServer) -> None:
    by_name = {m.name: m for m in every_rpc()}
    with secured.channel(secured.tokens.token(PROXY)) as channel:
        # the proxy's own identity may call nothing; the caller it names holds her roles
        assert call_rpc(channel, by_name["PromoteCheckpoint"])[0] == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert call_rpc(
            channel, by_name["PromoteCheckpoint"], [("x-tuneline-principal", "carol")]
        ) == (
            grpc.StatusCode.OK,
            "carol",
        )


def test_health_and_reflection_need_no_credentials(secured: SecuredServer) -> None:
    with secured.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = {s.name for r in listing for s in r.list_services_response.service}
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert "tuneline.registry.v1.RegistryService" in services
