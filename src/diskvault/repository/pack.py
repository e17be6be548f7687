"""Pack files: many compressed entries in one file, self-describing through a trailer.

Layout (all integers little-endian; see docs/design.md):

    header   16 B   magic "DVPACK", u16 format version, u64 flags (HEADER_ENCRYPTED or 0)
    entries         payloads back to back (lz4 block, zstd frame or raw; sealed: + 16 B tag)
    table    52 B × n   per entry: id[32] type u8 flags u8 reserved u16 offset u64 stored u32 raw u32
                    (sealed as a whole in an encrypted pack: + 16 B tag)
    footer   48 B   u32 n, u32 reserved, blake3(stored table)[32], magic "DVTRAIL1"

In an encrypted repository every entry and the table are sealed with AES-256-GCM under the
pack's key, the nonce being their offset (crypto.py); ``stored`` counts the tag.

A pack can be read without the catalog: ``read_pack_index`` parses and checks the trailer.
Any mismatch (magic, checksum, entry outside the data area) raises DamagedData naming the pack.
This module is the only one that knows the byte layout: the rest of the program asks it for
a pack's index (``read_pack_index``) and its size overhead (``pack_overhead``).
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from ..errors import DamagedData
from .compression import FLAG_LZ4, FLAG_ZSTD
from .crypto import Crypto
from .hashing import content_id
from ..storage import FileWriter, Storage

MAGIC = b"DVPACK"
TRAILER_MAGIC = b"DVTRAIL1"
VERSION = 1
HEADER = struct.Struct("<6sHQ")
ENTRY = struct.Struct("<32sBBHQII")
FOOTER = struct.Struct("<II32s8s")

TYPE_CHUNK = 1  # a piece of a source image
TYPE_TREE = 2  # a node of a snapshot's chunk list (see tree.py)
ENTRY_TYPES = (TYPE_CHUNK, TYPE_TREE)
ENTRY_FLAGS = (0, FLAG_LZ4, FLAG_ZSTD)  # raw, an lz4 block, a zstd frame (compression.py)

TARGET_PACK_SIZE = 32 << 20
HEADER_ENCRYPTED = 0x1  # header flag: entries and table are sealed (crypto.py)


@dataclass(frozen=True, slots=True)
class Entry:
    id: bytes
    type: int
    flags: int
    offset: int
    stored_len: int
    raw_len: int


def pack_overhead(n_entries: int, n_packs: int = 1, crypto: Crypto | None = None) -> int:
    """Bytes that are not payload in ``n_packs`` packs holding ``n_entries`` entries in all
    (headers, index tables, footers; with an encrypting ``crypto``, the tags too)."""
    tag = crypto.overhead if crypto is not None else 0
    return n_packs * (HEADER.size + FOOTER.size + tag) + n_entries * ENTRY.size


def new_pack_name() -> str:
    pid = secrets.token_hex(16)
    return f"packs/{pid[:2]}/{pid}.pack"


def pack_id(name: str) -> str:
    return name.rsplit("/", 1)[-1].removesuffix(".pack")


class PackWriter:
    """Appends entries to one new pack; ``seal`` writes the trailer and makes it durable."""

    def __init__(self, storage: Storage, crypto: Crypto) -> None:
        self.name = new_pack_name()
        self.crypto = crypto
        self._id = pack_id(self.name)
        self._w: FileWriter = storage.create(self.name)
        self._w.write(HEADER.pack(MAGIC, VERSION, HEADER_ENCRYPTED if crypto.encrypted else 0))
        self.entries: list[Entry] = []

    @property
    def size(self) -> int:
        return self._w.tell()

    def add(self, ident: bytes, kind: int, flags: int, payload: bytes | memoryview, raw_len: int) -> Entry:
        """Append one entry: ``payload`` is the blob's bytes as compressed (``flags``), sealed
        here in an encrypted repository."""
        offset = self._w.tell()
        stored = self.crypto.seal_entry(self._id, offset, kind, flags, raw_len, ident, payload)
        e = Entry(ident, kind, flags, offset, len(stored), raw_len)
        self._w.write(stored)
        self.entries.append(e)
        return e

    def flush(self) -> None:
        """Hand the entries added so far to storage (a payload may be held, not copied, until then)."""
        self._w.flush()

    def seal(self) -> int:
        """Write the trailer, fsync, rename into place. Returns the pack's size."""
        table = b"".join(
            ENTRY.pack(e.id, e.type, e.flags, 0, e.offset, e.stored_len, e.raw_len)
            for e in self.entries
        )
        table = self.crypto.seal_table(self._id, self._w.tell(), len(self.entries), table)
        self._w.write(table)
        self._w.write(FOOTER.pack(len(self.entries), 0, content_id(table), TRAILER_MAGIC))
        size = self._w.tell()
        self._w.commit()
        return size

    def abort(self) -> None:
        self._w.abort()


