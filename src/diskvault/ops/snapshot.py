"""Take a snapshot of an image file, block device or stdin.

Pipeline, with reading, cutting, hashing and compressing spread over the worker threads:

1. the calling thread splits each data extent of the source (holes, and the free blocks of
   the filesystems it understands unless --all-blocks, are skipped: see ops/fsmap.py) into
   consecutive 8 MiB windows and hands each, with a buffer from a fixed pool of recycled
   buffers, to a worker (stdin, which cannot be read at an offset, is read here, in order);
2. two worker threads each read a window (``preadv``, so the bytes are still in the CPU's
   cache for what follows), cut it with FastCDC *speculatively*, as if a chunk started at
   the window's first byte, hash (blake3) its chunks, spot all-zero chunks (see _Zeros),
   ask the catalog in one query which are new and compress those no other window of the
   snapshot has claimed (a repeat is compressed once; codec and claims: see _Codec);
   a window of zeros only (one memcmp) is not cut or hashed at all: the writer knows how
   FastCDC cuts zeros and emits them as one zero extent (see _stitch_zeros);
3. one writer thread takes the windows in source order and *stitches* them: it carries the
   unfinished last chunk of the previous window and cuts on from its true start until a cut
   lands on one of the window's speculative chunk starts. FastCDC's state after a cut is
   only its position, so from that point on the speculative cuts are the true ones (a few
   chunks per window are re-cut and re-hashed here; if no cut ever coincides, the whole
   window is cut here). Boundaries are therefore exactly those of ``Chunker.stream``
   over the extent. The writer appends new chunks to packs in source order (compressing
   any new chunk the workers left to it: a speculative window's first chunks, and a repeat
   whose claimed occurrence comes later or was replaced by the stitch) and builds the snapshot's chunk-list tree,
   then gives the buffer back to the pool.

The calling thread blocks when all BUFFERS buffers are in flight, so memory is bounded by buffer
sizes, never by image size, and no buffer is re-allocated (fresh 8 MiB allocations cost a
page fault per 4 KiB on every use).

The snapshot is recorded only after all its packs are durable (repository write order):
the writer thread seals each pack (fsync, rename) before the catalog records it.
Ctrl-C or any error aborts the open pack; sealed packs stay as reusable, unreferenced data.

Before reading, a source mounted read-write (the device, a partition or LVM/crypt holder of
it, or a loop device over the image file) is refused with SourceError unless
``allow_mounted``: its image would be inconsistent. A stream produced by a command
(``command``) is recorded only when the command exits 0. A source whose size changed while
it was read is recorded with ``size_changed`` and a warning; a clock older than the newest
snapshot of the same host and source gives a warning (order is by sequence number anyway).
"""

from __future__ import annotations

import collections
import functools
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from ..repository import compression
from ..repository.catalog import SnapshotRecord
from ..repository.chunking import Chunker
from ..errors import DamagedData, SourceError
from ..repository.hashing import ZERO_ID
from ..images.source import Source, open_command, open_source, open_virtual_disk, virtual_disk_format
from ..policy import parse_time
from ..rawnames import readable
from ..repository.pack import TYPE_CHUNK
from ..repository import Repository
from ..repository.tree import TreeBuilder, TreeReader
from .fsmap import UsedPlan, plan as used_plan
from .progress import NoProgress, Progress

BUFFER = 8 << 20
BUFFERS = 6  # recycled read buffers: at most this many windows are in flight
WORKERS = 2
SPECULATIVE_DEFER = 2  # leading chunks of a speculative window compressed only if the stitch keeps them


@dataclass
class _Item:
    id: bytes
    length: int
    new: bool = False  # not in the catalog when looked up
    data: memoryview | None = None  # a new chunk's bytes (a view into its window)
    payload: bytes | memoryview | None = None  # compressed already (else the writer does it)
    flags: int = 0


