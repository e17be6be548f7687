"""Delta restore: bring a target that holds an older or changed copy of a snapshot back to
the snapshot's bytes, writing only the chunks that differ.

The target is read in the snapshot's chunk order, BATCH bytes at a time, one batch ahead
on a worker thread; each chunk's range of the target is hashed (blake3, the chunk's content
id) and compared with the chunk's id. Only chunks whose bytes differ are fetched from the
repository (verified) and written; a zero extent of the snapshot is compared with zeros and
zeroed only where the target holds something else. The same idea as casync's seeds and
Macrium's Rapid Delta Restore, for any file system, since it works on the image's bytes.

Idempotent: every chunk is either already right or rewritten with the same bytes, so a
delta restore killed at any point and run again finishes the job. ``dry_run`` reads and
counts without writing. Raises DamagedData for a damaged or missing chunk that must be
written (the chunks already right need nothing from the repository), OSError from the target.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import DamagedData
from ..repository import Repository
from ..repository.catalog import SnapshotRecord
from ..repository.hashing import ZERO_ID, content_id, short
from .damage import Lost, walk
from .progress import NoProgress, Progress

BATCH = 16 << 20
ZERO_BLOCK = 64 << 10  # a zero extent is zeroed where the target holds something, by this unit
_ZEROS = bytes(BATCH)


@dataclass
class DeltaResult:
    bytes_read_target: int = 0
    bytes_written: int = 0  # chunk bytes written plus bytes zeroed
    chunks_unchanged: int = 0
    chunks_written: int = 0
    zero_bytes_zeroed: int = 0


Item = tuple[int, int, bytes]  # (offset, length, chunk id or ZERO_ID)


def _items(repo: Repository, snap: SnapshotRecord, end: int) -> Iterator[list[Item]]:
    """The snapshot's chunk list up to byte ``end`` in batches of about BATCH bytes (zero
    extents cut to fit)."""
    batch: list[Item] = []
    size = 0
    for leaf in walk(repo.load_tree_node, bytes.fromhex(snap.tree), snap.size):
        if leaf.offset >= end:
            break
        if isinstance(leaf, Lost):
            raise DamagedData(f"delta restore of snapshot {snap.id[:12]} stopped at byte {leaf.offset}: {leaf.reason}")
        pieces = [(leaf.offset, leaf.length)]
        if leaf.id == ZERO_ID:
            stop = min(end, leaf.offset + leaf.length)
            pieces = [(o, min(BATCH, stop - o)) for o in range(leaf.offset, stop, BATCH)]
        for off, n in pieces:
            batch.append((off, n, leaf.id))
            size += n
            if size >= BATCH:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _compare(fd: int, batch: list[Item]) -> tuple[list[Item], list[tuple[int, int]], int]:
    """Read the batch's range of the target: ``(chunks that differ, zero ranges to zero, bytes read)``."""
    start = batch[0][0]
    end = batch[-1][0] + batch[-1][1]
    data = memoryview(os.pread(fd, end - start, start))
    differ: list[Item] = []
    zero: list[tuple[int, int]] = []
    for off, n, ident in batch:
        have = data[off - start : off - start + n]
        if ident == ZERO_ID:
            if len(have) < n or not _ZEROS.startswith(have):  # memcmp, no copy
                for o in range(0, n, ZERO_BLOCK):  # zero only the blocks that hold something
                    part = have[o : o + ZERO_BLOCK]
                    if len(part) < min(ZERO_BLOCK, n - o) or not _ZEROS.startswith(part):
                        if zero and zero[-1][0] + zero[-1][1] == off + o:
                            zero[-1] = (zero[-1][0], zero[-1][1] + min(ZERO_BLOCK, n - o))
                        else:
                            zero.append((off + o, min(ZERO_BLOCK, n - o)))
        elif len(have) < n or content_id(have) != ident:
            differ.append((off, n, ident))
    return differ, zero, len(data)


Writer = Callable[[int, bytes | memoryview], None]


def delta_restore(repo: Repository, snap: SnapshotRecord, fd: int, write: Writer, zero: Callable[[int, int], None],
                  dry_run: bool = False, progress: Progress | None = None, end: int | None = None) -> DeltaResult:
    """Make the target read through ``fd`` hold the snapshot's first ``end`` bytes (default:
    all), writing only what differs with ``write(offset, data)`` and ``zero(offset, length)``."""
    progress = progress or NoProgress()
    res = DeltaResult()
    end = snap.size if end is None else min(end, snap.size)
    pool = ThreadPoolExecutor(1, thread_name_prefix="diskvault-delta")
    try:
        progress.start(end, "delta restore")
        batches = _items(repo, snap, end)
        current = next(batches, None)
        nxt = pool.submit(_compare, fd, current) if current else None
        while current is not None:
            differ, zeros, n = nxt.result()  # type: ignore[union-attr]
            following = next(batches, None)
            nxt = pool.submit(_compare, fd, following) if following else None
            res.bytes_read_target += n
            chunks = sum(1 for it in current if it[2] != ZERO_ID)
            res.chunks_unchanged += chunks - len(differ)
            res.chunks_written += len(differ)
            res.bytes_written += sum(n for _, n, _ in differ) + sum(n for _, n in zeros)
            res.zero_bytes_zeroed += sum(n for _, n in zeros)
            if not dry_run:
                _write(repo, snap, write, differ)
                for off, length in zeros:
                    zero(off, length)
            progress.advance(sum(n for _, n, _ in current))
            current = following
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return res


def _write(repo: Repository, snap: SnapshotRecord, write: Writer, differ: list[Item]) -> None:
    if not differ:
        return
    at: dict[bytes, list[int]] = {}
    for off, _, ident in differ:
        at.setdefault(ident, []).append(off)
    locs = repo.locate(at)
    for ident in at:
        if ident not in locs:
            raise DamagedData(f"chunk {short(ident)} at byte {at[ident][0]} of snapshot {snap.id[:12]} is missing "
                              f"from the catalog")
    for loc, raw in repo.read_ranges(list(locs.values())):
        for off in at[loc.id]:
            write(off, raw)


__all__ = ["DeltaResult", "delta_restore"]
