"""The gRPC face of the registry service: converts each request to its command
(``adapters/protos.py``), calls a handler, and wraps what it returns in the response.

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
from sqlalchemy.orm import Session

from services.registry.adapters import protos
from services.registry.domain.resources import AliasMove
from services.registry.handlers import aliases, checkpoints, live_quality, models, reviews, rollback
from services.registry.handlers.deps import RegistryDeps
from shared.db import read_snapshot
from shared.security import caller_name
from tuneline.registry.v1 import resources_pb2, service_pb2, service_pb2_grpc

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


def _watch_response(update: aliases.AliasUpdate) -> service_pb2.WatchAliasResponse:
    return service_pb2.WatchAliasResponse(
        alias=protos.alias_to_proto(update.alias), move=_move(update.move)
    )


def _move(move: AliasMove | None) -> resources_pb2.AliasMove | None:
    """The move a response carries (none when nothing moved)."""
    return protos.move_to_proto(move) if move is not None else None


class RegistryServicer(service_pb2_grpc.RegistryServiceServicer):
    """``tuneline.registry.v1.RegistryService``."""

    def __init__(
        self,
        deps: RegistryDeps,
        *,
        stopping: threading.Event,
        watch_poll_seconds: float = 0.5,
    ) -> None:
        self._deps = deps
        self._stopping = stopping
        self._watch_poll_seconds = watch_poll_seconds

    def _in_transaction(self, work: Callable[[Session], T]) -> T:
        with self._deps.sessions() as session, session.begin():
            return work(session)

    def _read(self, work: Callable[[Session], T]) -> T:
        """``work`` on one snapshot: a checkpoint and its evaluations read together agree."""
        with read_snapshot(self._deps.sessions) as session:
            return work(session)

    # -- models and checkpoints -----------------------------------------------------------

    def CreateModel(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.CreateModelRequest, context: grpc.ServicerContext
    ) -> service_pb2.CreateModelResponse:
        # the verified caller; "" on a server without auth
        command = protos.create_model_from_proto(request, creator=caller_name(""))
        created = self._in_transaction(lambda s: models.create_model(s, self._deps, command))
        return service_pb2.CreateModelResponse(model=protos.model_to_proto(created))

    def GetModel(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetModelResponse:
        model = self._read(lambda s: models.get_model(s, request.name))
        return service_pb2.GetModelResponse(model=protos.model_to_proto(model))

    def ListModels(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListModelsResponse:
        page, token = self._read(
            lambda s: models.list_models(s, request.page_size, request.page_token)
        )
        return service_pb2.ListModelsResponse(
            models=[protos.model_to_proto(m) for m in page], next_page_token=token
        )

    def GetCheckpoint(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetCheckpointResponse:
        checkpoint = self._read(lambda s: checkpoints.get_checkpoint(s, request.name))
        return service_pb2.GetCheckpointResponse(checkpoint=protos.checkpoint_to_proto(checkpoint))

    def ListCheckpoints(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListCheckpointsResponse:
        query = protos.checkpoint_query_from_proto(request)
        page, token = self._read(lambda s: checkpoints.list_checkpoints(s, query))
        return service_pb2.ListCheckpointsResponse(
            checkpoints=[protos.checkpoint_to_proto(c) for c in page], next_page_token=token
        )

    # -- aliases --------------------------------------------------------------------------

    def GetAlias(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetAliasRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetAliasResponse:
        alias = self._read(lambda s: aliases.get_alias(s, request.name))
        return service_pb2.GetAliasResponse(alias=protos.alias_to_proto(alias))

    def ListAliasHistory(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListAliasHistoryRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListAliasHistoryResponse:
        query = protos.alias_history_query_from_proto(request)
        moves, token = self._read(lambda s: aliases.list_alias_history(s, query))
        return service_pb2.ListAliasHistoryResponse(
            alias_moves=[protos.move_to_proto(m) for m in moves], next_page_token=token
        )

    def WatchAlias(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.WatchAliasRequest, context: grpc.ServicerContext
    ) -> Iterator[service_pb2.WatchAliasResponse]:
        notifier = self._deps.notifier
        # read the generation before the first state, so a move committed in between still
        # wakes the loop below instead of being missed
        generation = notifier.generation
        model, alias, first, last_revision = self._read(
            lambda s: aliases.watch_alias_start(s, request.name, request.after_revision)
        )
        for update in first:
            yield _watch_response(update)
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
                moves = self._read(
                    lambda s: aliases.watch_alias_moves(s, model, alias, after)  # noqa: B023 - called at once
                )
                for update in moves:
                    yield _watch_response(update)
                    last_revision = update.alias.revision

    # -- moving production ----------------------------------------------------------------

    def PromoteCheckpoint(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.PromoteCheckpointRequest, context: grpc.ServicerContext
    ) -> service_pb2.PromoteCheckpointResponse:
        command = protos.promote_from_proto(_attributed(request, "actor"))
        alias, move = self._in_transaction(
            lambda s: reviews.promote_checkpoint(s, self._deps, command)
        )
        return service_pb2.PromoteCheckpointResponse(
            alias=protos.alias_to_proto(alias), move=_move(move)
        )

    def ApproveCheckpoint(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ApproveCheckpointRequest, context: grpc.ServicerContext
    ) -> service_pb2.ApproveCheckpointResponse:
        command = protos.approve_from_proto(_attributed(request, "reviewer"))
        approval = self._in_transaction(
            lambda s: reviews.approve_checkpoint(s, self._deps, command)
        )
        return service_pb2.ApproveCheckpointResponse(
            checkpoint=protos.checkpoint_to_proto(approval.checkpoint),
            alias=protos.alias_to_proto(approval.alias),
            move=_move(approval.move),
        )

    def RejectCheckpoint(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.RejectCheckpointRequest, context: grpc.ServicerContext
    ) -> service_pb2.RejectCheckpointResponse:
        command = protos.reject_from_proto(_attributed(request, "reviewer"))
        checkpoint = self._in_transaction(
            lambda s: reviews.reject_checkpoint(s, self._deps, command)
        )
        return service_pb2.RejectCheckpointResponse(
            checkpoint=protos.checkpoint_to_proto(checkpoint)
        )

    def RollbackModel(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.RollbackModelRequest, context: grpc.ServicerContext
    ) -> service_pb2.RollbackModelResponse:
        command = protos.rollback_from_proto(_attributed(request, "actor"))
        alias, move = self._in_transaction(
            lambda s: rollback.rollback_model(s, self._deps, command)
        )
        return service_pb2.RollbackModelResponse(
            alias=protos.alias_to_proto(alias), move=_move(move)
        )

    def SetServingProfile(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.SetServingProfileRequest, context: grpc.ServicerContext
    ) -> service_pb2.SetServingProfileResponse:
        command = protos.serving_profile_from_proto(request)
        model = self._in_transaction(lambda s: models.set_serving_profile(s, self._deps, command))
        return service_pb2.SetServingProfileResponse(model=protos.model_to_proto(model))

    def UnfreezeAutomation(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.UnfreezeAutomationRequest, context: grpc.ServicerContext
    ) -> service_pb2.UnfreezeAutomationResponse:
        command = protos.unfreeze_from_proto(_attributed(request, "actor"))
        model = self._in_transaction(lambda s: rollback.unfreeze_automation(s, self._deps, command))
        return service_pb2.UnfreezeAutomationResponse(model=protos.model_to_proto(model))

    def ReportLiveQuality(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ReportLiveQualityRequest, context: grpc.ServicerContext
    ) -> service_pb2.ReportLiveQualityResponse:
        command = protos.live_quality_from_proto(request)
        report = self._in_transaction(
            lambda s: live_quality.report_live_quality(s, self._deps, command)
        )
        return service_pb2.ReportLiveQualityResponse(
            live_quality_report=protos.live_quality_report_to_proto(report)
        )
