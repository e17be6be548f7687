"""Fit a disk image's partition table to a target of another size; knows nothing of the repository.

A whole-disk image restored onto a bigger disk keeps its GPT backup header where the old
disk ended, in the middle of the new one: ``sgdisk -v`` reports it, the kernel warns
(``GPT:Alternate GPT header not at the end of the disk``) and the new space cannot be
partitioned. ``plan_adjustment`` computes the sectors to write after the image's bytes so
that the table describes the target (UEFI 2.10, section 5.3 "GUID Partition Table Disk
Layout"; the same repair as ``sgdisk -e``):

- GPT: the backup partition entry array and backup header move to the target's last LBAs;
  the primary header's alternate LBA and last usable LBA follow, both header CRC32s and the
  entry-array CRC32 are recomputed, and the protective MBR's size field covers the target
  (capped at 0xFFFFFFFF; a hybrid MBR, whose other entries describe partitions, is left
  as it is, as ``sgdisk -e`` does). The old backup header and array, now in unpartitioned
  space, are zeroed so no tool finds a stale table there.
- ``grow``: partition N, which must end last, is extended to the end of the usable space
  (its end rounded down to a 1 MiB boundary, as sgdisk aligns). The file system inside is
  left alone: ``grow_hint`` names the tool that grows it.
- MBR: nothing moves; ``grow`` extends a primary partition's 32-bit sector count.
- A smaller target is accepted only when every partition ends within it (for GPT: before
  the backup array that moves in); otherwise TargetError names the bytes needed.

A table written for another logical sector size than the target's is refused (TargetError):
converting 512-byte LBAs to 4096-byte ones moves every partition boundary, which this
module does not do. Raises PartitionError for a damaged table.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from ..errors import TargetError
from .partitions import (
    GPT_ENTRY,
    GPT_HEADER,
    MBR_ENTRY,
    SECTOR,
    Partition,
    PartitionError,
    Reader,
    _gpt_header,
    read_table,
)

ALIGN = 1 << 20  # partition ends are rounded down to 1 MiB, as sgdisk and parted align
GROW_TOOLS = {  # partition type -> the command that grows the file system inside it
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "resize2fs (ext4) or xfs_growfs (XFS, mounted)",
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "resize2fs (ext4) or xfs_growfs (XFS, mounted)",
    "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "ntfsresize (NTFS)",
    "E6D6D379-F507-44C2-A23C-238F2A3DF928": "pvresize (LVM physical volume)",
    "83": "resize2fs (ext4) or xfs_growfs (XFS, mounted)",
    "7": "ntfsresize (NTFS)",
    "8e": "pvresize (LVM physical volume)",
}


@dataclass(frozen=True)
class Write:
    """``data`` to write at byte ``offset`` of the target, after the image's own bytes."""

    offset: int
    data: bytes

    def to_json(self) -> dict:
        return {"offset": self.offset, "length": len(self.data)}


@dataclass
class Adjustment:
    label: str  # "gpt", "dos" or "none"
    image_size: int  # bytes
    target_size: int  # bytes
    sector_size: int = SECTOR
    writes: list[Write] = field(default_factory=list)
    grown: dict | None = None  # {"partition", "old_size", "new_size" (bytes), "grow_hint"}
    copy_bytes: int = 0  # how many of the image's bytes go to the target (min of both sizes)

    @property
    def needed(self) -> bool:
        return bool(self.writes)

    def ranges(self) -> list[tuple[int, int]]:
        """The ``(offset, length)`` byte ranges the adjustment rewrites, sorted."""
        return sorted((w.offset, len(w.data)) for w in self.writes)

    def to_json(self) -> list[dict]:
        return [w.to_json() for w in sorted(self.writes, key=lambda w: w.offset)]


def _crc(data: bytes | bytearray) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _header(raw: bytes, hsize: int, my_lba: int, alt_lba: int, last_usable: int, ent_lba: int,
            array_crc: int) -> bytes:
    """A GPT header sector from ``raw`` (a valid header sector) with the given fields and a new CRC."""
    f = list(GPT_HEADER.unpack_from(raw))
    f[3] = 0  # header CRC, computed below over hsize bytes with this field zero
    f[5], f[6], f[8], f[10], f[13] = my_lba, alt_lba, last_usable, ent_lba, array_crc
    out = bytearray(raw)
    GPT_HEADER.pack_into(out, 0, *f)
    out[GPT_HEADER.size:hsize] = bytes(hsize - GPT_HEADER.size)  # reserved, zero by the spec
    struct.pack_into("<I", out, 16, _crc(out[:hsize]))
    return bytes(out)


