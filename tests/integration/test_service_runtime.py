"""Every service boots on the shared runtime against a real broker, in-process and as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from services.dataset import bootstrap as dataset_bootstrap
from services.dataset.settings import DatasetSettings
from services.evaluator import bootstrap as evaluator_bootstrap
from services.evaluator.settings import EvaluatorSettings
from services.registry import bootstrap as registry_bootstrap
from services.registry.settings import RegistrySettings
from services.serving.settings import ServingSettings
from services.splitter import bootstrap as splitter_bootstrap
from services.splitter.settings import SplitterSettings
from services.trainer import bootstrap as trainer_bootstrap
from services.trainer.settings import TrainerSettings
from shared.runtime import ServiceContext, ServiceParts, ServiceSpec, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.waiting import wait_until_serving
from tuneline.devtools.kafka import free_port

pytestmark = pytest.mark.integration

SERVICES = {
    "dataset": (dataset_bootstrap, DatasetSettings),
    "splitter": (splitter_bootstrap, SplitterSettings),
    "trainer": (trainer_bootstrap, TrainerSettings),
    "evaluator": (evaluator_bootstrap, EvaluatorSettings),
    "registry": (registry_bootstrap, RegistrySettings),
}


@pytest.mark.parametrize("name", list(SERVICES))
def test_service_boots_serves_health_reflection_and_metrics(name, kafka_bootstrap, tmp_path):
    bootstrap, settings_type = SERVICES[name]
    common = CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=tmp_path)
    runtime = build_runtime(bootstrap.SPEC, common, settings_type(grpc_port=0, metrics_port=0))
    runtime.start()
    try:
        target = f"127.0.0.1:{runtime.grpc_port}"
        wait_until_serving(target, service=bootstrap.SERVICE_NAME, timeout=60)
        with grpc.insecure_channel(target) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert bootstrap.SERVICE_NAME in services
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{runtime.metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        assert 'tuneline_grpc_server_handled_total{grpc_code="OK"' in metrics
        assert (tmp_path / name / f"{name}.db").exists(), "SQLite file under the data dir"
    finally:
        runtime.stop()


def test_a_service_is_wired_once_and_closes_what_it_asked_after_its_components_stop(
    kafka_bootstrap, tmp_path
):
    calls: list[str] = []

    class Component:
        def start(self) -> None:
            calls.append("start")

        def stop(self) -> None:
            calls.append("stop")

    class Channel:
        def close(self) -> None:
            calls.append("close channel")

    def wire(context: ServiceContext[ServingSettings]) -> ServiceParts:
        calls.append(f"wire {context.settings.max_new_tokens}")  # typed: the service's own
        return ServiceParts(
            grpc_services=[],
            background=[Component()],
            close_on_stop=[Channel(), lambda: calls.append("close notifier")],
        )

    runtime = build_runtime(
        ServiceSpec(name="serving", tables=[], publishes=[], wire=wire),
        CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=tmp_path),
        ServingSettings(grpc_port=0, metrics_port=0, max_new_tokens=7),
    )
    runtime.start()
    runtime.stop()
    assert calls == ["wire 7", "start", "stop", "close notifier", "close channel"]


def test_a_service_process_stops_gracefully_on_sigterm(kafka_bootstrap, tmp_path: Path):
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "TUNELINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TUNELINE_DATA_DIR": str(tmp_path),
        "TUNELINE_REGISTRY_GRPC_PORT": str(port),
        "TUNELINE_REGISTRY_METRICS_PORT": str(metrics_port),
        "TUNELINE_LOG_FORMAT": "json",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.registry.entrypoints.main"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_serving(f"127.0.0.1:{port}", service=registry_bootstrap.SERVICE_NAME, timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    _, stderr = process.communicate(timeout=5)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert "service started" in messages
    assert "service stopped" in messages
    assert all(line["service"] == "registry" for line in lines)
