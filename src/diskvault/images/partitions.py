"""Partition tables (GPT and MBR) parsed from raw bytes; knows nothing of the repository.

``read_table(read, size)`` takes a ``read(offset, length) -> bytes`` function over a disk
image of ``size`` bytes and returns a PartitionTable (label ``gpt``, ``dos`` or ``none``).
Numbering and fields follow ``sfdisk --dump``: GPT partitions are numbered by their entry
index + 1; MBR primaries 1-4 and logical partitions 5, 6, ... in chain order; start and size
are in 512-byte sectors (GPT on 4 KiB-sector disks is recognised too, with sector_size 4096).

GPT: the primary header (LBA 1) is used when its signature, header CRC32 and entry-array
CRC32 are right; otherwise the backup header (last LBA, or the one the primary names) is
used and ``PartitionTable.warnings`` says why. Neither valid: PartitionError. MBR: the
boot signature 0x55AA is required; extended partitions (types 05, 0f, 85) are followed
through their chain of EBRs, with loop and bounds checks. Damaged tables raise
PartitionError with a one-line reason; no table at all gives label ``none``.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..errors import SourceError

SECTOR = 512
GPT_SIGNATURE = b"EFI PART"
GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # 92 bytes
GPT_ENTRY = struct.Struct("<16s16sQQQ72s")  # 128 bytes
MBR_ENTRY = struct.Struct("<B3sB3sII")
EXTENDED_TYPES = {0x05, 0x0F, 0x85}
MAX_GPT_ENTRIES = 16384
MAX_LOGICAL = 256

Reader = Callable[[int, int], bytes]


class PartitionError(SourceError):
    """The partition table is present but damaged (or the asked partition does not exist)."""


GPT_TYPES = {
    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
    "024DEE41-33E7-11D3-9D69-0008C781F39F": "MBR partition scheme",
    "D3BFE2DE-3DAF-11DF-BA40-E3A556D89593": "Intel Fast Flash",
    "21686148-6449-6E6F-744E-656564454649": "BIOS boot",
    "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
    "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
    "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3": "Microsoft LDM metadata",
    "AF9B60A0-1431-4F62-BC68-3311714A69AD": "Microsoft LDM data",
    "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery environment",
    "E75CAF8F-F680-4CEE-AFA3-B001E56EFC2D": "Microsoft Storage Spaces",
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
    "E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
    "A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
    "933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
    "3B8F8425-20E0-4F3B-907F-1A25A76F98E8": "Linux server data",
    "BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
    "CA7D7CCB-63ED-4C53-861C-1742536059CC": "Linux LUKS",
    "8DA63339-0007-60C0-C436-083AC8230908": "Linux reserved",
    "44479540-F297-41B2-9AF7-D131D5F0458A": "Linux root (x86)",
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
    "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3": "Linux root (ARM)",
    "B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "Linux root (ARM-64)",
    "8484680C-9521-48C6-9C11-B0720656F69E": "Linux /usr (x86-64)",
    "4D21B016-B534-45C2-A9FB-5C16E091FD2D": "Linux variable data",
    "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1": "Linux temporary data",
    "516E7CB4-6ECF-11D6-8FF8-00022D09712B": "FreeBSD data",
    "83BD6B9D-7F41-11DC-BE0B-001560B84F0F": "FreeBSD boot",
    "516E7CB5-6ECF-11D6-8FF8-00022D09712B": "FreeBSD swap",
    "516E7CB6-6ECF-11D6-8FF8-00022D09712B": "FreeBSD UFS",
    "516E7CBA-6ECF-11D6-8FF8-00022D09712B": "FreeBSD ZFS",
    "48465300-0000-11AA-AA11-00306543ECAC": "Apple HFS/HFS+",
    "7C3457EF-0000-11AA-AA11-00306543ECAC": "Apple APFS",
    "55465300-0000-11AA-AA11-00306543ECAC": "Apple UFS",
    "426F6F74-0000-11AA-AA11-00306543ECAC": "Apple boot",
    "FE3A2A5D-4F32-41A7-B725-ACCC3285A309": "ChromeOS kernel",
    "3CB8E202-3B7E-47DD-8A3C-7FF2A13CFCEC": "ChromeOS root fs",
    "6A898CC3-1DD2-11B2-99A6-080020736631": "Solaris /usr & Apple ZFS",
    "9E1A2D38-C612-4316-AA26-8B49521E5A8B": "PowerPC PReP boot",
}

MBR_TYPES = {
    0x01: "FAT12",
    0x04: "FAT16 <32M",
    0x05: "Extended",
    0x06: "FAT16",
    0x07: "HPFS/NTFS/exFAT",
    0x0B: "W95 FAT32",
    0x0C: "W95 FAT32 (LBA)",
    0x0E: "W95 FAT16 (LBA)",
    0x0F: "W95 Ext'd (LBA)",
    0x11: "Hidden FAT12",
    0x12: "Compaq diagnostics",
    0x17: "Hidden HPFS/NTFS",
    0x1B: "Hidden W95 FAT32",
    0x1C: "Hidden W95 FAT32 (LBA)",
    0x27: "Hidden NTFS WinRE",
    0x42: "SFS",
    0x82: "Linux swap / Solaris",
    0x83: "Linux",
    0x85: "Linux extended",
    0x86: "NTFS volume set",
    0x87: "NTFS volume set",
    0x8E: "Linux LVM",
    0xA5: "FreeBSD",
    0xA6: "OpenBSD",
    0xA8: "Darwin UFS",
    0xA9: "NetBSD",
    0xAF: "HFS / HFS+",
    0xEE: "GPT",
    0xEF: "EFI (FAT-12/16/32)",
    0xFB: "VMware VMFS",
    0xFC: "VMware VMKCORE",
    0xFD: "Linux raid autodetect",
}


@dataclass
class Partition:
    number: int
    start: int  # in sectors
    size: int  # in sectors
    type_id: str  # GPT: type GUID (upper case); MBR: hex type byte as sfdisk prints it ("83", "5")
    type: str  # human name ("Linux filesystem"), or "unknown"
    name: str = ""  # GPT partition name
    uuid: str = ""  # GPT unique partition GUID
    bootable: bool = False  # MBR boot flag
    attrs: int = 0  # GPT attribute bits
    kind: str = "primary"  # gpt: "primary"; dos: "primary", "extended" or "logical"
    sector_size: int = SECTOR

    @property
    def offset(self) -> int:
        return self.start * self.sector_size

    @property
    def length(self) -> int:
        return self.size * self.sector_size

    def to_json(self) -> dict:
        d = asdict(self)
        d["offset"] = self.offset
        d["length"] = self.length
        return d


@dataclass
class PartitionTable:
    label: str  # "gpt", "dos" or "none"
    sector_size: int = SECTOR
    id: str = ""  # GPT disk GUID, or MBR disk signature as 0x%08x
    first_lba: int | None = None
    last_lba: int | None = None
    partitions: list[Partition] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def get(self, number: int) -> Partition:
        for p in self.partitions:
            if p.number == number:
                return p
        have = ", ".join(str(p.number) for p in self.partitions) or "none"
        raise PartitionError(f"there is no partition {number} (partitions: {have})")

    def data_partitions(self) -> list[Partition]:
        """Partitions that hold data (not MBR extended containers)."""
        return [p for p in self.partitions if p.kind != "extended"]

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "sector_size": self.sector_size,
            "id": self.id,
            "first_lba": self.first_lba,
            "last_lba": self.last_lba,
            "partitions": [p.to_json() for p in self.partitions],
            "warnings": list(self.warnings),
        }


def gpt_type_name(guid: str) -> str:
    return GPT_TYPES.get(guid.upper(), "unknown")


def mbr_type_name(code: int) -> str:
    return MBR_TYPES.get(code, "unknown")


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw)).upper()


def _read(read: Reader, size: int, offset: int, length: int) -> bytes:
    if offset < 0 or offset + length > size:
        return b""
    data = read(offset, length)
    return bytes(data) if len(data) == length else b""


def read_table(read: Reader, size: int) -> PartitionTable:
    """Parse the partition table of a disk image read through ``read``."""
    mbr = _read(read, size, 0, SECTOR)
    if len(mbr) < SECTOR:
        return PartitionTable("none")
    has_sig = mbr[510:512] == b"\x55\xaa"
    entries = [MBR_ENTRY.unpack_from(mbr, 446 + 16 * i) for i in range(4)] if has_sig else []
    protective = any(e[2] == 0xEE for e in entries)
    if _read(read, size, SECTOR, 8) == GPT_SIGNATURE:
        return _read_gpt(read, size, SECTOR)
    if _read(read, size, 4096, 8) == GPT_SIGNATURE:
        return _read_gpt(read, size, 4096)
    if protective:  # primary GPT header gone: the backup may still be there
        return _read_gpt(read, size, SECTOR)
    if not has_sig:
        return PartitionTable("none")
    return _read_mbr(read, size, mbr, entries)


# --- GPT -------------------------------------------------------------------------------
def _gpt_header(read: Reader, size: int, ss: int, lba: int) -> tuple[tuple | None, bytes, str]:
    """``(fields, entry array, "")`` for a valid header at ``lba``, else ``(None, b"", why)``."""
    raw = _read(read, size, lba * ss, ss)
    if len(raw) < GPT_HEADER.size:
        return None, b"", f"the GPT header at LBA {lba} lies past the end of the disk"
    h = GPT_HEADER.unpack_from(raw)
    sig, _rev, hsize, hcrc, _res, my_lba, _alt, _first, _last, _guid_raw, ent_lba, n, esize, ecrc = h
    if sig != GPT_SIGNATURE:
        return None, b"", f"no GPT header at LBA {lba}"
    if not GPT_HEADER.size <= hsize <= ss:
        return None, b"", f"the GPT header at LBA {lba} has a bad size {hsize}"
    check = bytearray(raw[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != hcrc:
        return None, b"", f"the GPT header at LBA {lba} fails its CRC32 check"
    if my_lba != lba:
        return None, b"", f"the GPT header at LBA {lba} says it is at LBA {my_lba}"
    if not 0 < n <= MAX_GPT_ENTRIES or esize < GPT_ENTRY.size or esize % 8:
        return None, b"", f"the GPT header at LBA {lba} has a bad entry array ({n} x {esize} B)"
    array = _read(read, size, ent_lba * ss, n * esize)
    if not array:
        return None, b"", f"the GPT entry array of the header at LBA {lba} lies past the end of the disk"
    if zlib.crc32(array) != ecrc:
        return None, b"", f"the GPT entry array of the header at LBA {lba} fails its CRC32 check"
    return h, array, ""


def _read_gpt(read: Reader, size: int, ss: int) -> PartitionTable:
    warnings: list[str] = []
    h, array, why = _gpt_header(read, size, ss, 1)
    if h is None:
        warnings.append(why)
        candidates = [size // ss - 1]
        raw = _read(read, size, ss, GPT_HEADER.size)
        if raw[:8] == GPT_SIGNATURE:
            alt = GPT_HEADER.unpack_from(raw)[6]
            if alt not in candidates and 1 < alt < size // ss:
                candidates.insert(0, alt)
        for lba in candidates:
            h, array, why2 = _gpt_header(read, size, ss, lba)
            if h is not None:
                warnings.append(f"using the backup GPT header at LBA {lba}")
                break
            warnings.append(why2)
        if h is None:
            raise PartitionError("the GPT is damaged: " + "; ".join(warnings))
    _sig, _rev, _hs, _hc, _res, _my, _alt, first, last, disk_guid, _el, n, esize, _ec = h
    table = PartitionTable("gpt", ss, _guid(disk_guid), first, last, warnings=warnings)
    for i in range(n):
        tguid, pguid, start, end, attrs, name = GPT_ENTRY.unpack_from(array, i * esize)
        if tguid == bytes(16):
            continue
        if end < start:
            table.warnings.append(f"GPT entry {i + 1} ends before it starts: ignored")
            continue
        type_id = _guid(tguid)
        label = name.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        table.partitions.append(Partition(
            number=i + 1, start=start, size=end - start + 1, type_id=type_id, type=gpt_type_name(type_id),
            name=label, uuid=_guid(pguid), attrs=attrs, sector_size=ss,
        ))
    return table


# --- MBR -------------------------------------------------------------------------------
def _mbr_part(number: int, entry: tuple, base: int, kind: str) -> Partition:
    boot, _chs1, ptype, _chs2, start, count = entry
    return Partition(
        number=number, start=base + start, size=count, type_id=f"{ptype:x}", type=mbr_type_name(ptype),
        bootable=boot == 0x80, kind=kind,
    )


def _read_mbr(read: Reader, size: int, mbr: bytes, entries: list[tuple]) -> PartitionTable:
    sig = struct.unpack_from("<I", mbr, 440)[0]
    table = PartitionTable("dos", SECTOR, f"0x{sig:08x}")
    sectors = size // SECTOR
    if any(e[0] not in (0x00, 0x80) for e in entries):
        return PartitionTable("none")  # a boot sector (FAT, NTFS, ...), not a partition table
    ext: Partition | None = None
    for i, e in enumerate(entries):
        if e[2] == 0 or e[5] == 0:
            continue
        kind = "extended" if e[2] in EXTENDED_TYPES else "primary"
        part = _mbr_part(i + 1, e, 0, kind)
        table.partitions.append(part)
        if kind == "extended":
            if ext is not None:
                table.warnings.append(f"second extended partition {i + 1} ignored")
                continue
            ext = part
        if part.start + part.size > sectors:
            table.warnings.append(f"partition {i + 1} ends past the end of the disk")
    if ext is None:
        return table
    number, ebr, seen = 5, ext.start, set()
    while ebr and len(seen) < MAX_LOGICAL:
        if ebr in seen:
            table.warnings.append(f"the chain of extended boot records loops at sector {ebr}: stopped")
            break
        seen.add(ebr)
        raw = _read(read, size, ebr * SECTOR, SECTOR)
        if len(raw) < SECTOR or raw[510:512] != b"\x55\xaa":
            table.warnings.append(f"no valid extended boot record at sector {ebr}: chain stopped")
            break
        first = MBR_ENTRY.unpack_from(raw, 446)
        second = MBR_ENTRY.unpack_from(raw, 462)
        if first[2] != 0 and first[5] != 0:
            table.partitions.append(_mbr_part(number, first, ebr, "logical"))
            number += 1
        if second[2] in EXTENDED_TYPES and second[4]:
            nxt = ext.start + second[4]
            if not ext.start < nxt < ext.start + ext.size:
                table.warnings.append(f"extended boot record at sector {nxt} lies outside the extended partition")
                break
            ebr = nxt
        else:
            ebr = 0
    return table
