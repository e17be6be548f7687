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

In an object store (an ``s3:`` repository, ``storage`` given) there is no flock and no
rename: a lock is the object ``locks/<random>.json``, created with a create-only PUT and
refreshed by overwriting it. Taking one is "look, write mine, look again": a taker first
lists the locks and stops at a conflicting live one; else it writes its own and lists again,
and if a conflicting live lock appeared meanwhile it deletes its own and tries again (until
``wait``). Of two conflicting takers each writes before its second look, and the store is
read-after-write and list-after-write consistent, so the one that looks last sees the other:
they never both go on (both may back off; the next try, after a random pause, settles it).
A remote lock is stale when its process is gone (same host) or it was not refreshed for
REMOTE_STALE_AFTER (an hour): the refresh period plus twice the 15 minutes of clock skew an
S3 server tolerates before refusing requests, with a margin (docs/design.md, "Remote
repositories").
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from ..errors import DamagedData, DiskvaultError, RepositoryLocked, RepositoryReadOnly, UsageError, os_error
from ..storage import Storage
from ..storage.local import private_dir, private_file
from .crypto import PLAIN, Crypto

LOCKS = "locks"
STALE_AFTER = 30 * 60  # seconds without refresh
# in an object store, locks of other machines, whose clocks may each be up to 15 minutes off
# the server's (S3 refuses requests beyond that): REFRESH + 2 x 15 min + a margin
REMOTE_STALE_AFTER = 60 * 60
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


def stale_reason(lock: LockInfo, now: float | None = None, after: float = STALE_AFTER) -> str | None:
    """Why ``lock`` is stale, or None when its holder may still run. On this host the
    process table decides (a stopped but living holder keeps its lock); for another host,
    the age of the last refresh (stale ``after`` seconds)."""
    now = time.time() if now is None else now
    if not lock.time:  # list_locks could not read it
        return "it cannot be read (damaged, or not sealed with this repository's key)"
    if lock.host == socket.gethostname() and lock.pid:
        return None if _pid_alive(lock.pid, lock.start) else f"process {lock.pid} is gone"
    if now - lock.time > after:
        return f"not refreshed for {int(now - lock.time)} s"
    return None


def _dir(repo_path: str) -> str:
    path = os.path.join(repo_path, LOCKS)
    private_dir(path)
    return path


def list_locks(repo_path: str, crypto: Crypto = PLAIN, storage: Storage | None = None) -> list[LockInfo]:
    """Every lock of the repository at ``repo_path`` (in the object store ``storage`` when
    given); an unreadable one is listed as an old stale exclusive lock."""
    if storage is not None:
        names = [n.rpartition("/")[2] for n in storage.list(LOCKS)]
        read = lambda name: storage.read(f"{LOCKS}/{name}")  # noqa: E731
    else:
        folder = _dir(repo_path)
        names = sorted(os.listdir(folder))

        def read(name: str) -> bytes:
            with open(os.path.join(folder, name), "rb") as f:
                return f.read()
    out = []
    for name in names:
        if not name.endswith(".json") or ".tmp-" in name:
            continue
        try:
            d = json.loads(crypto.open(f"{LOCKS}/{name}".encode(), read(name)))
            out.append(LockInfo(d["kind"], d["command"], int(d["pid"]), d["host"], int(d.get("start", 0)),
                                float(d["time"]), name))
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError, DamagedData):
            # unreadable lock (e.g. half-written by a crashed host): treat as an old stale lock
            out.append(LockInfo("exclusive", "unknown", 0, "unknown", 0, 0.0, name))
    return out


def _body(lock: LockInfo, crypto: Crypto) -> bytes:
    body = json.dumps({k: v for k, v in lock.to_json().items() if k != "name"}).encode()
    return crypto.seal(f"{LOCKS}/{lock.name}".encode(), body)


def _write(folder: str, lock: LockInfo, crypto: Crypto) -> None:
    path = os.path.join(folder, lock.name)
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    try:
        with os.fdopen(private_file(tmp), "wb") as f:
            f.write(_body(lock, crypto))
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
    """A held lock; ``release`` removes its file (its object in ``storage``). A daemon thread
    refreshes it."""

    def __init__(self, repo_path: str, info: LockInfo, crypto: Crypto, storage: Storage | None = None) -> None:
        self.storage = storage
        self.folder = _dir(repo_path) if storage is None else ""
        self.info = info
        self.crypto = crypto
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="diskvault-lock", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH):
            self.info.time = time.time()
            try:
                if self.storage is not None:
                    self.storage.replace(f"{LOCKS}/{self.info.name}", _body(self.info, self.crypto))
                else:
                    _write(self.folder, self.info, self.crypto)
            except (OSError, DiskvaultError):
                pass  # tried again at the next period; stale only after STALE_AFTER without one

    def release(self) -> None:
        self._stop.set()
        self._thread.join()  # no refresh may re-create the file after it is removed
        if self.storage is not None:
            self.storage.delete(f"{LOCKS}/{self.info.name}")
            return
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
            crypto: Crypto = PLAIN, storage: Storage | None = None) -> RepositoryLock:
    """Take a lock or raise RepositoryLocked naming the holder (after ``wait`` seconds);
    ``crypto``: the repository's (its lock files are sealed when it is encrypted);
    ``storage``: the object store of a remote repository (lock objects, see above)."""
    assert kind in ("shared", "exclusive")
    if wait is None:
        wait = lock_wait()
    if storage is not None:
        return _acquire_remote(storage, repo_path, kind, command, wait, crypto)
    try:
        return _acquire(repo_path, kind, command, wait, crypto)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise RepositoryReadOnly(
                f"cannot lock repository {repo_path} ({(exc.strerror or str(exc)).lower()}: {exc.filename}): run as a "
                "user who may write it, or read without a lock (--no-lock)"
            ) from None
        raise os_error(exc, repo_path) from None  # e.g. ENOSPC: OutOfSpace


