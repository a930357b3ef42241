"""A compiled S3-compatible server on loopback, for benchmarks: s3s-fs, built from crates.io.

``bench/ingest.py --store s3`` measures the dataset service with its artifact store on S3. The
tests' server, moto, is Python: it spends about as much CPU per uploaded megabyte as the dataset
service itself (the complete and the copy alone, about 2 s per 100 MB), on the same two cores the
benchmark measures, where a real S3 costs the service's host nothing. s3s-fs (the `s3s`
project's file-system backend, in Rust) serves the same API (multipart uploads, server-side
copies, user metadata, SigV4) for a small fraction of that. ``cargo install`` builds it once, a
few minutes, into ``~/.cache/tuneline/s3s-fs/<version>``; the version is pinned, and
``--locked`` builds it with the dependencies it was released with.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tuneline.devtools.kafka import free_port
from tuneline.devtools.kafka.probes import port_open
from tuneline.devtools.waiting import eventually

S3S_FS_VERSION = "0.14.1"  # the newest whose Rust requirement (1.92) the machines' 1.95 meets
DEFAULT_CACHE = Path.home() / ".cache" / "tuneline" / "s3s-fs"


class S3ServerUnavailable(RuntimeError):
    """The server cannot be built here (no ``cargo``, or the build failed)."""


def s3s_fs_binary(cache: Path = DEFAULT_CACHE, version: str = S3S_FS_VERSION) -> Path:
    """The ``s3s-fs`` executable, built first if this cache has none."""
    root = cache / version
    binary = root / "bin" / "s3s-fs"
    if binary.exists():
        return binary
    cargo = shutil.which("cargo")
    if cargo is None:
        raise S3ServerUnavailable("building s3s-fs needs cargo (Rust); none is on PATH")
    print(f"building s3s-fs {version} with cargo, once (a few minutes) ...", flush=True)
    built = subprocess.run(
        [
            cargo,
            "install",
            f"s3s-fs@{version}",
            "--locked",
            "--features",
            "binary",
            "--root",
            str(root),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    if built.returncode != 0 or not binary.exists():
        raise S3ServerUnavailable(f"cargo install s3s-fs failed:\n{built.stderr[-3000:]}")
    return binary


@contextlib.contextmanager
def s3s_fs_server(data_dir: Path, access_key: str, secret_key: str) -> Iterator[str]:
    """An s3s-fs server storing under ``data_dir``, on a free loopback port, until the block
    ends; yields its endpoint URL. It accepts only the given credentials."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [
            str(s3s_fs_binary()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--access-key",
            access_key,
            "--secret-key",
            secret_key,
            str(data_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        eventually(
            lambda: server.poll() is not None or port_open(port),
            timeout=60,
            what="s3s-fs to listen",
        )
        if server.poll() is not None:
            raise S3ServerUnavailable(f"s3s-fs exited at start with status {server.returncode}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()
