"""The ArtifactStore contract, run on every implementation: ``local`` and ``s3``.

The S3 cases talk to a real S3-compatible server on loopback (moto's standalone server, see
``tests/fixtures/s3.py``) through boto3, as a deployment on S3 or MinIO does.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from shared.artifacts import (
    ArtifactError,
    ArtifactStore,
    LocalArtifactStore,
    artifact_store_from_uri,
    directory_sha256,
)
from shared.s3_artifacts import S3ArtifactStore

MIB = 1024 * 1024
#: S3's smallest part size, so a few MiB already make a multipart upload.
SMALL_PARTS = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return S3ArtifactStore(
        bucket,
        "svc/artifacts",
        endpoint_url=endpoint,
        cache_dir=tmp_path / "cache",
        transfer=SMALL_PARTS,
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"})
    )


def test_put_bytes_then_open_exists_and_key(store: ArtifactStore) -> None:
    data = b"hello artifact\n" * 100
    stored = store.put_bytes("datasets/a/v1.jsonl", data)
    assert (stored.sha256, stored.size_bytes) == (_sha(data), len(data))
    assert stored.uri == store.uri_for("datasets/a/v1.jsonl")
    assert store.key_of(stored.uri) == "datasets/a/v1.jsonl"
    assert store.exists(stored.uri)
    with store.open(stored.uri) as handle:
        assert handle.readline() == b"hello artifact\n"
        assert handle.read() == data[len(b"hello artifact\n") :]


def test_a_large_stream_round_trips_and_hashes(store: ArtifactStore) -> None:
    chunks = [bytes([i]) * MIB for i in range(12)]
    stored = store.put_stream("big.bin", iter(chunks))
    expected = b"".join(chunks)
    assert (stored.sha256, stored.size_bytes) == (_sha(expected), len(expected))
    with store.open(stored.uri) as handle:
        assert _sha(handle.read()) == _sha(expected)


def test_a_spool_is_named_after_writing(store: ArtifactStore) -> None:
    with store.open_spool() as spool:
        spool.write(b"abc")
        spool.write(b"def")
        spool.sync()
        stored = spool.commit(f"blobs/{spool.sha256}")
    assert stored.sha256 == _sha(b"abcdef")
    with store.open(stored.uri) as handle:
        assert handle.read() == b"abcdef"
    assert store.clean_temp() == 0


def test_an_uncommitted_spool_leaves_nothing(store: ArtifactStore) -> None:
    def write_half_then_fail() -> None:
        with store.open_spool() as spool:
            spool.write(b"half")
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        write_half_then_fail()
    assert not store.exists(store.uri_for("blobs/anything"))
    assert store.clean_temp() == 0


def test_a_missing_artifact_is_an_artifact_error_naming_its_key(store: ArtifactStore) -> None:
    uri = store.uri_for("nothing/here")
    assert not store.exists(uri)
    with pytest.raises(ArtifactError, match="'nothing/here' does not exist"):
        store.open(uri)


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a/../b", ".hidden", ""])
def test_invalid_keys_are_refused(store: ArtifactStore, key: str) -> None:
    with pytest.raises(ArtifactError):
        store.put_bytes(key, b"x")


def test_directories_round_trip_through_materialize(store: ArtifactStore, tmp_path: Path) -> None:
    source = _tree(tmp_path / "adapter", {"adapter_model.bin": b"w" * 1000, "cfg/a.json": b"{}"})
    stored = store.put_directory("jobs/j1/checkpoints/step-2", source)
    assert stored.sha256 == directory_sha256(source)
    assert stored.size_bytes == 1002
    local = store.materialize(stored.uri)
    assert local.is_dir()
    assert directory_sha256(local) == stored.sha256
    assert (local / "cfg" / "a.json").read_bytes() == b"{}"


def test_a_directory_is_replaced_as_a_whole(store: ArtifactStore, tmp_path: Path) -> None:
    first = store.put_directory("d", _tree(tmp_path / "one", {"old.txt": b"1", "same": b"s"}))
    second = store.put_directory("d", _tree(tmp_path / "two", {"new.txt": b"2", "same": b"s"}))
    assert first.uri == second.uri
    local = store.materialize(second.uri)
    assert sorted(p.name for p in local.iterdir()) == ["new.txt", "same"]


def test_materialize_gives_a_local_file_with_the_bytes(store: ArtifactStore) -> None:
    stored = store.put_bytes("splits/manifest.json", b'{"rows": 3}')
    path = store.materialize(stored.uri)
    assert path.read_bytes() == b'{"rows": 3}'
    assert path.name == "manifest.json"


def test_delete_removes_blobs_and_directories(store: ArtifactStore, tmp_path: Path) -> None:
    blob = store.put_bytes("a/b", b"x")
    folder = store.put_directory("a/dir", _tree(tmp_path / "src", {"f": b"y"}))
    store.delete(blob.uri)
    store.delete(folder.uri)
    assert not store.exists(blob.uri)
    assert not store.exists(folder.uri)


def test_the_location_opens_the_same_store(store: ArtifactStore, s3_endpoint: str) -> None:
    stored = store.put_bytes("shared/x", b"seen by the worker")
    other = artifact_store_from_uri(store.location, s3_endpoint_url=s3_endpoint)
    assert type(other) is type(store)
    with other.open(stored.uri) as handle:
        assert handle.read() == b"seen by the worker"


# -- S3 only ---------------------------------------------------------------------------------


@pytest.fixture
def s3_store(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> S3ArtifactStore:
    return S3ArtifactStore(
        s3_bucket,
        "svc",
        endpoint_url=s3_endpoint,
        cache_dir=tmp_path / "cache",
        transfer=SMALL_PARTS,
    )


def test_s3_uploads_large_artifacts_in_parts(s3_store: S3ArtifactStore, s3_endpoint: str) -> None:
    s3_store.put_stream("big", (b"z" * MIB for _ in range(12)))
    head = _s3_client(s3_endpoint).head_object(Bucket=s3_store.bucket, Key="svc/big")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
    assert head["Metadata"]["sha256"] == _sha(b"z" * 12 * MIB)


def test_s3_a_spool_uploads_its_parts_while_it_is_written(
    s3_store: S3ArtifactStore, s3_endpoint: str
) -> None:
    client = _s3_client(s3_endpoint)
    chunks = [bytes([i]) * MIB for i in range(12)]
    with s3_store.open_spool() as spool:
        for chunk in chunks[:6]:
            spool.write(chunk)
        # a part reaches the server before the spool is synced (uploaded in the background:
        # wait for it to show)
        (upload,) = client.list_multipart_uploads(Bucket=s3_store.bucket)["Uploads"]
        deadline = time.monotonic() + 60
        while not (
            parts := client.list_parts(
                Bucket=s3_store.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            ).get("Parts")
        ):
            assert time.monotonic() < deadline, "no part uploaded before sync()"
            time.sleep(0.05)
        assert parts[0]["Size"] >= 5 * MIB
        for chunk in chunks[6:]:
            spool.write(chunk)
        spool.sync()
        stored = spool.commit(f"blobs/{spool.sha256}")
    expected = b"".join(chunks)
    assert (stored.sha256, stored.size_bytes) == (_sha(expected), len(expected))
    with s3_store.open(stored.uri) as handle:
        assert handle.read() == expected
    head = client.head_object(Bucket=s3_store.bucket, Key=f"svc/blobs/{stored.sha256}")
    assert head["Metadata"]["sha256"] == stored.sha256
    listed = client.list_objects_v2(Bucket=s3_store.bucket, Prefix="svc/")["Contents"]
    assert [item["Key"] for item in listed] == [f"svc/blobs/{stored.sha256}"]  # no staging


def test_s3_an_abandoned_spool_aborts_its_upload(
    s3_store: S3ArtifactStore, s3_endpoint: str
) -> None:
    def write_parts_then_fail() -> None:
        with s3_store.open_spool() as spool:
            spool.write(b"x" * 11 * MIB)
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        write_parts_then_fail()
    client = _s3_client(s3_endpoint)
    assert client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=s3_store.bucket).get("Contents", []) == []


def test_s3_detects_corruption_on_read_and_materialize(
    s3_store: S3ArtifactStore, s3_endpoint: str
) -> None:
    stored = s3_store.put_bytes("data.jsonl", b"good bytes\n")
    _s3_client(s3_endpoint).put_object(  # same metadata, different bytes
        Bucket=s3_store.bucket,
        Key="svc/data.jsonl",
        Body=b"evil bytes\n",
        Metadata={"sha256": stored.sha256},
    )
    with (
        pytest.raises(ArtifactError, match=r"'data\.jsonl' is corrupt"),
        s3_store.open(stored.uri) as handle,
    ):
        handle.read()
    with pytest.raises(ArtifactError, match="corrupt"):
        s3_store.materialize(stored.uri)


def test_s3_a_directory_without_its_manifest_does_not_exist(
    s3_store: S3ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _tree(tmp_path / "adapter", {"a": b"1", "b": b"2"})

    def crash(**_: object) -> None:
        raise ConnectionError("the writer died before the manifest")

    monkeypatch.setattr(s3_store._client, "put_object", crash)
    with pytest.raises(ConnectionError):
        s3_store.put_directory("ckpt", source)
    assert not s3_store.exists(s3_store.uri_for("ckpt"))
    with pytest.raises(ArtifactError, match="does not exist"):
        s3_store.materialize(s3_store.uri_for("ckpt"))


def test_s3_clean_temp_of_one_replica_spares_another_replicas_spool(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    cache = tmp_path / "shared-cache"
    first = S3ArtifactStore(s3_bucket, "svc", endpoint_url=s3_endpoint, cache_dir=cache)
    second = S3ArtifactStore(s3_bucket, "svc", endpoint_url=s3_endpoint, cache_dir=cache)
    with first.open_spool() as spool:
        spool.write(b"in flight")
        assert second.clean_temp() == 0
        stored = spool.commit("upload")
    with second.open(stored.uri) as handle:
        assert handle.read() == b"in flight"


def test_s3_clean_temp_removes_the_spools_of_a_dead_process(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    cache = tmp_path / "shared-cache"
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()  # its pid names a process that is gone
    leftover = cache / f"spool-{exited.pid}-abc"
    leftover.mkdir(parents=True)
    (leftover / "spool-x").write_bytes(b"half an upload")
    store = S3ArtifactStore(s3_bucket, "svc", endpoint_url=s3_endpoint, cache_dir=cache)
    assert store.clean_temp() == 1
    assert not leftover.exists()


def test_s3_materialize_is_cached_by_content(s3_store: S3ArtifactStore) -> None:
    stored = s3_store.put_bytes("m", b"v1")
    first = s3_store.materialize(stored.uri)
    assert s3_store.materialize(stored.uri) == first
    changed = s3_store.put_bytes("m", b"v2")
    assert s3_store.materialize(changed.uri).read_bytes() == b"v2"


def test_the_factory_picks_the_store_by_uri(tmp_path: Path, s3_endpoint: str) -> None:
    assert isinstance(artifact_store_from_uri(tmp_path / "a"), LocalArtifactStore)
    assert isinstance(artifact_store_from_uri((tmp_path / "b").as_uri()), LocalArtifactStore)
    s3 = artifact_store_from_uri("s3://bucket/some/prefix", s3_endpoint_url=s3_endpoint)
    assert isinstance(s3, S3ArtifactStore)
    assert s3.location == "s3://bucket/some/prefix"
    with pytest.raises(ArtifactError, match="unsupported artifact root"):
        artifact_store_from_uri("gs://bucket/x")
