"""The Kubernetes launcher: a job's ranks as pods, on ``torchrun``, submitted through the API.

The trainer renders one launch per attempt and submits it with the ``kubernetes`` client:

* :attr:`~services.trainer.domain.launch.KubernetesWorkload.INDEXED_JOB` (plain Kubernetes): a
  ``batch/v1`` Job in ``Indexed`` completion mode, one pod per node, each running ``torchrun``
  with ``--nnodes`` and its ``--node-rank`` from the pod's completion index, rendezvous at pod 0
  through a headless Service (the pods' ``subdomain``);
* :attr:`~services.trainer.domain.launch.KubernetesWorkload.TRAIN_JOB`: a Kubeflow Trainer
  ``TrainJob`` on its torch-distributed runtime, which sets ``torchrun``'s ``PET_*`` variables
  itself.

Beside it go a ConfigMap with the worker plan and a Secret with the relay's key. With a Kueue
queue the launch is labelled ``kueue.x-k8s.io/queue-name`` and submitted suspended: Kueue
admits it whole or not at all (gang scheduling). Rank 0 connects back to the worker over TCP
(the relay of :mod:`.torchrun`, authenticated by the key), so progress, checkpoints and
control commands travel exactly as for a local launch; the worker follows the job and its pods
(:func:`launch_phase`) and ends the attempt when they fail. A halt deletes the launch.

The plan's paths must mean the same in the pods (the trainer's data volume mounted at the same
place, ``data_claim``/``data_mount``; or an ``s3://`` artifact root).
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection, Listener
from typing import Any, Protocol

from services.trainer.adapters.torchrun import AUTHKEY_ENV, relay_rank0
from services.trainer.domain.launch import KubernetesLaunch, KubernetesWorkload, LaunchPhase
from services.trainer.domain.worker_messages import WorkerPlan

log = logging.getLogger(__name__)

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Label every object of one launch carries (its name); the pods' selector.
LAUNCH_LABEL = "tuneline.dev/launch"
TRAINING_JOB_LABEL = "tuneline.dev/training-job"
RENDEZVOUS_PORT = 29500
PLAN_MOUNT = "/etc/tuneline/launch"
PLAN_KEY = "plan.json"
AUTHKEY_KEY = "authkey"
CONTAINER = "node"  # the torch-distributed runtime's container name; used for both workloads
TRAIN_JOB_GROUP = "trainer.kubeflow.org"
TRAIN_JOB_VERSION = "v1alpha1"
TRAIN_JOB_PLURAL = "trainjobs"
#: How often the worker looks at the launch's job and pods.
FOLLOW_SECONDS = 5.0
#: Container waiting reasons that never resolve by themselves: the launch has failed.
_STUCK_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"}
)


def launch_name(plan: WorkerPlan, attempt: str) -> str:
    """A DNS-1123 name for one attempt of the plan's job (at most 52 characters, so the
    Job's pod names, which add an index and a suffix, stay within 63)."""
    job_id = plan.artifact_prefix.rsplit("/", 1)[-1].lower()
    stem = "".join(c if c.isalnum() else "-" for c in job_id).strip("-")[:36] or "job"
    return f"tuneline-{stem}-{attempt}"


def _procs_per_node(plan: WorkerPlan, launch: KubernetesLaunch) -> int:
    if plan.world_size % launch.nodes:
        raise ValueError(
            f"{plan.world_size} ranks cannot be split evenly over {launch.nodes} nodes"
        )
    return plan.world_size // launch.nodes


def pod_plan(plan: WorkerPlan, launch: KubernetesLaunch) -> WorkerPlan:
    """The plan as each pod runs it: the pod's own devices (one CUDA device per local rank,
    or the CPU)."""
    procs = _procs_per_node(plan, launch)
    on_cuda = plan.device.startswith("cuda")
    device = ",".join(f"cuda:{i}" for i in range(procs)) if on_cuda else "cpu"
    return replace(plan, device=device, kubernetes=None)


