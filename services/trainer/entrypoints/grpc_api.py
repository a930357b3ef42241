"""The gRPC face of the trainer service: converts proto to domain, calls a handler.

No logic lives here beyond conversion and transactions; domain errors raised by handlers are
mapped to statuses by the shared interceptor.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from services.trainer.adapters import protos
from services.trainer.adapters.notifications import JobChanges
from services.trainer.domain.jobs import TrainingJob
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.handlers.jobs import (
    CreateJobCommand,
    cancel_training_job,
    create_training_job,
    estimate_training_job,
)
from services.trainer.handlers.policies import SetPolicyCommand, set_training_policy
from services.trainer.handlers.queries import (
    get_checkpoint,
    get_training_job,
    get_training_policy,
    list_checkpoints,
    list_training_jobs,
    list_training_policies,
)
from shared import names
from shared.db import read_snapshot, run_in_transaction
from shared.errors import FieldViolation, InvalidArgument
from shared.protobuf import enum_field_from_proto
from shared.security import caller_name
from shared.task_types import TASK_TYPE_PREFIX, TaskType
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.trainer.v1 import resources_pb2, service_pb2, service_pb2_grpc

#: A watch re-reads its job at least this often, notification or not.
#: The longest an idle WatchTrainingJob stream waits without a wake-up before it checks
#: whether the server is stopping (a safety net: changes and stopping wake it at once).
_WATCH_SAFETY_SECONDS = 30.0


class TrainerServicer(service_pb2_grpc.TrainerServiceServicer):
    """``tuneline.trainer.v1.TrainerService``."""

    def __init__(
        self,
        deps: TrainerDeps,
        changes: JobChanges,
        *,
        stopping: threading.Event,
    ) -> None:
        self._deps = deps
        self._changes = changes
        self._stopping = stopping

    # -- jobs ---------------------------------------------------------------------------------

    def CreateTrainingJob(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.CreateTrainingJobRequest, context: grpc.ServicerContext
    ) -> service_pb2.CreateTrainingJobResponse:
        job = request.training_job
        violations: list[FieldViolation] = []
        config = protos.job_config_from_proto(
            display_name=job.display_name,
            base_model=job.base_model,
            adapter=job.adapter_spec,
            hyperparameters=job.hyperparameters,
            stopping=job.stopping_rules,
            checkpointing=job.checkpoint_policy,
            prefix="training_job",
            violations=violations,
        )
        task_type = enum_field_from_proto(
            common_pb2.TaskType,
            TASK_TYPE_PREFIX,
            job.task_type,
            TaskType,
            field="training_job.task_type",
            violations=violations,
        )
        command = CreateJobCommand(
            job_id=request.training_job_id,
            request_id=request.request_id,
            target_model=job.target_model,
            split=job.split,
            task_type=task_type,
            config=config,
            violations=tuple(violations),
            creator=caller_name(""),  # the verified caller; "" on a server without auth
        )
        if request.validate_only:
            with self._deps.sessions() as session, session.begin():
                planned, estimate = estimate_training_job(session, self._deps, command)
            return service_pb2.CreateTrainingJobResponse(
                training_job=protos.job_to_proto(planned),
                estimate=protos.estimate_to_proto(estimate),
            )
        with self._deps.sessions() as session, session.begin():
            created = create_training_job(session, self._deps, command)
        self._changes.notify()
        return service_pb2.CreateTrainingJobResponse(training_job=protos.job_to_proto(created))

    def _job(self, name: str) -> resources_pb2.TrainingJob:
        with read_snapshot(self._deps.sessions) as session:
            job, trend = get_training_job(session, self._deps, name)
        return protos.job_to_proto(job, trend)

    def GetTrainingJob(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetTrainingJobRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetTrainingJobResponse:
        names.TRAINING_JOB.check(request.name, field="name")
        return service_pb2.GetTrainingJobResponse(training_job=self._job(request.name))

    def ListTrainingJobs(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListTrainingJobsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListTrainingJobsResponse:
        state = None
        if request.state:
            state = protos.state_from_proto(request.state)
            if state is None:
                raise InvalidArgument(
                    "unknown state",
                    [
                        FieldViolation(
                            "state",
                            f"{request.state} is not a TrainingJobState",
                            "UNKNOWN_ENUM_VALUE",
                        )
                    ],
                )
        with read_snapshot(self._deps.sessions) as session:
            page = list_training_jobs(
                session,
                self._deps,
                target_model=request.target_model,
                state=state,
                split=request.split,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return service_pb2.ListTrainingJobsResponse(
            training_jobs=[protos.job_to_proto(job, trend) for job, trend in page.items],
            next_page_token=page.next_page_token,
        )

    def CancelTrainingJob(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.CancelTrainingJobRequest, context: grpc.ServicerContext
    ) -> service_pb2.CancelTrainingJobResponse:
        names.TRAINING_JOB.check(request.name, field="name")
        # compare-and-set: a cancel racing the start of an attempt is decided again, not lost
        run_in_transaction(
            self._deps.sessions,
            lambda s: cancel_training_job(s, self._deps, request.name, request.reason),
        )
        self._changes.notify()
        return service_pb2.CancelTrainingJobResponse(training_job=self._job(request.name))

    def WatchTrainingJob(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.WatchTrainingJobRequest, context: grpc.ServicerContext
    ) -> Iterator[service_pb2.WatchTrainingJobResponse]:
        names.TRAINING_JOB.check(request.name, field="name")
        changes = self._changes
        # read the generation before the first snapshot, so a change committed in between
        # still wakes the loop below instead of being missed
        seen = changes.generation
        job = self._read(request.name)
        yield service_pb2.WatchTrainingJobResponse(
            progress=protos.progress_to_proto(job), training_job=self._job(request.name)
        )
        last = (job.state, job.update_time)
        # an idle stream blocks on the notifier and reads the database only when woken; the
        # client going away wakes it too, so its thread and stream slot are freed at once
        ended = threading.Event()

        def on_rpc_end() -> None:
            ended.set()
            changes.interrupt()

        if not context.add_callback(on_rpc_end):
            return  # the RPC has already ended
        with changes.watching():
            while not job.state.terminal and not ended.is_set() and not self._stopping.is_set():
                before = seen
                seen = changes.wait(seen, ended, _WATCH_SAFETY_SECONDS)
                if changes.closed or self._stopping.is_set():
                    return  # the server is stopping: end the stream with OK
                if seen == before or ended.is_set():
                    continue  # nothing changed (a safety-net wake-up) or the client left
                job = self._read(request.name)
                if (job.state, job.update_time) == last:
                    continue  # another job changed
                response = service_pb2.WatchTrainingJobResponse(
                    progress=protos.progress_to_proto(job)
                )
                if job.state is not last[0]:
                    response.training_job.CopyFrom(self._job(request.name))
                last = (job.state, job.update_time)
                yield response

    def _read(self, name: str) -> TrainingJob:
        with read_snapshot(self._deps.sessions) as session:
            job, _trend = get_training_job(session, self._deps, name)
        return job

    # -- checkpoints --------------------------------------------------------------------------

    def GetCheckpoint(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetCheckpointResponse:
        names.TRAINER_CHECKPOINT.check(request.name, field="name")
        with read_snapshot(self._deps.sessions) as session:
            record, job = get_checkpoint(session, self._deps, request.name)
        return service_pb2.GetCheckpointResponse(
            checkpoint=protos.checkpoint_to_proto(record, job.lineage(record.name))
        )

    def ListCheckpoints(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListCheckpointsResponse:
        with read_snapshot(self._deps.sessions) as session:
            page = list_checkpoints(
                session,
                self._deps,
                parent=request.parent,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return service_pb2.ListCheckpointsResponse(
            checkpoints=[
                protos.checkpoint_to_proto(record, job.lineage(record.name))
                for record, job in page.items
            ],
            next_page_token=page.next_page_token,
        )

    # -- policies -----------------------------------------------------------------------------

    def SetTrainingPolicy(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.SetTrainingPolicyRequest, context: grpc.ServicerContext
    ) -> service_pb2.SetTrainingPolicyResponse:
        policy = request.training_policy
        violations: list[FieldViolation] = []
        template = protos.template_from_proto(
            policy.job_template, "training_policy.job_template", violations
        )
        owner = protos.owner_from_proto(policy.owner, "training_policy.owner", violations)
        budget = protos.budget_from_proto(policy.budget, "training_policy.budget", violations)
        command = SetPolicyCommand(
            name=policy.name,
            dataset=policy.dataset,
            target_model=policy.target_model,
            template=template,
            template_present=policy.HasField("job_template"),
            disabled=policy.disabled,
            violations=tuple(violations),
            owner=owner,
            budget=budget,
            request_id=request.request_id,
        )
        with self._deps.sessions() as session, session.begin():
            stored = set_training_policy(session, self._deps, command)
        return service_pb2.SetTrainingPolicyResponse(training_policy=protos.policy_to_proto(stored))

    def GetTrainingPolicy(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetTrainingPolicyRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetTrainingPolicyResponse:
        names.TRAINING_POLICY.check(request.name, field="name")
        with read_snapshot(self._deps.sessions) as session:
            policy = get_training_policy(session, request.name)
        return service_pb2.GetTrainingPolicyResponse(training_policy=protos.policy_to_proto(policy))

    def ListTrainingPolicies(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListTrainingPoliciesRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListTrainingPoliciesResponse:
        with read_snapshot(self._deps.sessions) as session:
            page = list_training_policies(
                session,
                dataset=request.dataset,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return service_pb2.ListTrainingPoliciesResponse(
            training_policies=[protos.policy_to_proto(p) for p in page.items],
            next_page_token=page.next_page_token,
        )
