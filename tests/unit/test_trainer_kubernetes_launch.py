"""The Kubernetes launcher: what it renders fits the published API models (the ``kubernetes``
client's for core and batch, whose models forbid unknown fields; Kubeflow Trainer's own
``kubeflow-trainer-api`` package for ``TrainJob``), the phase it reads from the client's job
and pod objects, and a whole launch — submit, relay, follow, clean up — against a fake API.

No cluster here: the submit/follow test fakes the API (the one fake in these tests); the
ranks' side is a thread that does what rank 0's pod does (connect to the relay over TCP with
the key from the Secret, report, exit)."""

from __future__ import annotations

import copy
import json
import multiprocessing
import threading
from multiprocessing.connection import Client
from typing import Any

import kubernetes.client as k8s
import pytest
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

from services.trainer.adapters.kubernetes_launch import (
    AUTHKEY_KEY,
    LAUNCH_LABEL,
    PLAN_KEY,
    QUEUE_LABEL,
    KubernetesLauncher,
    launch_phase,
    render_launch,
)
from services.trainer.adapters.torchrun import AUTHKEY_ENV, LocalTorchrun, relay_address
from services.trainer.adapters.worker import launcher_for
from services.trainer.domain.config import (
    AdapterSpec,
    BaseModelRef,
    CheckpointPolicy,
    Hyperparameters,
    StoppingRules,
)
from services.trainer.domain.launch import (
    KubernetesLaunch,
    KubernetesWorkload,
    LaunchPhase,
    Sharding,
)
from services.trainer.domain.worker_messages import (
    WorkerFinished,
    WorkerPlan,
    decode_message,
    encode_message,
)
from services.trainer.settings import TrainerSettings
from shared.task_types import TaskType


def _plan(**changes: Any) -> WorkerPlan:
    plan = WorkerPlan(
        job="trainingJobs/0b5e-Job_1",
        task_type=TaskType.CAUSAL_LM,
        model_dir="/var/lib/tuneline/models/llama",
        base_model=BaseModelRef(model_name="llama", files_sha256="ab" * 32),
        manifest_path="/var/lib/tuneline/artifacts/splits/s/manifest.json",
        manifest_sha256="cd" * 32,
        dataset_path="/var/lib/tuneline/artifacts/datasets/d",
        adapter=AdapterSpec(rank=8),
        hyperparameters=Hyperparameters(),
        stopping=StoppingRules(),
        checkpointing=CheckpointPolicy(),
        artifact_root="/var/lib/tuneline/artifacts",
        artifact_prefix="jobs/0b5e-Job_1",
        device="cuda:0,cuda:1,cuda:2,cuda:3",
        world_size=4,
        sharding=Sharding.FULLY_SHARDED,
    )
    return WorkerPlan(**{**plan.__dict__, **changes})


def _launch(**changes: Any) -> KubernetesLaunch:
    launch = KubernetesLaunch(
        namespace="tuneline",
        image="registry.example/tuneline/trainer:1.2.3",
        nodes=2,
        queue="gpu-queue",
        service_account="trainer-ranks",
        data_claim="tuneline-data",
        data_mount="/var/lib/tuneline",
        relay_host="10.0.0.7",
    )
    return KubernetesLaunch(**{**launch.__dict__, **changes})


def _core_model(manifest: dict[str, Any]) -> Any:
    """The manifest as the client's model of its kind: unknown fields are an error there, and
    what the model serialises back must be the manifest itself (nothing dropped or renamed)."""
    model = getattr(k8s, f"V1{manifest['kind']}").model_validate(manifest)
    assert k8s.ApiClient().sanitize_for_serialization(model) == manifest
    return model


def _by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {manifest["kind"]: manifest for manifest in manifests}


