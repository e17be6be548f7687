"""Restore one partition of a snapshot: only its byte range, to an image file or a device.

The partition (numbered as ``diskvault partitions`` shows) is found in the snapshot's own
partition table; its bytes are read through a SnapshotReader (the chunk-list tree is
descended to the partition's start, so only the chunks covering it are read, and edges
inside chunks are cut exactly) with sequential prefetch, and written at offset 0 of the
target. The target rules are restore's own (``restore._Target``): a file is written under
a temporary name and renamed at the end, a device needs ``force`` and is never written when
mounted or too small; zero extents stay holes in a file and are zeroed on a device.

Raises PartitionError (exit 5) for an unknown partition number, DamagedData for a damaged
chunk (naming its offset in the image), TargetError/OutOfSpace for the target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..repository.catalog import SnapshotRecord
from ..errors import DamagedData, TargetError
from ..repository import Repository
from .partitions import snapshot_partitions
from .progress import NoProgress, Progress
from .restore import _os_error, _Target
from .access.snapshot_reader import ReadContext, SnapshotReader, Stream

STEP = 8 << 20


@dataclass
class PartitionRestoreResult:
    snapshot: str
    partition: int
    offset: int  # of the partition in the image, bytes
    target: str
    kind: str  # "file" or "device" (or "null")
    size: int
    data_bytes: int
    zero_bytes: int
    duration: float


def restore_partition(repo: Repository, snap: SnapshotRecord, number: int, target_path: str,
                      force: bool = False, progress: Progress | None = None) -> PartitionRestoreResult:
    with repo.lock("shared", "restore"):
        return _restore_partition(repo, snap, number, target_path, force, progress or NoProgress())


def _restore_partition(repo: Repository, snap: SnapshotRecord, number: int, target_path: str,
                       force: bool, progress: Progress) -> PartitionRestoreResult:
    import os

    started = time.monotonic()
    part = snapshot_partitions(repo, snap).get(number)
    lo, hi = part.offset, min(part.offset + part.length, snap.size)
    if lo >= hi:
        raise TargetError(f"partition {number} lies past the end of the {snap.size}-byte image")
    target = _Target(target_path, hi - lo, force)
    ctx = ReadContext(repo, cache_bytes=64 << 20)
    reader, stream = SnapshotReader(ctx, snap), Stream()
    data = zeros = 0
    try:
        progress.start(hi - lo, "restore")
        pos = lo
        while pos < hi:
            n = min(STEP, hi - pos)
            try:
                segs = reader.segments(pos, n, stream)
            except DamagedData as exc:
                raise DamagedData(f"restore of partition {number} of snapshot {snap.id[:12]} stopped: {exc}") from None
            for off, length, view in segs:
                if view is None:
                    target.zero(off - lo, length)
                    zeros += length
                    continue
                try:
                    while view:
                        w = os.pwrite(target.fd, view, off - lo)
                        view, off = view[w:], off + w
                except OSError as exc:
                    raise _os_error(exc, target_path) from None
                data += length
            progress.advance(n)
            pos += n
        target.commit()
    except BaseException:
        target.abort()
        raise
    finally:
        ctx.close()
    return PartitionRestoreResult(snap.id, number, lo, target_path, target.kind, hi - lo, data, zeros,
                                  round(time.monotonic() - started, 3))
