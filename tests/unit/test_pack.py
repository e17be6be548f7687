"""Pack format: round trip, trailer parsing, and damage detection."""

import pytest

from diskvault.repository import compression
from diskvault.errors import DamagedData
from diskvault.repository.crypto import PLAIN, Crypto
from diskvault.repository.pack import ENTRY, FOOTER, HEADER, TYPE_CHUNK, TYPE_TREE, PackWriter, pack_id, read_pack_index
from diskvault.storage.local import LocalStorage
from helpers import random_bytes

CRYPTOS = {"plain": PLAIN, "encrypted": Crypto(bytes(range(32)))}


def write_pack(tmp_path, blobs, crypto=PLAIN):
    storage = LocalStorage(str(tmp_path))
    w = PackWriter(storage, crypto)
    for data, kind in blobs:
        payload, flags = compression.compress(data)
        w.add(crypto.content_id(data), kind, flags, payload, len(data))
    size = w.seal()
    return storage, w.name, size


@pytest.mark.parametrize("crypto", CRYPTOS.values(), ids=CRYPTOS.keys())
def test_round_trip(tmp_path, crypto):
    blobs = [(random_bytes(5000, 1), TYPE_CHUNK), (b"abc" * 3000, TYPE_CHUNK), (b"tree", TYPE_TREE)]
    storage, name, size = write_pack(tmp_path, blobs, crypto)
    assert storage.size(name) == size
    entries = read_pack_index(storage, name, crypto)
    assert [e.id for e in entries] == [crypto.content_id(d) for d, _ in blobs]
    assert [e.type for e in entries] == [TYPE_CHUNK, TYPE_CHUNK, TYPE_TREE]
    assert entries[1].flags & compression.FLAG_LZ4 and entries[1].stored_len < entries[1].raw_len
    assert not entries[0].flags & compression.FLAG_LZ4  # random data is kept raw
    for e, (data, _) in zip(entries, blobs):
        stored = storage.read_range(name, e.offset, e.stored_len)
        payload = crypto.open_entry(pack_id(name), e.offset, e.type, e.flags, e.raw_len, e.id, stored)
        assert bytes(compression.decompress(payload, e.flags, e.raw_len)) == data
        if crypto.encrypted or not e.flags:  # sealed: not even a raw entry shows its bytes
            assert (data in stored) == (not crypto.encrypted)
    tags = crypto.overhead  # the table's
    assert size == HEADER.size + sum(e.stored_len for e in entries) + len(entries) * ENTRY.size + tags + FOOTER.size
    with pytest.raises(DamagedData, match="unlike its repository"):  # never read with the other setting
        read_pack_index(storage, name, PLAIN if crypto.encrypted else CRYPTOS["encrypted"])


@pytest.mark.parametrize("crypto", CRYPTOS.values(), ids=CRYPTOS.keys())
def test_empty_pack_is_valid(tmp_path, crypto):
    storage, name, _ = write_pack(tmp_path, [], crypto)
    assert read_pack_index(storage, name, crypto) == []


def test_unsealed_pack_is_invisible(tmp_path):
    storage = LocalStorage(str(tmp_path))
    w = PackWriter(storage, PLAIN)
    w.add(b"x" * 32, TYPE_CHUNK, 0, b"data", 4)
    assert list(storage.list("packs")) == []
    w.abort()
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("crypto", CRYPTOS.values(), ids=CRYPTOS.keys())
@pytest.mark.parametrize("damage", ["truncate", "zero_trailer", "flip_table", "bad_magic"])
def test_damaged_trailer_is_detected(tmp_path, damage, crypto):
    storage, name, size = write_pack(tmp_path, [(random_bytes(3000, i), TYPE_CHUNK) for i in range(3)], crypto)
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: size - 10]
    elif damage == "zero_trailer":
        data[-FOOTER.size:] = bytes(FOOTER.size)
    elif damage == "flip_table":
        data[size - FOOTER.size - 5] ^= 0xFF
    else:
        data[0:6] = b"NOTPAK"
    path.write_bytes(bytes(data))
    storage.close()
    with pytest.raises(DamagedData, match="pack"):
        read_pack_index(LocalStorage(str(tmp_path)), name, crypto)


def test_compression_falls_back_to_raw_and_detects_bad_payloads():
    raw = random_bytes(4096, 3)
    payload, flags = compression.compress(raw)
    assert flags == 0 and bytes(payload) == raw
    packed, flags = compression.compress(b"a" * 4096)
    assert flags == compression.FLAG_LZ4
    with pytest.raises(DamagedData):
        compression.decompress(packed[:-3], flags, 4096)
    with pytest.raises(DamagedData):
        compression.decompress(b"short", 0, 4096)


@pytest.mark.parametrize("codec, flag", [("lz4", compression.FLAG_LZ4), ("zstd", compression.FLAG_ZSTD)])
def test_each_codec_round_trips_and_detects_bad_payloads(codec, flag):
    text = b"".join(b"line %d of a log file\n" % i for i in range(3000))
    packed, flags = compression.compress(text, codec)
    assert flags == flag and len(packed) < len(text) // 4
    assert bytes(compression.decompress(packed, flags, len(text))) == text
    for bad in (packed[:-3], packed[:10] + bytes(len(packed) - 10)):
        with pytest.raises(DamagedData):
            compression.decompress(bad, flags, len(text))
    with pytest.raises(DamagedData, match="expected"):  # a payload that decodes to another size
        compression.decompress(packed, flags, len(text) + 1)
    raw = random_bytes(4096, 5)
    assert compression.compress(raw, codec) == (raw, 0)


def test_zstd_is_smaller_than_lz4_on_text():
    text = b"".join(b"%d: the quick brown fox %d jumps\n" % (i, i * 7919 % 1000) for i in range(4000))
    assert len(compression.compress(text, "zstd")[0]) < len(compression.compress(text, "lz4")[0])


@pytest.mark.parametrize("flags", [0x08, 0x80, compression.FLAG_LZ4 | compression.FLAG_ZSTD])
def test_unknown_flags_are_reported_not_guessed(flags):
    with pytest.raises(DamagedData, match="unknown flags"):
        compression.decompress(b"x" * 16, flags, 16)


def test_short_writes_are_resumed(tmp_path, monkeypatch):
    """Writes are gathered into writev calls; a call that writes less (a signal, a quota)
    goes on from the byte where it stopped, inside a piece or between pieces."""
    import os

    from diskvault.storage import local

    real = os.writev
    monkeypatch.setattr(local.os, "writev", lambda fd, bufs: real(fd, [bytes(b"".join(bufs))[:7_777]]))
    pieces = [random_bytes(n, n) for n in (1, 5000, 20_000, 3, 70_000)] * 300  # past FLUSH_COUNT
    w = LocalStorage(str(tmp_path)).create("f")
    for p in pieces:
        w.write(memoryview(p))
    assert w.tell() == sum(map(len, pieces))
    w.commit()
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)