def test_an_indexed_job_launch_fits_the_kubernetes_api_models() -> None:
    manifests = render_launch(
        _plan(), _launch(), name="tuneline-0b5e-job-1-a1b2c3", relay="10.0.0.7:4100", authkey=b"k"
    )
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Secret", "Service", "Job"]
    models = [_core_model(manifest) for manifest in manifests]
    config_map, secret, service, job = models
    name = "tuneline-0b5e-job-1-a1b2c3"

    assert service.spec.cluster_ip == "None"  # headless: per-pod DNS names for the rendezvous
    assert service.spec.selector == {LAUNCH_LABEL: name}
    assert job.metadata.labels[QUEUE_LABEL] == "gpu-queue"
    assert job.spec.suspend  # Kueue admits the whole gang
    assert job.spec.completion_mode == "Indexed"
    assert job.spec.completions == job.spec.parallelism == 2
    assert job.spec.backoff_limit == 0
    pod = job.spec.template.spec
    assert pod.subdomain == name
    assert job.spec.template.metadata.labels[LAUNCH_LABEL] == name
    (container,) = pod.containers
    assert container.command[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--nnodes=2" in container.command
    assert "--nproc-per-node=2" in container.command
    assert "--node-rank=$(NODE_RANK)" in container.command
    assert f"--master-addr={name}-0.{name}" in container.command
    assert container.command[-2:] == ["/etc/tuneline/launch/plan.json", "10.0.0.7:4100"]
    env = {variable.name: variable.value_from for variable in container.env}
    assert env["NODE_RANK"].field_ref.field_path == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert env[AUTHKEY_ENV].secret_key_ref.name == name
    assert container.resources.limits == {"nvidia.com/gpu": "2"}
    assert {v.name: v.persistent_volume_claim for v in pod.volumes}["data"].claim_name == (
        "tuneline-data"
    )
    assert pod.service_account_name == "trainer-ranks"

    assert secret.string_data == {AUTHKEY_KEY: b"k".hex()}
    pod_plan = WorkerPlan.from_json(json.loads(config_map.data[PLAN_KEY]))
    # each pod: its own two devices, four ranks in all, still sharded; no launcher inside
    assert pod_plan.device == "cuda:0,cuda:1"
    assert pod_plan.world_size == 4
    assert pod_plan.sharding is Sharding.FULLY_SHARDED
    assert pod_plan.kubernetes is None


def test_a_train_job_launch_fits_kubeflow_trainer_s_published_model() -> None:
    manifests = render_launch(
        _plan(),
        _launch(workload=KubernetesWorkload.TRAIN_JOB),
        name="tuneline-j-1",
        relay="10.0.0.7:4100",
        authkey=b"k",
    )
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Secret", "TrainJob"]
    for manifest in manifests[:2]:
        _core_model(manifest)
    train_job = copy.deepcopy(manifests[2])
    # the published model types a resource quantity as an object, where the API (and the
    # CRD) take a string like "2": checked with the core client's model instead
    resources = train_job["spec"]["trainer"].pop("resourcesPerNode")
    assert k8s.V1ResourceRequirements.model_validate(resources).limits == {"nvidia.com/gpu": "2"}
    model = TrainerV1alpha1TrainJob.model_validate(train_job)
    # the model keeps every field the manifest has (so none is unknown to it)
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == train_job
    assert model.metadata is not None
    assert model.metadata.labels == {**model.metadata.labels, QUEUE_LABEL: "gpu-queue"}
    assert model.spec.runtime_ref.name == "torch-distributed"
    assert model.spec.trainer is not None
    assert model.spec.trainer.num_nodes == 2
    assert model.spec.trainer.command is not None
    assert model.spec.trainer.command[-2:] == ["/etc/tuneline/launch/plan.json", "10.0.0.7:4100"]


def test_without_a_queue_nothing_waits_for_kueue() -> None:
    manifests = render_launch(
        _plan(device="cpu", world_size=2, sharding=Sharding.DATA_PARALLEL),
        _launch(queue="", nodes=1, service_account="", data_claim=""),
        name="tuneline-j-2",
        relay="10.0.0.7:4100",
        authkey=b"k",
    )
    job = _core_model(_by_kind(manifests)["Job"])
    assert QUEUE_LABEL not in job.metadata.labels
    assert not job.spec.suspend
    (container,) = job.spec.template.spec.containers
    assert container.resources.limits is None  # CPU ranks: gloo
    assert (
        WorkerPlan.from_json(json.loads(_by_kind(manifests)["ConfigMap"]["data"][PLAN_KEY])).device
        == "cpu"
    )


def test_ranks_that_do_not_split_evenly_over_the_nodes_are_refused() -> None:
    with pytest.raises(ValueError, match="3 ranks cannot be split evenly over 2 nodes"):
        render_launch(_plan(world_size=3), _launch(), name="n", relay="h:1", authkey=b"k")


def _pod(phase: str, waiting: str | None = None) -> k8s.V1Pod:
    statuses = None
    if waiting is not None:
        statuses = [
            k8s.V1ContainerStatus(
                name="node",
                image="i",
                image_id="",
                ready=False,
                restart_count=0,
                state=k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason=waiting)),
            )
        ]
    return k8s.V1Pod(status=k8s.V1PodStatus(phase=phase, container_statuses=statuses))


def _job_status(condition: str | None = None) -> k8s.V1JobStatus:
    conditions = [k8s.V1JobCondition(type=condition, status="True")] if condition else None
    return k8s.V1JobStatus(conditions=conditions)


