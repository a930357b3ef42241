"""LocalArtifactStore.open_spool: bytes whose key is chosen after they are written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shared.artifacts import ArtifactError, LocalArtifactStore
from tests.fixtures.datasets import stored_artifacts


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store")


def test_commit_moves_the_bytes_into_place_with_their_hash(store: LocalArtifactStore) -> None:
    with store.open_spool() as spool:
        spool.write(b"hello ")
        spool.write(b"spool\n")
        assert len(store.temp_entries()) == 1
        key = f"blobs/{spool.sha256[:12]}.txt"  # content-addressed: known only now
        stored = spool.commit(key)
    assert stored.sha256 == hashlib.sha256(b"hello spool\n").hexdigest()
    assert stored.size_bytes == 12
    assert store.local_path(stored.uri).read_bytes() == b"hello spool\n"
    assert store.temp_entries() == []
    with pytest.raises(ArtifactError):
        spool.commit("again")


def test_an_uncommitted_spool_leaves_nothing(store: LocalArtifactStore) -> None:
    with store.open_spool() as spool:
        spool.write(b"rejected content")
    assert store.temp_entries() == []
    assert stored_artifacts(store.root) == []


def test_an_exception_in_the_block_leaves_nothing(store: LocalArtifactStore) -> None:
    def interrupted_upload() -> None:
        with store.open_spool() as spool:
            spool.write(b"half")
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        interrupted_upload()
    assert store.temp_entries() == []


def test_a_bad_key_keeps_the_spool_uncommitted(store: LocalArtifactStore) -> None:
    with store.open_spool() as spool:
        spool.write(b"x")
        with pytest.raises(ArtifactError):
            spool.commit("../escape")
    assert store.temp_entries() == []
