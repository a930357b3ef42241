"""Broken uploads through real gRPC: a version, or INVALID_ARGUMENT with a report, never INTERNAL.

The in-process fuzz (``tests/unit/test_dataset_upload_fuzz.py``) runs thousands of cases; these
few go the whole way a client's bytes go — the SDK's client stream, the servicer, the spawned
validation worker process, the error mapping — against a service with a real broker.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings

from services.dataset import bootstrap
from services.dataset.settings import DatasetSettings
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.datasets import stored_artifacts
from tests.fixtures.upload_fuzz import uploads
from tuneline.client import InvalidArgumentError
from tuneline.client.dataset import DatasetClient
from tuneline.dataset.v1 import resources_pb2, service_pb2

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dataset-fuzz")


@pytest.fixture(scope="module")
def client(kafka_bootstrap: str, data_dir: Path) -> Iterator[DatasetClient]:
    runtime: ServiceRuntime = build_runtime(
        bootstrap.SPEC,
        CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=data_dir),
        DatasetSettings(grpc_port=0, metrics_port=0, validation_workers=1),
    )
    runtime.start()
    try:
        with DatasetClient(f"127.0.0.1:{runtime.grpc_port}") as client:
            yield client
    finally:
        runtime.stop()


_dataset_ids = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(content=uploads)
@example(content=b'{"text": "half an emoji \\ud83d", "label": "fresh"}\n')
def test_no_upload_ends_in_an_internal_error(
    client: DatasetClient, data_dir: Path, unique: str, content: bytes
) -> None:
    dataset = client.create_dataset(f"fuzz-{unique}-{next(_dataset_ids)}", "classification")
    artifacts = stored_artifacts(data_dir / "dataset" / "artifacts")
    outcome = _upload(client, dataset.name, content)
    if isinstance(outcome, InvalidArgumentError):  # any other TunelineError fails the test
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
        report = client.get_validation_report(outcome.metadata["report"])
        assert report.summary.outcome == resources_pb2.VALIDATION_OUTCOME_REJECTED
        assert client.get_dataset(dataset.name).version_count == 0
        assert stored_artifacts(data_dir / "dataset" / "artifacts") == artifacts
        return
    assert outcome.dataset_version.row_count > 0
    assert (
        client.get_validation_report(outcome.report).dataset_version == outcome.dataset_version.name
    )


def _upload(
    client: DatasetClient, dataset: str, content: bytes
) -> service_pb2.UploadDatasetVersionResponse | InvalidArgumentError:
    try:
        return client.upload_dataset_version(dataset, content, chunk_bytes=64)
    except InvalidArgumentError as error:
        return error
