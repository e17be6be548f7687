"""Take a snapshot of an image file, block device or stdin.

Pipeline: the calling thread reads the source in 8 MiB buffers (holes are skipped) and cuts
chunks; two worker threads hash each buffer's chunks (blake3), spot all-zero chunks, ask the
catalog in one query which chunks are new and lz4-compress those; the calling thread then
writes new chunks to packs in source order and builds the snapshot's chunk-list tree. At
most DEPTH buffers are in flight, so memory is bounded by buffer size, not image size.

The snapshot is recorded only after all its packs are durable (repository write order).
Ctrl-C or any error aborts the open pack; sealed packs stay as reusable, unreferenced data.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import deque
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
DEPTH = 4
WORKERS = 2


@dataclass
class _Item:
    id: bytes
    length: int
    payload: bytes | memoryview | None = None  # set when the chunk looked new
    flags: int = 0


def _process(repo: Repository, buf: bytearray, cuts: list[tuple[int, int]], zeros: bytes) -> list[_Item]:
    """Hash, zero-detect, look up and compress one buffer's chunks (runs in a worker)."""
    view = memoryview(buf)
    items: list[_Item] = []
    for off, n in cuts:
        piece = view[off : off + n]
        if piece[0] == 0 and piece[n - 1] == 0 and buf[off : off + n] == zeros[:n]:
            items.append(_Item(ZERO_ID, n))
        else:
            items.append(_Item(content_id(piece), n))
    data_items = [it for it in items if it.id != ZERO_ID]
    known = repo.catalog.known({it.id for it in data_items})
    seen: set[bytes] = set()
    for it, (off, n) in zip(items, cuts):
        if it.id == ZERO_ID or it.id in known or it.id in seen:
            continue
        seen.add(it.id)
        it.payload, it.flags = compression.compress(view[off : off + n])
    return items


def take_snapshot(repo: Repository, source_path: str, *args, **kwargs) -> SnapshotRecord:
    """Take a snapshot while holding a shared repository lock (prune waits or fails)."""
    with repo.lock("shared", "snapshot"):
        return _take_snapshot(repo, source_path, *args, **kwargs)


def _take_snapshot(
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
    zeros = bytes(repo.params.max_size)
    pending: deque[Future | int] = deque()  # futures of buffers, ints are holes

    def consume(entry: Future | int) -> None:
        if isinstance(entry, int):
            builder.add_zero(entry)
            stats["zero_bytes"] += entry
            stats["size"] += entry
            progress.advance(entry)
            return
        done = 0
        for it in entry.result():
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

    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="diskvault-chunk")
    try:
        progress.start(source.size, "snapshot")
        for offset, length, is_data in source.extents():
            if not is_data:
                pending.append(length)
                continue
            for buf, cuts in repo.chunker.stream(source.filler(offset, length), BUFFER):
                pending.append(pool.submit(_process, repo, buf, cuts, zeros))
                while len(pending) > DEPTH:
                    consume(pending.popleft())
        while pending:
            consume(pending.popleft())
        root = builder.finish()
        writer.seal()
    except BaseException:
        for entry in pending:
            if isinstance(entry, Future):
                entry.cancel()
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
