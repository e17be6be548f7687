"""Random access to a snapshot's bytes without restoring it (used by serve, mount, partitions).

``SnapshotReader(ctx, snap).read(offset, length)`` returns the image bytes at ``offset``;
``segments()`` returns the same as pieces, zero extents as ``None`` so a caller can send holes;
``extents()`` gives the allocation map (data or zero) of a range.

Finding an offset: the chunk-list tree is descended from the root; in each node a binary
search over the cumulative lengths of its items picks the child holding the offset, so a
random read costs one path of nodes (cached, parsed, with the catalog locations of a leaf
node's chunks looked up in one query); the leaf found last is remembered, so sequential
reads skip the descent. Chunks are read through ``ReadContext``, shared by all readers of a
repository: a bounded LRU cache of verified chunks keyed by content id (identical chunks of
different snapshots are cached once), one fetch per chunk however many threads ask at once,
pack reads of neighbouring chunks of at most READ_SPAN bytes (larger fresh buffers cost page
faults). A ``Stream`` per NBD connection or open FUSE file tracks where its last read ended;
a sequential stream is read ahead either by a small thread pool (``prefetch``, FUSE) or
synchronously in the reading thread, ``readahead`` bytes at a time (NBD: no hand-off
between threads). A damaged chunk in a window read ahead fails only the reads that need it.

Every chunk is verified (blake3) before it is used; a damaged or missing chunk raises
DamagedData naming the chunk and its offset in the image. All methods are thread-safe.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate

from ...repository.catalog import BlobLocation, SnapshotRecord
from ...errors import DamagedData
from ...repository.hashing import ZERO_ID, short
from ...repository import Repository
from ...repository.tree import parse

CACHE_BYTES = 256 << 20
PREFETCH_BYTES = 32 << 20  # how far ahead of a sequential stream chunks are fetched
PREFETCH_STEP = 8 << 20  # size of one prefetch job
PREFETCH_WORKERS = 2
SEQ_SLACK = 1 << 20  # a read starting this close to the stream's last end is sequential
NODE_CACHE = 4096
READ_SPAN = 1 << 20  # largest pack read: larger fresh buffers cost page faults (mmap'd by malloc)
ZEROS = memoryview(bytes(1 << 20))


@dataclass
class _Node:
    level: int
    ids: list[bytes]
    lengths: list[int]
    ends: list[int]  # cumulative end offset of each item, relative to the node's start
    locs: list[BlobLocation | None] = field(default_factory=list)  # leaf nodes only


class Piece:
    """One chunk-list item: ``offset`` in the image, ``id`` (ZERO_ID for a zero extent),
    ``length`` and ``loc`` (None for zeros or a chunk missing from the catalog)."""

    __slots__ = ("offset", "id", "length", "loc")

    def __init__(self, offset: int, id: bytes, length: int, loc: BlobLocation | None) -> None:  # noqa: A002
        self.offset, self.id, self.length, self.loc = offset, id, length, loc


class Stream:
    """Where one sequential reader (an NBD connection, an open file) stands."""

    def __init__(self) -> None:
        self.next = -1  # offset right after the last read
        self.ahead = 0  # prefetch has been scheduled up to here


class ReadContext:
    """What all readers of one repository share: catalog access, chunk cache, prefetch."""

    def __init__(self, repo: Repository, cache_bytes: int = CACHE_BYTES, prefetch: bool = True,
                 readahead: int = 0) -> None:
        self.repo = repo
        self.cache_bytes = cache_bytes
        self.prefetch_enabled = prefetch
        self.readahead = readahead
        self.db_lock = threading.Lock()  # the catalog connection is used by many threads
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._chunks: OrderedDict[bytes, bytes] = OrderedDict()
        self._cached = 0
        self._loading: set[bytes] = set()
        self._nodes: OrderedDict[bytes, _Node] = OrderedDict()
        self._pool = ThreadPoolExecutor(PREFETCH_WORKERS, thread_name_prefix="diskvault-prefetch")
        self.hits = self.misses = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- catalog ---------------------------------------------------------------------
    def locate(self, ids) -> dict[bytes, BlobLocation]:
        with self.db_lock:
            return self.repo.locate(ids)

    def resolve(self, name: str) -> SnapshotRecord:
        """A snapshot by export name; ``latest`` is the newest of all sources (exports are
        read-only and list what they serve)."""
        with self.db_lock:
            return self.repo.resolve(name, across_sources=True)

    def snapshots(self) -> list[SnapshotRecord]:
        with self.db_lock:
            return self.repo.snapshots()

    # --- tree nodes --------------------------------------------------------------------
    def node(self, nid: bytes) -> _Node:
        with self._lock:
            node = self._nodes.get(nid)
            if node is not None:
                self._nodes.move_to_end(nid)
                return node
        loc = self.locate([nid]).get(nid)
        if loc is None:
            raise DamagedData(f"tree node {short(nid)} is not in the catalog")
        level, items = parse(bytes(self.repo.read_blob(loc)))
        ids = [i for i, _ in items]
        lengths = [n for _, n in items]
        node = _Node(level, ids, lengths, list(accumulate(lengths)))
        if level == 0:
            found = self.locate(i for i in ids if i != ZERO_ID)
            node.locs = [found.get(i) for i in ids]
        with self._lock:
            self._nodes[nid] = node
            while len(self._nodes) > NODE_CACHE:
                self._nodes.popitem(last=False)
        return node

    # --- chunks -------------------------------------------------------------------------
    def chunks(self, pieces: list[Piece], wait: bool = True) -> dict[bytes, bytes]:
        """The verified bytes of every data piece's chunk: from the cache, from a fetch
        another thread has under way, or read now (neighbours in a pack in one request).
        With ``wait=False`` (prefetch) chunks another thread is fetching are left out."""
        want = {p.id: p for p in pieces if p.id != ZERO_ID}
        out: dict[bytes, bytes] = {}
        mine: list[Piece] = []
        cache, loading = self._chunks, self._loading
        with self._lock:
            for cid, p in want.items():
                data = cache.get(cid)
                if data is not None:
                    cache.move_to_end(cid)
                    out[cid] = data
                elif cid not in loading:
                    loading.add(cid)
                    mine.append(p)
            self.hits += len(out)
            self.misses += len(mine)
        if mine:
            self._fetch(mine, out)
        if not wait:
            return out
        waiting = [cid for cid in want if cid not in out]
        if waiting:
            with self._cond:
                for cid in waiting:
                    while cid in self._loading:
                        self._cond.wait()
                    data = self._chunks.get(cid)
                    if data is not None:
                        out[cid] = data
            for cid in waiting:  # the other fetch failed or the chunk was evicted: read it
                if cid not in out:
                    self._fetch([want[cid]], out, register=False)
        return out

    def _fetch(self, pieces: list[Piece], out: dict[bytes, bytes], register: bool = True) -> None:
        try:
            for p in pieces:
                if p.loc is None:
                    raise DamagedData(f"chunk {short(p.id)} at byte {p.offset} of the image is missing from the catalog")
            got = [(loc.id, raw) for loc, raw in self.repo.read_ranges([p.loc for p in pieces], span=READ_SPAN)]
            out.update(got)  # a raw chunk is a view into its pack read (no copy; kept while cached)
            self._store(got)
        except DamagedData as exc:
            p = pieces[0]
            raise DamagedData(f"reading byte {p.offset} of the image: {exc}") from None
        finally:
            if register:
                with self._cond:
                    self._loading.difference_update(p.id for p in pieces)
                    self._cond.notify_all()

    def _store(self, got: list[tuple[bytes, bytes]]) -> None:
        cache = self._chunks
        with self._lock:
            for cid, data in got:
                if cid not in cache:
                    cache[cid] = data
                    self._cached += len(data)
            while self._cached > self.cache_bytes and len(cache) > 1:
                _, old = cache.popitem(last=False)
                self._cached -= len(old)

    def submit(self, fn, *args) -> None:
        try:
            self._pool.submit(fn, *args)
        except RuntimeError:  # shutting down
            pass


class SnapshotReader:
    """Read-only random access to one snapshot's image bytes."""

    def __init__(self, ctx: ReadContext, snap: SnapshotRecord) -> None:
        self.ctx = ctx
        self.snap = snap
        self.size = snap.size
        self.root = bytes.fromhex(snap.tree)
        self._leaf = (0, 0, None)  # (start, end, node) of the leaf node found last

    def leaf(self, pos: int) -> tuple[int, int, _Node]:
        """The leaf node holding image offset ``pos`` (0 <= pos < size): ``(start, end, node)``."""
        start, end, node = self._leaf
        if start <= pos < end:
            return self._leaf
        node, start = self.ctx.node(self.root), 0
        while node.level:
            i = bisect_right(node.ends, pos - start)
            if i >= len(node.ids):
                raise DamagedData(f"the chunk list of snapshot {self.snap.id} ends before byte {pos} of the image")
            start += node.ends[i - 1] if i else 0
            node = self.ctx.node(node.ids[i])
        found = self._leaf = (start, start + (node.ends[-1] if node.ends else 0), node)
        return found

    # --- walking the chunk list ---------------------------------------------------------
    def pieces(self, start: int, end: int) -> Iterator[Piece]:
        """The chunk-list items overlapping ``[start, end)``, in order (whole items: the
        first may begin before ``start``, the last may end after ``end``)."""
        end = min(end, self.size)
        if start < 0:
            return
        pos = start
        while pos < end:
            base, leaf_end, node = self.leaf(pos)
            if leaf_end <= pos:  # an empty leaf: a malformed tree
                raise DamagedData(f"the chunk list of snapshot {self.snap.id} has an empty node")
            ids, lengths, ends, locs = node.ids, node.lengths, node.ends, node.locs
            i = bisect_right(ends, pos - base)
            off = base + (ends[i - 1] if i else 0)
            for i in range(i, len(ids)):
                if off >= end:
                    return
                n = lengths[i]
                yield Piece(off, ids[i], n, locs[i])
                off += n
            pos = leaf_end

    def extents(self, start: int = 0, end: int | None = None) -> list[tuple[int, int, bool]]:
        """``(offset, length, is_zero)`` covering ``[start, end)``, neighbours of a kind merged."""
        end = self.size if end is None else min(end, self.size)
        out: list[tuple[int, int, bool]] = []
        for p in self.pieces(start, end):
            lo, hi = max(p.offset, start), min(p.offset + p.length, end)
            zero = p.id == ZERO_ID
            if out and out[-1][2] == zero:
                o, n, _ = out[-1]
                out[-1] = (o, n + hi - lo, zero)
            else:
                out.append((lo, hi - lo, zero))
        return out

    # --- reading -------------------------------------------------------------------------
    def segments(self, offset: int, length: int, stream: Stream | None = None) -> list[tuple[int, int, memoryview | None]]:
        """``(offset, length, bytes or None for zeros)`` covering the range, in order."""
        end = min(offset + length, self.size)
        if offset >= end:
            return []
        ahead = self._sequential(stream, offset, end) if stream is not None else None
        if ahead is not None:  # this request and the next ones of the stream in one go
            try:
                self.ctx.chunks(list(self.pieces(offset, ahead)), wait=False)
            except (DamagedData, OSError):
                pass  # reported below if this request needs the damaged or unreadable chunk
        pieces = list(self.pieces(offset, end))
        chunks = self.ctx.chunks(pieces)
        out: list[tuple[int, int, memoryview | None]] = []
        for p in pieces:
            lo, hi = max(p.offset, offset), min(p.offset + p.length, end)
            if p.id == ZERO_ID:
                if out and out[-1][2] is None:
                    out[-1] = (out[-1][0], out[-1][1] + hi - lo, None)
                else:
                    out.append((lo, hi - lo, None))
            else:
                out.append((lo, hi - lo, memoryview(chunks[p.id])[lo - p.offset : hi - p.offset]))
        return out

    def read(self, offset: int, length: int, stream: Stream | None = None) -> bytes:
        """The image bytes ``[offset, offset+length)`` (shorter at the end of the image)."""
        segs = self.segments(offset, length, stream)
        if len(segs) == 1 and segs[0][2] is not None:
            return bytes(segs[0][2])
        buf = bytearray(sum(n for _, n, _ in segs))
        pos = 0
        for _, n, data in segs:
            if data is not None:
                buf[pos : pos + n] = data
            pos += n
        return bytes(buf)

    def prefetch(self, offset: int, length: int) -> None:
        """Fetch a range into the cache in the background (NBD_CMD_CACHE)."""
        self.ctx.submit(self._prefetch_range, offset, min(offset + length, self.size))

    def _sequential(self, stream: Stream, start: int, end: int) -> int | None:
        """Note a read of ``[start, end)``; schedules prefetch, or returns how far to read
        ahead now (``ReadContext.readahead``) when the window read ahead before is used up."""
        # Reads of one stream may arrive slightly out of order (the kernel's readahead through
        # several FUSE threads, several NBD requests in flight): near the last end counts too.
        sequential = stream.next >= 0 and abs(start - stream.next) <= SEQ_SLACK
        stream.next = max(end, stream.next) if sequential else end
        if not sequential or not (self.ctx.prefetch_enabled or self.ctx.readahead):
            stream.ahead = end
            return None
        if not self.ctx.prefetch_enabled:
            if stream.ahead > end:
                return None
            stream.ahead = min(end + self.ctx.readahead, self.size)
            return stream.ahead
        ahead = max(stream.ahead, end)
        limit = min(end + PREFETCH_BYTES, self.size)
        while ahead < limit:
            step = min(ahead + PREFETCH_STEP, limit)
            self.ctx.submit(self._prefetch_range, ahead, step)
            ahead = step
        stream.ahead = ahead
        return None

    def _prefetch_range(self, start: int, end: int) -> None:
        try:
            self.ctx.chunks(list(self.pieces(start, end)), wait=False)
        except Exception:  # a damaged chunk is reported to the reader that needs it
            pass