def _labels(plan: WorkerPlan, name: str) -> dict[str, str]:
    job_id = plan.artifact_prefix.rsplit("/", 1)[-1]
    return {
        "app.kubernetes.io/part-of": "tuneline",
        "app.kubernetes.io/component": "trainer-ranks",
        LAUNCH_LABEL: name,
        TRAINING_JOB_LABEL: job_id[:63],
    }


def _metadata(
    name: str, launch: KubernetesLaunch, labels: dict[str, str], *, queued: bool = False
) -> dict[str, Any]:
    if queued and launch.queue:
        labels = {**labels, QUEUE_LABEL: launch.queue}
    return {"name": name, "namespace": launch.namespace, "labels": labels}


def _resources(plan: WorkerPlan, procs: int) -> dict[str, Any]:
    if plan.device.startswith("cuda"):
        return {"limits": {"nvidia.com/gpu": str(procs)}}
    return {}


def _volumes(name: str, launch: KubernetesLaunch) -> tuple[list[dict[str, Any]], list[Any]]:
    volumes: list[dict[str, Any]] = [{"name": "launch", "configMap": {"name": name}}]
    mounts: list[dict[str, Any]] = [{"name": "launch", "mountPath": PLAN_MOUNT, "readOnly": True}]
    if launch.data_claim:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": launch.data_claim}})
        mounts.append({"name": "data", "mountPath": launch.data_mount})
    volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})  # NCCL, dataloaders
    mounts.append({"name": "shm", "mountPath": "/dev/shm"})  # noqa: S108 - a pod's own
    return volumes, mounts


def _rank_arguments(relay: str) -> list[str]:
    """What ``torchrun`` runs on every node: the rank module with the mounted plan."""
    return ["-m", "services.trainer.adapters.torchrun", f"{PLAN_MOUNT}/{PLAN_KEY}", relay]


def _authkey_env(name: str) -> dict[str, Any]:
    return {
        "name": AUTHKEY_ENV,
        "valueFrom": {"secretKeyRef": {"name": name, "key": AUTHKEY_KEY}},
    }


def render_launch(
    plan: WorkerPlan, launch: KubernetesLaunch, *, name: str, relay: str, authkey: bytes
) -> list[dict[str, Any]]:
    """The manifests of one launch, in the order they are created: the plan's ConfigMap, the
    relay key's Secret, then the workload (a headless Service and an Indexed Job, or a
    TrainJob)."""
    labels = _labels(plan, name)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(name, launch, labels),
        "data": {PLAN_KEY: json.dumps(pod_plan(plan, launch).to_json())},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, launch, labels),
        "type": "Opaque",
        "stringData": {AUTHKEY_KEY: authkey.hex()},
    }
    if launch.workload is KubernetesWorkload.TRAIN_JOB:
        return [config_map, secret, render_train_job(plan, launch, name=name, relay=relay)]
    service, job = render_indexed_job(plan, launch, name=name, relay=relay)
    return [config_map, secret, service, job]


