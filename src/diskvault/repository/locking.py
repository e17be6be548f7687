"""Repository locks: shared (snapshot, restore, info) and exclusive (forget, prune).

A lock is a file ``locks/<random>.json`` holding ``{kind, command, pid, host, start, time}``
(sealed in an encrypted repository, like every stored byte: crypto.py).
Taking a lock runs under ``flock`` on the ``locks`` directory (released by the kernel even when
the process is killed), so "look at the other locks, then write mine" is atomic between
processes: two commands can never both believe they hold conflicting locks. Shared locks
coexist; an exclusive lock conflicts with every other lock.

A lock is stale when its process is gone (same host, and the pid is dead or now belongs to a
process started at another time) or when it was not refreshed for STALE_AFTER (a holder
rewrites its ``time`` every REFRESH seconds). Stale locks of dead processes on this host are
removed when a lock is taken; other stale locks are ignored and removed by
``diskvault unlock``. A conflict raises RepositoryLocked (exit 7) naming the holder, after
waiting up to ``wait`` seconds (``DISKVAULT_LOCK_WAIT``) for it to go away. A lock that
cannot be written raises RepositoryReadOnly (read-only file system, permission) or OutOfSpace;
a reading command then goes on without it (Repository.lock).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from ..errors import DamagedData, RepositoryLocked, RepositoryReadOnly, UsageError, os_error
from ..storage.local import private_dir, private_file
from .crypto import PLAIN, Crypto

LOCKS = "locks"
STALE_AFTER = 30 * 60  # seconds without refresh
REFRESH = 5 * 60
POLL = 0.2


@dataclass
class LockInfo:
    kind: str  # "shared" or "exclusive"
    command: str
    pid: int
    host: str
    start: int  # process start time (clock ticks since boot, /proc/PID/stat), 0 if unknown
    time: float  # unix time of creation or last refresh
    name: str = ""  # file name under locks/

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.time, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{self.kind} lock of '{self.command}' (pid {self.pid} on {self.host}, refreshed {when})"

    def to_json(self) -> dict:
        return asdict(self)


def _proc_start(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat.rsplit(b")", 1)[1].split()[19])


def _pid_alive(pid: int, start: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start and os.path.exists("/proc/self/stat"):
        now = _proc_start(pid)
        return now == 0 or now == start
    return True


def stale_reason(lock: LockInfo, now: float | None = None) -> str | None:
    """Why ``lock`` is stale, or None when its holder may still run. On this host the
    process table decides (a stopped but living holder keeps its lock); for another host,
    the age of the last refresh."""
    now = time.time() if now is None else now
    if not lock.time:  # list_locks could not read it
        return "it cannot be read (damaged, or not sealed with this repository's key)"
    if lock.host == socket.gethostname() and lock.pid:
        return None if _pid_alive(lock.pid, lock.start) else f"process {lock.pid} is gone"
    if now - lock.time > STALE_AFTER:
        return f"not refreshed for {int(now - lock.time)} s"
    return None


def _dir(repo_path: str) -> str:
    path = os.path.join(repo_path, LOCKS)
    private_dir(path)
    return path


def list_locks(repo_path: str, crypto: Crypto = PLAIN) -> list[LockInfo]:
    folder = _dir(repo_path)
    out = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json") or ".tmp-" in name:
            continue
        try:
            with open(os.path.join(folder, name), "rb") as f:
                d = json.loads(crypto.open(f"{LOCKS}/{name}".encode(), f.read()))
            out.append(LockInfo(d["kind"], d["command"], int(d["pid"]), d["host"], int(d.get("start", 0)),
                                float(d["time"]), name))
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError, DamagedData):
            # unreadable lock (e.g. half-written by a crashed host): treat as an old stale lock
            out.append(LockInfo("exclusive", "unknown", 0, "unknown", 0, 0.0, name))
    return out


def _write(folder: str, lock: LockInfo, crypto: Crypto) -> None:
    path = os.path.join(folder, lock.name)
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    body = json.dumps({k: v for k, v in lock.to_json().items() if k != "name"}).encode()
    try:
        with os.fdopen(private_file(tmp), "wb") as f:
            f.write(crypto.seal(f"{LOCKS}/{lock.name}".encode(), body))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:  # e.g. no space: leave no half-written lock behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(folder: str, name: str) -> bool:
    try:
        os.unlink(os.path.join(folder, name))
        return True
    except FileNotFoundError:
        return False


@contextmanager
def _guard(folder: str) -> Iterator[None]:
    """flock on the ``locks`` directory itself: serialises lock changes between processes."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _conflicts(kind: str, others: list[LockInfo]) -> list[LockInfo]:
    return [o for o in others if kind == "exclusive" or o.kind == "exclusive"]


