"""Compare a snapshot with a device, image file or stdin, byte for byte.

The source is read sequentially (``images.source``) while the snapshot's chunk list is
walked in the same order; chunks are fetched in batches of BATCH bytes (neighbouring
chunks of a pack in one read, each verified by blake3) one batch ahead on a worker
thread. A differing chunk is compared in BLOCK-sized pieces, so the reported ranges are
exact to BLOCK bytes. Parts of the snapshot that cannot be read (damaged or missing
chunks or tree nodes) are reported separately as ``unreadable`` and not compared.
Raises SourceError when the source cannot be opened or read; damage is reported, not raised.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ..repository.catalog import SnapshotRecord
from ..errors import DamagedData
from ..repository.hashing import ZERO_ID, short
from ..images.source import open_source
from ..repository import Repository
from ..repository.tree import Leaf
from .damage import Lost, merge, walk
from .progress import NoProgress, Progress

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

    @property
    def identical(self) -> bool:
        return not self.differing and not self.unreadable and self.snapshot_size == self.source_size

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
            "differing_bytes": self.differing_bytes,
            "differing": [{"offset": o, "length": n} for o, n in self.differing],
            "unreadable": self.unreadable,
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
    source_ended = False

    def read_source(n: int) -> memoryview:
        nonlocal pos, source_ended, buf
        if len(buf) < n:
            buf = bytearray(n)
        view = memoryview(buf)[:n]
        got = 0 if source_ended else fill(view)
        if got < n:
            source_ended = True
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
                        res.compared_bytes += len(src)
                    else:
                        data = memoryview(got[it.id])[off : off + len(src)]
                        if bytes(src) != bytes(data):
                            _diff(src, data, it.offset + off, diffs)
                        res.compared_bytes += len(src)
                    if len(src) < n:  # the source is shorter than the snapshot
                        diffs.append((it.offset + off + len(src), it.length - off - len(src)))
                        break
                progress.advance(it.length)
            current = following
        # anything the source has beyond the snapshot differs too
        if source.size is not None:
            if source.size > snap.size:
                diffs.append((snap.size, source.size - snap.size))
        else:
            extra = 0
            while not source_ended:
                extra += len(read_source(BATCH))
            if extra:
                diffs.append((snap.size, extra))
            res.source_size = pos
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        source.close()
    res.differing = merge(diffs)
    res.duration = round(time.monotonic() - started, 3)
    return res
