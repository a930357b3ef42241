"""The evaluator evaluates only checkpoints whose artifact lies in the trainer's artifact area:
a CheckpointReady naming any other file (a forged event) is refused before anything is recorded,
so it goes to the DLQ unevaluated (issue #13)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.evaluator.adapters import protos
from services.evaluator.adapters.repository import EvaluatorRepository
from services.evaluator.adapters.scoring import ScoringJob, ScoringResult
from services.evaluator.adapters.tables import EvaluatorBase
from services.evaluator.domain.evaluation import ModelSpec, RegisteredCheckpoint
from services.evaluator.domain.events import ReadyCheckpoint
from services.evaluator.handlers.deps import EvaluatorDeps
from services.evaluator.handlers.events import on_checkpoint_ready
from shared.artifacts import LocalArtifactStore, root_uri
from shared.db import create_database_engine, create_schema, create_session_factory
from shared.errors import InvalidArgument
from tests.fixtures.registry_events import checkpoint_ready


class _UnusedRegistry:
    """Recording a CheckpointReady asks the registry nothing."""

    def model(self, name: str) -> ModelSpec:
        raise AssertionError("not asked")

    def production(self, model: str) -> RegisteredCheckpoint | None:
        raise AssertionError("not asked")

    def checkpoint(self, name: str) -> RegisteredCheckpoint:
        raise AssertionError("not asked")


def _unused_scorer(job: ScoringJob) -> ScoringResult:
    raise AssertionError("recording a CheckpointReady scores nothing")


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[EvaluatorDeps]:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'evaluator.db'}")
    create_schema(engine, [EvaluatorBase.metadata])
    yield EvaluatorDeps(
        sessions=create_session_factory(engine),
        registry=_UnusedRegistry(),
        artifacts=LocalArtifactStore(tmp_path / "evaluator" / "artifacts"),
        score=_unused_scorer,
        source="tuneline/evaluator",
        models_root=tmp_path / "models",
    )
    engine.dispose()


def _announced(job: str, uri: str) -> ReadyCheckpoint:
    message = checkpoint_ready("sentiment", job, 100)
    message.artifact_uri = uri
    return protos.ready_checkpoint_from_event(message)


def _receive(deps: EvaluatorDeps, ready: ReadyCheckpoint, root: str) -> None:
    with deps.sessions.begin() as session:
        on_checkpoint_ready(session, deps, ready, trainer_artifact_root=root)


@pytest.mark.parametrize(
    "where",
    [
        "{tmp}/registry/attacker/adapter",  # another service's area
        "{tmp}/trainer/artifacts/../../evil/adapter",  # climbs out of the root
        "{tmp}/trainer/artifacts-evil/adapter",  # a sibling whose name starts like the root
    ],
)
def test_a_checkpoint_outside_the_trainers_area_is_refused_unrecorded(
    deps: EvaluatorDeps, tmp_path: Path, where: str
) -> None:
    root = root_uri(tmp_path / "trainer" / "artifacts")
    forged = _announced("forged", "file://" + where.format(tmp=tmp_path.resolve()))
    with pytest.raises(InvalidArgument) as refused:
        _receive(deps, forged, root)
    (violation,) = refused.value.violations
    assert (violation.field, violation.reason) == ("artifact_uri", "OUTSIDE_ARTIFACT_ROOT")
    with deps.sessions() as session:
        assert EvaluatorRepository(session).checkpoint(forged.checkpoint.name) is None


def test_a_checkpoint_in_the_trainers_area_is_recorded(deps: EvaluatorDeps, tmp_path: Path) -> None:
    root = root_uri(tmp_path / "trainer" / "artifacts")
    genuine = _announced("genuine", f"{root}/jobs/genuine/step-100")
    _receive(deps, genuine, root)
    with deps.sessions() as session:
        assert EvaluatorRepository(session).checkpoint(genuine.checkpoint.name) is not None