class _Zeros:
    """Tells all-zero bytes: one ``memcmp`` against a zero buffer (``bytes.startswith``, no
    copy, ~20 GB/s), and only when the first and last bytes are zero, so data almost never
    pays for the test. ``run`` is the length FastCDC gives every chunk that starts in a run
    of zeros at least that long (it cuts a chunk from the chunk's own bytes alone, so that
    length is the same everywhere; max_size with pyfastcdc's gear table). Memory: one zero
    buffer of ``size`` bytes (at least 2 max-size chunks)."""

    def __init__(self, chunker: Chunker, size: int) -> None:
        self.zeros = bytes(max(size, 2 * chunker.params.max_size + 1))
        self.run = chunker.cut(memoryview(self.zeros)[: 2 * chunker.params.max_size + 1])[0][1]

    def test(self, view: memoryview) -> bool:
        """Whether ``view`` (at most ``size`` bytes) is all zeros."""
        return not len(view) or (view[0] == 0 and view[-1] == 0 and self.zeros.startswith(view))


class _Codec:
    """Picks the codec for new chunks. ``lz4`` or ``zstd`` (level ZSTD_LEVEL) when asked;
    ``auto`` is zstd at one of two levels, by how much of the data read so far is new:
    ZSTD_LEVEL (3) while at most AUTO_NEW_SHARE of it is (a nightly incremental: its few
    new chunks come out smallest for little time), AUTO_BULK (zstd level 1) when more is (a
    first image, a new disk, a big change: compression is then most of the CPU time, and
    level 1 costs ~25% more than lz4 where level 3 costs ~80%, for 23% fewer bytes than lz4
    where level 3 gives 26%; table and choice: docs/benchmarks.md, "Codecs"). A repository
    that holds snapshots is expected to know most of the next one: the count starts as if
    AUTO_PRIOR known bytes had been read (so the changed metadata at the start of a
    filesystem does not tip an incremental into the bulk level, while an unknown disk still
    switches after ~9 MiB). Windows finish out of order, so near the threshold the choice
    may differ between runs; any entry reads back the same (the level is not recorded)."""

    AUTO_NEW_SHARE = 1 / 8
    AUTO_PRIOR = 64 << 20
    AUTO_BULK = ("zstd", 1)
    CLAIMS = 1 << 15  # new chunk ids remembered (~3 MiB): ~2 GiB of new data, many packs' worth

    def __init__(self, mode: str, expect_known: bool) -> None:
        if mode not in ("auto", *compression.CODECS):
            raise ValueError(f"compression {mode!r}: choose auto, lz4 or zstd")
        self.mode = mode
        self.data = self.AUTO_PRIOR if expect_known else 0
        self.new = 0
        self._lock = threading.Lock()
        self._claims: set[bytes] = set()
        self._order: collections.deque[bytes] = collections.deque()

    def claim(self, items: list[_Item]) -> list[_Item]:
        """The ``items`` (new chunks) no window of this snapshot has claimed yet, now claimed:
        only they are compressed by the workers. A repeat of a chunk, in the same window or
        another (a disk holds many copies of some files), is left to the writer, which
        stores the first occurrence and compresses one itself only when the claimed one
        comes later in the source or was replaced by the stitch. The oldest claims are
        forgotten past CLAIMS: their chunks are in the catalog by then (a pack is sealed
        every TARGET_PACK_SIZE stored bytes), where ``Repository.known`` finds them."""
        mine = []
        with self._lock:
            for it in items:
                if it.id not in self._claims:
                    self._claims.add(it.id)
                    self._order.append(it.id)
                    mine.append(it)
            while len(self._order) > self.CLAIMS:
                self._claims.discard(self._order.popleft())
        return mine

    def choose(self, data: int, new: int) -> tuple[str, int]:
        """Account one window's data and new bytes; (codec, zstd level) for its new chunks."""
        if self.mode == "lz4":
            return "lz4", 0
        if self.mode == "zstd":
            return "zstd", compression.ZSTD_LEVEL
        with self._lock:
            self.data += data
            self.new += new
            few = self.new <= self.data * self.AUTO_NEW_SHARE
        return ("zstd", compression.ZSTD_LEVEL) if few else self.AUTO_BULK


