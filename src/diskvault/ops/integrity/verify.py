"""Compare a snapshot with a device, image file or stdin, byte for byte.

The source is read sequentially (``images.source``) while the snapshot's chunk list is
walked in the same order; chunks are fetched in batches of BATCH bytes (neighbouring
chunks of a pack in one read, each verified by blake3) one batch ahead on a worker
thread. A differing chunk is compared in BLOCK-sized pieces, so the reported ranges are
exact to BLOCK bytes. Parts of the snapshot that cannot be read (damaged or missing
chunks or tree nodes) are reported separately as ``unreadable`` and not compared.
Raises SourceError when the source cannot be opened or read; damage is reported, not raised.

A whole disk restored onto a disk of another size has its partition table fitted to that
size (images/table_adjust.py). When the snapshot holds a partition table and the source is
a device or image of another size (or its table was grown), the ranges that adjustment
rewrites are recomputed from the source's size and compared with those bytes instead of
the snapshot's (``table_adjusted``); the source's tail beyond the snapshot is reported as
``not_compared`` rather than as a difference, and so is the snapshot's unpartitioned tail
beyond a smaller source.

The free blocks a snapshot skipped (its record's ``filesystems``, see ops/fsmap.py) hold
zeros in the snapshot and whatever was there in the source: they are not compared
(``skipped_bytes``), only what was kept is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ...repository.catalog import SnapshotRecord
from ...errors import DamagedData, SourceError, TargetError
from ...repository.hashing import ZERO_ID, short
from ...images.partitions import PartitionError, read_table
from ...images.source import Source, open_source
from ...images.table_adjust import plan_adjustment
from ...repository import Repository
from ...repository.tree import Leaf
from ..access.snapshot_reader import ReadContext, SnapshotReader
from ...images.filesystems.ranges import overlapping
from .damage import Lost, merge, walk
from ..fsmap import skipped
from ..progress import NoProgress, Progress

BATCH = 16 << 20
BLOCK = 4096


@dataclass
class VerifyResult:
    snapshot: str
    source: str
    snapshot_size: int
    source_size: int
    compared_bytes: int = 0
    differing: list[list[int]] = field(default_factory=list)  # [[offset, length]]
    unreadable: list[dict] = field(default_factory=list)  # {offset, length, reason}
    duration: float = 0.0
    table_adjusted: list[list[int]] = field(default_factory=list)  # [[offset, length]] matching the fitted table
    not_compared: list[int] | None = None  # [offset, length]: the tail one side has beyond the other
    grown_partition: int | None = None
    skipped_bytes: int = 0  # free blocks the snapshot skipped: not compared

    @property
    def identical(self) -> bool:
        """Equal, or equal but for a partition table fitted to the source's size."""
        same_size = self.snapshot_size == self.source_size or self.not_compared is not None
        return not self.differing and not self.unreadable and same_size

    @property
    def differing_bytes(self) -> int:
        return sum(n for _, n in self.differing)

    def to_json(self) -> dict:
        return {
            "snapshot": self.snapshot,
            "source": self.source,
            "identical": self.identical,
            "snapshot_size": self.snapshot_size,
            "source_size": self.source_size,
            "compared_bytes": self.compared_bytes,
            "skipped_bytes": self.skipped_bytes,
            "differing_bytes": self.differing_bytes,
            "differing": [{"offset": o, "length": n} for o, n in self.differing],
            "unreadable": self.unreadable,
            "table_adjusted": [{"offset": o, "length": n} for o, n in self.table_adjusted],
            "grown_partition": self.grown_partition,
            "not_compared": ({"offset": self.not_compared[0], "length": self.not_compared[1]}
                             if self.not_compared else None),
            "duration": self.duration,
        }


