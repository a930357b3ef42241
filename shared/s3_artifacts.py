"""The artifact store on S3 (or any S3-compatible server): ``s3://bucket/prefix/<key>``.

The same contract as :class:`shared.artifacts.LocalArtifactStore`, for stores that several
replicas (and nodes) share:

- **Whole or nothing.** :meth:`S3ArtifactStore.open_writer` spools bytes to a local temp file
  while their sha256 is computed, then uploads them in one go (boto3's managed transfer:
  multipart above ``multipart_threshold``, streamed from the file, never held in memory). S3
  makes an object visible only once its upload completes.
- **Spools upload as they are written.** :meth:`S3ArtifactStore.open_spool` (content whose key
  is known only at the end, such as a dataset version) sends each ``multipart_chunksize`` of
  bytes as a part of a multipart upload to a staging key (``<prefix>/.spools/<uuid>``) from
  background threads while the writer goes on, at most ``max_concurrency`` parts at once; its
  ``sync()`` sends the rest and completes the upload, and ``commit(key)`` copies the object to
  ``key`` inside S3 (with its sha256) and deletes the staging one. Content smaller than one part
  never leaves memory until ``commit``, which puts it at ``key`` directly. An abandoned spool's
  upload is aborted; a process that dies mid-upload leaves an incomplete upload (or, between
  copy and delete, a staging object) under ``.spools/``, which a bucket lifecycle rule on that
  prefix cleans up.
- **Verified.** Every object carries its sha256 as user metadata (``x-amz-meta-sha256``);
  :meth:`S3ArtifactStore.open` checks it when the stream reaches its end and
  :meth:`S3ArtifactStore.materialize` before the local copy appears.
- **Folders without partial reads.** S3 has no atomic rename, so a folder is uploaded file by
  file under a unique generation prefix (``<prefix>/.dirs/<uuid>/``) and only then is its
  *manifest* object written at the folder's key, listing the files with their sizes and
  hashes. Readers go through the manifest: before it exists there is no folder, after it every
  file it names is complete.
- **Local copies for workers.** :meth:`S3ArtifactStore.materialize` downloads an artifact once
  into a content-addressed cache folder (the path includes the sha256), so a worker gets a local
  path and a second materialization of the same content is free.

Each store instance spools into its own temp folder (named after its process), so one
replica's :meth:`clean_temp` never touches another live replica's in-flight writes; it removes
the folders of processes that have died.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.artifacts import (
    ArtifactError,
    ArtifactSpool,
    ArtifactWriter,
    StoredArtifact,
    WriterBackedStore,
    check_artifact_key,
    directory_sha256,
)

_CHUNK = 1024 * 1024
_SHA256 = "sha256"
_KIND = "tuneline-kind"
_DIRECTORY = "directory"
#: Where folder generations live under the store prefix (keys never start with a dot).
_GENERATIONS = ".dirs"
#: Where spools upload before their key is known (keys never start with a dot).
_SPOOLS = ".spools"
#: S3's smallest part (but the last).
_MIN_PART_BYTES = 5 * 1024 * 1024
#: Server-side copies of a committed spool: one request up to S3's 5 GiB limit on CopyObject,
#: a multipart copy beyond.
_COPY_TRANSFER = TransferConfig(
    multipart_threshold=5 * 1024**3, multipart_chunksize=512 * 1024**2, max_concurrency=4
)
_MISSING = {"404", "NoSuchKey", "NotFound"}

#: Multipart above 16 MiB, in 16 MiB parts, four at a time.
DEFAULT_TRANSFER = TransferConfig(
    multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=4
)


def _missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in _MISSING


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _VerifyingReader(io.RawIOBase):
    """A response body that checks the object's sha256 when it has been read to its end."""

    def __init__(self, body: Any, expected_sha256: str, key: str) -> None:
        self._body = body
        self._expected = expected_sha256
        self._key = key
        self._digest = hashlib.sha256()
        self._verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._body.read(len(view))
        if not data:
            self._verify()
            return 0
        view[: len(data)] = data
        self._digest.update(data)
        return len(data)

    def _verify(self) -> None:
        if self._verified:
            return
        self._verified = True
        actual = self._digest.hexdigest()
        if self._expected and actual != self._expected:
            raise ArtifactError(
                f"artifact {self._key!r} is corrupt: sha256 {actual}, expected {self._expected}"
            )

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class _StreamingUpload:
    """A spool's bytes on their way to ``staging_key``, one part at a time while they are
    written (see the module docstring): the sink of the spool's :class:`ArtifactSpool`."""

    def __init__(
        self, client: Any, bucket: str, staging_key: str, transfer: TransferConfig
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._key = staging_key
        self._part_bytes = max(int(transfer.multipart_chunksize), _MIN_PART_BYTES)
        self._max_in_flight = max(1, int(transfer.max_concurrency))
        #: What was written since the last part: the writes themselves (bytes are immutable),
        #: joined once into the part, rather than copied into a growing buffer and out again.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pool: ThreadPoolExecutor | None = None
        self._upload_id = ""
        self._parts: list[dict[str, Any]] = []
        self._in_flight: deque[Future[dict[str, Any]]] = deque()
        #: Whether the staging object exists (the multipart upload completed).
        self._completed = False
        self._sealed = False

    def write(self, data: bytes) -> None:
        if self._sealed:
            raise ArtifactError("the spool was synced: no writes may follow")
        self._pending.append(bytes(data))  # a copy only if the caller's is mutable
        self._pending_bytes += len(data)
        if self._pending_bytes >= self._part_bytes:
            self._send_buffer()

    def _send_buffer(self) -> None:
        """The buffered bytes as the next part, uploaded in the background."""
        if self._pool is None:
            self._upload_id = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._key
            )["UploadId"]
            self._pool = ThreadPoolExecutor(self._max_in_flight, thread_name_prefix="s3-part")
        while len(self._in_flight) >= self._max_in_flight:  # bounds the memory held
            self._parts.append(self._in_flight.popleft().result())
        part = self._take_pending()
        number = len(self._parts) + len(self._in_flight) + 1
        self._in_flight.append(self._pool.submit(self._upload_part, number, part))

    def _take_pending(self) -> bytes:
        part = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        return part

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        response = self._client.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def seal(self) -> None:
        """No more bytes: send the rest and complete the staging object (if it was started)."""
        if self._sealed:
            return
        self._sealed = True
        if self._pool is None:
            return  # smaller than a part: commit puts it in one request
        if self._pending:
            self._send_buffer()
        while self._in_flight:
            self._parts.append(self._in_flight.popleft().result())
        self._client.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._completed = True

    def commit(self, object_key: str, metadata: dict[str, str]) -> None:
        """Put the bytes at ``object_key`` with ``metadata``."""
        self.seal()
        if not self._completed:
            self._client.put_object(
                Bucket=self._bucket, Key=object_key, Body=self._take_pending(), Metadata=metadata
            )
            return
        self._client.copy(
            {"Bucket": self._bucket, "Key": self._key},
            self._bucket,
            object_key,
            ExtraArgs={"Metadata": metadata, "MetadataDirective": "REPLACE"},
            Config=_COPY_TRANSFER,
        )
        self.discard()

    def discard(self) -> None:
        """Leave nothing behind: abort the upload, or delete the staging object."""
        self._pending.clear()
        self._pending_bytes = 0
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._in_flight.clear()
            if self._completed:
                self._client.delete_object(Bucket=self._bucket, Key=self._key)
            else:
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
                )