def _too_small(p: Partition, need_end: int, target_size: int) -> TargetError:
    return TargetError(
        f"the target is too small: partition {p.number} ends at byte {p.offset + p.length}, so the "
        f"target needs at least {need_end} bytes and has {target_size}: use a bigger disk"
    )


def _grow_hint(p: Partition) -> str:
    return GROW_TOOLS.get(p.type_id.upper() if len(p.type_id) > 2 else p.type_id.lower(),
                          "the file system's own resize tool")


def plan_adjustment(read: Reader, image_size: int, target_size: int, target_sector_size: int | None = None,
                    grow: int | None = None) -> Adjustment:
    """The writes that fit the table of an image of ``image_size`` bytes (read through
    ``read(offset, length)``) to a target of ``target_size`` bytes, optionally growing
    partition ``grow``. No writes when the sizes match and nothing grows.

    Raises TargetError (target too small, wrong sector size, partition N not last) and
    PartitionError (damaged table, no partition N)."""
    table = read_table(read, image_size)
    adj = Adjustment(table.label, image_size, target_size, table.sector_size,
                     copy_bytes=min(image_size, target_size))
    if table.label == "none":
        if grow is not None:
            raise TargetError("the image has no partition table: --grow-partition needs one")
        return adj
    ss = table.sector_size
    if target_sector_size and target_sector_size != ss:
        raise TargetError(
            f"the image's partition table is written for {ss}-byte sectors and the target has "
            f"{target_sector_size}-byte sectors: restore onto a disk with {ss}-byte sectors (or into an image file)"
        )
    parts = table.data_partitions()
    if grow is not None:
        grown = table.get(grow)
        if grown.kind == "logical":
            raise TargetError(f"partition {grow} is a logical partition: only a primary or GPT partition can grow")
        if any(p.offset + p.length > grown.offset + grown.length for p in table.partitions if p is not grown
               and p.kind != "logical"):
            last = max(table.partitions, key=lambda p: p.offset + p.length)
            raise TargetError(f"partition {grow} is not the last one on the disk (partition {last.number} ends later): "
                              f"only the last partition can grow")
    if table.label == "dos":
        _plan_mbr(read, adj, table.partitions, grow)  # an extended container must fit too
    else:
        _plan_gpt(read, adj, parts, grow)
    return adj


def _plan_mbr(read: Reader, adj: Adjustment, parts: list[Partition], grow: int | None) -> None:
    sectors = adj.target_size // SECTOR
    for p in parts:
        if p.start + p.size > sectors:
            raise _too_small(p, (p.start + p.size) * SECTOR, adj.target_size)
    if grow is None:
        return
    mbr = bytearray(read(0, SECTOR))
    p = next(p for p in parts if p.number == grow)
    end = min(sectors, p.start + 0xFFFFFFFF)
    aligned = end - (end * SECTOR % ALIGN) // SECTOR
    new_size = (aligned if aligned > p.start + p.size else end) - p.start
    if new_size <= p.size:
        return
    off = 446 + 16 * (grow - 1)
    e = list(MBR_ENTRY.unpack_from(mbr, off))
    e[5] = new_size
    MBR_ENTRY.pack_into(mbr, off, *e)
    adj.writes.append(Write(0, bytes(mbr)))
    adj.grown = {"partition": grow, "old_size": p.size * SECTOR, "new_size": new_size * SECTOR,
                 "grow_hint": _grow_hint(p)}


