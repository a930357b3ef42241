"""LocalArtifactStore: atomic writes, sha256 while writing, keys and URIs confined to roots."""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared import artifacts
from shared.artifacts import (
    ArtifactError,
    LocalArtifactStore,
    StoredArtifact,
    artifact_uri_problem,
    directory_sha256,
    root_uri,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_root_and_temp_folder_are_created(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "a" / "b")
    assert store.root == (tmp_path / "a" / "b").resolve()
    assert (store.root / ".tmp").is_dir()
    assert store.temp_entries() == []


def test_put_bytes_returns_uri_sha256_and_size(store: LocalArtifactStore) -> None:
    data = b"hello artifact\n" * 100

    stored = store.put_bytes("datasets/d1/v1.jsonl", data)

    path = store.root / "datasets" / "d1" / "v1.jsonl"
    assert stored == StoredArtifact(path.as_uri(), _sha(data), len(data))
    assert stored.uri.startswith("file:///")
    assert stored.uri == store.uri_for("datasets/d1/v1.jsonl")
    assert path.read_bytes() == data
    assert store.local_path(stored.uri) == path
    with store.open(stored.uri) as handle:
        assert handle.read() == data
    assert store.exists(stored.uri)
    assert store.temp_entries() == []


def test_put_empty_bytes(store: LocalArtifactStore) -> None:
    stored = store.put_bytes("empty", b"")
    assert stored.size_bytes == 0
    assert stored.sha256 == _sha(b"")
    assert store.local_path(stored.uri).read_bytes() == b""


def test_put_stream_hashes_all_chunks(store: LocalArtifactStore) -> None:
    chunks = [b"a" * 10, b"", b"b" * 3, os.urandom(5000)]

    stored = store.put_stream("x/y.bin", iter(chunks))

    data = b"".join(chunks)
    assert stored.sha256 == _sha(data)
    assert stored.size_bytes == len(data)
    assert store.local_path(stored.uri).read_bytes() == data


def test_put_overwrites_existing_key(store: LocalArtifactStore) -> None:
    store.put_bytes("k", b"old")
    stored = store.put_bytes("k", b"new!")
    assert store.local_path(stored.uri).read_bytes() == b"new!"
    assert stored.size_bytes == 4


def test_open_writer_exposes_stored_after_block(store: LocalArtifactStore) -> None:
    with store.open_writer("w/out.bin") as writer:
        writer.write(b"abc")
        writer.write(b"def")
        assert writer.stored is None
        assert writer.size_bytes == 6
        # Not visible under the key until the block completes.
        assert not (store.root / "w" / "out.bin").exists()
        assert len(store.temp_entries()) == 1
    assert writer.stored is not None
    assert writer.stored.sha256 == _sha(b"abcdef")
    assert writer.stored.size_bytes == 6
    assert store.temp_entries() == []


def _write_then_fail(store: LocalArtifactStore, key: str, data: bytes) -> None:
    with store.open_writer(key) as writer:
        writer.write(data)
        raise RuntimeError("disk on fire")


def test_open_writer_that_raises_leaves_nothing(store: LocalArtifactStore) -> None:
    with pytest.raises(RuntimeError, match="disk on fire"):
        _write_then_fail(store, "a/b.bin", b"partial")

    assert not (store.root / "a" / "b.bin").exists()
    assert not (store.root / "a").exists()
    assert store.temp_entries() == []


def test_open_writer_that_raises_keeps_previous_version(store: LocalArtifactStore) -> None:
    store.put_bytes("keep", b"version 1")
    with pytest.raises(RuntimeError):
        _write_then_fail(store, "keep", b"version 2, half")
    assert (store.root / "keep").read_bytes() == b"version 1"
    assert store.temp_entries() == []


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "/abs",
        "a/../../b",
        "a/../b",
        "..",
        ".",
        "",
        "a\\b",
        ".tmp/x",
        ".tmp",
        "a//b",
        "a/",
        "a/./b",
        ".hidden",
        "a b",
        "a/\x00b",
        "ü",
    ],
)
def test_invalid_keys_are_refused(store: LocalArtifactStore, key: str) -> None:
    with pytest.raises(ArtifactError):
        store.uri_for(key)
    with pytest.raises(ArtifactError):
        store.put_bytes(key, b"x")
    assert store.temp_entries() == []