def read_pack_index(storage: Storage, name: str, crypto: Crypto, size: int | None = None) -> list[Entry]:
    """A pack's entries (in file order), parsed from its trailer and checked; raises
    DamagedData naming the pack, FileNotFoundError, OSError. ``size``: the pack's size in
    bytes when the caller knows it (one request less).

    Every documented field is checked: header magic, version and flags (HEADER_ENCRYPTED
    exactly when the repository is encrypted: a plaintext pack is never taken into an
    encrypted repository, nor the other way); the table's authentication; footer magic,
    reserved word (0), entry count and table checksum; per entry the type (chunk or tree),
    the flags (raw, lz4 or zstd), the reserved word (0), a raw entry's two lengths (equal)
    and the offsets: the payloads lie back to back from the end of the header to the table,
    so every byte of the pack belongs to exactly one field or payload."""
    pid = pack_id(name)
    if size is None:
        size = storage.size(name)
    if size < HEADER.size + FOOTER.size:
        raise DamagedData(f"pack {pid} is truncated ({size} bytes)")
    magic, version, flags = HEADER.unpack(storage.read_range(name, 0, HEADER.size))
    if magic != MAGIC:
        raise DamagedData(f"pack {pid} has no pack header")
    if version != VERSION:
        raise DamagedData(f"pack {pid} has format version {version}, expected {VERSION}")
    expected = HEADER_ENCRYPTED if crypto.encrypted else 0
    if flags != expected:
        if flags in (0, HEADER_ENCRYPTED):
            state = "encrypted" if flags else "not encrypted"
            raise DamagedData(f"pack {pid} is {state}, unlike its repository (it does not belong here)")
        raise DamagedData(f"pack {pid} has header flags {flags:#x}, which this version does not know")
    count, reserved, digest, tmagic = FOOTER.unpack(storage.read_range(name, size - FOOTER.size, FOOTER.size))
    if tmagic != TRAILER_MAGIC:
        raise DamagedData(f"pack {pid} has no trailer (truncated or overwritten)")
    if reserved:
        raise DamagedData(f"pack {pid} has a reserved trailer word set ({reserved:#x}, expected 0)")
    table_len = count * ENTRY.size + crypto.overhead
    table_start = size - FOOTER.size - table_len
    if table_start < HEADER.size:
        raise DamagedData(f"pack {pid} trailer claims {count} entries, more than fit")
    table = storage.read_range(name, table_start, table_len)
    if content_id(table) != digest:
        raise DamagedData(f"pack {pid} trailer checksum does not match")
    table = crypto.open_table(pid, table_start, count, table)
    entries = []
    end = HEADER.size  # where the next payload must start
    for ident, kind, eflags, reserved, off, stored, raw in ENTRY.iter_unpack(table):
        what = f"pack {pid} entry {ident.hex()[:12]}"
        if kind not in ENTRY_TYPES:
            raise DamagedData(f"{what} has unknown type {kind}")
        if eflags not in ENTRY_FLAGS:
            raise DamagedData(f"{what} has unknown flags {eflags:#x}")
        if reserved:
            raise DamagedData(f"{what} has its reserved word set ({reserved:#x}, expected 0)")
        if not eflags and stored != raw + crypto.overhead:
            raise DamagedData(f"{what} is stored raw in {stored} bytes but records {raw} raw bytes")
        if stored < crypto.overhead:
            raise DamagedData(f"{what} is shorter than its authentication tag")
        if off != end or off + stored > table_start:
            raise DamagedData(f"{what} lies outside the data area")
        end = off + stored
        entries.append(Entry(ident, kind, eflags, off, stored, raw))
    if end != table_start:
        raise DamagedData(f"pack {pid} has {table_start - end} bytes between its last payload and its table")
    return entries
