"""Restore a snapshot to an image file or a block device.

Safety first: a block device is written only with ``force``, never when it or a partition of
it is mounted or held, and never when it is smaller than the snapshot; an existing non-empty
file is replaced only with ``force``. A file is written under a temporary name, fsynced and
renamed over the target at the end, so an interrupted restore never leaves a half-written
file. Zero extents become holes in a file and are zeroed (BLKZEROOUT) on a device.

Speed: the calling thread walks the snapshot's chunk list and locates chunks in batches of
BATCH bytes; worker threads read neighbouring chunks of a pack in one request, decompress,
verify blake3 and pwrite at the chunk's offset. A chunk that fails verification stops the
restore with DamagedData naming the chunk and its offset in the image. With ``skip_damaged``
a damaged or missing chunk (or tree node) is left as zeros instead, the restore goes on,
and every range not restored is listed in ``RestoreResult.unrestored`` (a ddrescue-like
map). ``/dev/null`` is accepted as a target: a restore there verifies without writing.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ..repository.catalog import BlobLocation, SnapshotRecord
from ..errors import DamagedData, OutOfSpace, SnapshotError, TargetError
from ..repository.hashing import ZERO_ID, short
from ..images.device import mount_holder, zero_range
from ..repository import Repository
from ..repository.tree import Leaf
from ..writeback import start_writeback
from .damage import Lost, merge, walk
from .progress import NoProgress, Progress

BATCH = 16 << 20
DEPTH = 4
WORKERS = 2


@dataclass
class RestoreResult:
    snapshot: str
    target: str
    kind: str  # "file" or "device"
    size: int
    data_bytes: int
    zero_bytes: int
    duration: float
    unrestored: list[dict] = field(default_factory=list)  # {offset, length, reason}, by offset
    unrestored_bytes: int = 0


class _Target:
    def __init__(self, path: str, size: int, force: bool) -> None:
        self.path = path
        self.final: str | None = None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except PermissionError:
            raise TargetError(f"permission denied for {path}: run as a user who can write it") from None
        if st is not None and stat.S_ISBLK(st.st_mode):
            self.kind = "device"
            holder = mount_holder(st.st_rdev)
            if holder:
                raise TargetError(f"{path} is in use ({holder}): unmount it first; diskvault never writes a mounted device")
            if not force:
                raise TargetError(f"{path} is a block device: its contents would be overwritten; add --force to do so")
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise TargetError(f"{path} is busy (mounted or held): unmount it first") from None
                raise TargetError(f"cannot open {path}: {exc.strerror}") from None
            dev_size = os.lseek(self.fd, 0, os.SEEK_END)
            if dev_size < size:
                os.close(self.fd)
                raise TargetError(f"{path} holds {dev_size} bytes, the snapshot needs {size}: use a larger device")
            return
        if st is not None and stat.S_ISCHR(st.st_mode) and os.path.realpath(path) == os.devnull:
            self.kind = "null"  # verify only: nothing is kept
            self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            return
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise TargetError(f"{path} is neither a regular file nor a block device")
        if st is not None and st.st_size > 0 and not force:
            raise TargetError(f"{path} exists and is not empty: add --force to replace it")
        self.kind = "file"
        path = os.path.realpath(path)  # a symlink's target is replaced, not the link
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            raise TargetError(f"directory {folder} does not exist")
        self.final = path
        self.path = os.path.join(folder, f".{os.path.basename(path)}.diskvault-{secrets.token_hex(4)}")
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            os.ftruncate(self.fd, size)
        except OSError as exc:
            self.abort()
            raise _os_error(exc, path) from None

    def zero(self, offset: int, length: int) -> None:
        if self.kind == "device":
            zero_range(self.fd, offset, length)

    def written(self, offset: int, length: int) -> None:
        """A range is written: start its writeback, so the final fsync has little left."""
        if self.kind != "null":
            start_writeback(self.fd, offset, length)

    def commit(self) -> None:
        if self.kind != "null":
            os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        if self.final is not None:
            os.rename(self.path, self.final)
            dfd = os.open(os.path.dirname(self.final), os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dfd)
            os.close(dfd)

    def abort(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.final is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _os_error(exc: OSError, path: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutOfSpace(f"no space left to write {path}")
    return TargetError(f"cannot write {path}: {exc.strerror}")


def _write_batch(repo: Repository, fd: int, leaves: list[Leaf], locs: dict[bytes, BlobLocation],
                 skip_damaged: bool = False) -> dict[bytes, str]:
    """Write the batch's chunks; returns ``{chunk id: reason}`` of damaged chunks (left
    unwritten) when ``skip_damaged``, else raises DamagedData naming the first one's offset."""
    by_id: dict[bytes, list[int]] = {}
    for leaf in leaves:
        by_id.setdefault(leaf.id, []).append(leaf.offset)
    done: set[bytes] = set()

    def put(loc: BlobLocation, raw) -> None:
        for offset in by_id[loc.id]:
            view = memoryview(raw)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        done.add(loc.id)

    try:
        for loc, raw in repo.read_ranges([locs[i] for i in by_id]):
            put(loc, raw)
        return {}
    except DamagedData:
        pass
    bad: dict[bytes, str] = {}
    for ident in by_id:  # find which chunks are damaged, one by one
        if ident in done:
            continue
        try:
            put(locs[ident], repo.read_blob(locs[ident]))
        except DamagedData as exc:
            bad[ident] = str(exc)
    if not skip_damaged and bad:
        first = min(bad, key=lambda i: by_id[i][0])
        raise DamagedData(f"byte {by_id[first][0]} of the image (chunk {short(first)}): {bad[first]}")
    return bad


