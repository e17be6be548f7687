"""The partition table (GPT or MBR) of a snapshot or of a source image/device.

A snapshot's table is read through a SnapshotReader (only the sectors the table needs are
fetched); a source is read with pread. Raises SnapshotError/DamagedData for the snapshot,
SourceError for an unreadable source, PartitionError for a damaged table.
"""

from __future__ import annotations

import os

from ..repository.catalog import SnapshotRecord
from ..errors import SourceError
from ..images.partitions import PartitionTable, read_table
from ..images.source import open_source
from ..repository import Repository
from .access.snapshot_reader import ReadContext, SnapshotReader


def snapshot_partitions(repo: Repository, snap: SnapshotRecord) -> PartitionTable:
    ctx = ReadContext(repo, cache_bytes=16 << 20, prefetch=False)
    try:
        with repo.lock("shared", "partitions"):
            reader = SnapshotReader(ctx, snap)
            return read_table(reader.read, reader.size)
    finally:
        ctx.close()


def source_partitions(path: str) -> PartitionTable:
    source = open_source(path)
    try:
        if source.size is None:
            raise SourceError(f"{path} is neither an image file nor a block device")

        def read(offset: int, length: int) -> bytes:
            try:
                return os.pread(source.fd, length, offset)
            except OSError as exc:
                raise SourceError(f"cannot read {path} at byte {offset}: {exc.strerror}") from None

        return read_table(read, source.size)
    finally:
        source.close()
