"""Crash-safe small files for jobs: a file is replaced whole (temp, fsync, rename, fsync of
the folder), so a crash leaves the old or the new one, never a mix."""

from __future__ import annotations

import os
import tempfile


def write_file(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` by ``data`` atomically and durably, creating its folder; OSError as is."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