def restore(repo: Repository, snap: SnapshotRecord, target_path: str, *args, **kwargs) -> RestoreResult:
    """Restore while holding a shared repository lock (prune cannot move chunks meanwhile)."""
    with repo.lock("shared", "restore"):
        if repo.catalog.get_snapshot(snap.id) is None:  # forgotten before the lock was taken
            raise SnapshotError(f"snapshot {snap.id[:12]} was forgotten meanwhile: list them with diskvault snapshots")
        return _restore(repo, snap, target_path, *args, **kwargs)


def _restore(
    repo: Repository,
    snap: SnapshotRecord,
    target_path: str,
    force: bool = False,
    progress: Progress | None = None,
    skip_damaged: bool = False,
) -> RestoreResult:
    progress = progress or NoProgress()
    started = time.monotonic()
    target = _Target(target_path, snap.size, force)
    pending: deque[tuple[Future, list[Leaf], int]] = deque()
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="diskvault-restore")
    data = zeros = 0
    lost: list[tuple[int, int, str]] = []

    def unrestored(offset: int, length: int, reason: str) -> None:
        lost.append((offset, length, reason))
        target.zero(offset, length)

    def submit(batch: list[Leaf]) -> None:
        locs = repo.locate({leaf.id for leaf in batch})
        missing = [leaf for leaf in batch if leaf.id not in locs]
        if missing and not skip_damaged:
            leaf = missing[0]
            raise DamagedData(
                f"chunk {short(leaf.id)} at byte {leaf.offset} of snapshot {snap.id[:12]} is missing from the catalog"
            )
        for leaf in missing:
            unrestored(leaf.offset, leaf.length, f"chunk {short(leaf.id)} is missing from the catalog")
        batch = [leaf for leaf in batch if leaf.id in locs]
        fut = pool.submit(_write_batch, repo, target.fd, batch, locs, skip_damaged)
        pending.append((fut, batch, sum(l.length for l in batch) + sum(l.length for l in missing)))
        while len(pending) > DEPTH:
            drain_one()

    def drain_one() -> None:
        fut, batch, n = pending.popleft()
        try:
            bad = fut.result()
        except DamagedData as exc:
            raise DamagedData(f"restore of snapshot {snap.id[:12]} stopped at {exc}") from None
        except OSError as exc:
            raise _os_error(exc, target_path) from None
        for leaf in batch:
            if leaf.id in bad:
                unrestored(leaf.offset, leaf.length, bad[leaf.id])
        if batch:
            start = batch[0].offset
            target.written(start, batch[-1].offset + batch[-1].length - start)
        progress.advance(n)

    try:
        progress.start(snap.size, "restore")
        batch: list[Leaf] = []
        batch_bytes = 0
        root = bytes.fromhex(snap.tree)
        for leaf in walk(repo.load_tree_node, root, snap.size):
            if isinstance(leaf, Lost):
                if not skip_damaged:
                    raise DamagedData(f"restore of snapshot {snap.id[:12]} stopped at byte {leaf.offset} of the image: "
                                      f"{leaf.reason} ({leaf.length} bytes from there cannot be restored)")
                unrestored(leaf.offset, leaf.length, leaf.reason)
                progress.advance(leaf.length)
                continue
            if leaf.id == ZERO_ID:
                target.zero(leaf.offset, leaf.length)
                zeros += leaf.length
                progress.advance(leaf.length)
                continue
            batch.append(leaf)
            batch_bytes += leaf.length
            data += leaf.length
            if batch_bytes >= BATCH:
                submit(batch)
                batch, batch_bytes = [], 0
        if batch:
            submit(batch)
        while pending:
            drain_one()
        target.commit()
    except BaseException:
        for fut, _, _ in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        target.abort()
        raise
    pool.shutdown()
    lost.sort()
    spans = merge((o, n) for o, n, _ in lost)
    return RestoreResult(snap.id, target_path, target.kind, snap.size, data, zeros, round(time.monotonic() - started, 3),
                         [{"offset": o, "length": n, "reason": r} for o, n, r in lost], sum(n for _, n in spans))
