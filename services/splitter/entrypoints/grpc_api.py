"""The gRPC face of the splitter service: converts proto to domain, calls a handler in a
transaction of its own.

No logic lives here; domain errors raised by handlers become gRPC statuses in the shared
error-mapping interceptor.
"""

from __future__ import annotations

import grpc
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.splitter.adapters.protos import policy_to_proto, spec_from_proto, split_to_proto
from services.splitter.domain import DatasetVersionName, Split, SplitPolicy
from services.splitter.handlers import (
    SplitterDeps,
    create_split,
    get_split,
    get_split_policy,
    list_splits,
    set_split_policy,
)
from shared import names
from shared.db import read_snapshot, run_in_transaction
from tuneline.splitter.v1 import service_pb2, service_pb2_grpc


class SplitterServicer(service_pb2_grpc.SplitterServiceServicer):
    """``tuneline.splitter.v1.SplitterService``."""

    def __init__(self, deps: SplitterDeps) -> None:
        self._deps = deps

    def CreateSplit(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.CreateSplitRequest, context: grpc.ServicerContext
    ) -> service_pb2.CreateSplitResponse:
        version = DatasetVersionName.parse(request.parent, field="parent")
        spec = (
            spec_from_proto(request.spec, present=True, field_prefix="spec.")
            if request.HasField("spec")
            else None
        )

        def split_version(session: Session) -> tuple[Split, bool]:
            return create_split(session, self._deps, version, spec)

        try:
            split, created = run_in_transaction(self._deps.sessions, split_version)
        except IntegrityError:
            # a concurrent call (or the consumer) stored the same split first: run again, the
            # handler now finds that one and returns it
            split, created = run_in_transaction(self._deps.sessions, split_version)
        return service_pb2.CreateSplitResponse(split=split_to_proto(split), created=created)

    def GetSplit(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetSplitRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetSplitResponse:
        names.SPLIT.check(request.name, field="name")
        with read_snapshot(self._deps.sessions) as session:
            split = get_split(session, request.name)
        return service_pb2.GetSplitResponse(split=split_to_proto(split))

    def ListSplits(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListSplitsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListSplitsResponse:
        dataset_id, version_id = names.SPLIT_LIST_PARENT.ids(request.parent, field="parent")
        with read_snapshot(self._deps.sessions) as session:
            splits, next_page_token = list_splits(
                session,
                dataset_id=dataset_id,
                version_id=version_id,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return service_pb2.ListSplitsResponse(
            splits=[split_to_proto(s) for s in splits], next_page_token=next_page_token
        )

    def SetSplitPolicy(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.SetSplitPolicyRequest, context: grpc.ServicerContext
    ) -> service_pb2.SetSplitPolicyResponse:
        message = request.split_policy
        dataset_id = names.SPLIT_POLICY.parse(message.name, field="split_policy.name")["dataset"]
        spec = spec_from_proto(
            message.spec, present=message.HasField("spec"), field_prefix="split_policy.spec."
        )
        policy = SplitPolicy(
            dataset_id=dataset_id, spec=spec, auto_split_disabled=message.auto_split_disabled
        )
        stored = run_in_transaction(
            self._deps.sessions,
            lambda s: set_split_policy(s, policy, request_id=request.request_id),
        )
        return service_pb2.SetSplitPolicyResponse(split_policy=policy_to_proto(stored))

    def GetSplitPolicy(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetSplitPolicyRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetSplitPolicyResponse:
        dataset_id = names.SPLIT_POLICY.parse(request.name, field="name")["dataset"]
        with read_snapshot(self._deps.sessions) as session:
            policy = get_split_policy(session, dataset_id)
        return service_pb2.GetSplitPolicyResponse(split_policy=policy_to_proto(policy))