def _plan_gpt(read: Reader, adj: Adjustment, parts: list[Partition], grow: int | None) -> None:
    ss = adj.sector_size
    old_lbas, new_lbas = adj.image_size // ss, adj.target_size // ss

    def rd(lba: int, n: int = 1) -> bytes:
        data = read(lba * ss, n * ss)
        return bytes(data) if len(data) == n * ss else b""

    h, array, _ = _gpt_header(read, adj.image_size, ss, 1)
    if h is not None:
        hraw, ent_lba = rd(1), h[10]
    else:  # the primary is damaged: rebuild it from the backup read_table accepted
        alt = old_lbas - 1
        h, array, why = _gpt_header(read, adj.image_size, ss, alt)
        if h is None:
            raise PartitionError(f"the GPT is damaged: {why}")
        hraw, ent_lba = rd(alt), 2
    hsize, first_usable, n, esize = h[2], h[7], h[11], h[12]
    old_alt = h[6] if h[5] == 1 else h[5]
    array_lbas = -(-n * esize // ss)
    new_alt = new_lbas - 1
    new_array_lba = new_alt - array_lbas
    last_usable = new_array_lba - 1
    for p in parts:
        if p.start + p.size - 1 > last_usable:
            raise _too_small(p, (p.start + p.size + array_lbas + 1) * ss, adj.target_size)
    if ent_lba + array_lbas > first_usable:
        raise PartitionError("the GPT's primary entry array overlaps the first usable LBA")
    array = bytearray(array)
    if grow is not None:
        p = next(p for p in parts if p.number == grow)
        end = last_usable + 1
        aligned = end - (end * ss % ALIGN) // ss
        new_end = (aligned if aligned > p.start + p.size else end) - 1
        if new_end > p.start + p.size - 1:
            struct.pack_into("<Q", array, (grow - 1) * esize + 40, new_end)
            adj.grown = {"partition": grow, "old_size": p.size * ss, "new_size": (new_end - p.start + 1) * ss,
                         "grow_hint": _grow_hint(p)}
    if new_lbas == old_lbas and adj.grown is None and h[8] == last_usable and h[6] == new_alt:
        return  # same size, nothing grown, table already right
    array_crc = _crc(array)
    primary = _header(hraw, hsize, 1, new_alt, last_usable, ent_lba, array_crc)
    backup = _header(hraw, hsize, new_alt, 1, last_usable, new_array_lba, array_crc)
    writes: list[Write] = []
    # the old backup array and header, now in unpartitioned space inside the target: zeroed
    # (first, so that the new sectors win where they overlap)
    old_start = old_alt - array_lbas
    if old_alt != new_alt and old_alt < new_lbas and all(p.start + p.size <= old_start for p in parts):
        writes.append(Write(old_start * ss, bytes((array_lbas + 1) * ss)))
    writes += [Write(ss, primary), Write(new_array_lba * ss, bytes(array).ljust(array_lbas * ss, b"\0")),
               Write(new_alt * ss, backup)]
    if adj.grown is not None:
        writes.append(Write(ent_lba * ss, bytes(array).ljust(array_lbas * ss, b"\0")))
    mbr = bytearray(read(0, SECTOR))
    entries = [list(MBR_ENTRY.unpack_from(mbr, 446 + 16 * i)) for i in range(4)]
    hybrid = sum(1 for e in entries if e[2] != 0) > 1  # a hybrid MBR: its 0xEE entry is left alone, as sgdisk -e does
    for i, e in enumerate(entries):
        if e[2] == 0xEE and e[4] == 1 and not hybrid:
            e[5] = min(new_lbas - 1, 0xFFFFFFFF)
            MBR_ENTRY.pack_into(mbr, 446 + 16 * i, *e)
            writes.append(Write(0, bytes(mbr)))
            break
    adj.writes = _merge(writes)


def _merge(writes: list[Write]) -> list[Write]:
    """Later writes win where ranges overlap (the zeroed old backup never hides a new sector)."""
    out: list[Write] = []
    for w in writes:
        kept: list[Write] = []
        for o in out:
            lo, hi = w.offset, w.offset + len(w.data)
            if o.offset + len(o.data) <= lo or o.offset >= hi:
                kept.append(o)
                continue
            if o.offset < lo:
                kept.append(Write(o.offset, o.data[: lo - o.offset]))
            if o.offset + len(o.data) > hi:
                kept.append(Write(hi, o.data[hi - o.offset:]))
        kept.append(w)
        out = kept
    return sorted(out, key=lambda w: w.offset)


__all__ = ["Adjustment", "Write", "plan_adjustment", "GPT_ENTRY"]
