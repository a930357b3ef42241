"""The label audit in the running dataset service, over real gRPC and a real Kafka broker.

Real reviews with 30 % of their labels flipped go up through the SDK; the service audits the
new version in its worker process (the packaged MiniLM's frozen embeddings + TF-IDF, cleanlab),
blocks it by the default policy, announces ``DatasetAudited`` on the broker, answers
GetDatasetAudit, exports the audit's metrics, and ``tuneline datasets audit VERSION --json``
lists every suspected row by line number. A dataset created by the CLI with a REPORT policy gets
a version of film plot descriptions after one of reviews: the audit flags its shift against the
parent, announces it, exports it and the CLI shows it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.dataset import bootstrap
from services.dataset.settings import DatasetSettings
from shared.modeling.models import default_models_root
from shared.modeling.packaged import ENCODER, prepare_packaged_models
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.datasets import plot_description_rows, rotten_tomatoes_rows, to_jsonl
from tests.fixtures.events import read_all_sent
from tuneline.cli.main import app
from tuneline.client.dataset import DatasetClient
from tuneline.dataset.v1 import events_pb2, resources_pb2

pytestmark = pytest.mark.integration

TOPIC = "tuneline.dataset.v1.DatasetAudited"
FLIP = {"fresh": "rotten", "rotten": "fresh"}


@pytest.fixture(scope="module")
def service(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceRuntime]:
    models_root = default_models_root()
    prepare_packaged_models(models_root, names=(ENCODER,))
    runtime = build_runtime(
        bootstrap.SPEC,
        CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=tmp_path_factory.mktemp("data")),
        DatasetSettings(grpc_port=0, metrics_port=0, validation_workers=0, models_root=models_root),
    )
    runtime.start()
    yield runtime
    runtime.stop()


def noisy_reviews(count: int, share: float) -> tuple[list[dict[str, str]], set[int]]:
    rows = list({row["text"]: row for row in rotten_tomatoes_rows(3 * count)}.values())[:count]
    flipped = set(random.Random(5).sample(range(count), round(share * count)))
    for i in flipped:
        rows[i] = {**rows[i], "label": FLIP[rows[i]["label"]]}
    return rows, {i + 1 for i in flipped}


def test_a_noisy_version_is_audited_blocked_announced_and_shown(
    service: ServiceRuntime,
    kafka_bootstrap: str,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = f"127.0.0.1:{service.grpc_port}"
    rows, flipped = noisy_reviews(600, 0.3)
    with DatasetClient(target) as client:
        dataset = client.create_dataset(f"noisy-{unique}", task_type="classification")
        version = client.upload_dataset_version(dataset.name, to_jsonl(rows)).dataset_version.name

        (record,) = read_all_sent(
            kafka_bootstrap,
            TOPIC,
            lambda r: r.key == version.encode(),  # type: ignore[attr-defined]
            expected=1,
            outboxes=[service.context.sessions],
            timeout=600,
        )
        event = events_pb2.DatasetAudited.FromString(record.value)  # type: ignore[attr-defined]
        assert event.verdict == resources_pb2.LABEL_AUDIT_VERDICT_BLOCKED
        assert event.noise_rate > event.max_noise_rate
        assert event.suspected_line_numbers

        audit = client.get_dataset_audit(version)
    assert audit.verdict == resources_pb2.LABEL_AUDIT_VERDICT_BLOCKED
    assert audit.encoder == ENCODER
    assert audit.suspected_count == len(audit.suspected_rows)
    suspected = {row.line_number for row in audit.suspected_rows}
    assert len(suspected & flipped) >= 0.5 * len(flipped)
    assert "label_audit" in audit.reason
    samples = service.context.registry
    assert samples.get_sample_value(
        "tuneline_dataset_label_audits_total", {"verdict": "blocked"}
    ) == pytest.approx(1)

    monkeypatch.setenv("TUNELINE_DATASET_TARGET", target)
    result = CliRunner().invoke(app, ["datasets", "audit", version, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["verdict"] == "LABEL_AUDIT_VERDICT_BLOCKED"
    lines = [int(row["line_number"]) for row in shown["suspected_rows"]]
    assert set(lines) == suspected
    table = CliRunner().invoke(app, ["datasets", "audit", version])
    assert table.exit_code == 0, table.output
    assert "BLOCKED" in table.output
    assert str(lines[0]) in table.output


def test_a_version_from_another_source_is_flagged_against_its_parent_and_shown(
    service: ServiceRuntime,
    kafka_bootstrap: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = f"127.0.0.1:{service.grpc_port}"
    monkeypatch.setenv("TUNELINE_DATASET_TARGET", target)
    runner = CliRunner()
    name = f"shift-{unique}"
    created = runner.invoke(
        app,
        [
            *("datasets", "create", name, "--task", "classification"),
            *("--label-audit-action", "report", "--max-label-noise-rate", "0.4"),
        ],
    )
    assert created.exit_code == 0, created.output
    reviews = list({row["text"]: row for row in rotten_tomatoes_rows(400)}.values())[:150]
    with DatasetClient(target) as client:
        policy = client.get_dataset(f"datasets/{name}").schema_policy
        assert policy.label_audit_action == resources_pb2.LABEL_AUDIT_ACTION_REPORT
        assert policy.max_label_noise_rate == pytest.approx(0.4)
        parent = client.upload_dataset_version(
            f"datasets/{name}", to_jsonl(reviews)
        ).dataset_version.name
        plots = client.upload_dataset_version(
            f"datasets/{name}", to_jsonl(plot_description_rows(150))
        )
        version = plots.dataset_version.name
        assert plots.dataset_version.lineage.parent_version == parent

        (record,) = read_all_sent(
            kafka_bootstrap,
            TOPIC,
            lambda r: r.key == version.encode(),  # type: ignore[attr-defined]
            expected=1,
            outboxes=[service.context.sessions],
            timeout=600,
        )
    event = events_pb2.DatasetAudited.FromString(record.value)  # type: ignore[attr-defined]
    shift = event.parent_shift
    assert shift.status == resources_pb2.PARENT_SHIFT_STATUS_FLAGGED, shift.reason
    assert shift.parent_version == parent
    assert shift.effect_size > 0.3
    assert (shift.parent_rows, shift.version_rows) == (150, 150)
    assert event.verdict != resources_pb2.LABEL_AUDIT_VERDICT_BLOCKED  # report only, REPORT
    assert service.context.registry.get_sample_value(
        "tuneline_dataset_parent_shift_effect_size", {"dataset": f"datasets/{name}"}
    ) == pytest.approx(shift.effect_size)

    shown = runner.invoke(app, ["datasets", "audit", version])
    assert shown.exit_code == 0, shown.output
    assert f"shift against the parent {parent}: FLAGGED" in shown.output
    as_json = runner.invoke(app, ["datasets", "audit", version, "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["parent_shift"]["status"] == "PARENT_SHIFT_STATUS_FLAGGED"
