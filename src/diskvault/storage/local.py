"""Local directory backend.

Every write is atomic and durable: data goes to ``NAME.tmp-<random>``, is fsynced, renamed
over ``NAME``, and the directory is fsynced, so after a crash a name holds either nothing
or its complete content. Left-over ``.tmp-`` files are garbage that ``clean_temporary``
removes. Raises OutOfSpace on ENOSPC (the temporary file is removed first), and
FileNotFoundError for a missing name.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator

from ..errors import OutOfSpace

TMP_MARK = ".tmp-"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class LocalFileWriter:
    """Writes are gathered and handed to the kernel with one ``writev`` per FLUSH_BYTES or
    FLUSH_COUNT pieces (a pack gets one piece per chunk: a system call each would cost a
    round trip through the GIL each)."""

    FLUSH_BYTES = 4 << 20
    FLUSH_COUNT = 512  # below IOV_MAX (1024)

    def __init__(self, root: str, name: str) -> None:
        self.path = os.path.join(root, name)
        self.dir = os.path.dirname(self.path)
        os.makedirs(self.dir, exist_ok=True)
        self.tmp = f"{self.path}{TMP_MARK}{secrets.token_hex(4)}"
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.pos = 0
        self._pending: list[memoryview] = []
        self._held = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``. It is kept, not copied, until the next ``flush`` or ``commit``:
        the caller must not change it before then."""
        self._pending.append(memoryview(data))
        self._held += len(data)
        self.pos += len(data)
        if self._held >= self.FLUSH_BYTES or len(self._pending) >= self.FLUSH_COUNT:
            self.flush()

    def flush(self) -> None:
        """Hand every pending write to the kernel."""
        pending, self._pending, self._held = self._pending, [], 0
        i = 0
        try:
            while i < len(pending):
                n = os.writev(self.fd, pending[i : i + self.FLUSH_COUNT])
                while i < len(pending) and n >= len(pending[i]):
                    n -= len(pending[i])
                    i += 1
                if n:  # a short write ended inside this piece
                    pending[i] = pending[i][n:]
        except OSError as exc:
            raise self._failed(exc) from None

    def tell(self) -> int:
        return self.pos

    def commit(self) -> None:
        self.flush()
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.rename(self.tmp, self.path)
            _fsync_dir(self.dir)
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> Exception:
        """Remove the temporary file; the error to raise (OutOfSpace on a full disk)."""
        self.abort()
        if _no_space(exc):
            return OutOfSpace(f"no space left on the repository's disk ({self.dir})")
        return exc

    def abort(self) -> None:
        self._pending, self._held = [], 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class LocalStorage:
    """Files under one directory; reads are positional (pread) and thread-safe."""

    MAX_OPEN = 64

    def __init__(self, root: str) -> None:
        self.root = root
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def create(self, name: str) -> LocalFileWriter:
        return LocalFileWriter(self.root, name)

    def write_atomic(self, name: str, data: bytes) -> None:
        w = self.create(name)
        w.write(data)
        w.commit()

    def read(self, name: str) -> bytes:
        with open(self._path(name), "rb") as f:
            return f.read()

    def _fd(self, name: str) -> int:
        """A private duplicate of the cached descriptor of ``name``: the caller closes it, so
        evicting the cache entry meanwhile (another thread) never closes a file in use."""
        with self._lock:
            fd = self._fds.get(name)
            if fd is not None:
                self._fds.move_to_end(name)
            else:
                fd = os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC)
                self._fds[name] = fd
                while len(self._fds) > self.MAX_OPEN:
                    _, old = self._fds.popitem(last=False)
                    os.close(old)
            return os.dup(fd)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        fd = self._fd(name)
        try:
            data = os.pread(fd, length, offset)
            if len(data) < length:  # short read: the file is shorter than expected
                data += os.pread(fd, length - len(data), offset + len(data))
        except OSError as exc:  # e.g. EIO: name the file
            raise OSError(exc.errno, exc.strerror, self._path(name)) from None
        finally:
            os.close(fd)
        return data

    def size(self, name: str) -> int:
        return os.stat(self._path(name)).st_size

    def exists(self, name: str) -> bool:
        return os.path.exists(self._path(name))

    def list(self, folder: str) -> Iterator[str]:
        base = self._path(folder)
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            for f in sorted(files):
                if TMP_MARK not in f:
                    yield os.path.join(rel, f) if rel != "." else f

    def delete(self, name: str) -> None:
        with self._lock:
            fd = self._fds.pop(name, None)
            if fd is not None:
                os.close(fd)
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            return
        _fsync_dir(os.path.dirname(self._path(name)))

    def clean_temporary(self) -> int:
        """Remove ``.tmp-`` files left by an interrupted write; returns how many."""
        n = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                if TMP_MARK in f:
                    os.unlink(os.path.join(dirpath, f))
                    n += 1
        return n

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