def _process(repo: Repository, view: memoryview, cuts: list[tuple[int, int]], zeros: _Zeros,
             codec: _Codec, defer: int = 0, ids: list[bytes | None] | None = None) -> list[_Item]:
    """Hash, zero-detect and look up the chunks ``cuts`` of ``view`` (``ids[k]``, where
    given, is cut k's id already: a parent's chunk, never all-zero), and compress the new
    ones, except the first ``defer`` (a speculative window's first chunks are usually
    replaced by the stitch: the writer compresses them if they survive) and repeats of a
    chunk anywhere in the snapshot (``_Codec.claim``; the writer stores the first occurrence
    that survives, compressing it itself when it has no payload, see ``consume``)."""
    items: list[_Item] = []
    for k, (off, n) in enumerate(cuts):
        ident = ids[k] if ids else None
        if ident is None:
            piece = view[off : off + n]
            ident = ZERO_ID if zeros.test(piece) else repo.content_id(piece)
        items.append(_Item(ident, n))
    known = repo.known({it.id for it in items if it.id != ZERO_ID})
    fresh: list[_Item] = []
    data = 0
    for i, (it, (off, n)) in enumerate(zip(items, cuts)):
        if it.id == ZERO_ID:
            continue
        data += n
        if it.id in known:
            continue
        it.new, it.data = True, view[off : off + n]
        if i >= defer:
            fresh.append(it)
    fresh = codec.claim(fresh)
    name, level = codec.choose(data, sum(it.length for it in fresh))
    for it in fresh:
        it.payload, it.flags = compression.compress(it.data, name, level)
    return items


class _Guide:
    """The parent snapshot's chunks, walked in step with the windows, as hints for
    ``Chunker.cut_guided``. A hint is a data chunk followed by another data chunk: it ended
    at a cut FastCDC chose (the last chunk of a data extent may have ended with the data).
    Memory: one path of tree nodes. A parent tree that cannot be read gives no more hints
    (the snapshot is cut as if there were no parent). Nodes are loaded in the calling
    thread, beside the writer thread's catalog commits: through that thread's own read
    connection (``any_thread``)."""

    def __init__(self, repo: Repository, parent: SnapshotRecord) -> None:
        reader = TreeReader(functools.partial(repo.load_tree_node, any_thread=True))
        self._chunks = self._walk(reader.leaves(bytes.fromhex(parent.tree)))
        self._next: tuple[int, bytes, int] | None = next(self._chunks, None)

    @staticmethod
    def _walk(leaves) -> Iterator[tuple[int, bytes, int]]:
        prev = None
        try:
            for leaf in leaves:
                if prev is not None and leaf.id != ZERO_ID:
                    yield prev.offset, prev.id, prev.length
                prev = leaf if leaf.id != ZERO_ID else None
        except DamagedData:
            return

    def hints(self, pos: int, n: int) -> dict[int, tuple[bytes, int]]:
        """Hints for the window of ``n`` bytes at source offset ``pos``, keyed by offset in
        the window; windows are asked for in source order."""
        out: dict[int, tuple[bytes, int]] = {}
        while self._next is not None and self._next[0] < pos + n:
            off, ident, length = self._next
            if off >= pos:
                out[off - pos] = (ident, length)
            self._next = next(self._chunks, None)
        return out


def _parent(repo: Repository, source: str, size: int | None, host: str) -> SnapshotRecord | None:
    """The newest snapshot of the same source on the same host, else the newest of one
    the same size on that host (images saved under a new name each night). Any parent
    is safe: it only speeds the cutting up where its chunks recur."""
    mine = [s for s in repo.snapshots() if s.host == host]
    same = [s for s in mine if s.source == source] or [s for s in mine if size is not None and s.size == size]
    return max(same, key=lambda s: (s.seq, s.time), default=None)


@dataclass
class _Window:
    """A window cut as if a chunk started at its first byte (stage 2's result)."""

    view: memoryview
    final: bool  # the extent ends with this window
    items: list[_Item]  # its chunks, up to the unfinished last piece
    starts: dict[int, int]  # chunk start offset -> index in items (tail -> len(items))
    tail: int  # start of the unfinished last piece; len(view) when final
    zero: bool = False  # all zeros: not cut at all (the stitch knows how FastCDC cuts zeros)


