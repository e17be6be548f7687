"""Compression of chunk payloads: lz4 (fast) or zstd (smaller), kept raw when it does not help.

Each pack entry says how its payload is stored in its flags: FLAG_LZ4 (an lz4 block), FLAG_ZSTD
(a zstd frame of any level, no checksum: the blake3 id verifies the bytes), neither (raw).
A payload is kept raw when the codec saves less than 1/16 of it (incompressible data then
costs nothing to read back). The codec is chosen per snapshot (ops/snapshot.py); readers
handle every entry whatever codec wrote it.

``decompress`` raises DamagedData when a payload cannot be decoded to its recorded size, or
carries a flag this version does not know.
"""

from __future__ import annotations

import threading

import lz4.block

from ..errors import DamagedData

FLAG_LZ4 = 0x01
FLAG_ENCRYPTED = 0x02  # reserved for a later format; never set today
FLAG_ZSTD = 0x04
KNOWN_FLAGS = FLAG_LZ4 | FLAG_ZSTD
CODECS = ("lz4", "zstd")
ZSTD_LEVEL = 3  # zstd's default: 27% smaller than lz4 on system files, 1/3 of lz4's speed
# (the level is the writer's choice: every level decodes alike; docs/benchmarks.md has the table)

_local = threading.local()  # zstd (de)compression contexts are per thread


def _zstd():
    import zstandard  # imported on first use: most commands never need it

    if not hasattr(_local, "zd"):
        _local.zc = {}
        _local.zd = zstandard.ZstdDecompressor()
    return _local


def _zstd_compressor(level: int):
    zc = _zstd().zc
    if level not in zc:
        import zstandard

        zc[level] = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=False, threads=0)
    return zc[level]


def compress(data: bytes | memoryview, codec: str = "lz4", level: int = ZSTD_LEVEL) -> tuple[bytes | memoryview, int]:
    """Return (payload, flags): the codec's output when it saves at least 1/16, else the raw
    bytes. ``level``: zstd's (-7 to 19; negative: faster, larger), ignored by lz4."""
    if codec == "zstd":
        packed, flag = _zstd_compressor(level).compress(data), FLAG_ZSTD
    else:
        packed, flag = lz4.block.compress(data, store_size=False), FLAG_LZ4
    if len(packed) < len(data) - (len(data) >> 4):
        # python-zstandard returns its output in a buffer of the input's bound size (a 25 KB
        # frame of a 64 KiB chunk holds 64 KiB): a copy frees that, or the payloads of the
        # windows in flight cost as much memory as their raw bytes (+~35 MiB peak RSS).
        return (bytes(memoryview(packed)) if flag == FLAG_ZSTD else packed), flag
    return data, 0


def decompress(payload: bytes | memoryview, flags: int, raw_len: int) -> bytes | memoryview:
    if flags & FLAG_ENCRYPTED:
        raise DamagedData("entry is flagged encrypted, which this version cannot read")
    if flags & ~KNOWN_FLAGS or flags == FLAG_LZ4 | FLAG_ZSTD:
        raise DamagedData(f"entry has unknown flags {flags:#x} (written by a newer diskvault?)")
    if not flags:
        if len(payload) != raw_len:
            raise DamagedData(f"raw entry is {len(payload)} bytes, expected {raw_len}")
        return payload
    try:
        if flags & FLAG_ZSTD:
            out = _zstd().zd.decompress(payload, max_output_size=raw_len)
        else:
            out = lz4.block.decompress(payload, uncompressed_size=raw_len)
    except Exception as exc:  # lz4.block.LZ4BlockError, zstandard.ZstdError
        name = "zstd" if flags & FLAG_ZSTD else "lz4"
        raise DamagedData(f"{name} payload does not decode: {exc}") from None
    if len(out) != raw_len:
        raise DamagedData(f"payload decodes to {len(out)} bytes, expected {raw_len}")
    return out