def render_indexed_job(
    plan: WorkerPlan, launch: KubernetesLaunch, *, name: str, relay: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A headless Service and an Indexed Job of ``launch.nodes`` pods running ``torchrun``."""
    labels = _labels(plan, name)
    procs = _procs_per_node(plan, launch)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, launch, labels),
        "spec": {
            "clusterIP": "None",  # headless: each pod gets <name>-<index>.<service> in DNS
            "selector": {LAUNCH_LABEL: name},
            "publishNotReadyAddresses": True,  # rendezvous happens before any pod is ready
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
        },
    }
    volumes, mounts = _volumes(name, launch)
    command = [
        "python",
        "-m",
        "torch.distributed.run",
        f"--nnodes={launch.nodes}",
        f"--nproc-per-node={procs}",
        "--node-rank=$(NODE_RANK)",
        f"--master-addr={name}-0.{name}",  # pod 0 of the Indexed Job, through the Service
        f"--master-port={RENDEZVOUS_PORT}",
        *_rank_arguments(relay),
    ]
    pod_spec: dict[str, Any] = {
        "subdomain": name,
        "restartPolicy": "Never",
        "containers": [
            {
                "name": CONTAINER,
                "image": launch.image,
                "command": command,
                "env": [
                    {
                        "name": "NODE_RANK",
                        "valueFrom": {
                            "fieldRef": {
                                "fieldPath": (
                                    "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                                )
                            }
                        },
                    },
                    _authkey_env(name),
                ],
                "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}],
                "resources": _resources(plan, procs),
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if launch.service_account:
        pod_spec["serviceAccountName"] = launch.service_account
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(name, launch, labels, queued=True),
        "spec": {
            "completionMode": "Indexed",
            "completions": launch.nodes,
            "parallelism": launch.nodes,
            # a rank that fails ends the attempt: the trainer resumes it from its checkpoint
            "backoffLimit": 0,
            # Kueue unsuspends the Job when the whole gang fits
            "suspend": bool(launch.queue),
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    return service, job


def render_train_job(
    plan: WorkerPlan, launch: KubernetesLaunch, *, name: str, relay: str
) -> dict[str, Any]:
    """A Kubeflow Trainer ``TrainJob``: the runtime runs ``torchrun`` on ``numNodes`` nodes
    (its ``PET_*`` variables give the rendezvous); volumes come as a runtime patch."""
    labels = _labels(plan, name)
    procs = _procs_per_node(plan, launch)
    volumes, mounts = _volumes(name, launch)
    pod_patch: dict[str, Any] = {
        "volumes": volumes,
        "containers": [{"name": CONTAINER, "volumeMounts": mounts}],
    }
    if launch.service_account:
        pod_patch["serviceAccountName"] = launch.service_account
    trainer: dict[str, Any] = {
        "image": launch.image,
        "command": ["python", "-m", "torch.distributed.run", *_rank_arguments(relay)],
        "numNodes": launch.nodes,
        "numProcPerNode": procs,
        "env": [_authkey_env(name)],
    }
    resources = _resources(plan, procs)
    if resources:
        trainer["resourcesPerNode"] = resources
    return {
        "apiVersion": f"{TRAIN_JOB_GROUP}/{TRAIN_JOB_VERSION}",
        "kind": "TrainJob",
        "metadata": _metadata(name, launch, labels, queued=True),
        "spec": {
            "runtimeRef": {
                "name": launch.runtime,
                "kind": "ClusterTrainingRuntime",
                "apiGroup": TRAIN_JOB_GROUP,
            },
            "suspend": bool(launch.queue),
            "trainer": trainer,
            "runtimePatches": [
                {
                    "manager": "tuneline.dev/trainer",
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {
                                        "name": CONTAINER,
                                        "template": {"spec": {"template": {"spec": pod_patch}}},
                                    }
                                ]
                            }
                        }
                    },
                }
            ],
        },
    }


# -- following a launch ------------------------------------------------------------------------


def _condition(conditions: Sequence[Any] | None, kind: str) -> bool:
    for condition in conditions or ():
        found = condition.get("type") if isinstance(condition, dict) else condition.type
        status = condition.get("status") if isinstance(condition, dict) else condition.status
        if found == kind and status == "True":
            return True
    return False


def launch_phase(status: Any, suspended: bool, pods: Sequence[Any], nodes: int) -> LaunchPhase:
    """The launch's phase from its workload's status (a ``V1JobStatus``, or a TrainJob's
    status dict), whether it is suspended, and its pods (``V1Pod``):

    * succeeded / failed: the workload's ``Complete`` / ``Failed`` condition; also failed when
      a pod failed or is stuck where it cannot recover (an image that cannot be pulled);
    * running: every node's pod running;
    * pending otherwise (suspended waiting for Kueue, pods scheduling or starting)."""
    if isinstance(status, dict):
        conditions = status.get("conditions")
    else:
        conditions = getattr(status, "conditions", None)
    if _condition(conditions, "Complete"):
        return LaunchPhase.SUCCEEDED
    if _condition(conditions, "Failed"):
        return LaunchPhase.FAILED
    if suspended:
        return LaunchPhase.PENDING
    running = 0
    for pod in pods:
        phase = pod.status.phase if pod.status else None
        if phase == "Failed":
            return LaunchPhase.FAILED
        waiting = [
            s.state.waiting.reason
            for s in (pod.status.container_statuses or [] if pod.status else [])
            if s.state is not None and s.state.waiting is not None
        ]
        if any(reason in _STUCK_REASONS for reason in waiting):
            return LaunchPhase.FAILED
        running += phase in {"Running", "Succeeded"}
    return LaunchPhase.RUNNING if running >= nodes else LaunchPhase.PENDING


class KubernetesApi(Protocol):
    """What the launcher asks of the cluster (:class:`ClusterApi` on the real client)."""

    def create(self, manifest: dict[str, Any]) -> None: ...

    def status(self, manifest: dict[str, Any]) -> tuple[Any, bool]:
        """(the workload's status, whether it is suspended)."""
        ...

    def pods(self, namespace: str, selector: str) -> list[Any]: ...

    def delete(self, manifest: dict[str, Any]) -> None: ...


class ClusterApi:
    """:class:`KubernetesApi` on the ``kubernetes`` client: in-cluster credentials (the
    trainer's service account, see ``deploy/k8s/base/trainer-launcher-rbac.yaml``), else the
    local kubeconfig."""

    def __init__(self) -> None:
        from kubernetes import client, config  # noqa: PLC0415 - only the Kubernetes launcher

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self._models = client
        self._core = client.CoreV1Api()
        self._batch = client.BatchV1Api()
        self._custom = client.CustomObjectsApi()

    def create(self, manifest: dict[str, Any]) -> None:
        namespace, kind = manifest["metadata"]["namespace"], manifest["kind"]
        if kind == "TrainJob":
            self._custom.create_namespaced_custom_object(
                TRAIN_JOB_GROUP, TRAIN_JOB_VERSION, namespace, TRAIN_JOB_PLURAL, manifest
            )
            return
        # the client's models forbid unknown fields: a manifest that does not fit the API's
        # schema fails here, before anything is created
        body = getattr(self._models, f"V1{kind}").model_validate(manifest)
        if kind == "Job":
            self._batch.create_namespaced_job(namespace, body)
        else:
            getattr(self._core, f"create_namespaced_{_snake(kind)}")(namespace, body)

    def status(self, manifest: dict[str, Any]) -> tuple[Any, bool]:
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        if manifest["kind"] == "TrainJob":
            found: dict[str, Any] = self._custom.get_namespaced_custom_object(  # type: ignore[assignment]
                TRAIN_JOB_GROUP, TRAIN_JOB_VERSION, namespace, TRAIN_JOB_PLURAL, name
            )
            return found.get("status") or {}, bool(found.get("spec", {}).get("suspend"))
        job = self._batch.read_namespaced_job(name, namespace)
        return job.status, bool(job.spec and job.spec.suspend)

    def pods(self, namespace: str, selector: str) -> list[Any]:
        return list(self._core.list_namespaced_pod(namespace, label_selector=selector).items)

    def delete(self, manifest: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        namespace, name, kind = (
            manifest["metadata"]["namespace"],
            manifest["metadata"]["name"],
            manifest["kind"],
        )
        try:
            if kind == "TrainJob":
                self._custom.delete_namespaced_custom_object(
                    TRAIN_JOB_GROUP, TRAIN_JOB_VERSION, namespace, TRAIN_JOB_PLURAL, name
                )
            elif kind == "Job":  # with its pods
                self._batch.delete_namespaced_job(name, namespace, propagation_policy="Foreground")
            else:
                getattr(self._core, f"delete_namespaced_{_snake(kind)}")(name, namespace)
        except ApiException as error:
            if error.status != 404:  # already gone is what deleting wants
                raise


def _snake(kind: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in kind).lstrip("_")


class KubernetesLaunchRun:
    """One submitted launch as the relay sees it (:class:`.torchrun.RunningLaunch`)."""

    def __init__(
        self,
        api: KubernetesApi,
        manifests: list[dict[str, Any]],
        nodes: int,
        *,
        on_phase: Callable[[LaunchPhase], None] = lambda _phase: None,
        follow_seconds: float = FOLLOW_SECONDS,
    ) -> None:
        self._api, self._manifests, self._nodes = api, manifests, nodes
        self._workload = manifests[-1]
        self._on_phase, self._follow_seconds = on_phase, follow_seconds
        self.phase = LaunchPhase.PENDING
        self._ended = threading.Event()

    def submit(self) -> None:
        for manifest in self._manifests:
            self._api.create(manifest)

    def follow(self) -> LaunchPhase:
        """Look at the workload and its pods once; the phase (announced when it changed)."""
        metadata = self._workload["metadata"]
        status, suspended = self._api.status(self._workload)
        pods = self._api.pods(metadata["namespace"], f"{LAUNCH_LABEL}={metadata['name']}")
        phase = launch_phase(status, suspended, pods, self._nodes)
        if phase is not self.phase:
            self.phase = phase
            self._on_phase(phase)
        if phase in {LaunchPhase.SUCCEEDED, LaunchPhase.FAILED}:
            self._ended.set()
        return phase

    def follow_until_ended(self) -> None:
        while not self._ended.is_set():
            try:
                self.follow()
            except Exception:  # the API is briefly unreachable: look again
                log.warning("cannot read the launch's state", exc_info=True)
            self._ended.wait(self._follow_seconds)

    def ended(self) -> bool:
        return self._ended.is_set()

    def wait(self, timeout: float | None = None) -> None:
        self._ended.wait(timeout)

    def kill(self) -> None:
        """Delete the workload (its pods with it): what ends the ranks in the cluster."""
        self._api.delete(self._workload)
        self._ended.set()

    def clean_up(self) -> None:
        for manifest in reversed(self._manifests):
            try:
                self._api.delete(manifest)
            except Exception:
                log.warning("cannot delete %s", manifest["metadata"]["name"], exc_info=True)


class KubernetesLauncher:
    """The Kubernetes launcher (see the module docstring)."""

    def __init__(
        self,
        api_factory: Callable[[], KubernetesApi] = ClusterApi,
        *,
        on_phase: Callable[[LaunchPhase], None] = lambda _phase: None,
        follow_seconds: float = FOLLOW_SECONDS,
    ) -> None:
        self._api_factory = api_factory
        self._on_phase, self._follow_seconds = on_phase, follow_seconds

    def run(self, plan: WorkerPlan, messages: Connection, control: Connection) -> None:
        launch = plan.kubernetes
        assert launch is not None
        name = launch_name(plan, secrets.token_hex(3))
        authkey = secrets.token_bytes(32)
        everywhere = "0.0.0.0"  # noqa: S104 - the pods connect from other nodes
        with Listener(
            (everywhere, launch.relay_port), family="AF_INET", authkey=authkey
        ) as listener:
            port = listener.address[1]
            # the pods reach this process at its pod's address unless told otherwise
            host = launch.relay_host or socket.gethostbyname(socket.gethostname())
            relay = f"{host}:{port}"
            manifests = render_launch(plan, launch, name=name, relay=relay, authkey=authkey)

            def announce(phase: LaunchPhase) -> None:
                log.info("launch %s", phase.value, extra={"job": plan.job, "launch": name})
                self._on_phase(phase)

            running = KubernetesLaunchRun(
                self._api_factory(),
                manifests,
                launch.nodes,
                on_phase=announce,
                follow_seconds=self._follow_seconds,
            )
            running.submit()
            follower = threading.Thread(
                target=running.follow_until_ended, name="launch-follow", daemon=True
            )
            follower.start()
            started = time.monotonic()
            try:
                relay_rank0(listener, messages, control, running)
                running.wait()
            finally:
                running.kill()
                running.clean_up()
            log.info(
                "launch ended",
                extra={
                    "job": plan.job,
                    "launch": name,
                    "phase": running.phase.value,
                    "seconds": time.monotonic() - started,
                },
            )
