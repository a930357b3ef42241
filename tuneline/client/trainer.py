"""Typed client of the trainer service (``tuneline.trainer.v1.TrainerService``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tuneline.client.base import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_POLL_SECONDS,
    DEFAULT_WAIT_TIMEOUT,
    ServiceClient,
)
from tuneline.trainer.v1 import resources_pb2, service_pb2, service_pb2_grpc

_TERMINAL = (
    resources_pb2.TRAINING_JOB_STATE_SUCCEEDED,
    resources_pb2.TRAINING_JOB_STATE_FAILED,
    resources_pb2.TRAINING_JOB_STATE_CANCELLED,
)


class TrainerClient(ServiceClient):
    """Training jobs, their checkpoints and the policies that start them.

    >>> with TrainerClient("127.0.0.1:50053") as trainer:
    ...     job = trainer.create_training_job(job)  # QUEUED, every default resolved
    ...     for update in trainer.watch_training_job(job.name):
    ...         print(update.progress.step, update.progress.train_loss)
    """

    service = service_pb2.DESCRIPTOR.services_by_name["TrainerService"]

    def __init__(self, target: str | None = None, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = service_pb2_grpc.TrainerServiceStub(self.channel)

    # -- jobs ---------------------------------------------------------------------------------

    def create_training_job(
        self, job: resources_pb2.TrainingJob, *, job_id: str = "", request_id: str = ""
    ) -> resources_pb2.TrainingJob:
        """Queue ``job`` (``target_model``, ``base_model`` and ``split`` required); returns it
        with every default resolved. ``job_id`` names it (else the server does);
        ``request_id`` makes a retried call return the job the first one created."""
        request = service_pb2.CreateTrainingJobRequest(
            training_job=job, training_job_id=job_id, request_id=request_id
        )
        return self._call(self._stub.CreateTrainingJob, request).training_job

    def estimate_training_job(
        self, job: resources_pb2.TrainingJob, *, job_id: str = ""
    ) -> tuple[resources_pb2.TrainingJob, resources_pb2.TrainingEstimate]:
        """What ``job`` would be (defaults resolved, no name) and what it is expected to
        process and cost, creating nothing (``validate_only``); errors as for a real create."""
        request = service_pb2.CreateTrainingJobRequest(
            training_job=job, training_job_id=job_id, validate_only=True
        )
        response = self._call(self._stub.CreateTrainingJob, request)
        return response.training_job, response.estimate

    def get_training_job(self, name: str) -> resources_pb2.TrainingJob:
        """The job ``trainingJobs/{job}``, with its progress, loss curve and cost."""
        request = service_pb2.GetTrainingJobRequest(name=name)
        return self._call(self._stub.GetTrainingJob, request).training_job

    def list_training_jobs(
        self,
        *,
        target_model: str = "",
        state: resources_pb2.TrainingJobState.ValueType = (
            resources_pb2.TRAINING_JOB_STATE_UNSPECIFIED
        ),
        split: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[resources_pb2.TrainingJob]:
        """Every job matching the filters, newest first, fetched page by page."""
        request = service_pb2.ListTrainingJobsRequest(
            target_model=target_model, state=state, split=split
        )
        return self._paginate(
            self._stub.ListTrainingJobs, request, "training_jobs", page_size=page_size
        )

    def cancel_training_job(self, name: str, *, reason: str = "") -> resources_pb2.TrainingJob:
        """Cancel a queued or running job; a running one stops within seconds and keeps its
        checkpoints (it may still show RUNNING in the returned snapshot)."""
        request = service_pb2.CancelTrainingJobRequest(name=name, reason=reason)
        return self._call(self._stub.CancelTrainingJob, request).training_job

    def watch_training_job(
        self, name: str, *, timeout: float | None = None
    ) -> Iterator[service_pb2.WatchTrainingJobResponse]:
        """Progress snapshots of a job: the current one first, then one per logging interval,
        validation, checkpoint and state change, until the job is terminal. ``timeout=None``
        watches without a deadline."""
        request = service_pb2.WatchTrainingJobRequest(name=name)
        stream = self._stub.WatchTrainingJob
        return self._stream(stream, request, timeout=timeout)  # type: ignore[arg-type]

    def wait(
        self,
        name: str,
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> resources_pb2.TrainingJob:
        """Poll the job ``name`` until it is SUCCEEDED, FAILED or CANCELLED; ``TimeoutError``
        after ``timeout`` seconds."""
        return self._wait_until_terminal(
            self.get_training_job, name, _TERMINAL, timeout=timeout, poll_seconds=poll_seconds
        )

    # -- checkpoints --------------------------------------------------------------------------

    def get_checkpoint(self, name: str) -> resources_pb2.Checkpoint:
        """The checkpoint ``trainingJobs/{job}/checkpoints/{checkpoint}``."""
        request = service_pb2.GetCheckpointRequest(name=name)
        return self._call(self._stub.GetCheckpoint, request).checkpoint

    def list_checkpoints(
        self, job: str = "trainingJobs/-", *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[resources_pb2.Checkpoint]:
        """The kept checkpoints of ``job`` ascending by step (default: every job's)."""
        request = service_pb2.ListCheckpointsRequest(parent=job)
        return self._paginate(
            self._stub.ListCheckpoints, request, "checkpoints", page_size=page_size
        )

    # -- policies -----------------------------------------------------------------------------

    def set_training_policy(
        self, policy: resources_pb2.TrainingPolicy, *, request_id: str = ""
    ) -> resources_pb2.TrainingPolicy:
        """Create or replace a policy: every SplitCreated of ``policy.dataset`` makes one job
        for ``policy.target_model`` from ``policy.job_template``. A retry with the same
        ``request_id`` (one is generated when empty) changes nothing twice."""
        request = service_pb2.SetTrainingPolicyRequest(
            training_policy=policy, request_id=request_id
        )
        return self._call(self._stub.SetTrainingPolicy, request).training_policy

    def get_training_policy(self, name: str) -> resources_pb2.TrainingPolicy:
        """The policy ``trainingPolicies/{policy}``."""
        request = service_pb2.GetTrainingPolicyRequest(name=name)
        return self._call(self._stub.GetTrainingPolicy, request).training_policy

    def list_training_policies(
        self, *, dataset: str = "", page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[resources_pb2.TrainingPolicy]:
        """Every policy (of ``dataset``, when given), ordered by name."""
        request = service_pb2.ListTrainingPoliciesRequest(dataset=dataset)
        return self._paginate(
            self._stub.ListTrainingPolicies, request, "training_policies", page_size=page_size
        )
