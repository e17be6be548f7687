"""Partition-table parsing on hand-built tables: GPT CRC checks and backup fallback, MBR chains."""

from __future__ import annotations

import struct
import uuid
import zlib

import pytest

from diskvault.images.partitions import (
    GPT_ENTRY, GPT_HEADER, MBR_ENTRY, PartitionError, read_table,
)

SS = 512
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def _reader(buf):
    return lambda off, n: bytes(buf[off : off + n])


def _gpt_header(my, alt, ent_lba, entries: bytes, sectors: int) -> bytes:
    fields = [b"EFI PART", 0x10000, 92, 0, 0, my, alt, 34, sectors - 34, uuid.UUID(int=7).bytes_le,
              ent_lba, 128, 128, zlib.crc32(entries)]
    raw = bytearray(GPT_HEADER.pack(*fields))
    fields[3] = zlib.crc32(raw)
    return GPT_HEADER.pack(*fields).ljust(SS, b"\0")


def make_gpt(sectors: int = 4096, parts=((2048, 2559, ESP, "EFI"), (2560, 4000, LINUX, "root"))) -> bytearray:
    disk = bytearray(sectors * SS)
    disk[446:462] = MBR_ENTRY.pack(0, b"\0\0\0", 0xEE, b"\0\0\0", 1, sectors - 1)
    disk[510:512] = b"\x55\xaa"
    entries = bytearray(128 * 128)
    for i, (first, last, t, name) in enumerate(parts):
        entries[i * 128 : (i + 1) * 128] = GPT_ENTRY.pack(
            uuid.UUID(t).bytes_le, uuid.UUID(int=i + 1).bytes_le, first, last, 0, name.encode("utf-16-le").ljust(72, b"\0"))
    entries = bytes(entries)
    disk[SS : 2 * SS] = _gpt_header(1, sectors - 1, 2, entries, sectors)
    disk[2 * SS : 2 * SS + len(entries)] = entries
    back = sectors - 33
    disk[back * SS : back * SS + len(entries)] = entries
    disk[(sectors - 1) * SS :] = _gpt_header(sectors - 1, 1, back, entries, sectors)
    return disk


def test_gpt_primary():
    disk = make_gpt()
    t = read_table(_reader(disk), len(disk))
    assert t.label == "gpt" and not t.warnings
    assert [(p.number, p.start, p.size, p.type, p.name) for p in t.partitions] == [
        (1, 2048, 512, "EFI System", "EFI"), (2, 2560, 1441, "Linux filesystem", "root")]
    assert t.partitions[1].offset == 2560 * SS and t.partitions[1].length == 1441 * SS


@pytest.mark.parametrize("damage", ["header_crc", "entries_crc", "signature"])
def test_gpt_falls_back_to_backup_header(damage):
    disk = make_gpt()
    if damage == "header_crc":
        disk[SS + 40] ^= 0xFF  # first usable LBA changed, CRC no longer matches
    elif damage == "entries_crc":
        disk[2 * SS + 40] ^= 0xFF  # an entry changed: entry array CRC fails
    else:
        disk[SS : SS + 8] = b"NOT PART"
    t = read_table(_reader(disk), len(disk))
    assert t.label == "gpt"
    assert any("backup" in w for w in t.warnings)
    assert [p.start for p in t.partitions] == [2048, 2560]


def test_gpt_both_headers_damaged_is_an_error():
    disk = make_gpt()
    disk[SS + 40] ^= 0xFF
    disk[-SS + 40] ^= 0xFF
    with pytest.raises(PartitionError, match="GPT is damaged"):
        read_table(_reader(disk), len(disk))


def _mbr_entry(boot, ptype, start, size):
    return MBR_ENTRY.pack(boot, b"\0\0\0", ptype, b"\0\0\0", start, size)


def make_mbr(loop: bool = False) -> bytearray:
    disk = bytearray(8192 * SS)
    disk[440:444] = struct.pack("<I", 0xDEADBEEF)
    disk[446:462] = _mbr_entry(0x80, 0x83, 2048, 1000)
    disk[462:478] = _mbr_entry(0, 0x0F, 4096, 4000)
    disk[510:512] = b"\x55\xaa"
    ebrs = [4096, 5000, 6000]
    for i, ebr in enumerate(ebrs):
        o = ebr * SS
        disk[o + 446 : o + 462] = _mbr_entry(0, [0x83, 0x82, 0x07][i], 64, 500)
        nxt = ebrs[i + 1] if i + 1 < len(ebrs) else (ebrs[1] if loop else None)
        if nxt is not None:
            disk[o + 462 : o + 478] = _mbr_entry(0, 0x05, nxt - 4096, 600)
        disk[o + 510 : o + 512] = b"\x55\xaa"
    return disk


def test_mbr_with_logical_partitions():
    disk = make_mbr()
    t = read_table(_reader(disk), len(disk))
    assert t.label == "dos" and t.id == "0xdeadbeef"
    got = [(p.number, p.start, p.size, p.type_id, p.kind, p.bootable) for p in t.partitions]
    assert got == [
        (1, 2048, 1000, "83", "primary", True),
        (2, 4096, 4000, "f", "extended", False),
        (5, 4160, 500, "83", "logical", False),
        (6, 5064, 500, "82", "logical", False),
        (7, 6064, 500, "7", "logical", False),
    ]
    assert [p.number for p in t.data_partitions()] == [1, 5, 6, 7]
    assert t.get(6).type == "Linux swap / Solaris"
    with pytest.raises(PartitionError, match="no partition 3"):
        t.get(3)


def test_mbr_chain_loop_is_stopped():
    disk = make_mbr(loop=True)
    t = read_table(_reader(disk), len(disk))
    assert [p.number for p in t.partitions] == [1, 2, 5, 6, 7]
    assert any("loops" in w for w in t.warnings)


def test_no_table():
    disk = bytearray(1 << 20)
    assert read_table(_reader(disk), len(disk)).label == "none"
    disk[510:512] = b"\x55\xaa"
    disk[446] = 0x12  # a boot sector's code, not a partition entry
    assert read_table(_reader(disk), len(disk)).label == "none"
    assert read_table(_reader(b""), 0).label == "none"
