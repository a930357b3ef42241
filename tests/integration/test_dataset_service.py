"""The dataset service over real gRPC on loopback and a real Kafka broker.

Real Rotten Tomatoes reviews go up through the client SDK and come out as DatasetVersioned on
the broker; the same content twice makes one version and one event; a client that cancels
mid-upload leaves nothing behind; and the service runs as a process of its own.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.dataset import bootstrap
from services.dataset.settings import DatasetSettings
from shared.db import create_database_engine, create_session_factory
from shared.grpc import ClientSecurity
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.datasets import rotten_tomatoes_rows, stored_artifacts, to_jsonl
from tests.fixtures.events import header, outbox_published, read_published
from tests.fixtures.pki import LocalCA, TokenIssuer, spiffe_id
from tuneline.client import InvalidArgumentError, TunelineError, UnavailableError
from tuneline.client.dataset import DatasetClient
from tuneline.client.errors import from_rpc_error
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc
from tuneline.devtools.kafka import free_port
from tuneline.devtools.waiting import answer, eventually

pytestmark = pytest.mark.integration

TOPIC = "tuneline.dataset.v1.DatasetVersioned"


@pytest.fixture
def service(kafka_bootstrap: str, tmp_path: Path) -> Iterator[ServiceRuntime]:
    runtime = build_runtime(
        bootstrap.SPEC,
        CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=tmp_path),
        # the label audit (a torch worker per service) has its own test module
        DatasetSettings(
            grpc_port=0,
            metrics_port=0,
            validation_workers=1,
            label_audit_enabled=False,
            import_roots=[tmp_path / "incoming"],
        ),
    )
    runtime.start()
    yield runtime
    runtime.stop()


@pytest.fixture
def client(service: ServiceRuntime) -> Iterator[DatasetClient]:
    with DatasetClient(f"127.0.0.1:{service.grpc_port}") as client:
        yield client


def events_about(
    kafka_bootstrap: str, dataset: str, sessions: sessionmaker[Session]
) -> list[object]:
    """Every DatasetVersioned of ``dataset``, once the service published all it staged.

    Read after the uploads answered: their events are staged by then, so the outbox drained
    is the signal that a duplicate would be on the broker too.
    """
    eventually(
        lambda: outbox_published(sessions),
        timeout=60,
        what="the dataset service's outbox published",
    )
    prefix = f"{dataset}/versions/".encode()
    return read_published(
        kafka_bootstrap,
        TOPIC,
        lambda record: (record.key or b"").startswith(prefix),  # type: ignore[attr-defined]
    )


def metric(runtime: ServiceRuntime, name: str, **labels: str) -> float:
    return runtime.context.registry.get_sample_value(name, labels) or 0.0


def test_real_reviews_uploaded_become_a_version_and_an_event(
    client: DatasetClient,
    service: ServiceRuntime,
    kafka_bootstrap: str,
    unique: str,
    tmp_path: Path,
) -> None:
    dataset = client.create_dataset(f"rt-{unique}", "classification")
    rows = rotten_tomatoes_rows(3000)
    source = tmp_path / "reviews.jsonl"
    source.write_bytes(to_jsonl(rows))
    progress: list[tuple[int, int]] = []

    response = client.upload_dataset_version(
        dataset.name,
        source,
        uploader="alice@example.com",
        chunk_bytes=64 * 1024,
        progress=lambda sent, lines: progress.append((sent, lines)),
    )

    assert progress[-1] == (source.stat().st_size, 3000)
    version = response.dataset_version
    assert response.created
    artifact = Path(version.artifact_uri.removeprefix("file://"))
    content = artifact.read_bytes()
    assert version.content_sha256 == hashlib.sha256(content).hexdigest()
    labels = Counter(row["label"] for row in rows)
    assert [(c.label, c.count) for c in version.label_distribution] == sorted(labels.items())
    assert client.get_dataset_version(version.name) == version
    report = client.get_validation_report(response.report)
    assert report.dataset_version == version.name
    assert report.lines_read == 3000
    # the real data has a few exact repeats (kept, numbered) and two reviews that are
    # truncations of others (near-duplicates): both reported as warnings
    assert [(f.rule_id, f.severity) for f in report.findings] == [
        ("duplicate_row", resources_pb2.VALIDATION_SEVERITY_WARNING),
        ("near_duplicates", resources_pb2.VALIDATION_SEVERITY_WARNING),
    ]
    (near,) = [f for f in report.findings if f.rule_id == "near_duplicates"]
    assert (near.count, len(near.line_numbers)) == (4, 4)
    assert version.row_count == 3000

    (record,) = events_about(kafka_bootstrap, dataset.name, service.context.sessions)
    assert record.key == version.name.encode()  # type: ignore[attr-defined]
    assert header(record, "ce_type") == TOPIC
    assert header(record, "ce_source") == "tuneline/dataset"
    assert header(record, "content-type") == "application/protobuf"
    event = events_pb2.DatasetVersioned.FromString(record.value)  # type: ignore[attr-defined]
    assert event.dataset_version == version.name
    assert event.dataset == dataset.name
    assert event.content_sha256 == version.content_sha256
    assert (event.row_count, event.byte_count) == (3000, len(content))
    assert event.task_type == common_pb2.TASK_TYPE_CLASSIFICATION
    assert list(event.label_distribution) == list(version.label_distribution)
    assert event.artifact_uri == version.artifact_uri
    assert event.report == response.report
    assert event.report_summary.outcome == resources_pb2.VALIDATION_OUTCOME_ACCEPTED
    assert list(event.report_summary.warning_rule_ids) == ["duplicate_row", "near_duplicates"]
    assert event.lineage.uploader == "alice@example.com"
    assert event.lineage.source == "reviews.jsonl"
    assert event.lineage.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert event.event_time == version.create_time
    assert metric(service, "tuneline_dataset_ingests_total", source="upload", outcome="created")


def test_the_same_content_twice_is_one_version_and_one_event(
    client: DatasetClient, service: ServiceRuntime, kafka_bootstrap: str, unique: str
) -> None:
    dataset = client.create_dataset(f"twice-{unique}", "classification")
    rows = rotten_tomatoes_rows(500)
    first = client.upload_dataset_version(dataset.name, to_jsonl(rows))
    second = client.upload_dataset_version(
        dataset.name, b"\xef\xbb\xbf" + to_jsonl(rows, newline="\r\n")
    )
    assert (first.created, second.created) == (True, False)
    assert second.dataset_version == first.dataset_version
    assert second.report != first.report
    assert len(events_about(kafka_bootstrap, dataset.name, service.context.sessions)) == 1
    assert client.get_dataset(dataset.name).version_count == 1


def _upload_outcomes(runtime: ServiceRuntime) -> dict[str, float]:
    """``tuneline_dataset_ingests_total`` of uploads, by outcome."""
    return {
        sample.labels["outcome"]: sample.value
        for family in runtime.context.registry.collect()
        if family.name == "tuneline_dataset_ingests"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("source") == "upload"
    }


def test_a_client_cancelling_mid_upload_leaves_nothing(
    client: DatasetClient, service: ServiceRuntime, unique: str
) -> None:
    dataset = client.create_dataset(f"gone-{unique}", "classification")
    content = to_jsonl(rotten_tomatoes_rows(4000))
    halfway = len(content) // 2
    chunk = 32 * 1024
    release = threading.Event()

    def chunks() -> Iterator[bytes]:
        for start in range(0, halfway, chunk):
            yield content[start : start + chunk]
        release.wait(600)  # the client stalls here until the test has cancelled
        yield content[halfway:]

    before = _upload_outcomes(service)
    upload = client.start_upload_dataset_version(dataset.name, chunks())
    store = service.context.artifacts
    received = lambda: metric(service, "tuneline_dataset_ingest_bytes_total", source="upload")  # noqa: E731
    eventually(lambda: received() >= halfway - chunk, timeout=120, what="half the upload to arrive")
    assert len(store.temp_entries()) == 1, "the content is being spooled"

    assert upload.cancel()
    release.set()
    # wait for the upload's outcome, whatever it is, then check it is the right one
    outcome = eventually(
        lambda: [o for o, n in _upload_outcomes(service).items() if n > before.get(o, 0.0)],
        timeout=300,
        what="the upload to end with an outcome",
    )
    assert outcome == ["aborted"]
    with pytest.raises(TunelineError) as caught:
        upload.result()
    assert caught.value.code == grpc.StatusCode.CANCELLED
    assert store.temp_entries() == []
    assert stored_artifacts(store.root) == []
    assert list(client.list_dataset_versions(dataset.name)) == []
    assert list(client.list_validation_reports(dataset.name)) == []


def test_a_rejected_upload_answers_with_violations_and_keeps_only_its_report(
    client: DatasetClient, service: ServiceRuntime, kafka_bootstrap: str, unique: str
) -> None:
    dataset = client.create_dataset(
        f"bad-{unique}", "classification", label_set=["fresh", "rotten"]
    )
    rows = rotten_tomatoes_rows(100)
    content = to_jsonl(rows[:10]) + b'{"text": "so-so", "label": "meh"}\n' + to_jsonl(rows[10:])
    with pytest.raises(InvalidArgumentError) as caught:
        client.upload_dataset_version(dataset.name, content)
    error = caught.value
    assert [(v.field, v.reason) for v in error.violations] == [
        ("label_not_in_set", "label_not_in_set")
    ]
    assert error.violations[0].description.startswith(
        "line 11: label 'meh' is not in the label set"
    )
    report = client.get_validation_report(error.metadata["report"])
    assert report.summary.outcome == resources_pb2.VALIDATION_OUTCOME_REJECTED
    assert [(f.rule_id, list(f.line_numbers)) for f in report.findings] == [
        ("label_not_in_set", [11])
    ]
    assert [r.name for r in client.list_validation_reports(dataset.name, outcome="rejected")] == [
        report.name
    ]
    assert list(client.list_dataset_versions(dataset.name)) == []
    assert stored_artifacts(service.context.artifacts.root) == []
    assert events_about(kafka_bootstrap, dataset.name, service.context.sessions) == []


def test_import_from_a_file_uri_in_an_import_root(
    client: DatasetClient, service: ServiceRuntime, tmp_path: Path, unique: str
) -> None:
    dataset = client.create_dataset(f"imp-{unique}", "classification")
    source = tmp_path / "incoming" / "reviews.jsonl"
    source.parent.mkdir()
    source.write_bytes(to_jsonl(rotten_tomatoes_rows(300)))
    response = client.import_dataset_version(dataset.name, source.as_uri(), uploader="svc:ingest")
    assert response.created
    lineage = response.dataset_version.lineage
    assert (lineage.source, lineage.source_kind, lineage.uploader) == (
        source.as_uri(),
        resources_pb2.DATASET_SOURCE_KIND_IMPORT,
        "svc:ingest",
    )
    with pytest.raises(InvalidArgumentError) as caught:
        client.import_dataset_version(dataset.name, "file:///etc/hostname")
    assert caught.value.violations[0].reason == "OUTSIDE_IMPORT_ROOTS"
    # the data dir (every service's database and artifacts) is not an import root
    database = tmp_path / "dataset" / "dataset.db"
    assert database.is_file()
    with pytest.raises(InvalidArgumentError) as caught:
        client.import_dataset_version(dataset.name, database.as_uri())
    assert caught.value.violations[0].reason == "OUTSIDE_IMPORT_ROOTS"
    # a symlink inside the root is not followed, even to a file inside the root
    link = source.parent / "link.jsonl"
    link.symlink_to(source)
    with pytest.raises(TunelineError) as denied:
        client.import_dataset_version(dataset.name, link.as_uri())
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.metadata["reason"] == "SYMLINK_REFUSED"


def test_label_churn_against_the_parent_blocks_unless_the_request_allows_it(
    client: DatasetClient, service: ServiceRuntime, tmp_path: Path, unique: str
) -> None:
    dataset = client.create_dataset(f"churn-{unique}", "classification")
    rows = rotten_tomatoes_rows(300)
    parent = client.upload_dataset_version(dataset.name, to_jsonl(rows)).dataset_version
    flip = {"fresh": "rotten", "rotten": "fresh"}
    relabelled = [
        {**row, "label": flip[row["label"]]} if i % 10 < 7 else row for i, row in enumerate(rows)
    ]
    source = tmp_path / "incoming" / "relabelled.jsonl"
    source.parent.mkdir()
    source.write_bytes(to_jsonl(relabelled))

    with pytest.raises(InvalidArgumentError) as caught:
        client.import_dataset_version(dataset.name, source.as_uri())
    (violation,) = [v for v in caught.value.violations if v.field == "label_churn"]
    assert violation.description.startswith("lines 1, 2, 3, 4, 5, 6, 7, 11, 12, 13 (")
    assert list(client.list_dataset_versions(dataset.name)) == [parent]

    # the override travels in the request (the SDK does not expose it yet: the raw stub)
    channel = grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}")
    with channel:
        response = service_pb2_grpc.DatasetServiceStub(channel).ImportDatasetVersion(
            service_pb2.ImportDatasetVersionRequest(
                dataset=dataset.name,
                source_uri=source.as_uri(),
                allow_label_churn=True,
                label_churn_reason="second annotation pass",
            ),
            timeout=30,
        )
    lineage = response.dataset_version.lineage
    assert (lineage.parent_version, lineage.label_churn_override) == (
        parent.name,
        "second annotation pass",
    )
    report = client.get_validation_report(response.dataset_version.report)
    (finding,) = [f for f in report.findings if f.rule_id == "label_churn"]
    assert finding.severity == resources_pb2.VALIDATION_SEVERITY_WARNING
    assert finding.count == sum(
        a["label"] != b["label"] for a, b in zip(rows, relabelled, strict=True)
    )
    assert report.lineage.label_churn_override == "second annotation pass"


def test_the_service_runs_as_its_own_process(
    kafka_bootstrap: str, tmp_path: Path, unique: str
) -> None:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "TUNELINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TUNELINE_DATA_DIR": str(tmp_path),
        "TUNELINE_DATASET_GRPC_PORT": str(port),
        "TUNELINE_DATASET_METRICS_PORT": str(metrics_port),
        "TUNELINE_DATASET_VALIDATION_WORKERS": "2",
        "TUNELINE_LOG_FORMAT": "json",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.dataset.entrypoints.main"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with DatasetClient(f"127.0.0.1:{port}", timeout=5) as client:
            dataset = eventually(
                answer(
                    lambda: client.create_dataset(f"proc-{unique}", "classification"),
                    UnavailableError,
                ),
                timeout=60,
                what="the dataset service to answer",
            )
            rows = rotten_tomatoes_rows(2000)
            response = client.upload_dataset_version(
                dataset.name, to_jsonl(rows), metadata=[("x-tuneline-principal", "bob")]
            )
        version = response.dataset_version
        # the process's own database: its outbox says when all it staged is published
        engine = create_database_engine(f"sqlite:///{tmp_path / 'dataset' / 'dataset.db'}")
        try:
            (record,) = events_about(kafka_bootstrap, dataset.name, create_session_factory(engine))
        finally:
            engine.dispose()
        event = events_pb2.DatasetVersioned.FromString(record.value)  # type: ignore[attr-defined]
        assert (event.dataset_version, event.row_count) == (version.name, 2000)
        assert event.content_sha256 == version.content_sha256
        # a client's own x-tuneline-principal is ignored: only a trusted proxy may assert one
        assert event.lineage.uploader == "anonymous"
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        assert 'tuneline_dataset_ingests_total{outcome="created",source="upload"} 1.0' in metrics
        assert 'tuneline_dataset_ingest_rows_total{outcome="created",source="upload"} 2000.0' in (
            metrics
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_the_cli_creates_pushes_shows_lists_and_reports(
    service: ServiceRuntime, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415 - only this test drives the CLI

    from tuneline.cli.main import app  # noqa: PLC0415

    monkeypatch.setenv("TUNELINE_DATASET_TARGET", f"127.0.0.1:{service.grpc_port}")
    runner = CliRunner()
    name = f"cli-{unique}"

    def run(*args: str) -> str:
        result = runner.invoke(app, ["datasets", *args])
        assert result.exit_code == 0, result.output
        return result.output

    run("create", name, "--task", "classification", "--severity", "class_imbalance=error")
    good = tmp_path / "good.jsonl"
    good.write_bytes(to_jsonl(rotten_tomatoes_rows(1000)))
    pushed = run("push", name, str(good), "--uploader", "carol", "--chunk-kib", "16")
    assert "rows/s" in pushed
    assert "1,000 rows" in pushed
    version = next(
        line.split()[1].rstrip(":") for line in pushed.splitlines() if line.startswith("created ")
    )
    assert f'"name":"{version}"' in run("show", version).replace(" ", "")
    assert version.rsplit("/", 1)[-1] in run("list", name)
    assert name in run("list")

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine", "label": "fresh"}\n{"text": 1}\n')
    result = runner.invoke(app, ["datasets", "push", name, str(bad)])
    assert result.exit_code == 1
    assert "wrong_type: line 2" in result.output
    report = result.output.split("tuneline datasets report ")[1].split()[0]
    shown = run("report", report)
    assert "wrong_type" in shown
    assert "missing_field" in shown
    assert "rejected" in run("report", name)


def test_with_auth_the_uploader_is_the_token_subject_not_the_metadata(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    ca = LocalCA(tmp_path / "pki")
    server_cert = ca.issue("dataset", uri=spiffe_id("service", "dataset"), server=True)
    tokens = TokenIssuer(tmp_path / "jwks.json")
    runtime = build_runtime(
        bootstrap.SPEC,
        CommonSettings(
            kafka_bootstrap=kafka_bootstrap,
            data_dir=tmp_path / "data",
            auth_mode="enforce",
            tls_cert_file=server_cert.cert_file,
            tls_key_file=server_cert.key_file,
            auth_jwt_jwks_file=tokens.jwks_file,
            auth_jwt_issuer=tokens.issuer,
        ),
        DatasetSettings(grpc_port=0, metrics_port=0, validation_workers=0),
    )
    runtime.start()
    security = ClientSecurity(
        tls=True, ca_file=ca.ca_file, token=tokens.token("dana@example.com", ["editor"])
    )
    try:
        with DatasetClient(f"127.0.0.1:{runtime.grpc_port}", security=security) as client:
            dataset = client.create_dataset(f"auth-{os.getpid()}", "classification")
            response = client.upload_dataset_version(
                dataset.name,
                to_jsonl(rotten_tomatoes_rows(50)),
                uploader="mallory",
                metadata=[("x-tuneline-principal", "mallory")],
            )
        assert response.dataset_version.lineage.uploader == "dana@example.com"
    finally:
        runtime.stop()


def _raw_upload(
    service: ServiceRuntime, messages: list[service_pb2.UploadDatasetVersionRequest]
) -> service_pb2.UploadDatasetVersionResponse:
    """One upload as a client of any version sends it: the raw stub, the messages as given."""
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        try:
            return service_pb2_grpc.DatasetServiceStub(channel).UploadDatasetVersion(
                iter(messages), timeout=60
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error


def _upload_messages(
    dataset: str,
    content: bytes,
    *,
    end_follows: bool,
    end: service_pb2.UploadDatasetVersionEnd | None,
    after_end: bytes | None = None,
) -> list[service_pb2.UploadDatasetVersionRequest]:
    half = len(content) // 2
    messages = [
        service_pb2.UploadDatasetVersionRequest(
            header=service_pb2.UploadDatasetVersionHeader(dataset=dataset, end_follows=end_follows)
        ),
        service_pb2.UploadDatasetVersionRequest(chunk=content[:half]),
        service_pb2.UploadDatasetVersionRequest(chunk=content[half:]),
    ]
    if end is not None:
        messages.append(service_pb2.UploadDatasetVersionRequest(end=end))
    if after_end is not None:
        messages.append(service_pb2.UploadDatasetVersionRequest(chunk=after_end))
    return messages


def test_an_upload_cut_before_its_announced_end_or_with_a_wrong_end_stores_nothing(
    client: DatasetClient, service: ServiceRuntime, unique: str
) -> None:
    """The end message tells a finished upload from one cut short, e.g. a cancel that reached
    the server as a clean end of stream (the SDK always announces and sends it)."""
    dataset = client.create_dataset(f"end-{unique}", "classification")
    content = to_jsonl(rotten_tomatoes_rows(200))
    sha256 = hashlib.sha256(content).hexdigest()
    end = service_pb2.UploadDatasetVersionEnd
    cases = {
        "MISSING_END": _upload_messages(dataset.name, content, end_follows=True, end=None),
        "END_LENGTH_MISMATCH": _upload_messages(
            dataset.name,
            content,
            end_follows=True,
            end=end(content_length=len(content) + 10, content_sha256=sha256),
        ),
        "END_SHA256_MISMATCH": _upload_messages(
            dataset.name,
            content,
            end_follows=False,  # an end without the announcement is checked all the same
            end=end(content_length=len(content), content_sha256="0" * 64),
        ),
        "INVALID_SHA256": _upload_messages(
            dataset.name,
            content,
            end_follows=True,
            end=end(content_length=len(content), content_sha256="abc"),
        ),
        "AFTER_END": _upload_messages(
            dataset.name,
            content,
            end_follows=True,
            end=end(content_length=len(content)),
            after_end=b'{"text": "late", "label": "fresh"}\n',
        ),
    }
    before = _upload_outcomes(service)
    refused = {}
    for reason, messages in cases.items():
        with pytest.raises(InvalidArgumentError) as caught:
            _raw_upload(service, messages)
        refused[reason] = [v.reason for v in caught.value.violations]
    assert refused == {reason: [reason] for reason in cases}
    # the cut stream counts as an aborted upload (as a cancel the transport noticed does)
    after = _upload_outcomes(service)
    assert {o: n - before.get(o, 0.0) for o, n in after.items() if n != before.get(o)} == {
        "aborted": 1.0
    }
    assert list(client.list_dataset_versions(dataset.name)) == []
    assert list(client.list_validation_reports(dataset.name)) == [], "not even a rejected report"
    assert stored_artifacts(service.context.artifacts.root) == []
    assert service.context.artifacts.temp_entries() == []


def test_an_upload_with_a_matching_end_and_an_old_clients_upload_without_one_are_versions(
    client: DatasetClient, service: ServiceRuntime, unique: str
) -> None:
    dataset = client.create_dataset(f"ended-{unique}", "classification")
    rows = rotten_tomatoes_rows(300)
    ended, old = to_jsonl(rows[:150]), to_jsonl(rows[150:])
    with_end = _raw_upload(
        service,
        _upload_messages(
            dataset.name,
            ended,
            end_follows=True,
            end=service_pb2.UploadDatasetVersionEnd(
                content_length=len(ended), content_sha256=hashlib.sha256(ended).hexdigest()
            ),
        ),
    )
    # a client from before the end message: no announcement, no end; judged whole as before
    without_end = _raw_upload(
        service, _upload_messages(dataset.name, old, end_follows=False, end=None)
    )
    assert with_end.created
    assert without_end.created
    # and the SDK announces and sends it
    via_sdk = client.upload_dataset_version(dataset.name, ended + old, chunk_bytes=4096)
    assert via_sdk.created
    assert via_sdk.dataset_version.lineage.source_sha256 == hashlib.sha256(ended + old).hexdigest()
