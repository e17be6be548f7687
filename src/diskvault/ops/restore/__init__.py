"""Restore a snapshot to an image file, a block device or stdout.

Safety first (the target rules are ``images.target.Target``'s): a block device is written
only with ``force``, never when it or a partition of it is mounted or held, and never when
it is smaller than the snapshot; an existing non-empty file is overwritten in place only
with ``force``; a symbolic link is followed only with ``force``; a target inside the
repository is refused. A new file is written under a temporary name in its folder, fsynced
and renamed to its name at the end, so an interrupted restore never leaves a half-written
file (and the next restore to that name removes the temporary file). Zero extents become
holes in a file and are zeroed (BLKZEROOUT) on a device. On stdout (``-``) the image is
streamed in order: finished batches are written as they complete, oldest first.

Speed: the calling thread walks the snapshot's chunk list and locates chunks in batches of
BATCH bytes; worker threads read neighbouring chunks of a pack in one request, decompress,
verify blake3 and pwrite at the chunk's offset. A chunk that fails verification stops the
restore with DamagedData naming the chunk and its offset in the image. With ``skip_damaged``
a damaged or missing chunk (or tree node) is left as zeros instead, the restore goes on,
and every range not restored is listed in ``RestoreResult.unrestored`` (a ddrescue-like
map). ``/dev/null`` is accepted as a target: a restore there verifies without writing.

A whole disk onto a disk of another size (images/table_adjust.py): when the snapshot holds a
partition table and the target is a device or file of another size, or ``grow`` names a
partition, the image's first ``copy_bytes`` are written and then the sectors that fit the
table to the target (backup GPT moved to the end, CRCs, protective MBR; partition ``grow``
extended to the end). A smaller device is accepted when every partition fits.

Delta restore (ops/restore/delta.py) onto a target that already holds a copy: only chunks
that differ are written. ``delta=True`` always, ``False`` never, ``None`` (the default) when
the target is an existing file or device on which at least half of up to SAMPLE chunks,
sampled evenly over the image, already hold the snapshot's bytes.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ...repository.catalog import BlobLocation, SnapshotRecord
from ...errors import DamagedData, DiskvaultError, SnapshotError, TargetError, UsageError
from ...repository.hashing import ZERO_ID, short
from ...images.partitions import PartitionError, read_table
from ...images.table_adjust import Adjustment, plan_adjustment
from ...images.target import Target, os_error
from ...repository import Repository
from ...repository.tree import Leaf
from ..access.snapshot_reader import ReadContext, SnapshotReader
from ..integrity.damage import Lost, merge, walk
from ..progress import NoProgress, Progress
from .delta import delta_restore

BATCH = 16 << 20
DEPTH = 4
WORKERS = 2
SAMPLE = 64  # chunks compared to choose a delta restore by itself


@dataclass
class RestoreResult:
    snapshot: str
    target: str  # the path written (a symbolic link's resolved path), or "stdout"
    kind: str  # "file", "device", "stdout" or "null"
    size: int
    data_bytes: int
    zero_bytes: int
    duration: float
    unrestored: list[dict] = field(default_factory=list)  # {offset, length, reason}, by offset
    unrestored_bytes: int = 0
    in_place: bool = False  # an existing file or a device was overwritten (same inode, mode, owner)
    target_size: int = 0  # bytes of the target once written (a bigger file keeps its size)
    symlink: str | None = None  # the symbolic link given as the target (followed with force)
    table_adjusted: list[dict] = field(default_factory=list)  # {offset, length} rewritten to fit the table
    grown: dict | None = None  # {partition, old_size, new_size, grow_hint}: --grow-partition
    mode: str = "full"  # "full", "delta" or "delta-dry-run"
    bytes_read_target: int = 0  # delta: bytes of the target read and compared
    bytes_written: int = 0  # data bytes written to the target (chunks, table sectors)
    bytes_zeroed: int = 0  # delta: bytes zeroed where the snapshot holds zeros (holes in a file)
    chunks_unchanged: int = 0  # delta: chunks the target already held


def _write_batch(repo: Repository, write, leaves: list[Leaf], locs: dict[bytes, BlobLocation],
                 skip_damaged: bool = False) -> dict[bytes, str]:
    """Write the batch's chunks with ``write(offset, bytes)``; returns ``{chunk id: reason}``
    of damaged chunks (left unwritten) when ``skip_damaged``, else raises DamagedData naming
    the first one's offset."""
    by_id: dict[bytes, list[int]] = {}
    for leaf in leaves:
        by_id.setdefault(leaf.id, []).append(leaf.offset)
    done: set[bytes] = set()

    def put(loc: BlobLocation, raw) -> None:
        for offset in by_id[loc.id]:
            write(offset, raw)
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
    grow: int | None = None,
    delta: bool | None = None,
    dry_run: bool = False,
    discard: bool = False,
) -> RestoreResult:
    given = [name for name, on in (("--grow-partition", grow is not None), ("--delta", delta), ("--dry-run", dry_run),
                                   ("--discard", discard)) if on]
    if given and target_path in ("-", os.devnull):
        raise UsageError(f"{', '.join(given)}: only for a file or block device as TARGET, not {target_path}")
    progress = progress or NoProgress()
    started = time.monotonic()
    ctx = ReadContext(repo, cache_bytes=16 << 20, prefetch=False)
    try:
        reader = SnapshotReader(ctx, snap)
        has_table = _has_table(reader)
        if dry_run and not os.path.exists(target_path):
            raise TargetError(f"--dry-run compares the snapshot with an existing target: {target_path} is none")
        target = Target(target_path, snap.size, force, protect=repo.path, min_size=1 if has_table else None,
                        read=delta is not False or dry_run, discard=discard, dry_run=dry_run)
        try:
            adj = _fit(reader, snap, target, has_table, grow)
            mode = _choose(reader, target, delta, dry_run)
        except BaseException:
            target.abort()
            raise
    finally:
        ctx.close()
    limit = adj.copy_bytes if adj else snap.size
    if mode != "full":
        return _delta(repo, snap, target, adj, mode, limit, progress, started)
    stream = target.kind == "stdout"  # written in order by the calling thread
    depth = 1 if stream else DEPTH  # a stream keeps finished batches in memory until their turn
    pending: deque[tuple[Future, list[Leaf], int, dict[int, bytes] | None]] = deque()
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
        kept: dict[int, bytes] | None = {} if stream else None
        write = kept.__setitem__ if kept is not None else target.write
        fut = pool.submit(_write_batch, repo, write, batch, locs, skip_damaged)
        pending.append((fut, batch, sum(l.length for l in batch) + sum(l.length for l in missing), kept))
        while len(pending) > depth:
            drain_one()

    def drain_one() -> None:
        fut, batch, n, kept = pending.popleft()
        try:
            bad = fut.result()
            for offset in sorted(kept or ()):
                target.write(offset, kept[offset])
        except DamagedData as exc:
            raise DamagedData(f"restore of snapshot {snap.id[:12]} stopped at {exc}") from None
        except OSError as exc:
            raise os_error(exc, target.path) from None
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
            if leaf.offset >= limit:  # a smaller disk: the unpartitioned rest is not written
                break
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
        _apply(target, adj)
        try:
            target.commit()
        except OSError as exc:
            raise os_error(exc, target.path) from None
    except BaseException as exc:
        for fut, *_ in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        target.abort()
        _partly_written(exc, target)
        raise
    pool.shutdown()
    lost.sort()
    spans = merge((o, n) for o, n, _ in lost)
    table = sum(len(w.data) for w in adj.writes) if adj else 0
    return RestoreResult(snap.id, target.path, target.kind, snap.size, data, zeros, round(time.monotonic() - started, 3),
                         [{"offset": o, "length": n, "reason": r} for o, n, r in lost], sum(n for _, n in spans),
                         target.in_place, target.target_size, target.via, adj.to_json() if adj else [],
                         adj.grown if adj else None, "full", 0, data + table, 0, 0)


