"""Open a snapshot source (image file, block device, or ``-`` for stdin) and read it.

``Source.extents()`` splits the source into data extents and holes (SEEK_DATA/SEEK_HOLE on
sparse files), so holes are never read. ``Source.filler(offset, length)`` returns a function
that reads the extent sequentially into caller-given buffers. Opening raises SourceError with
a one-line reason (missing, permission denied, a directory, unreadable).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import SourceError

HOLE_MERGE = 1 << 20  # holes shorter than this are read as zeros: fewer, longer extents


@dataclass
class Source:
    path: str
    kind: str  # "file", "device" or "stdin"
    fd: int
    size: int | None  # None for stdin

    def extents(self) -> Iterator[tuple[int, int, bool]]:
        """``(offset, length, is_data)`` covering the source in order; one data extent of
        unknown length (``-1``) for stdin."""
        if self.size is None:
            yield 0, -1, True
            return
        if self.kind == "file":
            yield from _sparse_extents(self.fd, self.size)
        elif self.size:
            yield 0, self.size, True

    def filler(self, offset: int, length: int) -> Callable[[memoryview], int]:
        fd, path, size = self.fd, self.path, self.size
        pos = offset
        end = None if length < 0 else offset + length

        def fill(view: memoryview) -> int:
            nonlocal pos
            want = len(view) if end is None else min(len(view), end - pos)
            got = 0
            while got < want:
                try:
                    if end is None:
                        n = os.readv(fd, [view[got:want]])
                    else:
                        n = os.preadv(fd, [view[got:want]], pos)
                except OSError as exc:
                    raise SourceError(f"cannot read {path} at byte {pos}: {exc.strerror}") from None
                if n == 0:
                    if end is None:
                        break
                    raise SourceError(f"{path} ended at byte {pos}, before its size {size} when opened: it shrank while "
                                      "being read; snapshot it while nothing writes to it")
                got += n
                pos += n
            return got

        return fill

    def close(self) -> None:
        if self.path != "-":  # never close the process's own stdin
            os.close(self.fd)


def _sparse_extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    data: list[list[int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                break
            data = [[0, size]]  # filesystem without SEEK_DATA: read it all
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if data and start - data[-1][1] < HOLE_MERGE:
            data[-1][1] = end
        else:
            data.append([start, end])
        pos = end
    pos = 0
    for start, end in data:
        if start > pos:
            yield pos, start - pos, False
        yield start, end - start, True
        pos = end
    if pos < size:
        yield pos, size - pos, False


def open_source(path: str) -> Source:
    if path == "-":
        return Source("-", "stdin", sys.stdin.buffer.fileno(), None)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SourceError(f"source {path} does not exist: give an image file, a block device or - for stdin") from None
    except PermissionError:
        raise SourceError(f"permission denied reading {path}: run as a user who can read it (root for devices)") from None
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise SourceError(f"{path} is a directory: give an image file, a block device or - for stdin")
    if stat.S_ISBLK(st.st_mode):
        size = os.lseek(fd, 0, os.SEEK_END)
        kind = "device"
    elif stat.S_ISREG(st.st_mode):
        size, kind = st.st_size, "file"
    else:  # a pipe or character device given by name: stream it
        return Source(path, "stdin", fd, None)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except OSError:
        pass
    return Source(path, kind, fd, size)
