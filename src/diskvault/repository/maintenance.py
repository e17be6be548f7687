"""What check, repair and prune need to know about packs and the catalog, in one place.

The use cases live in ``diskvault.ops`` (check.py, repair.py, prune.py); this module gives
them the repository's contents without the byte layout of a pack (pack.py) or the catalog's
SQL (catalog.py): packs with their catalogued rows and their trailers, verified reads and
copies of stored blobs, and the building and swapping of a rebuilt catalog. A change of the
pack format touches pack.py and this module, never the use cases.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from ..errors import DamagedData
from ..storage import Storage
from ..storage.local import TMP_MARK, private_file
from .catalog import DAMAGED_TABLE, BlobLocation, Catalog
from .record import _COUNT_FIELDS, _HEX, _TIME, SnapshotRecord, _is_text, parse_record, record_file, record_id
from .hashing import short
from .pack import Entry, pack_id, read_pack_index
from .crypto import PLAIN, Crypto
from .repository import Repository, verify_blob

CATALOG_TABLES = ("meta", "packs", "blobs", "snapshots")


# --- packs as the catalog and their trailers describe them ------------------------------


@dataclass
class PackState:
    """One catalogued pack: its catalog row, its blob rows (by offset) and what the file
    says. ``file_size`` is None when the file cannot be read (``missing``, or ``problem``
    says why); ``entries`` is None when its trailer is damaged (``problem`` says how)."""

    id: int
    name: str
    size: int  # catalogued size
    entry_count: int  # catalogued number of entries
    rows: list[BlobLocation]
    file_size: int | None = None
    missing: bool = False
    problem: str | None = None
    entries: list[Entry] | None = None


def pack_states(repo: Repository) -> list[PackState]:
    """Every catalogued pack, in catalog order, with its rows, file size and trailer."""
    by_pack = repo.catalog.blobs_by_pack()
    out = []
    for p in repo.catalog.packs():
        st = PackState(p["id"], p["name"], p["size"], p["entries"], by_pack[p["id"]])
        out.append(st)
        try:
            st.file_size = repo.storage.size(st.name)
        except FileNotFoundError:
            st.missing = True
            continue
        except OSError as exc:
            st.problem = exc.strerror
            continue
        try:
            st.entries = read_pack_index(repo.storage, st.name, repo.crypto)
        except (DamagedData, OSError) as exc:
            st.problem = str(exc)
    return out


def orphan_packs(repo: Repository, known: set[str]) -> list[tuple[str, int | str]]:
    """Pack files the catalog does not list (``known``: the catalogued names), each with
    its number of entries or, when its trailer cannot be read, why not."""
    out: list[tuple[str, int | str]] = []
    for name in repo.storage.list("packs"):
        if name.endswith(".pack") and name not in known:
            try:
                out.append((name, len(read_pack_index(repo.storage, name, repo.crypto))))
            except (DamagedData, OSError) as exc:
                out.append((name, str(exc)))
    return out


def pack_files(storage: Storage) -> list[str]:
    """The names of every pack file in storage."""
    return [n for n in storage.list("packs") if n.endswith(".pack")]


# --- verified reads ----------------------------------------------------------------------


def runs(rows: list[BlobLocation], span: int) -> list[list[BlobLocation]]:
    """A pack's rows (by offset) in runs that each span at most ``span`` bytes (one read each;
    a single larger blob is a run of its own)."""
    out: list[list[BlobLocation]] = []
    i = 0
    while i < len(rows):
        start, j = rows[i].offset, i + 1
        while j < len(rows) and rows[j].offset + rows[j].stored_len - start <= span:
            j += 1
        out.append(rows[i:j])
        i = j
    return out


def verify_run(repo: Repository, name: str, size: int, rows: list[BlobLocation],
               advance: Callable[[int], None]) -> tuple[list[tuple[BlobLocation, str]], int]:
    """Read one run of a pack's data area (``size``: the pack file's size) and verify each of
    its blobs; returns ``[(row, message)]`` of the bad ones and the bytes read (also handed
    to ``advance``). Never raises for damage."""
    start = rows[0].offset
    end = min(max(r.offset + r.stored_len for r in rows), size)
    try:
        data = memoryview(repo.storage.read_range(name, start, max(0, end - start)))
    except FileNotFoundError:
        return [(r, f"blob {short(r.id)}: pack {pack_id(name)} is missing") for r in rows], 0
    except OSError as exc:
        return [(r, f"blob {short(r.id)}: pack {pack_id(name)} cannot be read: {exc.strerror}") for r in rows], 0
    bad: list[tuple[BlobLocation, str]] = []
    for r in rows:
        a = r.offset - start
        piece = data[a : a + r.stored_len]
        if len(piece) != r.stored_len:
            bad.append((r, f"blob {short(r.id)} lies past the end of pack {pack_id(name)} (truncated)"))
            continue
        try:
            repo.decode(r, piece)
        except DamagedData as exc:
            bad.append((r, str(exc)))
    advance(len(data))
    return bad, len(data)


def copy_verified(repo: Repository, name: str, locs: list[BlobLocation], writer,
                  advance: Callable[[int], None]) -> None:
    """Copy blobs of pack ``name``, verified but still compressed (sealed anew in the new
    pack when encrypted), into ``writer`` (a BlobWriter); raises DamagedData, before copying a damaged blob, when one is damaged or
    the pack is missing or truncated."""
    locs = sorted(locs, key=lambda loc: loc.offset)
    start, end = locs[0].offset, max(loc.offset + loc.stored_len for loc in locs)
    try:
        data = memoryview(repo.storage.read_range(name, start, end - start))
    except FileNotFoundError:
        raise DamagedData(f"pack {name} holds live data but is missing: prune stopped, nothing deleted") from None
    if len(data) != end - start:
        raise DamagedData(f"pack {name} is truncated: prune stopped, nothing deleted")
    for loc in locs:
        stored = data[loc.offset - start : loc.offset - start + loc.stored_len]
        payload = repo.payload(loc, stored)  # raises DamagedData: never copy damaged data
        writer.add(loc.id, loc.type, payload, loc.flags, loc.raw_len)
        advance(loc.stored_len)


def _verified(storage: Storage, crypto: Crypto, loc: BlobLocation) -> tuple[bytes | memoryview, bytes | memoryview]:
    """``(payload, raw)`` of one blob read without a Repository (repair runs without a
    catalog); raises DamagedData naming the blob or its pack."""
    try:
        stored = storage.read_range(loc.pack, loc.offset, loc.stored_len)
    except FileNotFoundError:
        raise DamagedData(f"pack {pack_id(loc.pack)} is missing") from None
    except OSError as exc:
        raise DamagedData(f"pack {pack_id(loc.pack)} cannot be read: {exc.strerror}") from None
    if len(stored) != loc.stored_len:
        raise DamagedData(f"blob {short(loc.id)} lies past the end of pack {pack_id(loc.pack)}")
    return verify_blob(crypto, loc, stored)


def read_stored(storage: Storage, crypto: Crypto, loc: BlobLocation) -> bytes | memoryview:
    """The compressed payload of one blob (opened when encrypted), verified against ``loc``."""
    return _verified(storage, crypto, loc)[0]


def read_verified(storage: Storage, crypto: Crypto, loc: BlobLocation) -> bytes | memoryview:
    """One blob's raw bytes, verified."""
    return _verified(storage, crypto, loc)[1]