def _speculate(repo: Repository, view: memoryview, final: bool, zeros: _Zeros, codec: _Codec,
               first: bool, hints: dict[int, tuple[bytes, int]] | None) -> _Window:
    """Cut ``view`` as if a chunk started at its first byte (an extent's ``first`` window:
    one does), or, with the parent's ``hints``, at the first hinted chunk in it. An all-zero
    window is not cut (``zero``): see ``_stitch_zeros``."""
    if zeros.test(view):
        return _Window(view, final, [], {}, 0, zero=True)
    start = min(hints) if hints and not first else 0
    cuts, ids, tail = repo.chunker.cut_guided(view, start, final, hints or {})
    starts = {off: i for i, (off, _) in enumerate(cuts)}
    starts[tail] = len(cuts)
    items = _process(repo, view, cuts, zeros, codec, defer=0 if first else SPECULATIVE_DEFER, ids=ids)
    return _Window(view, final, items, starts, tail)


def _read_and_speculate(repo: Repository, fill: Callable[[memoryview], int], view: memoryview, final: bool,
                        zeros: _Zeros, codec: _Codec, first: bool,
                        hints: dict[int, tuple[bytes, int]] | None) -> _Window:
    fill(view)  # reads all of it or raises SourceError
    return _speculate(repo, view, final, zeros, codec, first, hints)


def _stitch(repo: Repository, w: _Window, head: bytes | None, zeros: _Zeros,
            codec: _Codec) -> tuple[list[_Item], bytes]:
    """The true chunks of window ``w`` given ``head``, the unfinished last chunk of the
    previous window of the same extent (None for an extent's first window); returns them
    and the new unfinished chunk (bytes) to carry into the next window."""
    if w.zero and (not head or len(w.view) >= repo.params.max_size):
        return _stitch_zeros(repo, w, head, zeros, codec)
    if head is None or (not head and 0 in w.starts):  # the speculation starts where a chunk does
        return w.items, bytes(w.view[w.tail :])
    h = len(head)
    probe = repo.params.max_size  # the chains nearly always meet within the first chunk or two
    while True:
        m = min(probe, len(w.view))
        covers = m == len(w.view)
        joined = bytearray(head)
        joined += w.view[:m]
        data = memoryview(joined)
        cuts = repo.chunker.cut(data)
        if not (covers and w.final):
            cuts.pop()  # its end is only where this data ends
        for i, (off, n) in enumerate(cuts):
            end = off + n - h
            if end >= 0 and end in w.starts:  # the true and the speculative chain meet
                fixed = _process(repo, data, cuts[: i + 1], zeros, codec)
                return fixed + w.items[w.starts[end] :], bytes(w.view[w.tail :])
        if covers:  # they never met: this window is cut here as a whole
            rest = (cuts[-1][0] + cuts[-1][1]) if cuts else 0
            return _process(repo, data, cuts, zeros, codec), bytes(data[rest:])
        probe *= 4


def _stitch_zeros(repo: Repository, w: _Window, head: bytes | None, zeros: _Zeros,
                  codec: _Codec) -> tuple[list[_Item], bytes]:
    """``_stitch`` of an all-zero window ``w`` of at least max_size bytes (or with no ``head``),
    without cutting it: the first true chunk starts ``head`` bytes before the window and
    ends within max_size of that (cut once, head + max_size zeros); from there on FastCDC
    cuts the zeros into ``zeros.run``-byte chunks, as far as they fit in the window (all of
    it when the extent ends here). The result is those chunks as one zero extent (the tree
    merges zero chunks anyway) and the unfinished rest, zeros, to carry."""
    n = len(w.view)
    items: list[_Item] = []
    start = 0
    if head:
        joined = memoryview(head + zeros.zeros[: repo.params.max_size])
        first = repo.chunker.cut(joined)[0][1]  # < len(joined): a true cut, whatever follows
        items = _process(repo, joined, [(0, first)], zeros, codec)
        start = first - len(head)
    rest = n - start
    if not w.final:
        rest -= rest % zeros.run
    if rest:
        items.append(_Item(ZERO_ID, rest))
    return items, zeros.zeros[: n - start - rest]


def take_snapshot(repo: Repository, source_path: str, *args, **kwargs) -> SnapshotRecord:
    """Take a snapshot while holding a shared repository lock (prune waits or fails);
    arguments, result and errors as ``_take_snapshot``."""
    with repo.lock("shared", "snapshot"):
        return _take_snapshot(repo, source_path, *args, **kwargs)


MOUNTED_HELP = ("snapshot an LVM or filesystem snapshot of it instead, or boot rescue media; or freeze it "
                "(fsfreeze -f) and take it with --allow-mounted, which reads every block")


