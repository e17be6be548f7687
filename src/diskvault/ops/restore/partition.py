"""Restore one partition of a snapshot: only its byte range, to an image file or a device.

The partition (numbered as ``diskvault partitions`` shows) is found in the snapshot's own
partition table; its bytes are read through a SnapshotReader (the chunk-list tree is
descended to the partition's start, so only the chunks covering it are read, and edges
inside chunks are cut exactly) with sequential prefetch, and written at offset 0 of the
target, in order. The target rules are restore's own (``images.target.Target``): a new file
is written under a temporary name and renamed at the end, an existing file or a device is
overwritten in place (a device needs ``force`` and is never written when mounted or too
small), ``-`` is stdout; zero extents stay holes in a file and are zeroed on a device. A
target holding a partition table (a whole disk) is refused unless ``force``: the partition
would be written over the table.

Raises PartitionError (exit 5) for an unknown partition number, DamagedData for a damaged
chunk (naming its offset in the image), TargetError/OutOfSpace for the target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ...repository.catalog import SnapshotRecord
from ...errors import DamagedData, TargetError
from ...images.target import Target, os_error
from ...repository import Repository
from ..partitions import snapshot_partitions
from ..progress import NoProgress, Progress
from ..access.snapshot_reader import ReadContext, SnapshotReader, Stream

STEP = 8 << 20


@dataclass
class PartitionRestoreResult:
    snapshot: str
    partition: int
    offset: int  # of the partition in the image, bytes
    target: str  # the path written (a symbolic link's resolved path), or "stdout"
    kind: str  # "file", "device", "stdout" or "null"
    size: int
    data_bytes: int
    zero_bytes: int
    duration: float
    in_place: bool = False  # an existing file or a device was overwritten (same inode, mode, owner)
    target_size: int = 0  # bytes of the target once written (a bigger file keeps its size)
    symlink: str | None = None  # the symbolic link given as the target (followed with force)
    warnings: list[str] = field(default_factory=list)  # e.g. written over a partition table (--force)


def restore_partition(repo: Repository, snap: SnapshotRecord, number: int, target_path: str,
                      force: bool = False, progress: Progress | None = None) -> PartitionRestoreResult:
    with repo.lock("shared", "restore"):
        return _restore_partition(repo, snap, number, target_path, force, progress or NoProgress())


def _restore_partition(repo: Repository, snap: SnapshotRecord, number: int, target_path: str,
                       force: bool, progress: Progress) -> PartitionRestoreResult:
    started = time.monotonic()
    part = snapshot_partitions(repo, snap).get(number)
    lo, hi = part.offset, min(part.offset + part.length, snap.size)
    if lo >= hi:
        raise TargetError(f"partition {number} lies past the end of the {snap.size}-byte image")
    target = Target(target_path, hi - lo, force, protect=repo.path, partition=number)
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
                    target.write(off - lo, view)
                except OSError as exc:
                    raise os_error(exc, target.path) from None
                data += length
            progress.advance(n)
            pos += n
        try:
            target.commit()
        except OSError as exc:
            raise os_error(exc, target.path) from None
    except BaseException:
        target.abort()
        raise
    finally:
        ctx.close()
    return PartitionRestoreResult(snap.id, number, lo, target.path, target.kind, hi - lo, data, zeros,
                                  round(time.monotonic() - started, 3), target.in_place, target.target_size,
                                  target.via, target.warnings)
