"""The record side of used-blocks snapshots: the ``filesystems`` field survives the record
file and the catalog row, old records without it still read, and a badly fragmented
filesystem's skipped list stays bounded."""

from __future__ import annotations

import json

from helpers import random_bytes

from diskvault.images.filesystems.common import free_ranges
from diskvault.images.filesystems.ranges import decode, encode, total
from diskvault.ops.fsmap import SKIPPED_LIMIT, UsedPlan, skipped
from diskvault.repository.catalog import SnapshotRecord
from diskvault.images.filesystems.ranges import bounded

BASE = dict(id="ab" * 16, time="2026-11-30T12:00:00Z", host="h", source="/dev/sda", size=1 << 30, tags=[], tree="00" * 32)


def test_filesystems_field_survives_file_and_row() -> None:
    fs = [{"partition": 2, "offset": 1 << 20, "length": 64 << 20, "filesystem": "ext4", "block_size": 4096,
           "used_bytes": 8 << 20, "skipped_bytes": 8192, "notes": [], "skipped": encode([(4096, 12288)], 4096)}]
    rec = SnapshotRecord(**BASE, filesystems=fs)
    back = SnapshotRecord.from_json(json.loads(rec.file_bytes()))
    assert back.filesystems == fs
    assert SnapshotRecord.from_row(rec.to_row()).filesystems == fs
    assert skipped(back) == [((1 << 20) + 4096, (1 << 20) + 12288)]


def test_old_record_without_the_field_reads_as_none() -> None:
    old = dict(BASE)
    rec = SnapshotRecord.from_json(old)
    assert rec.filesystems is None and skipped(rec) == []
    assert UsedPlan().filesystems is None


def test_fragmented_8gib_ext4_record_is_bounded() -> None:
    """Every other 4 KiB block free, then random allocation, over 2 GiB: millions of free
    ranges at worst; the record keeps at most SKIPPED_LIMIT characters of them, the longest."""
    alternating = free_ranges(b"\x55" * (2 << 30 >> 15), 0, 4096, 2 << 30)
    assert len(alternating) == (2 << 30) // 8192
    kept, text = bounded(alternating, 4096, SKIPPED_LIMIT)
    assert len(text) <= SKIPPED_LIMIT and decode(text, 4096) == kept
    randomly = free_ranges(random_bytes(2 << 30 >> 15, 3), 0, 4096, 2 << 30)
    kept, text = bounded(randomly, 4096, SKIPPED_LIMIT)
    assert len(text) <= SKIPPED_LIMIT and decode(text, 4096) == kept and set(kept) <= set(randomly)
    assert total(kept) > 0