class RepositoryLock:
    """A held lock; ``release`` removes its file. A daemon thread refreshes it."""

    def __init__(self, repo_path: str, info: LockInfo, crypto: Crypto) -> None:
        self.folder = _dir(repo_path)
        self.info = info
        self.crypto = crypto
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="diskvault-lock", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH):
            self.info.time = time.time()
            try:
                _write(self.folder, self.info, self.crypto)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        self._thread.join()  # no refresh may re-create the file after it is removed
        with _guard(self.folder):
            _remove(self.folder, self.info.name)


def lock_wait() -> float:
    """``DISKVAULT_LOCK_WAIT`` in seconds (default 0); raises UsageError (exit 2) unless it
    is a finite number >= 0."""
    text = os.environ.get("DISKVAULT_LOCK_WAIT", "0")
    try:
        wait = float(text)
    except ValueError:
        wait = -1.0
    if not 0 <= wait < float("inf"):  # NaN fails too
        raise UsageError(f"DISKVAULT_LOCK_WAIT={text!r} is not a number of seconds: set it to 0 or more (e.g. 30), or unset it")
    return wait


def acquire(repo_path: str, kind: str, command: str, wait: float | None = None,
            crypto: Crypto = PLAIN) -> RepositoryLock:
    """Take a lock or raise RepositoryLocked naming the holder (after ``wait`` seconds);
    ``crypto``: the repository's (its lock files are sealed when it is encrypted)."""
    assert kind in ("shared", "exclusive")
    if wait is None:
        wait = lock_wait()
    try:
        return _acquire(repo_path, kind, command, wait, crypto)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise RepositoryReadOnly(
                f"cannot lock repository {repo_path} ({(exc.strerror or str(exc)).lower()}: {exc.filename}): run as a "
                "user who may write it, or read without a lock (--no-lock)"
            ) from None
        raise os_error(exc, repo_path) from None  # e.g. ENOSPC: OutOfSpace


def _acquire(repo_path: str, kind: str, command: str, wait: float, crypto: Crypto) -> RepositoryLock:
    folder = _dir(repo_path)
    deadline = time.monotonic() + wait
    pid = os.getpid()
    while True:
        with _guard(folder):
            live = []
            for other in list_locks(repo_path, crypto):
                reason = stale_reason(other)
                if reason is None:
                    live.append(other)
                elif other.host == socket.gethostname() and other.pid and reason.startswith("process"):
                    _remove(folder, other.name)  # its process is gone: certainly safe
            blocking = _conflicts(kind, live)
            if not blocking:
                info = LockInfo(kind, command, pid, socket.gethostname(), _proc_start(pid), time.time(),
                                f"{secrets.token_hex(8)}.json")
                _write(folder, info, crypto)
                return RepositoryLock(repo_path, info, crypto)
        if time.monotonic() >= deadline:
            holder = min(blocking, key=lambda lock: lock.time)
            more = f" and {len(blocking) - 1} more" if len(blocking) > 1 else ""
            raise RepositoryLocked(
                f"repository {repo_path} is locked: {holder.describe()}{more}; wait for it to finish, or "
                f"if that process is gone run diskvault unlock -r {repo_path}"
            )
        time.sleep(POLL)


@contextmanager
def locked(repo_path: str, kind: str, command: str, wait: float | None = None,
           crypto: Crypto = PLAIN) -> Iterator[RepositoryLock]:
    lock = acquire(repo_path, kind, command, wait, crypto)
    try:
        yield lock
    finally:
        lock.release()


def unlock(repo_path: str, remove_all: bool = False,
           crypto: Crypto = PLAIN) -> tuple[list[tuple[LockInfo, str]], list[LockInfo]]:
    """Remove stale locks (every lock with ``remove_all``). Returns ``(removed with reason,
    kept)``."""
    folder = _dir(repo_path)
    removed: list[tuple[LockInfo, str]] = []
    kept: list[LockInfo] = []
    with _guard(folder):
        for lock in list_locks(repo_path, crypto):
            reason = stale_reason(lock) or ("forced (--all)" if remove_all else None)
            if reason is None:
                kept.append(lock)
            else:
                _remove(folder, lock.name)
                removed.append((lock, reason))
    return removed, kept
