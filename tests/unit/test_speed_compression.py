"""Compression for speed and size (issue 18): zstd levels, and payloads that hold only their bytes."""

from __future__ import annotations

import tracemalloc

import pytest

from diskvault.repository import compression


def text(n: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += b"%06d kernel: usb %d-%d: new device found, idVendor=%04x\n" % (i, i % 7, i % 5, i * 7919 % 65536)
        i += 1
    return bytes(out[:n])


@pytest.mark.parametrize("level", [-5, 1, 3, 19])
def test_every_zstd_level_decodes_with_the_same_flag(level):
    data = text(100_000)
    payload, flags = compression.compress(data, "zstd", level)
    assert flags == compression.FLAG_ZSTD and len(payload) < len(data) // 2
    assert bytes(compression.decompress(payload, flags, len(data))) == data


def test_levels_differ():
    data = text(200_000)
    sizes = {lvl: len(compression.compress(data, "zstd", lvl)[0]) for lvl in (-5, 1, 19)}
    assert len(set(sizes.values())) == 3  # the level is honoured (which is smallest depends on the data)


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_payload_holds_only_its_own_bytes(codec):
    """python-zstandard hands its output back in a buffer of the input's bound size; the
    snapshot keeps the payloads of 6 windows in flight, so a 25 KB frame holding 64 KiB of
    memory cost ~35 MiB of peak RSS on a 4 GiB image. The payload must be compact."""
    data = text(65536)
    compression.compress(data, codec, 1)  # contexts made outside the count
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        payload, flags = compression.compress(data, codec, 1)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert flags and len(payload) < len(data) // 2
    assert held < len(payload) + 4096
