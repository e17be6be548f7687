"""What every filesystem reader shares: the result type, the error that means "do not
trust this map", bitmap-to-ranges conversion and CRC32C (ext4 metadata_csum)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .ranges import Ranges

Reader = Callable[[int, int], bytes]  # (offset, length) -> bytes, within the filesystem


class Inconsistent(Exception):
    """The allocation map cannot be trusted (the message says why): read every block."""


@dataclass
class FsMap:
    """A filesystem's allocation as read: ``filesystem`` its name (``ext4``, ``ntfs``,
    ``fat32``, ``exfat``, ``bitlocker``, ...; None when not recognised), ``block_size`` its
    allocation unit in bytes (0 when unknown), ``used_bytes`` the bytes that are not free
    (allocated blocks, metadata, anything past the filesystem's end; None when unknown), ``free`` its free byte ranges from its first byte, each a whole
    number of blocks, and ``notes`` what the caller should know (why nothing is skipped)."""

    filesystem: str | None
    block_size: int = 0
    used_bytes: int | None = None
    free: Ranges = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def free_ranges(bitmap: bytes | bytearray, base: int, unit: int, limit: int, free_bit: int = 0) -> Ranges:
    """The byte ranges of the clear bits of ``bitmap`` (bit k, least significant first in
    each byte, is the ``unit`` bytes at ``base + k * unit``), clipped to ``limit``; with
    ``free_bit`` 1 the set bits are the free ones. Whole free and whole used bytes are found
    by the regular-expression engine; only the bytes mixing both are looked at bit by bit
    (a bitmap of tens of MiB, a disk of terabytes, takes well under a second)."""
    bits = bytes(bitmap) if not free_bit else bytes(bitmap).translate(_INVERT)
    out: Ranges = []

    def add(s: int, e: int) -> None:
        e = min(e, limit)
        if s >= e:
            return
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))

    for m in _FREE_OR_MIXED.finditer(bits):  # runs of 0xFF (all used) are skipped
        k = m.start()
        byte = bits[k]
        if byte == 0:
            add(base + k * 8 * unit, base + m.end() * 8 * unit)
            continue
        for i in range(8):
            if not byte >> i & 1:
                s = base + (k * 8 + i) * unit
                add(s, s + unit)
    return out


_INVERT = bytes(b ^ 0xFF for b in range(256))
_FREE_OR_MIXED = re.compile(rb"\x00+|[\x01-\xfe]")


def _table() -> list[int]:
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_CRC32C = _table()


def crc32c_raw(crc: int, data: bytes) -> int:
    """CRC32C of ``data`` continuing from ``crc``, without the usual inversions (the
    Linux ``crc32c_le`` that ext4's checksums use)."""
    t = _CRC32C
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc
