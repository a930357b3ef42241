"""The gRPC face of the splitter service: converts proto to domain, calls a handler.

No logic lives here; domain errors raised by handlers become gRPC statuses in the shared
error-mapping interceptor.
"""

from __future__ import annotations

import grpc

from services.splitter import handlers
from services.splitter.adapters.protos import policy_to_proto, spec_from_proto, split_to_proto
from services.splitter.domain import DatasetVersionName, SplitPolicy
from services.splitter.handlers import SplitterDeps
from shared import names
from tuneline.splitter.v1 import service_pb2, service_pb2_grpc


class SplitterServicer(service_pb2_grpc.SplitterServiceServicer):
    """``tuneline.splitter.v1.SplitterService``."""

    def __init__(self, deps: SplitterDeps) -> None:
        self._deps = deps
        self._sessions = deps.sessions

    def CreateSplit(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.CreateSplitRequest, context: grpc.ServicerContext
    ) -> service_pb2.CreateSplitResponse:
        version = DatasetVersionName.parse(request.parent, field="parent")
        spec = (
            spec_from_proto(request.spec, present=True, field_prefix="spec.")
            if request.HasField("spec")
            else None
        )
        split, created = handlers.create_split(
            self._sessions,
            version,
            spec,
            artifacts=self._deps.artifacts,
            metrics=self._deps.metrics,
            source=self._deps.source,
            versions=self._deps.versions,
        )
        return service_pb2.CreateSplitResponse(split=split_to_proto(split), created=created)

    def GetSplit(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetSplitRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetSplitResponse:
        names.SPLIT.check(request.name, field="name")
        split = handlers.get_split(self._sessions, request.name)
        return service_pb2.GetSplitResponse(split=split_to_proto(split))

    def ListSplits(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListSplitsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListSplitsResponse:
        dataset_id, version_id = names.SPLIT_LIST_PARENT.ids(request.parent, field="parent")
        splits, next_page_token = handlers.list_splits(
            self._sessions,
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
        policy = handlers.set_split_policy(
            self._sessions,
            SplitPolicy(
                dataset_id=dataset_id, spec=spec, auto_split_disabled=message.auto_split_disabled
            ),
            request_id=request.request_id,
        )
        return service_pb2.SetSplitPolicyResponse(split_policy=policy_to_proto(policy))

    def GetSplitPolicy(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetSplitPolicyRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetSplitPolicyResponse:
        dataset_id = names.SPLIT_POLICY.parse(request.name, field="name")["dataset"]
        policy = handlers.get_split_policy(self._sessions, dataset_id)
        return service_pb2.GetSplitPolicyResponse(split_policy=policy_to_proto(policy))
