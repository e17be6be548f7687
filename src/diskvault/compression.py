"""lz4 block compression of chunk payloads, kept raw when lz4 does not help.

``decompress`` raises DamagedData when a payload cannot be decoded to its recorded size.
"""

from __future__ import annotations

import lz4.block

from .errors import DamagedData

FLAG_LZ4 = 0x01
FLAG_ENCRYPTED = 0x02  # reserved for a later format; never set today


def compress(data: bytes | memoryview) -> tuple[bytes | memoryview, int]:
    """Return (payload, flags): lz4 when it saves at least 1/16, else the raw bytes."""
    packed = lz4.block.compress(data, store_size=False)
    if len(packed) < len(data) - (len(data) >> 4):
        return packed, FLAG_LZ4
    return data, 0


def decompress(payload: bytes | memoryview, flags: int, raw_len: int) -> bytes | memoryview:
    if flags & FLAG_ENCRYPTED:
        raise DamagedData("entry is flagged encrypted, which this version cannot read")
    if not flags & FLAG_LZ4:
        if len(payload) != raw_len:
            raise DamagedData(f"raw entry is {len(payload)} bytes, expected {raw_len}")
        return payload
    try:
        out = lz4.block.decompress(payload, uncompressed_size=raw_len)
    except lz4.block.LZ4BlockError as exc:
        raise DamagedData(f"lz4 payload does not decode: {exc}") from None
    if len(out) != raw_len:
        raise DamagedData(f"lz4 payload decodes to {len(out)} bytes, expected {raw_len}")
    return out
