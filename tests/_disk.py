"""Filling a (small, test-made) file system: what the disk-full tests and
``benchmarks/faults.py`` do to it."""

from __future__ import annotations

import os
from pathlib import Path


def fill_disk(path: Path) -> int:
    """Write ``path`` until the file system it is on has no space left (large writes,
    then single bytes for the last free block); returns the ``errno`` of the first
    failed write (28, ENOSPC, on a full disk)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError as exc:
            first = exc.errno
        try:
            while True:
                os.write(fd, b"\0")
        except OSError:
            pass
    finally:
        os.close(fd)
    return first
