"""The v1 contracts: stubs match ``proto/``, import cleanly, and carry every RPC and event.

The RPC and event tables below are what the services and their consumers code against
(DESIGN.md §2-4 and the service issues); a contract change that drops one of them fails here
before it reaches a service.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

from tuneline.devtools import protos

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
SERVICES = ("dataset", "splitter", "trainer", "evaluator", "registry")

UNARY = "unary"
CLIENT_STREAMING = "client-streaming"
SERVER_STREAMING = "server-streaming"

# service full name -> {rpc: streaming shape}
EXPECTED_RPCS: dict[str, dict[str, str]] = {
    "tuneline.dataset.v1.DatasetService": {
        "CreateDataset": UNARY,
        "GetDataset": UNARY,
        "ListDatasets": UNARY,
        "UploadDatasetVersion": CLIENT_STREAMING,
        "ImportDatasetVersion": UNARY,
        "GetDatasetVersion": UNARY,
        "ListDatasetVersions": UNARY,
        "GetValidationReport": UNARY,
        "GetDatasetAudit": UNARY,
    },
    "tuneline.splitter.v1.SplitterService": {
        "CreateSplit": UNARY,
        "GetSplit": UNARY,
        "ListSplits": UNARY,
        "SetSplitPolicy": UNARY,
        "GetSplitPolicy": UNARY,
    },
    "tuneline.trainer.v1.TrainerService": {
        "CreateTrainingJob": UNARY,
        "GetTrainingJob": UNARY,
        "ListTrainingJobs": UNARY,
        "CancelTrainingJob": UNARY,
        "WatchTrainingJob": SERVER_STREAMING,
        "GetCheckpoint": UNARY,
        "ListCheckpoints": UNARY,
        "SetTrainingPolicy": UNARY,
        "GetTrainingPolicy": UNARY,
    },
    "tuneline.evaluator.v1.EvaluatorService": {
        "EvaluateCheckpoint": UNARY,
        "GetEvaluation": UNARY,
        "ListEvaluations": UNARY,
        "SetEvaluationPolicy": UNARY,
        "GetEvaluationPolicy": UNARY,
    },
    "tuneline.registry.v1.RegistryService": {
        "CreateModel": UNARY,
        "GetModel": UNARY,
        "ListModels": UNARY,
        "GetCheckpoint": UNARY,
        "ListCheckpoints": UNARY,
        "GetAlias": UNARY,
        "ListAliasHistory": UNARY,
        "WatchAlias": SERVER_STREAMING,
        "PromoteCheckpoint": UNARY,
        "ApproveCheckpoint": UNARY,
        "RejectCheckpoint": UNARY,
        "RollbackModel": UNARY,
        "ReportLiveQuality": UNARY,
    },
}

# event full name -> fields its consumers rely on (besides field 1 and `event_time`)
EXPECTED_EVENTS: dict[str, tuple[str, ...]] = {
    "tuneline.dataset.v1.DatasetVersioned": (
        "dataset_version",
        "content_sha256",
        "row_count",
        "task_type",
        "label_distribution",
        "artifact_uri",
        "report_summary",
    ),
    "tuneline.splitter.v1.SplitCreated": (
        "split",
        "dataset_version",
        "spec",
        "manifest_uri",
        "manifest_sha256",
        "parts",
        "overlap_count",
    ),
    "tuneline.trainer.v1.TrainingJobStarted": ("training_job", "target_model", "lineage"),
    "tuneline.trainer.v1.CheckpointReady": (
        "checkpoint",
        "step",
        "epoch",
        "train_loss",
        "validation_loss",
        "tokens_seen",
        "artifact_uri",
        "sha256",
        "lineage",
        "cost",
    ),
    "tuneline.trainer.v1.TrainingJobCompleted": (
        "training_job",
        "best_checkpoint",
        "loss_trend",
        "cost",
    ),
    "tuneline.trainer.v1.TrainingJobFailed": (
        "training_job",
        "failure_reason",
        "failure_message",
        "cost",
    ),
    "tuneline.evaluator.v1.EvaluationCompleted": (
        "evaluation",
        "model",
        "checkpoint",
        "verdict",
        "metrics",
        "baseline",
        "comparisons",
    ),
    "tuneline.evaluator.v1.RegressionDetected": (
        "evaluation",
        "model",
        "checkpoint",
        "metric",
        "slice",
        "baseline",
        "candidate",
        "delta",
        "delta_ci_lower",
        "delta_ci_upper",
        "p_value",
    ),
    "tuneline.registry.v1.ModelPromoted": (
        "model",
        "from_checkpoint",
        "to_checkpoint",
        "trigger",
        "artifact_uri",
    ),
    "tuneline.registry.v1.ModelRolledBack": (
        "model",
        "from_checkpoint",
        "to_checkpoint",
        "trigger",
        "reason",
    ),
}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)


def _stub_modules() -> list[str]:
    """Module names of every generated ``*_pb2`` / ``*_pb2_grpc`` module, from ``proto/``."""
    return [
        _module_name(path)
        for path in protos.expected_outputs(PROTO_ROOT, REPO_ROOT)
        if path.suffix == ".py" and path.name != "__init__.py"
    ]


def _module_for(full_name: str, file_stem: str) -> ModuleType:
    package = full_name.rsplit(".", 1)[0]
    return importlib.import_module(f"{package}.{file_stem}_pb2")


def _shape(method: MethodDescriptor) -> str:
    client, server = method.client_streaming, method.server_streaming
    if client and server:
        return "bidirectional"
    return CLIENT_STREAMING if client else SERVER_STREAMING if server else UNARY


@pytest.fixture(scope="module")
def fresh_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stubs generated from ``proto/`` just now, with the installed generator versions."""
    root = tmp_path_factory.mktemp("generated")
    protos.generate(PROTO_ROOT, root)
    return root