class S3ArtifactStore(WriterBackedStore):
    """Artifacts under ``s3://<bucket>/<prefix>/``; see the module docstring."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        cache_dir: Path | None = None,
        transfer: TransferConfig = DEFAULT_TRANSFER,
    ) -> None:
        if not bucket:
            raise ArtifactError("an s3:// artifact root needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_artifact_key(self.prefix)
        self._client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or None,
            config=Config(
                # path-style addressing: S3-compatible servers on a plain host:port need it
                s3={"addressing_style": "path"} if endpoint_url else None,
                # no CRC32 of every part and object where S3 does not ask for one: each object
                # carries its sha256, checked on every read (a CPU cost per byte saved)
                request_checksum_calculation="when_required",
            ),
        )
        self._transfer = transfer
        self._cache = (
            cache_dir or Path(tempfile.gettempdir()) / "tuneline-artifact-cache"
        ).resolve()
        self._cache.mkdir(parents=True, exist_ok=True)
        # per process: clean_temp() of one replica never removes another live one's spools
        self._tmp = Path(tempfile.mkdtemp(prefix=f"spool-{os.getpid()}-", dir=self._cache))

    @classmethod
    def from_uri(
        cls, uri: str, *, endpoint_url: str | None = None, cache_dir: Path | None = None
    ) -> S3ArtifactStore:
        parsed = urlparse(uri)
        if parsed.scheme != "s3":
            raise ArtifactError(f"not an s3:// URI: {uri!r}", uri=uri)
        return cls(parsed.netloc, parsed.path, endpoint_url=endpoint_url, cache_dir=cache_dir)

    # -- names ----------------------------------------------------------------------------

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _object_key(self, key: str) -> str:
        check_artifact_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def _locate(self, uri: str) -> tuple[str, str]:
        """``(bucket, object key)`` of ``uri``; any bucket this store's credentials can read."""
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ArtifactError(
                f"unsupported artifact URI scheme {parsed.scheme!r}: expected s3://bucket/…",
                uri=uri,
            )
        object_key = parsed.path.lstrip("/")
        check_artifact_key(object_key)
        return parsed.netloc, object_key

    def key_of(self, uri: str) -> str:
        bucket, object_key = self._locate(uri)
        own = f"{self.prefix}/" if self.prefix else ""
        if bucket == self.bucket and object_key.startswith(own):
            return object_key[len(own) :]
        return object_key

    # -- writing --------------------------------------------------------------------------

    def _upload(self, path: Path, object_key: str, metadata: dict[str, str]) -> None:
        with path.open("rb") as handle:
            self._client.upload_fileobj(
                handle,
                self.bucket,
                object_key,
                ExtraArgs={"Metadata": metadata},
                Config=self._transfer,
            )

    @contextmanager
    def open_writer(self, key: str) -> Iterator[ArtifactWriter]:
        """Stream bytes into ``key``; uploaded only if the block succeeds."""
        object_key = self._object_key(key)
        fd, temp_name = tempfile.mkstemp(dir=self._tmp, prefix="write-")
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                writer = ArtifactWriter(handle)
                yield writer
            self._upload(temp, object_key, {_SHA256: writer.sha256})
            writer.stored = StoredArtifact(
                f"s3://{self.bucket}/{object_key}", writer.sha256, writer.size_bytes
            )
        finally:
            temp.unlink(missing_ok=True)

    @contextmanager
    def open_spool(self) -> Iterator[ArtifactSpool]:
        """Upload bytes in parts as they come, to a staging key; :meth:`ArtifactSpool.sync`
        finishes the upload, :meth:`ArtifactSpool.commit` copies it to its key (see the module
        docstring). Whatever is not committed when the block ends is discarded."""
        staging = f"{self.prefix}/{_SPOOLS}" if self.prefix else _SPOOLS
        staging = f"{staging}/{uuid.uuid4().hex}"
        upload = _StreamingUpload(self._client, self.bucket, staging, self._transfer)

        def commit_to(key: str) -> StoredArtifact:
            object_key = self._object_key(key)
            upload.commit(object_key, {_SHA256: spool.sha256})
            return StoredArtifact(
                f"s3://{self.bucket}/{object_key}", spool.sha256, spool.size_bytes
            )

        spool = ArtifactSpool(upload, commit_to, upload.seal)
        try:
            yield spool
        finally:
            upload.discard()

    def put_directory(self, key: str, source: Path) -> StoredArtifact:
        """Upload folder ``source``'s files under a new generation, then its manifest at ``key``.

        A folder already at ``key`` is replaced as a whole (its manifest is overwritten, then
        its old generation deleted), never merged.
        """
        object_key = self._object_key(key)
        previous = self._directory_manifest(object_key, missing_ok=True)
        generation = f"{self.prefix}/{_GENERATIONS}" if self.prefix else _GENERATIONS
        generation = f"{generation}/{uuid.uuid4().hex}"
        files: list[dict[str, Any]] = []
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = file.relative_to(source).as_posix()
            sha = _file_sha256(file)
            self._upload(file, f"{generation}/{relative}", {_SHA256: sha})
            files.append({"path": relative, "size_bytes": file.stat().st_size, _SHA256: sha})
        sha256 = directory_sha256(source)
        size = sum(int(f["size_bytes"]) for f in files)
        manifest = {
            "kind": _DIRECTORY,
            "generation": generation,
            _SHA256: sha256,
            "size_bytes": size,
            "files": files,
        }
        self._client.put_object(
            Bucket=self.bucket,
            Key=object_key,
            Body=json.dumps(manifest, sort_keys=True).encode(),
            ContentType="application/json",
            Metadata={_KIND: _DIRECTORY, _SHA256: sha256},
        )
        if previous is not None:
            self._delete_prefix(str(previous["generation"]))
        return StoredArtifact(f"s3://{self.bucket}/{object_key}", sha256, size)

    # -- reading --------------------------------------------------------------------------

    def _head(self, bucket: str, object_key: str, uri: str) -> dict[str, Any]:
        try:
            return cast(dict[str, Any], self._client.head_object(Bucket=bucket, Key=object_key))
        except ClientError as error:
            if _missing(error):
                raise ArtifactError(
                    f"artifact {self.key_of(uri)!r} does not exist", uri=uri
                ) from error
            raise

    def _directory_manifest(
        self, object_key: str, *, missing_ok: bool = False, bucket: str | None = None
    ) -> dict[str, Any] | None:
        bucket = bucket or self.bucket
        try:
            response = self._client.get_object(Bucket=bucket, Key=object_key)
        except ClientError as error:
            if missing_ok and _missing(error):
                return None
            raise
        if response.get("Metadata", {}).get(_KIND) != _DIRECTORY:
            response["Body"].close()
            return None
        with response["Body"] as body:
            return cast(dict[str, Any], json.loads(body.read()))

    def open(self, uri: str) -> BinaryIO:
        bucket, object_key = self._locate(uri)
        try:
            response = self._client.get_object(Bucket=bucket, Key=object_key)
        except ClientError as error:
            if _missing(error):
                raise ArtifactError(
                    f"artifact {self.key_of(uri)!r} does not exist", uri=uri
                ) from error
            raise
        metadata = response.get("Metadata", {})
        if metadata.get(_KIND) == _DIRECTORY:
            response["Body"].close()
            raise ArtifactError(f"artifact {self.key_of(uri)!r} is a folder", uri=uri)
        reader = _VerifyingReader(response["Body"], metadata.get(_SHA256, ""), self.key_of(uri))
        return cast(BinaryIO, io.BufferedReader(reader, buffer_size=_CHUNK))

    def exists(self, uri: str) -> bool:
        bucket, object_key = self._locate(uri)
        try:
            self._client.head_object(Bucket=bucket, Key=object_key)
        except ClientError as error:
            if _missing(error):
                return False
            raise
        return True

    def _download(self, bucket: str, object_key: str, target: Path, expected: str) -> None:
        """Download to ``target`` (a new file), checking ``expected`` sha256 if given."""
        digest = hashlib.sha256()
        with target.open("wb") as handle:
            response = self._client.get_object(Bucket=bucket, Key=object_key)
            with response["Body"] as body:
                for chunk in iter(lambda: body.read(_CHUNK), b""):
                    digest.update(chunk)
                    handle.write(chunk)
        if expected and digest.hexdigest() != expected:
            raise ArtifactError(
                f"artifact {object_key!r} is corrupt: sha256 {digest.hexdigest()}, "
                f"expected {expected}"
            )

    def materialize(self, uri: str) -> Path:
        bucket, object_key = self._locate(uri)
        head = self._head(bucket, object_key, uri)
        metadata = head.get("Metadata", {})
        sha256 = metadata.get(_SHA256, "")
        name = object_key.rsplit("/", 1)[-1]
        target = self._cache / bucket / object_key / (sha256 or "unverified") / name
        if sha256 and target.exists():
            return target
        staging = Path(tempfile.mkdtemp(dir=self._tmp, prefix="materialize-"))
        try:
            local = staging / name
            if metadata.get(_KIND) == _DIRECTORY:
                manifest = self._directory_manifest(object_key, bucket=bucket)
                if manifest is None:  # replaced by a blob between the two requests
                    raise ArtifactError(f"artifact {self.key_of(uri)!r} changed", uri=uri)
                local.mkdir()
                for entry in manifest["files"]:
                    file = local / entry["path"]
                    file.parent.mkdir(parents=True, exist_ok=True)
                    self._download(
                        bucket, f"{manifest['generation']}/{entry['path']}", file, entry[_SHA256]
                    )
                if directory_sha256(local) != manifest[_SHA256]:
                    raise ArtifactError(f"artifact {self.key_of(uri)!r} is corrupt", uri=uri)
            else:
                self._download(bucket, object_key, local, sha256)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(local, target)
            except OSError:  # another process materialized the same content first
                if not target.exists():
                    raise
            return target
        except ClientError as error:
            if _missing(error):
                raise ArtifactError(
                    f"artifact {self.key_of(uri)!r} is incomplete or was deleted", uri=uri
                ) from error
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- housekeeping ---------------------------------------------------------------------

    def _delete_prefix(self, prefix: str) -> None:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{prefix}/"):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def delete(self, uri: str) -> None:
        bucket, object_key = self._locate(uri)
        own = f"{self.prefix}/" if self.prefix else ""
        if bucket != self.bucket or not object_key.startswith(own):
            raise ArtifactError(f"artifact {self.key_of(uri)!r} belongs to another store", uri=uri)
        manifest = self._directory_manifest(object_key, missing_ok=True)
        self._client.delete_object(Bucket=self.bucket, Key=object_key)
        if manifest is not None:
            self._delete_prefix(str(manifest["generation"]))

    def temp_entries(self) -> list[Path]:
        """What is left in this instance's spool folder (should be empty between writes)."""
        return sorted(self._tmp.iterdir())

    def clean_temp(self) -> int:
        """Remove this store's spools, and the spool folders of processes that are gone
        (crashed before cleaning up); returns how many entries went."""
        entries = self.temp_entries()
        for entry in entries:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        removed = len(entries)
        for folder in self._cache.glob("spool-*-*"):
            pid = folder.name.split("-")[1]
            if folder != self._tmp and pid.isdigit() and not _process_alive(int(pid)):
                removed += sum(1 for _ in folder.iterdir())
                shutil.rmtree(folder, ignore_errors=True)
        return removed