def _live(others: list[LockInfo], remove: Callable[[str], object], after: float = STALE_AFTER) -> list[LockInfo]:
    """The locks of ``others`` that are not stale (``stale_reason``); those of dead processes
    on this host are removed (``remove(name)``): certainly safe."""
    live = []
    for other in others:
        reason = stale_reason(other, after=after)
        if reason is None:
            live.append(other)
        elif other.host == socket.gethostname() and other.pid and reason.startswith("process"):
            remove(other.name)
    return live


def _locked_error(repo_path: str, blocking: list[LockInfo]) -> RepositoryLocked:
    holder = min(blocking, key=lambda lock: lock.time)
    more = f" and {len(blocking) - 1} more" if len(blocking) > 1 else ""
    return RepositoryLocked(
        f"repository {repo_path} is locked: {holder.describe()}{more}; wait for it to finish, or "
        f"if that process is gone run diskvault unlock -r {repo_path}"
    )


def _new_info(kind: str, command: str) -> LockInfo:
    pid = os.getpid()
    return LockInfo(kind, command, pid, socket.gethostname(), _proc_start(pid), time.time(),
                    f"{secrets.token_hex(8)}.json")


def _acquire_remote(storage: Storage, where: str, kind: str, command: str, wait: float,
                    crypto: Crypto) -> RepositoryLock:
    """Look, write mine (create-only), look again; see the module docstring."""
    deadline = time.monotonic() + wait
    remove = lambda name: storage.delete(f"{LOCKS}/{name}")  # noqa: E731
    while True:
        blocking = _conflicts(kind, _live(list_locks(where, crypto, storage), remove, REMOTE_STALE_AFTER))
        if not blocking:
            info = _new_info(kind, command)
            storage.put(f"{LOCKS}/{info.name}", _body(info, crypto))
            try:
                others = [o for o in list_locks(where, crypto, storage) if o.name != info.name]
                blocking = _conflicts(kind, _live(others, remove, REMOTE_STALE_AFTER))
            except BaseException:
                remove(info.name)
                raise
            if not blocking:
                return RepositoryLock(where, info, crypto, storage)
            remove(info.name)
        if time.monotonic() >= deadline:
            raise _locked_error(where, blocking)
        time.sleep(POLL * (1 + random.random()))  # two takers that both backed off try again apart


def _acquire(repo_path: str, kind: str, command: str, wait: float, crypto: Crypto) -> RepositoryLock:
    folder = _dir(repo_path)
    deadline = time.monotonic() + wait
    while True:
        with _guard(folder):
            blocking = _conflicts(kind, _live(list_locks(repo_path, crypto), lambda name: _remove(folder, name)))
            if not blocking:
                info = _new_info(kind, command)
                _write(folder, info, crypto)
                return RepositoryLock(repo_path, info, crypto)
        if time.monotonic() >= deadline:
            raise _locked_error(repo_path, blocking)
        time.sleep(POLL)


@contextmanager
def locked(repo_path: str, kind: str, command: str, wait: float | None = None,
           crypto: Crypto = PLAIN, storage: Storage | None = None) -> Iterator[RepositoryLock]:
    lock = acquire(repo_path, kind, command, wait, crypto, storage)
    try:
        yield lock
    finally:
        lock.release()


def unlock(repo_path: str, remove_all: bool = False, crypto: Crypto = PLAIN,
           storage: Storage | None = None) -> tuple[list[tuple[LockInfo, str]], list[LockInfo]]:
    """Remove stale locks (every lock with ``remove_all``; in the object store ``storage``
    when given). Returns ``(removed with reason, kept)``."""
    removed: list[tuple[LockInfo, str]] = []
    kept: list[LockInfo] = []
    if storage is not None:
        for lock in list_locks(repo_path, crypto, storage):
            reason = stale_reason(lock, after=REMOTE_STALE_AFTER) or ("forced (--all)" if remove_all else None)
            if reason is None:
                kept.append(lock)
            else:
                storage.delete(f"{LOCKS}/{lock.name}")
                removed.append((lock, reason))
        return removed, kept
    folder = _dir(repo_path)
    with _guard(folder):
        for lock in list_locks(repo_path, crypto):
            reason = stale_reason(lock) or ("forced (--all)" if remove_all else None)
            if reason is None:
                kept.append(lock)
            else:
                _remove(folder, lock.name)
                removed.append((lock, reason))
    return removed, kept
