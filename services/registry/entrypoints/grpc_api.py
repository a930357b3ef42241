"""The gRPC face of the registry service: converts proto to domain, calls a handler.

No logic lives here. Each call runs its handler in one transaction; the handlers' after-commit
effects (metrics, waking the outbox relay and WatchAlias streams) fire when it commits.
Whoever moves an alias or reviews a checkpoint is recorded as the caller the auth interceptor
verified; the request's ``actor``/``reviewer`` only counts on a server without auth.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from sqlalchemy.orm import Session, sessionmaker

from services.registry import handlers
from services.registry.handlers.deps import RegistryDeps
from shared.security import caller_name
from tuneline.registry.v1 import service_pb2, service_pb2_grpc

T = TypeVar("T")
M = TypeVar("M", bound=Message)


def _attributed(request: M, field: str) -> M:
    """``request`` with ``field`` (``actor``, ``reviewer``) naming the verified caller."""
    declared = getattr(request, field)
    name = caller_name(declared)
    if name == declared:
        return request
    attributed = type(request)()
    attributed.CopyFrom(request)
    setattr(attributed, field, name)
    return attributed


class RegistryServicer(service_pb2_grpc.RegistryServiceServicer):
    """``tuneline.registry.v1.RegistryService``."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        deps: RegistryDeps,
        *,
        stopping: threading.Event,
        watch_poll_seconds: float = 0.5,
    ) -> None:
        self._sessions = sessions
        self._deps = deps
        self._stopping = stopping
        self._watch_poll_seconds = watch_poll_seconds

    def _in_transaction(self, work: Callable[[Session], T]) -> T:
        with self._sessions() as session, session.begin():
            return work(session)

    # -- models and checkpoints -----------------------------------------------------------

    def CreateModel(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.CreateModelRequest, context: grpc.ServicerContext
    ) -> service_pb2.CreateModelResponse:
        model = request.model if request.HasField("model") else None
        creator = caller_name("")  # the verified caller; "" on a server without auth
        created = self._in_transaction(
            lambda s: handlers.create_model(
                s,
                self._deps,
                request.model_id,
                model,
                request_id=request.request_id,
                creator=creator,
            )
        )
        return service_pb2.CreateModelResponse(model=created)

    def GetModel(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetModelResponse:
        return service_pb2.GetModelResponse(
            model=self._in_transaction(lambda s: handlers.get_model(s, request.name))
        )

    def ListModels(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListModelsResponse:
        models, token = self._in_transaction(
            lambda s: handlers.list_models(s, request.page_size, request.page_token)
        )
        return service_pb2.ListModelsResponse(models=models, next_page_token=token)

    def GetCheckpoint(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetCheckpointResponse:
        return service_pb2.GetCheckpointResponse(
            checkpoint=self._in_transaction(lambda s: handlers.get_checkpoint(s, request.name))
        )

    def ListCheckpoints(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListCheckpointsResponse:
        checkpoints, token = self._in_transaction(lambda s: handlers.list_checkpoints(s, request))
        return service_pb2.ListCheckpointsResponse(checkpoints=checkpoints, next_page_token=token)

    # -- aliases --------------------------------------------------------------------------

    def GetAlias(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetAliasRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetAliasResponse:
        return service_pb2.GetAliasResponse(
            alias=self._in_transaction(lambda s: handlers.get_alias(s, request.name))
        )

    def ListAliasHistory(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListAliasHistoryRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListAliasHistoryResponse:
        moves, token = self._in_transaction(lambda s: handlers.list_alias_history(s, request))
        return service_pb2.ListAliasHistoryResponse(alias_moves=moves, next_page_token=token)

    def WatchAlias(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.WatchAliasRequest, context: grpc.ServicerContext
    ) -> Iterator[service_pb2.WatchAliasResponse]:
        notifier = self._deps.notifier
        # read the generation before the first state, so a move committed in between still
        # wakes the loop below instead of being missed
        generation = notifier.generation
        model, alias, first, last_revision = self._in_transaction(
            lambda s: handlers.watch_alias_start(s, request.name, request.after_revision)
        )
        yield from first
        # an idle stream blocks on the notifier and reads the database only when woken; the
        # client going away wakes it too, so its thread and stream slot are freed at once
        ended = threading.Event()

        def on_rpc_end() -> None:
            ended.set()
            notifier.interrupt()

        if not context.add_callback(on_rpc_end):
            return  # the RPC has already ended
        with notifier.watching():
            while not ended.is_set() and not self._stopping.is_set() and not notifier.closed:
                seen = generation
                generation = notifier.wait(generation, ended, self._watch_poll_seconds)
                if self._stopping.is_set() or notifier.closed:
                    return  # the server is stopping: end the stream with OK
                if generation == seen or ended.is_set():
                    continue  # nothing moved (a safety-net wake-up) or the client left
                after = last_revision
                moves = self._in_transaction(
                    lambda s: handlers.watch_alias_moves(s, model, alias, after)  # noqa: B023 - called at once
                )
                for message in moves:
                    yield message
                    last_revision = message.move.revision

    # -- moving production ----------------------------------------------------------------

    def PromoteCheckpoint(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.PromoteCheckpointRequest, context: grpc.ServicerContext
    ) -> service_pb2.PromoteCheckpointResponse:
        request = _attributed(request, "actor")
        alias, move = self._in_transaction(
            lambda s: handlers.promote_checkpoint(s, self._deps, request)
        )
        return service_pb2.PromoteCheckpointResponse(alias=alias, move=move)

    def ApproveCheckpoint(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ApproveCheckpointRequest, context: grpc.ServicerContext
    ) -> service_pb2.ApproveCheckpointResponse:
        request = _attributed(request, "reviewer")
        return self._in_transaction(lambda s: handlers.approve_checkpoint(s, self._deps, request))

    def RejectCheckpoint(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.RejectCheckpointRequest, context: grpc.ServicerContext
    ) -> service_pb2.RejectCheckpointResponse:
        request = _attributed(request, "reviewer")
        return service_pb2.RejectCheckpointResponse(
            checkpoint=self._in_transaction(
                lambda s: handlers.reject_checkpoint(s, self._deps, request)
            )
        )

    def RollbackModel(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.RollbackModelRequest, context: grpc.ServicerContext
    ) -> service_pb2.RollbackModelResponse:
        request = _attributed(request, "actor")
        alias, move = self._in_transaction(
            lambda s: handlers.rollback_model(s, self._deps, request)
        )
        return service_pb2.RollbackModelResponse(alias=alias, move=move)

    def SetServingProfile(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.SetServingProfileRequest, context: grpc.ServicerContext
    ) -> service_pb2.SetServingProfileResponse:
        return service_pb2.SetServingProfileResponse(
            model=self._in_transaction(
                lambda s: handlers.set_serving_profile(s, self._deps, request)
            )
        )

    def UnfreezeAutomation(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.UnfreezeAutomationRequest, context: grpc.ServicerContext
    ) -> service_pb2.UnfreezeAutomationResponse:
        request = _attributed(request, "actor")
        return service_pb2.UnfreezeAutomationResponse(
            model=self._in_transaction(
                lambda s: handlers.unfreeze_automation(s, self._deps, request)
            )
        )

    def ReportLiveQuality(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ReportLiveQualityRequest, context: grpc.ServicerContext
    ) -> service_pb2.ReportLiveQualityResponse:
        return service_pb2.ReportLiveQualityResponse(
            live_quality_report=self._in_transaction(
                lambda s: handlers.report_live_quality(s, self._deps, request)
            )
        )
