"""Which blocks of a disk image its filesystems use; reads bytes only, knows nothing of the
repository.

``read_map(read, size)`` recognises the filesystem at the start of ``read`` (a partition, or
a source that is itself a filesystem) and reads its allocation map: ext2/3/4 (block bitmaps),
NTFS ($Bitmap), FAT12/16/32 (the FAT), exFAT (allocation bitmap), XFS (free-space btrees),
Btrfs on one device (chunk and extent trees). A BitLocker volume is recognised and kept whole
(its free space is ciphertext). A map that fails any consistency check gives no free ranges
and a note (every block is then read): see each reader's docstring. ``disk_plan(read,
size)`` does this per partition of a GPT/MBR disk (or for the whole source when it has no
partition table) and returns one Area per filesystem.

Why no library: pytsk3 (The Sleuth Kit) and libfsntfs read files, not allocation maps (TSK's
block walk is not in its Python binding), e2fsprogs and ntfs-3g have no Python bindings,
xfsprogs and btrfs-progs no library at all, and all are C builds that must match each
Python; the on-disk maps are small, documented structures, parsed here and tested against
dumpe2fs, ntfscluster, fsck.fat, dump.exfat, xfs_db and btrfs scrub.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..partitions import PartitionError, read_table
from . import btrfs, ext, fat, ntfs, xfs
from .common import FsMap, Inconsistent, Reader
from .ranges import Ranges

__all__ = ["Area", "FsMap", "disk_plan", "read_map"]


def read_map(read: Reader, size: int) -> FsMap:
    """The allocation of the filesystem in the ``size`` bytes behind ``read`` (offsets from
    its first byte). Never raises for what the bytes hold (a read error of ``read`` passes
    through): an unknown filesystem gives ``filesystem`` None, a map that cannot be trusted
    no free ranges and a note."""
    if size < 4096:
        return FsMap(None, notes=["too small to hold a filesystem diskvault understands: all blocks read"])
    boot = read(0, 512)
    if boot[3:11] == b"-FVE-FS-":
        return FsMap("bitlocker", notes=["BitLocker volume: its free space is ciphertext, so it is imaged whole"])
    sb = read(1024, 1024)
    probes = [(xfs.probe(boot), "xfs", xfs.read_map), (btrfs.probe(read, size), "btrfs", btrfs.read_map),
              (ntfs.probe(boot), "ntfs", ntfs.read_map), (fat.probe_exfat(boot), "exfat", fat.read_exfat),
              (ext.probe(sb), ext.fs_name(sb) if ext.probe(sb) else "", ext.read_map),
              (fat.probe_fat(boot), "fat32" if boot[0x16:0x18] == b"\0\0" else "fat", fat.read_fat)]
    for hit, name, reader in probes:
        if not hit:
            continue
        try:
            fs = reader(read, size)
        except (Inconsistent, struct.error, IndexError, ValueError) as exc:
            return FsMap(name, notes=[f"its allocation map cannot be trusted ({exc}): all blocks read"])
        fs.used_bytes = size - sum(e - s for s, e in fs.free)
        return fs
    return FsMap(None, notes=["no filesystem diskvault understands: all blocks read"])


@dataclass
class Area:
    """One filesystem's place in the source: ``partition`` its number (None: the whole
    source), ``offset``/``length`` in bytes, and its ``map``."""

    partition: int | None
    offset: int
    length: int
    map: FsMap

    def free_absolute(self) -> Ranges:
        return [(self.offset + s, self.offset + e) for s, e in self.map.free]


def disk_plan(read: Reader, size: int) -> tuple[list[Area], list[str]]:
    """``(areas, notes)``: one Area per data partition of the GPT/MBR table of the ``size``
    bytes behind ``read``, or one for the whole source when it has no table. A damaged table
    gives no areas and a note (everything is then read); partitions that overlap are read
    whole (one's free blocks may be the other's data)."""
    try:
        table = read_table(read, size)
    except PartitionError as exc:
        return [], [f"the partition table cannot be read ({exc}): all blocks read"]
    if table.label == "none" or not table.data_partitions():  # (a boot sector can pass for an empty MBR)
        return [Area(None, 0, size, read_map(read, size))], []
    areas = []
    parts = table.data_partitions()
    for p in parts:
        start, end = p.offset, min(p.offset + p.length, size)
        if end <= start:
            continue
        other = next((q.number for q in parts if q is not p and q.offset < end and start < q.offset + q.length), None)
        if other is not None:  # one filesystem's free blocks may be the other's data
            areas.append(Area(p.number, start, end - start, FsMap(None, notes=[
                f"it overlaps partition {other}: all blocks read"])))
            continue

        def sub(offset: int, length: int, start: int = start, end: int = end) -> bytes:
            if offset < 0 or start + offset + length > end:
                raise Inconsistent(f"a read at byte {offset} beyond the partition")
            return read(start + offset, length)

        m = read_map(sub, end - start)
        areas.append(Area(p.number, start, end - start, m))
    return areas, []