# --- snapshot records ------------------------------------------------------------------------

# parse_record, record_id: record.py (the remote catalog cache reads records too)


def disagrees(rec: SnapshotRecord, row: SnapshotRecord) -> bool:
    """Whether a snapshot's record file and its catalog row say different things (tree, size,
    time, host, source, tags, sequence number; a catalog from before sequence numbers reads
    0). The catalog row is the one ``repair`` keeps; until then ``check`` reports it and
    ``prune`` deletes nothing."""
    seq = rec.seq if row.seq else 0
    return ((rec.tree, rec.size, rec.time, rec.host, rec.source, sorted(rec.tags), seq)
            != (row.tree, row.size, row.time, row.host, row.source, sorted(row.tags), row.seq))


def read_records(storage: Storage, crypto: Crypto) -> tuple[dict[str, SnapshotRecord], dict[str, str]]:
    """Every snapshot record file: the readable ones by snapshot id, and the file names of
    the unreadable ones with why (``parse_record``; an OS error reading it counts)."""
    good: dict[str, SnapshotRecord] = {}
    bad: dict[str, str] = {}
    for name in storage.list("snapshots"):
        if not name.endswith(".json"):
            continue
        try:
            rec = parse_record(name, storage.read(name), crypto)
        except DamagedData as exc:
            bad[name] = str(exc)
            continue
        except OSError as exc:
            bad[name] = f"it cannot be read ({exc.strerror})"
            continue
        good[rec.id] = rec
    return good, bad


def write_record(storage: Storage, crypto: Crypto, rec: SnapshotRecord) -> None:
    """Write (atomically) the record file of ``rec``, as Repository.save_snapshot does."""
    storage.write_atomic(*record_file(crypto, rec))


def _salvage_field(text: str, key: str, pattern: str) -> str | None:
    m = re.search(rf'"{key}"\s*:\s*({pattern})', text)
    return m.group(1) if m else None