def _check_mounted(source: Source, allow_mounted: bool) -> list[dict]:
    """Where ``source`` is mounted; raises SourceError when read-write, unless allowed."""
    mounts = source.mounts()
    rw = [m for m in mounts if m["mode"] == "rw"]
    if rw and not allow_mounted:
        where = ", ".join(f"{readable(m['device'])} on {readable(m['mountpoint'])}" for m in rw)
        raise SourceError(f"{readable(source.path)} is mounted read-write ({where}): an image of a live filesystem is "
                          f"inconsistent: {MOUNTED_HELP}")
    return mounts


def _clock_warning(repo: Repository, host: str, source: str, when: datetime) -> list[str]:
    """A warning when ``when`` is older than the newest snapshot of (host, source)."""
    group = [s for s in repo.snapshots() if s.host == host and s.source == source]
    newest = max(group, key=lambda s: (s.seq, s.time, s.id), default=None)
    if newest is None or parse_time(newest.time) <= when:
        return []
    return [f"the clock reads {when.isoformat(timespec='seconds')}, before snapshot {newest.id[:12]} of this source "
            f"({newest.time[:19]}): was it set back? latest and forget follow the sequence number, so this "
            "snapshot still counts as the newest"]


def _take_snapshot(
    repo: Repository,
    source_path: str,
    tags: list[str] | None = None,
    host: str | None = None,
    progress: Progress | None = None,
    compression_mode: str = "auto",
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    stdin_filename: str | None = None,
    command: list[str] | None = None,
    allow_mounted: bool = False,
    all_blocks: bool = False,
) -> SnapshotRecord:
    """Snapshot ``source_path`` (a path, or ``-`` for stdin), or the output of ``command``
    (an argv list; ``source_path`` is then ignored). A stream is recorded under the source
    name ``stdin_filename`` (default ``stdin``); a path under its absolute path. Raises
    SourceError (missing, unreadable, mounted read-write, command failed), OutOfSpace,
    Interrupted, DamagedData (a parent it cannot read is skipped, not raised). Unless
    ``all_blocks``, the free blocks of the filesystems it understands are recorded as zeros
    without being stored (ops/fsmap.py)."""
    progress = progress or NoProgress()
    codec = _Codec(compression_mode, expect_known=repo.catalog.has_snapshots())
    tags = sorted(set(tags or []))
    started = time.monotonic()
    when = now()
    fmt = None if command or source_path == "-" else virtual_disk_format(source_path)
    if command:
        source = open_command(command)
    else:
        source = open_virtual_disk(source_path, fmt) if fmt else open_source(source_path)
    try:
        mounted = _check_mounted(source, allow_mounted)
        used = UsedPlan() if all_blocks else used_plan(source, mounted)
    except BaseException:
        source.close()
        raise
    host = host or socket.gethostname()
    stream = command is not None or source_path == "-"
    source_name = (stdin_filename or "stdin") if stream else os.path.abspath(source_path)
    warnings = _clock_warning(repo, host, source_name, when)
    warnings += [f"{readable(m['device'])} is mounted read-only on {readable(m['mountpoint'])}" if m["mode"] == "ro" else
                 f"{readable(m['device'])} is mounted read-write on {readable(m['mountpoint'])} (--allow-mounted): "
                 "the image may be inconsistent" for m in mounted]
    warnings += used.warnings
    parent = _parent(repo, source_name, source.size, host)
    guide = _Guide(repo, parent) if parent else None
    writer = repo.blob_writer()
    builder = TreeBuilder(writer.add_tree_node, repo.content_id)
    stats = dict(size=0, data_bytes=0, zero_bytes=0, chunks=0, new_chunks=0, new_bytes=0, stored_bytes=0)
    zeros = _Zeros(repo.chunker, BUFFER)
    free: queue.Queue[bytearray] = queue.Queue()
    made = [0]  # buffers allocated so far (at most BUFFERS)
    ordered: queue.Queue[tuple[Future, bool] | int | None] = queue.Queue()
    failure: list[BaseException] = []

    def acquire() -> bytearray:
        if made[0] < BUFFERS:
            made[0] += 1
            return bytearray(BUFFER)
        while True:
            if failure:
                raise failure[0]
            try:
                return free.get(timeout=0.5)
            except queue.Empty:
                continue

    def consume(items: list[_Item]) -> None:
        done = 0
        for it in items:
            done += it.length
            if it.id == ZERO_ID:
                builder.add_zero(it.length)
                stats["zero_bytes"] += it.length
                continue
            if it.new and not writer.has(it.id):
                if it.payload is None:  # deferred, or a repeat whose first occurrence was replaced
                    it.payload, it.flags = compression.compress(it.data, *codec.choose(0, 0))
                stats["stored_bytes"] += writer.add(it.id, TYPE_CHUNK, it.payload, it.flags, it.length)
                stats["new_chunks"] += 1
                stats["new_bytes"] += it.length
            builder.add(it.id, it.length)
            stats["chunks"] += 1
            stats["data_bytes"] += it.length
        stats["size"] += done
        progress.advance(done)

    def write_loop() -> None:
        """Stage 3: stitch windows in source order, write packs and the tree, recycle buffers."""
        head: bytes | None = None
        while True:
            entry = ordered.get()
            if entry is None:
                return
            if isinstance(entry, int):  # a hole
                if not failure:
                    builder.add_zero(entry)
                    stats["zero_bytes"] += entry
                    stats["size"] += entry
                    progress.advance(entry)
                continue
            fut, first = entry
            try:
                if not failure:
                    w: _Window = fut.result()
                    items, head = _stitch(repo, w, None if first else head, zeros, codec)
                    consume(items)
                    writer.flush()  # payloads kept raw are views into the buffer
                    free.put(w.view.obj)
            except BaseException as exc:  # handed to the reading thread, which re-raises it
                failure.append(exc)

    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="diskvault-chunk")
    write_thread = threading.Thread(target=write_loop, name="diskvault-write", daemon=True)
    write_thread.start()
    try:
        progress.start(source.size, "snapshot")
        for offset, length, is_data in used.extents(source.extents()):
            if not is_data:
                ordered.put(length)
                continue
            if length >= 0:  # seekable: each worker reads its own window, cache-hot and in parallel
                end = offset + length
                for pos in range(offset, end, BUFFER):
                    n = min(BUFFER, end - pos)
                    view = memoryview(acquire())[:n]
                    hints = guide.hints(pos, n) if guide else None
                    job = pool.submit(_read_and_speculate, repo, used.filler(source, pos, n), view, pos + n == end, zeros, codec,
                                      pos == offset, hints)
                    ordered.put((job, pos == offset))
                continue
            fill = source.filler(offset, length)  # stdin: read here, in order
            first, done = True, 0
            while True:
                buf = acquire()
                got = fill(memoryview(buf))
                hints = guide.hints(done, got) if guide else None
                done += got
                final = got < BUFFER or done == length
                view = memoryview(buf)[:got]
                ordered.put((pool.submit(_speculate, repo, view, final, zeros, codec, first, hints), first))
                first = False
                if final:
                    break
        ordered.put(None)
        write_thread.join()
        if failure:
            raise failure[0]
        source.finish(stats["size"])  # a producing command that failed: nothing is recorded
        size_now = source.current_size()
        root = builder.finish()
        writer.seal()
    except BaseException:
        if not failure:
            failure.append(RuntimeError("snapshot aborted"))  # the writer stops consuming
        ordered.put(None)
        write_thread.join()
        pool.shutdown(wait=True, cancel_futures=True)
        writer.abort()
        source.close()
        raise
    pool.shutdown()
    source.close()

    record = SnapshotRecord(
        id="",
        time=when.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        host=host,
        source=source_name,
        tags=tags,
        tree=root.hex(),
        duration=round(time.monotonic() - started, 3),
        mounted=mounted or None,
        format=source.format,
        filesystems=used.filesystems,
        size_changed={"before": source.size, "after": size_now} if size_now != source.size else None,
        warnings=warnings,
        **stats,
    )
    if record.size_changed:
        record.warnings.append(
            f"{readable(source_name)} changed size while it was read ({source.size} -> {size_now} bytes): the "
            f"snapshot holds its first {source.size} bytes; take it again from a stable copy (an LVM or filesystem snapshot)")
    repo.save_snapshot(record)  # gives it its sequence number and id
    return record
