"""``tuneline datasets create`` passes the audit and churn policy flags to the SDK, and
``tuneline datasets audit`` shows the shift against the parent (text and ``--json``).

The SDK client is replaced by a recorder: what reaches the server over real gRPC is covered by
tests/integration/test_dataset_label_audit.py; here the flags and the rendering are.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import pytest
from typer.testing import CliRunner

from tuneline.cli import datasets as datasets_cli
from tuneline.cli.main import app
from tuneline.dataset.v1 import resources_pb2

VERSION = "datasets/reviews/versions/v-2"
PARENT = "datasets/reviews/versions/v-1"


class RecordingClient:
    """The part of DatasetClient the commands under test call."""

    def __init__(self, audit: resources_pb2.DatasetAudit | None = None) -> None:
        self.created: dict[str, Any] = {}
        self.audit = audit or resources_pb2.DatasetAudit()

    def __enter__(self) -> RecordingClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def create_dataset(self, dataset_id: str, task_type: str, **options: Any) -> Any:
        self.created = {"dataset_id": dataset_id, "task_type": task_type, **options}
        return resources_pb2.Dataset(name=f"datasets/{dataset_id}")

    def get_dataset_audit(self, version: str, *, max_rows: int = 0) -> resources_pb2.DatasetAudit:
        return self.audit


def invoke(monkeypatch: pytest.MonkeyPatch, client: RecordingClient, *args: str) -> str:
    monkeypatch.setattr(datasets_cli, "_client", lambda: client)
    result = CliRunner().invoke(app, ["datasets", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def test_create_passes_the_audit_and_churn_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    client = RecordingClient()
    invoke(
        monkeypatch,
        client,
        "create",
        "reviews",
        "--task",
        "classification",
        "--label-audit-action",
        "warn",
        "--max-label-noise-rate",
        "0.15",
        "--max-label-churn",
        "0.3",
        "--min-shared-rows-for-churn",
        "20",
    )
    assert client.created["label_audit_action"] == "warn"
    assert client.created["max_label_noise_rate"] == pytest.approx(0.15)
    assert client.created["max_label_churn"] == pytest.approx(0.3)
    assert client.created["min_shared_rows_for_churn"] == 20


def test_create_leaves_the_policy_to_the_server_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = RecordingClient()
    invoke(monkeypatch, client, "create", "reviews", "--task", "classification")
    assert client.created["label_audit_action"] == ""  # the server's default (block)
    assert client.created["max_label_noise_rate"] == 0.0
    assert client.created["max_label_churn"] == 0.0


def test_create_refuses_an_unknown_action(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets_cli, "_client", RecordingClient)
    result = CliRunner().invoke(
        app,
        ["datasets", "create", "reviews", "--task", "classification", "--label-audit-action", "x"],
    )
    assert result.exit_code == 2


def shifted_audit() -> resources_pb2.DatasetAudit:
    return resources_pb2.DatasetAudit(
        name=f"{VERSION}/audit",
        dataset_version=VERSION,
        verdict=resources_pb2.LABEL_AUDIT_VERDICT_PASSED,
        action=resources_pb2.LABEL_AUDIT_ACTION_BLOCK,
        max_noise_rate=0.25,
        noise_rate=0.05,
        row_count=400,
        parent_shift=resources_pb2.ParentShift(
            parent_version=PARENT,
            status=resources_pb2.PARENT_SHIFT_STATUS_FLAGGED,
            reason="parent_shift: ...",
            auc=0.97,
            effect_size=0.47,
            p_value=1 / 201,
            permutations=200,
            parent_rows=400,
            version_rows=200,
            min_effect=0.1,
            significance_level=0.01,
        ),
    )


def test_audit_shows_the_shift_against_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = invoke(monkeypatch, RecordingClient(shifted_audit()), "audit", VERSION)
    assert f"shift against the parent {PARENT}: FLAGGED" in shown
    assert "effect +0.470" in shown
    assert "AUC 0.970" in shown
    assert "200 added rows against 400 of the parent" in shown
    assert "report only" in shown


def test_audit_json_carries_the_shift(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = json.loads(
        invoke(monkeypatch, RecordingClient(shifted_audit()), "audit", VERSION, "--json")
    )
    shift = shown["parent_shift"]
    assert shift["status"] == "PARENT_SHIFT_STATUS_FLAGGED"
    assert shift["parent_version"] == PARENT
    assert shift["effect_size"] == pytest.approx(0.47)
    assert shift["p_value"] == pytest.approx(1 / 201)


def test_a_skipped_shift_shows_why_even_when_the_label_audit_was_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    audit = resources_pb2.DatasetAudit(
        dataset_version=VERSION,
        verdict=resources_pb2.LABEL_AUDIT_VERDICT_SKIPPED,
        reason="label_audit: too few rows",
        parent_shift=resources_pb2.ParentShift(
            parent_version=PARENT,
            status=resources_pb2.PARENT_SHIFT_STATUS_SKIPPED,
            reason="parent_shift: 3 rows added to 50 of the parent; the test needs 10 of each",
        ),
    )
    shown = invoke(monkeypatch, RecordingClient(audit), "audit", VERSION)
    assert "SKIPPED" in shown
    assert "3 rows added to 50 of the parent" in shown


def test_an_audit_without_a_parent_shows_no_shift(monkeypatch: pytest.MonkeyPatch) -> None:
    audit = shifted_audit()
    audit.ClearField("parent_shift")
    assert "shift" not in invoke(monkeypatch, RecordingClient(audit), "audit", VERSION)