def salvage_record(name: str, data: bytes, size_of_tree: Callable[[bytes], int | None],
                   mtime: float) -> tuple[SnapshotRecord, list[str]] | None:
    """A record rebuilt from an unreadable record file, when its tree root can still be
    read from it and ``size_of_tree(root)`` finds that node intact (the bytes it covers,
    else None); else None. Every other field is taken from the file where it still
    reads, else a stand-in (time: the file's ``mtime``; host, source: "unknown"; tags:
    none; figures: 0). Returns the record and the fields that were stood in for."""
    sid = record_id(name)
    if len(sid) != 32 or not _HEX.match(sid):
        return None
    text = data.decode("utf-8", "replace")
    tree = _salvage_field(text, "tree", '"[0-9a-f]{64}"')
    if tree is None:
        return None
    tree = tree.strip('"')
    size = size_of_tree(bytes.fromhex(tree))
    if size is None:
        return None
    lost: list[str] = []

    def text_field(key: str, fallback: str, check=lambda v: True) -> str:
        raw = _salvage_field(text, key, r'"(?:[^"\\]|\\.)*"')
        try:
            v = json.loads(raw) if raw else None
        except ValueError:
            v = None
        if _is_text(v) and "\ufffd" not in v and check(v):
            return v
        lost.append(key)
        return fallback

    stamp = datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    time = text_field("time", stamp, lambda v: bool(_TIME.match(v)))
    host = text_field("host", "unknown")
    source = text_field("source", "unknown")
    tags: list[str] = []
    raw_tags = _salvage_field(text, "tags", r"\[[^\]]*\]")
    try:
        parsed = json.loads(raw_tags) if raw_tags else None
    except ValueError:
        parsed = None
    if isinstance(parsed, list) and all(_is_text(t) and "\ufffd" not in t for t in parsed):
        tags = parsed
    else:
        lost.append("tags")
    counts = {}
    for k in _COUNT_FIELDS:
        v = _salvage_field(text, k, r"\d+")
        counts[k] = int(v) if v is not None else 0
    rec = SnapshotRecord(id=sid, time=time, host=host, source=source, size=size, tags=tags, tree=tree, **counts)
    return rec, lost


# --- the catalog, rebuilt ------------------------------------------------------------------


def probe_catalog(cat_path: str) -> str:
    """'used' when the catalog opens and its tables read, else 'missing' or 'unreadable: …'."""
    if not os.path.exists(cat_path):
        return "missing"
    try:
        conn = sqlite3.connect(f"file:{cat_path}?mode=ro", uri=True)
        try:
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                return f"unreadable: {ok}"
            if not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                return "missing"  # an empty file (e.g. created by opening a deleted catalog)
            for table in CATALOG_TABLES:
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return f"unreadable: {exc}"
    return "used"


def fold_wal(cat_path: str) -> None:
    """Fold a readable catalog's WAL into its file (the swap removes a stale WAL)."""
    conn = sqlite3.connect(cat_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def write_catalog(cat_path: str, old: Catalog | None, repository_id: str, storage: Storage,
                  packs: Iterable[tuple[int | None, str, list[Entry]]],
                  index: dict[bytes, tuple[str, Entry]], snaps: Iterable[SnapshotRecord],
                  damaged: dict[bytes, tuple[str, str]], crypto: Crypto = PLAIN) -> tuple[str, int]:
    """Write a new catalog beside ``cat_path`` holding ``packs`` (``(old row id or None,
    name, entries)``, in order), the blob rows ``index`` (id -> (pack name, entry)),
    ``snaps`` and the known damage ``damaged`` (id -> (reason, time)); the old catalog's
    other tables and meta are kept when ``old`` is given.
    Returns the durable temporary file (for ``swap_catalog``) and the number of packs."""
    tmp = f"{cat_path}{TMP_MARK}{secrets.token_hex(4)}"
    try:
        os.close(private_file(tmp))  # 0600: SQLite gives its -wal, -shm, -journal this mode
        if old is not None:
            new = sqlite3.connect(tmp)
            old.conn.backup(new)
            new.close()
            cat = Catalog(tmp, crypto=crypto)
        else:
            cat = Catalog(tmp, crypto=crypto)
            cat.create({"repository_id": repository_id})
        conn = cat.conn
        conn.execute("PRAGMA foreign_keys=OFF")
        with cat.transaction():
            conn.execute("DELETE FROM blobs")
            conn.execute("DELETE FROM packs")
            conn.execute("DELETE FROM snapshots")
            rowid: dict[str, int] = {}
            for old_id, name, entries in packs:
                cur = conn.execute("INSERT INTO packs(id, name, size, entries) VALUES (?,?,?,?)",
                                   (old_id, name, storage.size(name), len(entries)))
                rowid[name] = cur.lastrowid
            conn.executemany(
                "INSERT INTO blobs VALUES (?,?,?,?,?,?,?)",
                [(i, e.type, rowid[name], e.offset, e.stored_len, e.raw_len, e.flags) for i, (name, e) in index.items()],
            )
            for s in snaps:
                cat.add_snapshot(s)
            conn.execute(DAMAGED_TABLE)
            conn.execute("DELETE FROM damaged")
            conn.executemany("INSERT INTO damaged VALUES (?,?,?)", [(i, r, t) for i, (r, t) in damaged.items()])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to rename
        cat.close()
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except BaseException:
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(tmp + suffix)
            except FileNotFoundError:
                pass
        raise
    return tmp, len(rowid)


def swap_catalog(cat_path: str, tmp: str) -> None:
    """Replace the catalog by the new one ``tmp``. The old WAL was checkpointed when its last
    connection closed; a stale -wal/-shm must not be applied to the new file."""
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(cat_path + suffix)
        except FileNotFoundError:
            pass
    os.rename(tmp, cat_path)
    fd = os.open(os.path.dirname(cat_path), os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