def test_key_through_symlink_leaving_the_root_is_refused(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "link").symlink_to(outside, target_is_directory=True)

    with pytest.raises(ArtifactError, match="escapes"):
        store.put_bytes("link/evil", b"x")
    assert list(outside.iterdir()) == []


def test_key_through_symlink_into_temp_is_refused(store: LocalArtifactStore) -> None:
    (store.root / "sneaky").symlink_to(store.root / ".tmp", target_is_directory=True)
    with pytest.raises(ArtifactError):
        store.uri_for("sneaky/x")


@pytest.mark.parametrize(
    "make_uri",
    [
        lambda root, other: (other / "file.bin").as_uri(),
        lambda root, other: "http://example.com/file.bin",
        lambda root, other: "s3://bucket/file.bin",
        lambda root, other: f"file://remotehost{root}/file.bin",
        lambda root, other: str(root / "file.bin"),  # a bare path is not a URI
        lambda root, other: f"file://{root}/../other/file.bin",
        lambda root, other: f"file://{root}/%2e%2e/other/file.bin",
        lambda root, other: f"{root.as_uri()}-sibling/file.bin",
    ],
)
def test_local_path_refuses_uris_outside_the_root(tmp_path: Path, make_uri) -> None:  # type: ignore[no-untyped-def]
    store = LocalArtifactStore(tmp_path / "store")
    other = tmp_path / "other"
    other.mkdir()
    (other / "file.bin").write_bytes(b"secret")
    (tmp_path / "store-sibling").mkdir()
    (tmp_path / "store-sibling" / "file.bin").write_bytes(b"secret")

    uri = make_uri(store.root, other)

    with pytest.raises(ArtifactError):
        store.local_path(uri)
    with pytest.raises(ArtifactError):
        store.open(uri)


