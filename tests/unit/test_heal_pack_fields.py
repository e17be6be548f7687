"""Every documented field of a pack is checked (issue 11 item 14): reserved words, flags,
types and the payload layout, even where the table checksum was recomputed to match (a
plaintext pack: an encrypted one's table is authenticated, see tests/security)."""

from __future__ import annotations

import pytest
from helpers import random_bytes

from diskvault.errors import DamagedData
from diskvault.repository import compression
from diskvault.repository.crypto import PLAIN
from diskvault.repository.hashing import content_id
from diskvault.repository.pack import ENTRY, FOOTER, HEADER, TYPE_CHUNK, TYPE_TREE, PackWriter, read_pack_index
from diskvault.storage.local import LocalStorage


def write_pack(tmp_path):
    storage = LocalStorage(str(tmp_path))
    w = PackWriter(storage, PLAIN)
    for data, kind in [(random_bytes(3000, 1), TYPE_CHUNK), (b"abc" * 2000, TYPE_CHUNK), (b"node" * 10, TYPE_TREE)]:
        payload, flags = compression.compress(data)
        w.add(content_id(data), kind, flags, payload, len(data))
    w.seal()
    storage.close()
    return tmp_path / w.name, w.name


def rewrite_entry(path, k, **change):
    """Change entry ``k`` of the table and recompute the table checksum, as a writer would."""
    data = bytearray(path.read_bytes())
    count, reserved, _digest, magic = FOOTER.unpack(data[-FOOTER.size:])
    start = len(data) - FOOTER.size - count * ENTRY.size
    entries = list(ENTRY.iter_unpack(bytes(data[start:-FOOTER.size])))
    fields = dict(zip(("id", "type", "flags", "reserved", "offset", "stored", "raw"), entries[k]))
    fields.update(change)
    entries[k] = tuple(fields.values())
    table = b"".join(ENTRY.pack(*e) for e in entries)
    data[start:] = table + FOOTER.pack(count, reserved, content_id(table), magic)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("k,change,message", [
    (0, {"type": 3}, "unknown type 3"),
    (1, {"flags": compression.FLAG_ENCRYPTED}, "unknown flags 0x2"),
    (1, {"flags": compression.FLAG_LZ4 | compression.FLAG_ZSTD}, "unknown flags 0x5"),
    (2, {"reserved": 1}, "reserved word set"),
    (0, {"raw": 2999}, "stored raw in 3000 bytes but records 2999"),
    (1, {"offset": HEADER.size + 3000 + 1}, "outside the data area"),
], ids=["type", "encrypted-flag", "two-codecs", "entry-reserved", "raw-lengths", "gap"])
def test_entry_fields_are_checked(tmp_path, k, change, message):
    path, name = write_pack(tmp_path)
    assert read_pack_index(LocalStorage(str(tmp_path)), name, PLAIN)
    rewrite_entry(path, k, **change)
    with pytest.raises(DamagedData, match=message):
        read_pack_index(LocalStorage(str(tmp_path)), name, PLAIN)


@pytest.mark.parametrize("offset,message", [
    (8, "is encrypted, unlike its repository"),
    (-FOOTER.size + 4, "reserved trailer word set"),
])
def test_header_and_footer_reserved_fields_are_checked(tmp_path, offset, message):
    path, name = write_pack(tmp_path)
    data = bytearray(path.read_bytes())
    data[offset] = 1
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedData, match=message):
        read_pack_index(LocalStorage(str(tmp_path)), name, PLAIN)


def test_bytes_between_the_last_payload_and_the_table_are_refused(tmp_path):
    path, name = write_pack(tmp_path)
    data = bytearray(path.read_bytes())
    count = FOOTER.unpack(data[-FOOTER.size:])[0]
    start = len(data) - FOOTER.size - count * ENTRY.size
    path.write_bytes(bytes(data[:start] + b"\0" * 7 + data[start:]))  # the table still checks out
    with pytest.raises(DamagedData, match="7 bytes between its last payload and its table"):
        read_pack_index(LocalStorage(str(tmp_path)), name, PLAIN)