def test_the_launch_phase_follows_the_job_and_its_pods() -> None:
    running, pending = _pod("Running"), _pod("Pending")
    assert launch_phase(_job_status(), True, [], 2) is LaunchPhase.PENDING  # Kueue holds it
    assert launch_phase(_job_status(), False, [running, pending], 2) is LaunchPhase.PENDING
    assert launch_phase(_job_status(), False, [running, running], 2) is LaunchPhase.RUNNING
    assert launch_phase(_job_status("Complete"), False, [], 2) is LaunchPhase.SUCCEEDED
    assert launch_phase(_job_status("Failed"), False, [running], 2) is LaunchPhase.FAILED
    assert launch_phase(_job_status(), False, [running, _pod("Failed")], 2) is LaunchPhase.FAILED
    stuck = _pod("Pending", waiting="ImagePullBackOff")
    assert launch_phase(_job_status(), False, [running, stuck], 2) is LaunchPhase.FAILED
    starting = _pod("Pending", waiting="ContainerCreating")
    assert launch_phase(_job_status(), False, [running, starting], 2) is LaunchPhase.PENDING
    # a TrainJob's status, as the custom objects API returns it
    trainjob_done = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert launch_phase(trainjob_done, False, [], 2) is LaunchPhase.SUCCEEDED


class _FakeCluster:
    """The Kubernetes API as the launcher uses it; creating the Job starts what its pods do:
    rank 0 connects to the relay with the Secret's key, reports, exits; then the Job
    completes."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.secret: dict[str, Any] = {}
        self.job_status = _job_status()
        self.pod_phase = "Pending"

    def create(self, manifest: dict[str, Any]) -> None:
        _core_model(manifest)  # what the real API would refuse, this does too
        self.created.append(manifest["kind"])
        if manifest["kind"] == "Secret":
            self.secret = manifest
        if manifest["kind"] == "Job":
            threading.Thread(target=self._rank0, args=(manifest,), daemon=True).start()

    def _rank0(self, job: dict[str, Any]) -> None:
        host, port = job["spec"]["template"]["spec"]["containers"][0]["command"][-1].split(":")
        authkey = bytes.fromhex(self.secret["stringData"][AUTHKEY_KEY])
        self.pod_phase = "Running"
        with Client((host, int(port)), family="AF_INET", authkey=authkey) as rank0:
            rank0.send(self.report)
        self.pod_phase = "Succeeded"
        self.job_status = _job_status("Complete")

    def status(self, _manifest: dict[str, Any]) -> tuple[Any, bool]:
        return self.job_status, False

    def pods(self, namespace: str, selector: str) -> list[Any]:
        assert namespace == "tuneline"
        assert selector.startswith(f"{LAUNCH_LABEL}=tuneline-0b5e-job-1-")
        return [_pod(self.pod_phase)]

    def delete(self, manifest: dict[str, Any]) -> None:
        self.deleted.append(manifest["kind"])


def test_a_kubernetes_launch_relays_rank_0_follows_the_job_and_cleans_up() -> None:
    finished = WorkerFinished(
        step=4, epoch=1.0, final_train_loss=0.5, elapsed_seconds=3.0, tokens_seen=100
    )
    cluster = _FakeCluster(encode_message(finished))
    plan = _plan(kubernetes=_launch(relay_host="127.0.0.1", nodes=1))
    context = multiprocessing.get_context("spawn")
    messages_reader, messages_writer = context.Pipe(duplex=False)
    control_reader, control_writer = context.Pipe(duplex=False)
    phases: list[LaunchPhase] = []
    launcher = KubernetesLauncher(lambda: cluster, on_phase=phases.append, follow_seconds=0.01)
    launcher.run(plan, messages_writer, control_reader)  # returns: the launch has ended

    assert decode_message(messages_reader.recv()) == finished  # rank 0's report, relayed
    assert cluster.created == ["ConfigMap", "Secret", "Service", "Job"]
    assert phases[-1] is LaunchPhase.SUCCEEDED
    assert set(cluster.deleted) == {"ConfigMap", "Secret", "Service", "Job"}  # nothing left
    for connection in (messages_reader, messages_writer, control_reader, control_writer):
        connection.close()


def test_the_launcher_setting_picks_where_ranks_run() -> None:
    assert TrainerSettings().kubernetes_launch() is None
    chosen = TrainerSettings(
        launcher="kubernetes", kubernetes_nodes=2, ranks_per_job=4, kubernetes_queue="q"
    ).kubernetes_launch()
    assert chosen is not None
    assert (chosen.nodes, chosen.queue) == (2, "q")
    assert launcher_for(_plan(world_size=1)) is None  # the worker trains itself
    assert isinstance(launcher_for(_plan()), LocalTorchrun)
    assert isinstance(launcher_for(_plan(kubernetes=chosen)), KubernetesLauncher)
    # rank 0 reaches the relay over TCP from a pod, over a Unix socket on this node
    assert relay_address("10.0.0.7:4100") == ("AF_INET", ("10.0.0.7", 4100))
    assert relay_address("/tmp/tuneline-ranks-x/rank0.sock") == (
        "AF_UNIX",
        "/tmp/tuneline-ranks-x/rank0.sock",
    )
    with pytest.raises(ValueError, match="multiple of kubernetes_nodes"):
        TrainerSettings(launcher="kubernetes", kubernetes_nodes=2, ranks_per_job=3)
