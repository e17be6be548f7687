"""Take a snapshot of an image file, block device or stdin.

Pipeline (three stages, each on its own thread(s)):

1. the calling thread reads the source into 8 MiB buffers (holes are skipped) and cuts
   chunks (FastCDC releases the GIL);
2. two worker threads hash each buffer's chunks (blake3), spot all-zero chunks by their
   hash, ask the catalog in one query which chunks are new and lz4-compress those;
3. one writer thread takes the buffers' results in source order, appends new chunks to
   packs in large sequential writes and builds the snapshot's chunk-list tree.

Buffers come from a fixed pool of BUFFERS recycled bytearrays: the reader blocks when all
are in flight, so memory is bounded by buffer sizes, never by image size, and no buffer is
re-allocated (fresh 8 MiB allocations cost page faults on every use).

The snapshot is recorded only after all its packs are durable (repository write order):
the writer thread seals each pack (fsync, rename) before the catalog records it.
Ctrl-C or any error aborts the open pack; sealed packs stay as reusable, unreferenced data.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from .. import compression
from ..catalog import SnapshotRecord
from ..hashing import ZERO_ID, content_id
from ..images.source import open_source
from ..pack import TYPE_CHUNK
from ..repository import Repository
from ..tree import TreeBuilder
from .progress import NoProgress, Progress

BUFFER = 8 << 20
BUFFERS = 6  # recycled read buffers: at most this many are in flight
WORKERS = 2


@dataclass
class _Item:
    id: bytes
    length: int
    payload: bytes | memoryview | None = None  # set when the chunk looked new
    flags: int = 0


class _ZeroIds:
    """blake3 of n zero bytes, per length: a chunk is all zeros iff its id is this one."""

    def __init__(self) -> None:
        self._ids: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def get(self, n: int) -> bytes:
        zid = self._ids.get(n)
        if zid is None:
            zid = content_id(bytes(n))
            with self._lock:
                self._ids[n] = zid
        return zid


def _process(repo: Repository, view: memoryview, cuts: list[tuple[int, int]], zero_ids: _ZeroIds) -> list[_Item]:
    """Hash, zero-detect, look up and compress one buffer's chunks (runs in a worker)."""
    items: list[_Item] = []
    for off, n in cuts:
        ident = content_id(view[off : off + n])
        items.append(_Item(ZERO_ID if ident == zero_ids.get(n) else ident, n))
    known = repo.catalog.known({it.id for it in items if it.id != ZERO_ID})
    seen: set[bytes] = set()
    for it, (off, n) in zip(items, cuts):
        if it.id == ZERO_ID or it.id in known or it.id in seen:
            continue
        seen.add(it.id)
        it.payload, it.flags = compression.compress(view[off : off + n])
    return items


def take_snapshot(
    repo: Repository,
    source_path: str,
    tags: list[str] | None = None,
    host: str | None = None,
    progress: Progress | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> SnapshotRecord:
    progress = progress or NoProgress()
    tags = sorted(set(tags or []))
    started = time.monotonic()
    when = now()
    source = open_source(source_path)
    writer = repo.blob_writer()
    builder = TreeBuilder(writer.add_tree_node)
    stats = dict(size=0, data_bytes=0, zero_bytes=0, chunks=0, new_chunks=0, new_bytes=0, stored_bytes=0)
    zero_ids = _ZeroIds()
    free: queue.Queue[bytearray] = queue.Queue()
    made = [0]  # buffers allocated so far (at most BUFFERS)
    ordered: queue.Queue[tuple[Future, memoryview] | int | None] = queue.Queue()
    failure: list[BaseException] = []

    def acquire(capacity: int) -> bytearray:
        if made[0] < BUFFERS:
            made[0] += 1
            return bytearray(capacity)
        while True:
            if failure:
                raise failure[0]
            try:
                return free.get(timeout=0.5)
            except queue.Empty:
                continue

    def consume(entry: tuple[Future, memoryview] | int) -> None:
        if isinstance(entry, int):
            builder.add_zero(entry)
            stats["zero_bytes"] += entry
            stats["size"] += entry
            progress.advance(entry)
            return
        done = 0
        for it in entry[0].result():
            done += it.length
            if it.id == ZERO_ID:
                builder.add_zero(it.length)
                stats["zero_bytes"] += it.length
                continue
            if it.payload is not None and not writer.has(it.id):
                stats["stored_bytes"] += writer.add(it.id, TYPE_CHUNK, it.payload, it.flags, it.length)
                stats["new_chunks"] += 1
                stats["new_bytes"] += it.length
            builder.add(it.id, it.length)
            stats["chunks"] += 1
            stats["data_bytes"] += it.length
        stats["size"] += done
        progress.advance(done)

    def write_loop() -> None:
        """Stage 3: results in source order into packs and the tree; buffers back to the pool."""
        while True:
            entry = ordered.get()
            if entry is None:
                return
            try:
                if not failure:
                    consume(entry)
            except BaseException as exc:  # handed to the reading thread, which re-raises it
                failure.append(exc)
            finally:
                if not isinstance(entry, int):
                    entry[0].cancel()
                    free.put(entry[1].obj)

    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="diskvault-chunk")
    write_thread = threading.Thread(target=write_loop, name="diskvault-write", daemon=True)
    write_thread.start()
    try:
        progress.start(source.size, "snapshot")
        for offset, length, is_data in source.extents():
            if not is_data:
                ordered.put(length)
                continue
            for view, cuts in repo.chunker.stream(source.filler(offset, length), BUFFER, acquire):
                ordered.put((pool.submit(_process, repo, view, cuts, zero_ids), view))
        ordered.put(None)
        write_thread.join()
        if failure:
            raise failure[0]
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
        host=host or socket.gethostname(),
        source="stdin" if source.kind == "stdin" else os.path.abspath(source_path),
        tags=tags,
        tree=root.hex(),
        duration=round(time.monotonic() - started, 3),
        **stats,
    )
    body = json.dumps(record.to_json(), sort_keys=True).encode()
    record.id = content_id(body).hex()[:32]
    repo.save_snapshot(record)
    return record
