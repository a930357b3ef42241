"""Noticing that a credential file changed, so it can be re-read without a restart."""

from __future__ import annotations

import os
from pathlib import Path

#: (inode, size, mtime) — changes on an in-place write and on an atomic rename (Kubernetes
#: Secret volumes swap a symlink, which ``stat`` follows).
FileStamp = tuple[int, int, int]


def file_stamp(path: Path) -> FileStamp:
    stat = os.stat(path)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