def _batches(items: Iterator[Leaf | Lost]) -> Iterator[list[Leaf | Lost]]:
    batch: list[Leaf | Lost] = []
    size = 0
    for it in items:
        batch.append(it)
        size += it.length
        if size >= BATCH:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _fetch(repo: Repository, batch: list[Leaf | Lost]) -> tuple[dict[bytes, bytes], dict[bytes, str]]:
    """Read the batch's chunks: ``(id -> bytes, id -> reason it could not be read)``."""
    ids = {it.id for it in batch if isinstance(it, Leaf) and it.id != ZERO_ID}
    locs = repo.locate(ids)
    bad = {i: f"chunk {short(i)} is missing from the catalog" for i in ids if i not in locs}
    got: dict[bytes, bytes] = {}
    try:
        for loc, raw in repo.read_ranges(list(locs.values())):
            got[loc.id] = raw
    except DamagedData:
        for i, loc in locs.items():
            if i not in got:
                try:
                    got[i] = repo.read_blob(loc)
                except DamagedData as exc:
                    bad[i] = str(exc)
    return got, bad


def _diff(a: memoryview, b: memoryview, base: int, out: list[tuple[int, int]]) -> None:
    """Append the BLOCK-aligned (in image offsets) pieces where ``a`` and ``b`` differ."""
    pos = 0
    while pos < len(a):
        end = min(len(a), (base + pos) // BLOCK * BLOCK + BLOCK - base)
        if a[pos:end] != b[pos:end]:
            out.append((base + pos, end - pos))
        pos = end


def verify(repo: Repository, snap: SnapshotRecord, source_path: str, progress: Progress | None = None) -> VerifyResult:
    """Compare under a shared lock (prune cannot move the snapshot's chunks meanwhile)."""
    with repo.lock("shared", "verify"):
        return _verify(repo, snap, source_path, progress)


def _verify(repo: Repository, snap: SnapshotRecord, source_path: str, progress: Progress | None) -> VerifyResult:
    progress = progress or NoProgress()
    started = time.monotonic()
    source = open_source(source_path)
    res = VerifyResult(snap.id, source_path, snap.size, source.size if source.size is not None else -1)
    fill = source.filler(0, source.size if source.size is not None else -1)
    diffs: list[tuple[int, int]] = []
    zeros = bytes(BATCH)
    buf = bytearray(BATCH)
    pos = 0  # bytes of the source consumed
    masked = 0  # bytes of the last read that were skipped free blocks
    source_ended = False
    try:
        skip = skipped(snap)
    except ValueError as exc:
        raise DamagedData(f"snapshot {snap.id[:12]}'s list of skipped free blocks cannot be read ({exc}): "
                          "run diskvault check") from None

    def read_source(n: int) -> memoryview:
        """The next ``n`` bytes of the source, skipped free blocks replaced by zeros (what
        the snapshot holds there): they count as equal and are not compared."""
        nonlocal pos, source_ended, buf, masked
        if len(buf) < n:
            buf = bytearray(n)
        view = memoryview(buf)[:n]
        got = 0 if source_ended else fill(view)
        if got < n:
            source_ended = True
        masked = 0
        for lo, hi in overlapping(skip, pos, pos + got):
            view[lo - pos:hi - pos] = bytes(hi - lo)
            masked += hi - lo
        res.skipped_bytes += masked
        pos += got
        return view[:got]

    pool = ThreadPoolExecutor(1, thread_name_prefix="diskvault-verify")
    try:
        progress.start(snap.size, "verify")
        batches = _batches(walk(repo.load_tree_node, bytes.fromhex(snap.tree), snap.size))
        nxt: Future | None = None
        current = next(batches, None)
        if current is not None:
            nxt = pool.submit(_fetch, repo, current)
        while current is not None:
            got, bad = nxt.result()  # type: ignore[union-attr]
            following = next(batches, None)
            nxt = pool.submit(_fetch, repo, following) if following is not None else None
            for it in current:
                if isinstance(it, Lost) or it.id in bad:
                    reason = it.reason if isinstance(it, Lost) else bad[it.id]
                    res.unreadable.append({"offset": it.offset, "length": it.length, "reason": reason})
                for off in range(0, it.length, BATCH):  # zero extents and lost ranges may be huge
                    n = min(BATCH, it.length - off)
                    src = read_source(n)
                    if isinstance(it, Lost) or it.id in bad:
                        pass
                    elif it.id == ZERO_ID:
                        if bytes(src) != (zeros if len(src) == BATCH else zeros[: len(src)]):
                            _diff(src, memoryview(zeros)[: len(src)], it.offset + off, diffs)
                        res.compared_bytes += len(src) - masked
                    else:
                        data = memoryview(got[it.id])[off : off + len(src)]
                        if bytes(src) != bytes(data):
                            _diff(src, data, it.offset + off, diffs)
                        res.compared_bytes += len(src) - masked
                    if len(src) < n:  # the source is shorter than the snapshot
                        diffs.append((it.offset + off + len(src), it.length - off - len(src)))
                        break
                progress.advance(it.length)
            current = following
        # anything the source has beyond the snapshot differs too
        if source.size is not None:
            if source.size > snap.size:
                diffs.append((snap.size, source.size - snap.size))
        else:  # a stream: one batch past the snapshot tells it is longer (/dev/zero never ends)
            extra = 0 if source_ended else len(read_source(BATCH))
            if extra:
                diffs.append((snap.size, extra))
            res.source_size = pos
        res.differing = merge(diffs)
        if source.size is not None and (res.differing or source.size != snap.size):
            _allow_fitted_table(repo, snap, source, res)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        source.close()
    res.duration = round(time.monotonic() - started, 3)
    return res


def _allow_fitted_table(repo: Repository, snap: SnapshotRecord, source: Source, res: VerifyResult) -> None:
    """Drop the differences that a partition table fitted to the source's size explains
    (see the module docstring); leaves ``res`` as it is when the snapshot has no table or
    the fitted table does not match the source."""
    ctx = ReadContext(repo, cache_bytes=16 << 20, prefetch=False)
    try:
        reader = SnapshotReader(ctx, snap)

        def read_source(offset: int, length: int) -> bytes:
            try:
                return os.pread(source.fd, length, offset)
            except OSError as exc:
                raise SourceError(f"cannot read {source.path} at byte {offset}: {exc.strerror}") from None

        try:
            table = read_table(reader.read, snap.size)
        except (PartitionError, DamagedData):
            table = None
        if table is None or table.label == "none":
            # a bigger device keeps what lies past the image (restore never writes there)
            if source.kind == "device" and source.size > snap.size and all(o >= snap.size for o, _ in res.differing):
                res.differing = []
                res.not_compared = [snap.size, source.size - snap.size]
            return
        try:
            grow = None
            mine = read_table(read_source, source.size)
            for p in table.data_partitions():
                q = next((q for q in mine.partitions if q.number == p.number), None)
                if q is not None and q.offset == p.offset and q.length > p.length:
                    grow = p.number
            adj = plan_adjustment(reader.read, snap.size, source.size, None, grow)
        except (PartitionError, TargetError, DamagedData):
            return
        if any(read_source(w.offset, len(w.data)) != w.data for w in adj.writes):
            return  # not the table diskvault would write for this size: a real difference
        common = min(snap.size, source.size)
        kept: list[tuple[int, int]] = []
        for o, n in res.differing:
            if o >= common:
                continue  # the tail: not compared (below)
            n = min(n, common - o)
            if not any(w.offset < o + n and o < w.offset + len(w.data) for w in adj.writes):
                kept.append((o, n))
                continue
            expected = bytearray(reader.read(o, n))
            for w in adj.writes:  # the snapshot's bytes as the fitted table leaves them
                lo, hi = max(o, w.offset), min(o + n, w.offset + len(w.data))
                if lo < hi:
                    expected[lo - o:hi - o] = w.data[lo - w.offset:hi - w.offset]
            if read_source(o, n) != expected:
                kept.append((o, n))
        res.differing = merge(kept)
        res.table_adjusted = [[w.offset, len(w.data)] for w in sorted(adj.writes, key=lambda w: w.offset)]
        res.grown_partition = grow
        if source.size != snap.size:
            res.not_compared = [common, abs(source.size - snap.size)]
    finally:
        ctx.close()