def test_local_path_refuses_symlink_inside_root_pointing_outside(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    (store.root / "innocent.txt").symlink_to(secret)

    with pytest.raises(ArtifactError, match="outside"):
        store.local_path((store.root / "innocent.txt").as_uri())
    with pytest.raises(ArtifactError):
        store.open((store.root / "innocent.txt").as_uri())


def test_local_path_accepts_localhost_netloc(store: LocalArtifactStore) -> None:
    stored = store.put_bytes("a", b"1")
    uri = stored.uri.replace("file://", "file://localhost", 1)
    assert store.local_path(uri) == store.root / "a"


def test_open_missing_artifact_is_an_artifact_error(store: LocalArtifactStore) -> None:
    uri = store.uri_for("never/written")
    assert not store.exists(uri)
    with pytest.raises(ArtifactError, match="does not exist"):
        store.open(uri)


def test_readable_roots_allow_reading_another_store(tmp_path: Path) -> None:
    producer = LocalArtifactStore(tmp_path / "splitter")
    stored = producer.put_bytes("splits/s1/manifest.json", b"{}")
    reader = LocalArtifactStore(tmp_path / "trainer", readable_roots=[tmp_path / "splitter"])
    stranger = LocalArtifactStore(tmp_path / "evaluator")

    with reader.open(stored.uri) as handle:
        assert handle.read() == b"{}"
    assert reader.exists(stored.uri)
    with pytest.raises(ArtifactError):
        stranger.open(stored.uri)
    # Reading is allowed; deleting another store's artifact is not.
    with pytest.raises(ArtifactError, match="another store"):
        reader.delete(stored.uri)
    assert producer.exists(stored.uri)


def test_delete_file_and_folder(store: LocalArtifactStore, tmp_path: Path) -> None:
    file = store.put_bytes("f", b"x")
    folder = store.put_directory("d", _tree(tmp_path / "src", {"a": b"1", "b/c": b"2"}))
    store.delete(file.uri)
    store.delete(folder.uri)
    store.delete(file.uri)  # deleting twice is fine
    assert not store.exists(file.uri)
    assert not store.exists(folder.uri)


def test_delete_refuses_the_store_root_itself(store: LocalArtifactStore) -> None:
    """The root's URI is not an artifact; deleting it must not wipe the whole store."""
    store.put_bytes("precious", b"x")
    with pytest.raises(ArtifactError):
        store.delete(store.root.as_uri())
    assert (store.root / "precious").exists()


def test_put_directory_copies_and_hashes(store: LocalArtifactStore, tmp_path: Path) -> None:
    files = {"adapter_config.json": b"{}", "weights/adapter.safetensors": b"\x00" * 100}
    source = _tree(tmp_path / "src", files)

    stored = store.put_directory("models/m1/v1", source)

    target = store.root / "models" / "m1" / "v1"
    assert stored.uri == target.as_uri()
    assert stored.size_bytes == 102
    assert stored.sha256 == directory_sha256(source) == directory_sha256(target)
    assert (target / "weights" / "adapter.safetensors").read_bytes() == b"\x00" * 100
    # The source is left alone and no staging folder remains.
    assert (source / "adapter_config.json").exists()
    assert store.temp_entries() == []


def test_put_directory_replaces_target_as_a_whole(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    store.put_directory("out", _tree(tmp_path / "v1", {"old-only.txt": b"old", "shared": b"1"}))

    stored = store.put_directory("out", _tree(tmp_path / "v2", {"shared": b"2", "new.txt": b"n"}))

    target = store.root / "out"
    assert sorted(p.name for p in target.iterdir()) == ["new.txt", "shared"]
    assert (target / "shared").read_bytes() == b"2"
    assert stored.sha256 == directory_sha256(tmp_path / "v2")
    assert store.temp_entries() == []


def test_put_directory_of_missing_source_changes_nothing(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    store.put_directory("out", _tree(tmp_path / "v1", {"a": b"1"}))
    with pytest.raises(FileNotFoundError):
        store.put_directory("out", tmp_path / "does-not-exist")
    assert (store.root / "out" / "a").read_bytes() == b"1"
    assert store.temp_entries() == []


def test_put_directory_refuses_invalid_key(store: LocalArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        store.put_directory("../escape", _tree(tmp_path / "src", {"a": b"1"}))
    assert not (store.root.parent / "escape").exists()


def test_directory_sha256_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    files = {"a.txt": b"alpha", "sub/b.txt": b"beta", "sub/deeper/c": b""}
    first = _tree(tmp_path / "one", files)
    second = _tree(tmp_path / "two", dict(reversed(list(files.items()))))
    baseline = directory_sha256(first)

    assert len(baseline) == 64
    assert directory_sha256(first) == baseline
    assert directory_sha256(second) == baseline  # independent of location and creation order

    (second / "sub" / "b.txt").write_bytes(b"betA")
    assert directory_sha256(second) != baseline
    (second / "sub" / "b.txt").write_bytes(b"beta")
    assert directory_sha256(second) == baseline

    (second / "sub" / "b.txt").rename(second / "sub" / "B.txt")
    assert directory_sha256(second) != baseline


def test_directory_sha256_sees_a_new_empty_file(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"a": b"1"})
    before = directory_sha256(root)
    (root / "empty").write_bytes(b"")
    assert directory_sha256(root) != before


def test_directory_sha256_does_not_confuse_file_boundaries(tmp_path: Path) -> None:
    """One file whose bytes look like a separator plus another file must not collide."""
    two_files = _tree(tmp_path / "two", {"a": b"X", "b": b"Y"})
    one_file = _tree(tmp_path / "one", {"a": b"X\0b\0Y"})
    assert directory_sha256(two_files) != directory_sha256(one_file)


def test_clean_temp_removes_its_own_leftovers_and_an_older_layouts(
    store: LocalArtifactStore,
) -> None:
    tmp = store.root / ".tmp"
    (tmp / "write-crashed").write_bytes(b"half")  # written by a store before replica folders
    (tmp / "dir-crashed" / "content").mkdir(parents=True)
    (tmp / "dir-crashed" / "content" / "f").write_bytes(b"x")
    [own] = [entry for entry in tmp.iterdir() if entry.is_dir() and entry.name != "dir-crashed"]
    (own / "spool-crashed").write_bytes(b"half")
    store.put_bytes("kept", b"kept")

    assert len(store.temp_entries()) == 1
    assert store.clean_temp() == 3
    assert store.temp_entries() == []
    assert store.clean_temp() == 0
    assert (store.root / "kept").read_bytes() == b"kept"
    assert not (tmp / "write-crashed").exists()
    assert not (tmp / "dir-crashed").exists()


def test_clean_temp_of_one_replica_spares_another_live_replicas_upload(tmp_path: Path) -> None:
    first = LocalArtifactStore(tmp_path / "shared")
    second = LocalArtifactStore(tmp_path / "shared")  # another replica on the same volume
    with first.open_spool() as spool:
        spool.write(b"in flight")
        assert second.clean_temp() == 0
        assert len(first.temp_entries()) == 1
        stored = spool.commit("upload")
    with second.open(stored.uri) as handle:
        assert handle.read() == b"in flight"


def test_clean_temp_removes_the_folder_of_a_replica_that_died(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    crashed = (
        "import os, sys\n"
        "from shared.artifacts import LocalArtifactStore\n"
        "store = LocalArtifactStore(__import__('pathlib').Path(sys.argv[1]))\n"
        "writing = store.open_spool()\n"
        "spool = writing.__enter__()\n"
        "spool.write(b'half an upload')\n"
        "os._exit(0)  # no clean-up: as a SIGKILL would leave it\n"
    )
    subprocess.run([sys.executable, "-c", crashed, str(root)], check=True)
    leftovers = [p for p in (root / ".tmp").rglob("spool-*") if p.is_file()]
    assert len(leftovers) == 1
    survivor = LocalArtifactStore(root)
    assert survivor.clean_temp() == 1
    assert not leftovers[0].exists()
    assert sorted(p.name for p in (root / ".tmp").iterdir()) == sorted(
        [".sweep", survivor.temp_folder.name, f"{survivor.temp_folder.name}.lock"]
    )


# -- put_directory under crashes ------------------------------------------------------------------


class _Crash(BaseException):
    """The process dying at a chosen point of put_directory: nothing after it runs."""


def _put_dying_at(
    monkeypatch: pytest.MonkeyPatch, store: LocalArtifactStore, source: Path, point: int
) -> bool:
    """``put_directory("out", source)`` with the process dying at ``point``: point 2k is just
    before the k-th rename or swap, 2k+1 just after it. No clean-up runs after the death (as a
    SIGKILL would leave it). True when the put finished before reaching ``point``."""
    passed = 0

    def dying(call):  # type: ignore[no-untyped-def]
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal passed
            if passed == point:
                raise _Crash
            passed += 1
            result = call(*args, **kwargs)
            if passed == point:
                raise _Crash
            passed += 1
            return result

        return wrapped

    with monkeypatch.context() as patched:
        patched.setattr(artifacts.os, "replace", dying(os.replace))
        patched.setattr(artifacts, "exchange_paths", dying(artifacts.exchange_paths))
        patched.setattr(artifacts.shutil, "rmtree", lambda *a, **k: None)
        try:
            store.put_directory("out", source)
        except _Crash:
            return False
    return True


@pytest.mark.parametrize("can_swap", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_crash_anywhere_in_put_directory_leaves_the_old_or_the_new_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, can_swap: bool
) -> None:
    """Whichever step the process dies at, the key holds one complete version after restart;
    where the filesystem can swap (RENAME_EXCHANGE), it never lacks one even before."""
    if not can_swap:

        def cannot_swap(first: Path, second: Path) -> None:
            raise OSError(errno.ENOSYS, "no renameat2 here (as on NFS)")

        monkeypatch.setattr(artifacts, "exchange_paths", cannot_swap)
    old = _tree(tmp_path / "old", {"adapter.safetensors": b"old" * 10, "old-only": b"o"})
    new = _tree(tmp_path / "new", {"adapter.safetensors": b"new" * 10, "new-only": b"n"})
    versions = {directory_sha256(old): "old", directory_sha256(new): "new"}
    root = tmp_path / "store"
    outcomes = []
    for point in range(20):
        shutil.rmtree(root, ignore_errors=True)
        store = LocalArtifactStore(root)
        store.put_directory("out", old)
        finished = _put_dying_at(monkeypatch, store, new, point)
        target = root / "out"
        if can_swap:
            assert directory_sha256(target) in versions, f"nothing complete at point {point}"
        del store  # the process is gone: its temp folder's lock is released
        gc.collect()
        restarted = LocalArtifactStore(root)
        restarted.clean_temp()  # what every service runs at start-up
        outcomes.append(versions[directory_sha256(target)])
        assert [p.name for p in (root / ".tmp").rglob("*") if "dir-" in str(p)] == []
        if finished:
            assert outcomes[-1] == "new"
            break
    else:
        pytest.fail("put_directory never finished")
    assert "old" in outcomes  # deaths before the swap kept the old version


def test_a_full_disk_during_put_directory_keeps_the_old_folder_and_no_leftover(
    store: LocalArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_directory("out", _tree(tmp_path / "v1", {"a": b"1"}))

    def disk_full(fd: int) -> None:  # where delayed allocation reports a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left") as raised:
        store.put_directory("out", _tree(tmp_path / "v2", {"a": b"2"}))
    assert raised.value.errno == errno.ENOSPC
    assert (store.root / "out" / "a").read_bytes() == b"1"
    assert store.temp_entries() == []


@pytest.mark.parametrize(
    ("uri", "root", "problem"),
    [
        ("file:///d/trainer/artifacts/j/checkpoints/step-1", "file:///d/trainer/artifacts", ""),
        ("file:///d/trainer/artifacts/a%40b", "file:///d/trainer/artifacts", ""),
        ("s3://bkt/trainer/j/checkpoints/step-1", "s3://bkt/trainer", ""),
        ("s3://bkt/any/key", "s3://bkt", ""),
        ("file:///d/trainer/artifacts/../registry/r.db", "file:///d/trainer/artifacts", "invalid"),
        ("file:///d/trainer/artifacts/a/%2E%2E/b", "file:///d/trainer/artifacts", "invalid"),
        ("file:///d/trainer/artifacts/.tmp/x", "file:///d/trainer/artifacts", "invalid"),
        ("file:///d/trainer/artifacts/", "file:///d/trainer/artifacts", "invalid"),
        ("file:///d/trainer/artifactsX/a", "file:///d/trainer/artifacts", "not under"),
        ("file://host/d/trainer/artifacts/a", "file:///d/trainer/artifacts", "host"),
        ("file:///d/trainer/artifacts/a?x=1", "file:///d/trainer/artifacts", "query"),
        ("s3://bkt/trainer/a", "file:///d/trainer/artifacts", "scheme"),
        ("s3://other/trainer/a", "s3://bkt/trainer", "bucket"),
        ("s3://bkt/evaluator/a", "s3://bkt/trainer", "not under"),
        ("https://bkt/trainer/a", "s3://bkt/trainer", "scheme"),
    ],
)
def test_artifact_uris_must_lie_under_the_root(uri: str, root: str, problem: str) -> None:
    found = artifact_uri_problem(uri, root)
    assert (found == "") if not problem else (problem in found), found


def test_a_local_root_is_a_file_uri_and_an_s3_root_stays(tmp_path: Path) -> None:
    assert root_uri(tmp_path / "x" / ".." / "y") == (tmp_path / "y").resolve().as_uri()
    assert root_uri("s3://bkt/trainer") == "s3://bkt/trainer"