def _partly_written(exc: BaseException, target: Target) -> None:
    """Say in the error that an in-place target (an existing file, a device) is now partly
    overwritten and how to finish it (a new file never appears half-written)."""
    if target.in_place and isinstance(exc, DiskvaultError) and "partly overwritten" not in exc.message:
        exc.message += f"; {target.path} is partly overwritten: run the restore again to finish it"
        exc.args = (exc.message,)


def _has_table(reader: SnapshotReader) -> bool:
    """Whether the snapshot is a whole disk (a GPT or MBR partition table that reads)."""
    try:
        return read_table(reader.read, reader.size).label != "none"
    except (PartitionError, DamagedData):
        return False


def _fit(reader: SnapshotReader, snap: SnapshotRecord, target: Target, has_table: bool,
         grow: int | None) -> Adjustment | None:
    """The table adjustment for this target, or None when the image goes on as it is."""
    if target.kind in ("stdout", "null") or not has_table:
        if grow is not None:
            raise TargetError(f"snapshot {snap.id[:12]} holds no partition table: --grow-partition needs a whole disk")
        return None
    if target.target_size == snap.size and grow is None:
        return None
    adj = plan_adjustment(reader.read, snap.size, target.target_size, target.sector_size, grow)
    return adj if adj.needed or adj.copy_bytes != snap.size else None