def test_committed_stubs_match_a_fresh_generation(fresh_root: Path) -> None:
    fresh = [path.relative_to(fresh_root) for path in protos.generated_files(fresh_root)]
    assert fresh, "generation produced nothing"
    missing = [str(path) for path in fresh if not (REPO_ROOT / path).is_file()]
    changed = [
        str(path)
        for path in fresh
        if (REPO_ROOT / path).is_file()
        and (REPO_ROOT / path).read_bytes() != (fresh_root / path).read_bytes()
    ]
    hint = "run `tuneline dev protos generate` and commit the result"
    assert not missing, f"generated stubs not committed ({hint}): {missing}"
    assert not changed, f"committed stubs differ from proto/ ({hint}): {changed}"


def test_no_stale_stub_is_committed(fresh_root: Path) -> None:
    fresh = {path.relative_to(fresh_root) for path in protos.generated_files(fresh_root)}
    committed = {path.relative_to(REPO_ROOT) for path in protos.generated_files(REPO_ROOT)}
    assert sorted(map(str, committed - fresh)) == []


def test_generation_is_deterministic(fresh_root: Path, tmp_path: Path) -> None:
    protos.generate(PROTO_ROOT, tmp_path)
    assert protos.compare_trees(tmp_path, fresh_root) == []


def test_generation_writes_package_inits_but_not_the_top_level_one(fresh_root: Path) -> None:
    assert not (fresh_root / "tuneline" / "__init__.py").exists()
    for service in (*SERVICES, "common"):
        assert (fresh_root / "tuneline" / service / "__init__.py").read_bytes() == b""
        assert (fresh_root / "tuneline" / service / "v1" / "__init__.py").read_bytes() == b""
    # grpc stubs only where a service is declared
    assert not (fresh_root / "tuneline" / "dataset" / "v1" / "resources_pb2_grpc.py").exists()


@pytest.mark.parametrize("module_name", _stub_modules())
def test_every_stub_module_imports(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__name__ == module_name


def test_every_service_has_stubs_for_all_three_files() -> None:
    modules = set(_stub_modules())
    for service in SERVICES:
        for stem in ("resources_pb2", "service_pb2", "events_pb2", "service_pb2_grpc"):
            assert f"tuneline.{service}.v1.{stem}" in modules
    assert "tuneline.common.v1.resources_pb2" in modules


@pytest.mark.parametrize("service_name", sorted(EXPECTED_RPCS))
def test_service_has_every_rpc_with_its_streaming_shape(service_name: str) -> None:
    service: ServiceDescriptor = _module_for(service_name, "service").DESCRIPTOR.services_by_name[
        service_name.rsplit(".", 1)[1]
    ]
    shapes = {method.name: _shape(method) for method in service.methods}
    for rpc, shape in EXPECTED_RPCS[service_name].items():
        assert rpc in shapes, f"{service_name} lacks {rpc}"
        assert shapes[rpc] == shape, f"{service_name}.{rpc} is {shapes[rpc]}, expected {shape}"
    for method in service.methods:  # buf's STANDARD lint, checked here too
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"


@pytest.mark.parametrize("service_name", sorted(EXPECTED_RPCS))
def test_grpc_module_exposes_stub_servicer_and_registration(service_name: str) -> None:
    short = service_name.rsplit(".", 1)[1]
    grpc_module = importlib.import_module(f"{service_name.rsplit('.', 1)[0]}.service_pb2_grpc")
    assert hasattr(grpc_module, f"{short}Stub")
    assert hasattr(grpc_module, f"{short}Servicer")
    assert hasattr(grpc_module, f"add_{short}Servicer_to_server")


def test_upload_request_is_a_header_then_chunks_then_an_end_oneof() -> None:
    service_pb2 = importlib.import_module("tuneline.dataset.v1.service_pb2")
    oneof = service_pb2.UploadDatasetVersionRequest.DESCRIPTOR.oneofs_by_name["payload"]
    assert sorted((field.name, field.number) for field in oneof.fields) == [
        ("chunk", 2),
        ("end", 3),
        ("header", 1),
    ]
    assert service_pb2.UploadDatasetVersionRequest(chunk=b"{}").WhichOneof("payload") == "chunk"


@pytest.mark.parametrize("event_name", sorted(EXPECTED_EVENTS))
def test_event_exists_with_subject_time_and_consumer_fields(event_name: str) -> None:
    event: Descriptor = _module_for(event_name, "events").DESCRIPTOR.message_types_by_name[
        event_name.rsplit(".", 1)[1]
    ]
    assert event.full_name == event_name
    missing = [name for name in EXPECTED_EVENTS[event_name] if name not in event.fields_by_name]
    assert not missing, f"{event_name} lacks {missing}"


@pytest.mark.parametrize("service", SERVICES)
def test_every_event_follows_the_envelope_convention(service: str) -> None:
    """Field 1 names the subject resource (the Kafka record key); `event_time` is a Timestamp."""
    events = importlib.import_module(f"tuneline.{service}.v1.events_pb2")
    messages = list(events.DESCRIPTOR.message_types_by_name.values())
    assert messages
    for message in messages:
        subject = message.fields_by_number[1]
        assert subject.type == FieldDescriptor.TYPE_STRING, message.full_name
        assert not subject.is_repeated, message.full_name
        event_time = message.fields_by_name["event_time"]
        assert event_time.message_type.full_name == "google.protobuf.Timestamp", message.full_name


def test_every_enum_starts_with_an_unspecified_zero() -> None:
    for module_name in _stub_modules():
        if module_name.endswith("_grpc"):
            continue
        module = importlib.import_module(module_name)
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.full_name
