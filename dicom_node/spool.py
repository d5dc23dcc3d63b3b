"""Atomic, durable spool: spool/<study>/<series>/<sop>.dcm, written so a crash never leaves a half file in place."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_UNSAFE = re.compile(r"[^0-9A-Za-z.\-]")


def sanitise_uid(uid: str) -> str:
    """UIDs are digits and dots; anything else (or '..') must never steer the path."""
    clean = _UNSAFE.sub("_", uid.strip())[:64]
    return clean if clean.strip(".") else "_"


def spool_path(root: Path, study: str, series: str, sop: str) -> Path:
    return Path(root) / sanitise_uid(study) / sanitise_uid(series) / (sanitise_uid(sop) + ".dcm")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, chunks: list[bytes]) -> int:
    """Temp file in the same dir, write, fsync, rename, fsync dir. Returns bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=path.parent)
    try:
        size = 0
        with os.fdopen(fd, "wb") as fh:
            for c in chunks:
                fh.write(c)
                size += len(c)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return size


def has_room(root: Path, *, min_free_bytes: int, max_usage_percent: float) -> bool:
    root.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(root)
    return usage.free >= min_free_bytes and 100.0 * usage.used / usage.total <= max_usage_percent