def _apply(target: Target, adj: Adjustment | None) -> None:
    """Write the table sectors, after the image's bytes."""
    for w in adj.writes if adj else ():
        target.write(w.offset, w.data)


def _choose(reader: SnapshotReader, target: Target, delta: bool | None, dry_run: bool) -> str:
    """"full", "delta" or "delta-dry-run" (see the module docstring for the rule)."""
    if target.kind not in ("file", "device") or not target.in_place or target.old_size == 0 and target.kind == "file":
        if delta or dry_run:
            raise TargetError(f"{target.path} holds nothing to compare with: --delta and --dry-run need an existing "
                              "file or device")
        return "full"
    if dry_run:
        return "delta-dry-run"
    if delta is not None:
        return "delta" if delta else "full"
    same = total = 0
    for k in range(SAMPLE):
        piece = next(reader.pieces(reader.size * k // SAMPLE, reader.size * k // SAMPLE + 1), None)
        if piece is None or piece.id == ZERO_ID:
            continue
        total += 1
        try:
            have = os.pread(target.fd, piece.length, piece.offset)
        except OSError:
            return "full"
        same += reader.ctx.repo.content_id(have) == piece.id
    return "delta" if total and same * 2 >= total else "full"


def _delta(repo: Repository, snap: SnapshotRecord, target: Target, adj: Adjustment | None, mode: str, limit: int,
           progress: Progress, started: float) -> RestoreResult:
    dry = mode == "delta-dry-run"
    try:
        overlay = [(w.offset, w.data) for w in adj.writes] if adj else []
        d = delta_restore(repo, snap, target.fd, target.write, target.zero, dry_run=dry, progress=progress, end=limit,
                          sparse=target.kind == "file", overlay=overlay)
        stale = [w for w in (adj.writes if adj else ()) if os.pread(target.fd, len(w.data), w.offset) != w.data]
        table = sum(len(w.data) for w in stale)
        if not dry:
            for w in stale:
                target.write(w.offset, w.data)
            target.commit()
        else:
            target.abort()
    except DamagedData as exc:
        target.abort()
        raise DamagedData(f"restore of snapshot {snap.id[:12]} stopped: {exc}") from None
    except OSError as exc:
        target.abort()
        raise os_error(exc, target.path) from None
    except BaseException as exc:
        target.abort()
        if not dry:
            _partly_written(exc, target)
        raise
    return RestoreResult(snap.id, target.path, target.kind, snap.size, snap.data_bytes, snap.zero_bytes,
                         round(time.monotonic() - started, 3), [], 0, target.in_place, target.target_size, target.via,
                         [w.to_json() for w in stale], adj.grown if adj else None, mode, d.bytes_read_target,
                         d.bytes_written + table, d.bytes_zeroed, d.chunks_unchanged)
