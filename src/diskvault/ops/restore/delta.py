"""Delta restore: bring a target that holds an older or changed copy of a snapshot back to
the snapshot's bytes, writing only the chunks that differ.

The target is read in the snapshot's chunk order, BATCH bytes at a time, AHEAD batches
ahead on WORKERS threads; each chunk's range of the target is hashed (blake3, the chunk's
content id) and compared with the chunk's id. Only chunks whose bytes differ are fetched
from the repository (verified) and written; a zero extent of the snapshot is compared with
zeros and zeroed only where the target holds something else (on a regular file it is not
read at all: the parts that are not holes are punched). The same idea as casync's seeds and
Macrium's Rapid Delta Restore, for any file system, since it works on the image's bytes.

Idempotent: every chunk is either already right or rewritten with the same bytes, so a
delta restore killed at any point and run again finishes the job. ``dry_run`` reads and
counts without writing. Raises DamagedData for a damaged or missing chunk that must be
written (the chunks already right need nothing from the repository), OSError from the target.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ...errors import DamagedData
from ...images.source import data_ranges
from ...repository import Repository
from ...repository.catalog import SnapshotRecord
from ...repository.hashing import ZERO_ID, short
from ..integrity.damage import Lost, walk
from ..progress import NoProgress, Progress

BATCH = 16 << 20
WORKERS = 2  # pread and blake3 release the GIL: two batches are compared at once
AHEAD = 3  # batches in flight
ZERO_BLOCK = 64 << 10  # a zero extent is zeroed where the target holds something, by this unit
_ZEROS = bytes(BATCH)


@dataclass
class DeltaResult:
    bytes_read_target: int = 0
    bytes_written: int = 0  # chunk bytes written
    bytes_zeroed: int = 0  # bytes zeroed where the snapshot holds zeros (holes punched in a file)
    chunks_unchanged: int = 0
    chunks_written: int = 0


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


def _zero_blocks(have: memoryview, off: int, n: int, out: list[tuple[int, int]]) -> None:
    """Append the ZERO_BLOCK-sized pieces of ``have`` (read at ``off``, ``n`` bytes wanted)
    that are not all zeros."""
    if len(have) == n and _ZEROS.startswith(have):  # memcmp, no copy
        return
    for o in range(0, n, ZERO_BLOCK):
        part = have[o : o + ZERO_BLOCK]
        size = min(ZERO_BLOCK, n - o)
        if len(part) < size or not _ZEROS.startswith(part):
            if out and out[-1][0] + out[-1][1] == off + o:
                out[-1] = (out[-1][0], out[-1][1] + size)
            else:
                out.append((off + o, size))


def _compare(fd: int, batch: list[Item], sparse: bool,
             content_id: Callable[[bytes | memoryview], bytes]) -> tuple[list[Item], list[tuple[int, int]], int]:
    """Compare the batch with the target: ``(chunks that differ, ranges to zero, bytes read)``.
    Runs of neighbouring items are read with one pread each. With ``sparse`` (a regular
    file), a zero extent is not read: the parts of it that are not holes are zeroed."""
    differ: list[Item] = []
    zero: list[tuple[int, int]] = []
    read = 0
    i = 0
    while i < len(batch):
        if sparse and batch[i][2] == ZERO_ID:
            zero.extend((start, end - start) for start, end in data_ranges(fd, batch[i][0], batch[i][1]))
            i += 1
            continue
        j = i + 1
        while j < len(batch) and not (sparse and batch[j][2] == ZERO_ID):
            j += 1
        start = batch[i][0]
        data = memoryview(os.pread(fd, batch[j - 1][0] + batch[j - 1][1] - start, start))
        read += len(data)
        for off, n, ident in batch[i:j]:
            have = data[off - start : off - start + n]
            if ident == ZERO_ID:
                _zero_blocks(have, off, n, zero)
            elif len(have) < n or content_id(have) != ident:
                differ.append((off, n, ident))
        i = j
    return differ, zero, read


Writer = Callable[[int, bytes | memoryview], None]


def _overlaps(off: int, n: int, overlay: list[tuple[int, bytes]]) -> bool:
    return any(o < off + n and off < o + len(d) for o, d in overlay)


def _subtract(ranges: list[tuple[int, int]], overlay: list[tuple[int, bytes]]) -> list[tuple[int, int]]:
    """``ranges`` without the bytes ``overlay`` writes anyway."""
    out = ranges
    for o, d in overlay:
        cut: list[tuple[int, int]] = []
        for off, n in out:
            if o >= off + n or o + len(d) <= off:
                cut.append((off, n))
                continue
            if off < o:
                cut.append((off, o - off))
            if o + len(d) < off + n:
                cut.append((o + len(d), off + n - o - len(d)))
        out = cut
    return out


def _right_with_overlay(repo: Repository, fd: int, differ: list[Item],
                        overlay: list[tuple[int, bytes]]) -> set[Item]:
    """The chunks of ``differ`` that overlap ``overlay`` and whose target bytes equal the
    chunk with the overlay applied (a partition table fitted earlier): already right."""
    near = [it for it in differ if _overlaps(it[0], it[1], overlay)]
    if not near:
        return set()
    locs = repo.locate({it[2] for it in near})
    raw = {loc.id: bytes(data) for loc, data in repo.read_ranges(list(locs.values()))}
    right: set[Item] = set()
    for off, n, ident in near:
        if ident not in raw:
            continue
        want = bytearray(raw[ident])
        for o, d in overlay:
            lo, hi = max(off, o), min(off + n, o + len(d))
            if lo < hi:
                want[lo - off : hi - off] = d[lo - o : hi - o]
        if os.pread(fd, n, off) == want:
            right.add((off, n, ident))
    return right


def delta_restore(repo: Repository, snap: SnapshotRecord, fd: int, write: Writer, zero: Callable[[int, int], None],
                  dry_run: bool = False, progress: Progress | None = None, end: int | None = None,
                  sparse: bool = False, overlay: list[tuple[int, bytes]] | None = None) -> DeltaResult:
    """Make the target read through ``fd`` hold the snapshot's first ``end`` bytes (default:
    all), writing only what differs with ``write(offset, data)`` and ``zero(offset, length)``.
    ``sparse``: the target is a regular file (zero extents are found by its holes, not read).
    ``overlay``: ``(offset, bytes)`` the caller writes afterwards (a fitted partition table):
    a chunk that already holds the snapshot's bytes with the overlay applied is left alone, and
    so are zero ranges the overlay covers."""
    overlay = overlay or []
    progress = progress or NoProgress()
    res = DeltaResult()
    end = snap.size if end is None else min(end, snap.size)
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="diskvault-delta")
    ahead: deque[tuple[Future, list[Item]]] = deque()
    try:
        progress.start(end, "delta restore")
        batches = _items(repo, snap, end)
        while True:
            while len(ahead) < AHEAD:
                batch = next(batches, None)
                if batch is None:
                    break
                ahead.append((pool.submit(_compare, fd, batch, sparse, repo.content_id), batch))
            if not ahead:
                break
            fut, current = ahead.popleft()
            differ, zeros, n = fut.result()
            if overlay:
                right = _right_with_overlay(repo, fd, differ, overlay)
                differ = [it for it in differ if it not in right]
                zeros = _subtract(zeros, overlay)
            res.bytes_read_target += n
            chunks = sum(1 for it in current if it[2] != ZERO_ID)
            res.chunks_unchanged += chunks - len(differ)
            res.chunks_written += len(differ)
            res.bytes_written += sum(n for _, n, _ in differ)
            res.bytes_zeroed += sum(n for _, n in zeros)
            if not dry_run:
                _write(repo, snap, write, differ)
                for off, length in zeros:
                    zero(off, length)
            progress.advance(sum(n for _, n, _ in current))
    finally:
        for fut, _ in ahead:
            fut.cancel()
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
