"""The evaluator evaluates only checkpoints whose artifact lies in the trainer's artifact area:
a CheckpointReady naming any other file (a forged event) is refused before anything is recorded,
so it goes to the DLQ unevaluated (issue #13)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.evaluator import handlers
from services.evaluator.adapters.repository import EvaluatorRepository
from services.evaluator.adapters.tables import EvaluatorBase
from shared.artifacts import root_uri
from shared.db import create_database_engine, create_schema, create_session_factory
from shared.errors import InvalidArgument
from shared.events import Envelope, ReceivedEvent
from tests.fixtures.registry_events import checkpoint_ready
from tuneline.trainer.v1 import events_pb2 as trainer_events


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'evaluator.db'}")
    create_schema(engine, [EvaluatorBase.metadata])
    yield create_session_factory(engine)
    engine.dispose()


def _announced(job: str, uri: str) -> ReceivedEvent[trainer_events.CheckpointReady]:
    message = checkpoint_ready("sentiment", job, 100)
    message.artifact_uri = uri
    envelope = Envelope.wrap(message, source="tuneline/trainer", subject=message.checkpoint)
    return ReceivedEvent(message, envelope, envelope.topic, 0, 0)


def _receive(
    sessions: sessionmaker[Session], event: ReceivedEvent[trainer_events.CheckpointReady], root: str
) -> None:
    with sessions() as session, session.begin():
        handlers.on_checkpoint_ready(
            event, session, defaults=handlers.ServiceDefaults(), trainer_artifact_root=root
        )


@pytest.mark.parametrize(
    "where",
    [
        "{tmp}/registry/attacker/adapter",  # another service's area
        "{tmp}/trainer/artifacts/../../evil/adapter",  # climbs out of the root
        "{tmp}/trainer/artifacts-evil/adapter",  # a sibling whose name starts like the root
    ],
)
def test_a_checkpoint_outside_the_trainers_area_is_refused_unrecorded(
    sessions: sessionmaker[Session], tmp_path: Path, where: str
) -> None:
    root = root_uri(tmp_path / "trainer" / "artifacts")
    forged = _announced("forged", "file://" + where.format(tmp=tmp_path.resolve()))
    with pytest.raises(InvalidArgument) as refused:
        _receive(sessions, forged, root)
    (violation,) = refused.value.violations
    assert (violation.field, violation.reason) == ("artifact_uri", "OUTSIDE_ARTIFACT_ROOT")
    with sessions() as session:
        assert EvaluatorRepository(session).checkpoint(forged.message.checkpoint) is None


def test_a_checkpoint_in_the_trainers_area_is_recorded(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    root = root_uri(tmp_path / "trainer" / "artifacts")
    genuine = _announced("genuine", f"{root}/jobs/genuine/step-100")
    _receive(sessions, genuine, root)
    with sessions() as session:
        assert EvaluatorRepository(session).checkpoint(genuine.message.checkpoint) is not None
