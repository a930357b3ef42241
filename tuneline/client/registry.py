"""Typed client of the registry service (``tuneline.registry.v1.RegistryService``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from shared.names import MODEL, MODEL_ALIAS, MODEL_CHECKPOINT
from shared.service_ports import default_target
from tuneline.client.base import DEFAULT_PAGE_SIZE, DeprecatedAlias, ServiceClient
from tuneline.client.names import id_of, qualified
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.registry.v1 import resources_pb2, service_pb2, service_pb2_grpc

#: Where the registry listens by default.
DEFAULT_TARGET = default_target("registry")


class RegistryClient(ServiceClient):
    """Models, checkpoints, aliases and the moves of ``production``.

    Every method returns proto resources and raises a :class:`~tuneline.client.TunelineError`
    subclass on failure (e.g. ``FailedPreconditionError`` with the violations when a rollback
    has no earlier good checkpoint).
    """

    service = service_pb2.DESCRIPTOR.services_by_name["RegistryService"]

    def __init__(self, target: str | None = None, **kwargs: object) -> None:
        super().__init__(target, **kwargs)  # type: ignore[arg-type]
        self._stub = service_pb2_grpc.RegistryServiceStub(self.channel)

    # -- models ---------------------------------------------------------------------------

    def create_model(
        self, model_id: str, model: resources_pb2.Model, *, request_id: str = ""
    ) -> resources_pb2.Model:
        """Create a model; a retry with the same ``request_id`` (one is generated when empty)
        returns the model the first call created."""
        request = service_pb2.CreateModelRequest(
            model_id=model_id, model=model, request_id=request_id
        )
        return self._call(self._stub.CreateModel, request).model

    def set_serving_profile(
        self, model: str, profile: common_pb2.ServingProfile | None
    ) -> resources_pb2.Model:
        """Set the model's serving profile (``None`` clears it); returns the model."""
        request = service_pb2.SetServingProfileRequest(model=model)
        if profile is not None:
            request.serving_profile.CopyFrom(profile)
        return self._call(self._stub.SetServingProfile, request).model

    def get_model(self, name: str) -> resources_pb2.Model:
        return self._call(self._stub.GetModel, service_pb2.GetModelRequest(name=name)).model

    def list_models(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[resources_pb2.Model]:
        return self._paginate(
            self._stub.ListModels, service_pb2.ListModelsRequest(), "models", page_size=page_size
        )

    # -- checkpoints ----------------------------------------------------------------------

    def get_checkpoint(self, name: str) -> resources_pb2.Checkpoint:
        request = service_pb2.GetCheckpointRequest(name=name)
        return self._call(self._stub.GetCheckpoint, request).checkpoint

    def list_checkpoints(
        self,
        model: str,
        *,
        verdict: common_pb2.EvaluationVerdict.ValueType = common_pb2.EVALUATION_VERDICT_UNSPECIFIED,
        review_state: resources_pb2.ReviewState.ValueType = resources_pb2.REVIEW_STATE_UNSPECIFIED,
        training_job: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[resources_pb2.Checkpoint]:
        """A model's (``models/{m}``) checkpoints, newest first."""
        request = service_pb2.ListCheckpointsRequest(
            parent=model, verdict=verdict, review_state=review_state, training_job=training_job
        )
        return self._paginate(
            self._stub.ListCheckpoints, request, "checkpoints", page_size=page_size
        )

    # -- aliases --------------------------------------------------------------------------

    def get_alias(self, name: str) -> resources_pb2.Alias:
        return self._call(self._stub.GetAlias, service_pb2.GetAliasRequest(name=name)).alias

    def get_production_alias(self, model: str) -> resources_pb2.Alias:
        """The ``production`` alias of ``models/{m}`` (what a serving fleet loads):
        :meth:`get_alias` of ``models/{m}/aliases/production``."""
        return self.get_alias(alias_name(model))

    def list_alias_history(
        self, name: str, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[resources_pb2.AliasMove]:
        """Moves of one alias, or of every alias with ``models/{m}/aliases/-``, oldest first."""
        request = service_pb2.ListAliasHistoryRequest(name=name)
        return self._paginate(
            self._stub.ListAliasHistory, request, "alias_moves", page_size=page_size
        )

    def watch_alias(
        self, name: str, *, after_revision: int = 0, timeout: float | None = None
    ) -> Iterator[service_pb2.WatchAliasResponse]:
        """The alias now, then every move as it happens (no deadline unless ``timeout``).

        With ``after_revision`` the moves after that revision come first instead of the
        current state, so a watcher that reconnects misses nothing. The iterator ends when the
        server shuts down; break out of it (or close it) to stop watching.
        """
        request = service_pb2.WatchAliasRequest(name=name, after_revision=after_revision)
        return self._stream(self._stub.WatchAlias, request, timeout=timeout)  # type: ignore[arg-type]

    # -- moving production ----------------------------------------------------------------

    def promote_checkpoint(
        self,
        checkpoint: str,
        *,
        alias: str = "",
        actor: str = "",
        reason: str = "",
        request_id: str = "",
        expected_revision: int | None = None,
    ) -> service_pb2.PromoteCheckpointResponse:
        """Move ``alias``; with ``expected_revision`` (the ``Alias.revision`` you last read) the
        move only happens if the alias has not moved since, else ABORTED and nothing moves."""
        request = service_pb2.PromoteCheckpointRequest(
            checkpoint=checkpoint,
            alias=alias,
            actor=actor,
            reason=reason,
            request_id=request_id,
            expected_alias_revision=expected_revision,
        )
        return self._call(self._stub.PromoteCheckpoint, request)

    def approve_checkpoint(
        self,
        checkpoint: str,
        *,
        reviewer: str,
        reason: str,
        expected_revision: int | None = None,
        request_id: str = "",
    ) -> service_pb2.ApproveCheckpointResponse:
        """Approve and promote; ``expected_revision`` guards production as in
        :meth:`promote_checkpoint`."""
        request = service_pb2.ApproveCheckpointRequest(
            checkpoint=checkpoint,
            reviewer=reviewer,
            reason=reason,
            expected_alias_revision=expected_revision,
            request_id=request_id,
        )
        return self._call(self._stub.ApproveCheckpoint, request)

    def reject_checkpoint(
        self, checkpoint: str, *, reviewer: str, reason: str, request_id: str = ""
    ) -> resources_pb2.Checkpoint:
        request = service_pb2.RejectCheckpointRequest(
            checkpoint=checkpoint, reviewer=reviewer, reason=reason, request_id=request_id
        )
        return self._call(self._stub.RejectCheckpoint, request).checkpoint

    def rollback_model(
        self,
        model: str,
        *,
        reason: str,
        target_checkpoint: str = "",
        actor: str = "",
        request_id: str = "",
        expected_revision: int | None = None,
    ) -> service_pb2.RollbackModelResponse:
        """Roll production of ``model`` (``models/{m}``) back; ``expected_revision`` guards it
        as in :meth:`promote_checkpoint`."""
        request = service_pb2.RollbackModelRequest(
            model=model,
            reason=reason,
            target_checkpoint=target_checkpoint,
            actor=actor,
            request_id=request_id,
            expected_alias_revision=expected_revision,
        )
        return self._call(self._stub.RollbackModel, request)

    def unfreeze_automation(
        self, model: str, *, reason: str, actor: str = "", request_id: str = ""
    ) -> resources_pb2.Model:
        """Let automation move ``model``'s production again after the rollback circuit breaker
        froze it; returns the model."""
        request = service_pb2.UnfreezeAutomationRequest(
            model=model, reason=reason, actor=actor, request_id=request_id
        )
        return self._call(self._stub.UnfreezeAutomation, request).model

    def report_live_quality(
        self,
        model: str,
        *,
        metric: str,
        value: float = 0.0,
        successes: int = 0,
        trials: int = 0,
        checkpoint: str = "",
        slice_name: str = "",
        example_count: int = 0,
        window_seconds: float | None = None,
        source: str = "",
        request_id: str = "",
    ) -> resources_pb2.LiveQualityReport:
        """Report ``successes`` of ``trials`` new labelled outcomes (the registry keeps a
        confidence sequence of the rate), or, the older form, a bare ``value``."""
        request = service_pb2.ReportLiveQualityRequest(
            model=model,
            checkpoint=checkpoint,
            metric=metric,
            slice=slice_name,
            value=value,
            example_count=example_count,
            source=source,
            successes=successes,
            trials=trials,
            request_id=request_id,
        )
        if window_seconds is not None:
            request.window.FromTimedelta(timedelta(seconds=window_seconds))
        return self._call(self._stub.ReportLiveQuality, request).live_quality_report

    # -- names of an earlier SDK ----------------------------------------------------------

    production = DeprecatedAlias("get_production_alias")
    promote = DeprecatedAlias("promote_checkpoint")
    approve = DeprecatedAlias("approve_checkpoint")
    reject = DeprecatedAlias("reject_checkpoint")
    rollback = DeprecatedAlias("rollback_model")


def model_name(ref: str) -> str:
    """``sentiment`` or ``models/sentiment`` → ``models/sentiment``."""
    return qualified(MODEL, ref)


def checkpoint_name(ref: str, model: str = "") -> str:
    """A full checkpoint name, or a checkpoint id qualified by ``model``."""
    if not model:
        return ref
    return qualified(MODEL_CHECKPOINT, ref, model=id_of(MODEL, model))


def alias_name(model: str, alias: str = "production") -> str:
    """``models/{model}/aliases/{alias}`` from a model id or name (full alias names pass)."""
    if "/aliases/" in model:
        return model
    return MODEL_ALIAS.format(model=id_of(MODEL, model), alias=alias)
