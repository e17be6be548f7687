"""What check, repair and prune need to know about packs and the catalog, in one place.

The use cases live in ``diskvault.ops`` (check.py, repair.py, prune.py); this module gives
them the repository's contents without the byte layout of a pack (pack.py) or the catalog's
SQL (catalog.py): packs with their catalogued rows and their trailers, verified reads and
copies of stored blobs, and the building and swapping of a rebuilt catalog. A change of the
pack format touches pack.py and this module, never the use cases.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import DamagedData
from ..storage import Storage
from ..storage.local import TMP_MARK
from .catalog import BlobLocation, Catalog, SnapshotRecord
from .hashing import short
from .pack import Entry, pack_id, read_pack_index
from .repository import Repository

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
            st.entries = read_pack_index(repo.storage, st.name)
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
                out.append((name, len(read_pack_index(repo.storage, name))))
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
    """Copy blobs of pack ``name``, verified but still compressed, into ``writer`` (a
    BlobWriter); raises DamagedData, before copying a damaged blob, when one is damaged or
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
        payload = data[loc.offset - start : loc.offset - start + loc.stored_len]
        repo.decode(loc, payload)  # raises DamagedData: never copy damaged data
        writer.add(loc.id, loc.type, payload, loc.flags, loc.raw_len)
        advance(loc.stored_len)


def read_stored(storage: Storage, loc: BlobLocation) -> bytes | memoryview:
    """The stored (compressed) bytes of one blob, verified against ``loc`` without a
    Repository (repair runs without a catalog); raises DamagedData naming the blob."""
    try:
        payload = storage.read_range(loc.pack, loc.offset, loc.stored_len)
    except FileNotFoundError:
        raise DamagedData(f"pack {pack_id(loc.pack)} is missing") from None
    except OSError as exc:
        raise DamagedData(f"pack {pack_id(loc.pack)} cannot be read: {exc.strerror}") from None
    if len(payload) != loc.stored_len:
        raise DamagedData(f"blob {short(loc.id)} lies past the end of pack {pack_id(loc.pack)}")
    Repository.verify(loc, payload)
    return payload


def read_verified(storage: Storage, loc: BlobLocation) -> bytes | memoryview:
    """One blob's raw bytes, verified (see ``read_stored``)."""
    return Repository.verify(loc, read_stored(storage, loc))


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
                  index: dict[bytes, tuple[str, Entry]], snaps: Iterable[SnapshotRecord]) -> tuple[str, int]:
    """Write a new catalog beside ``cat_path`` holding ``packs`` (``(old row id or None,
    name, entries)``, in order), the blob rows ``index`` (id -> (pack name, entry)) and
    ``snaps``; the old catalog's other tables and meta are kept when ``old`` is given.
    Returns the durable temporary file (for ``swap_catalog``) and the number of packs."""
    tmp = f"{cat_path}{TMP_MARK}{secrets.token_hex(4)}"
    try:
        if old is not None:
            new = sqlite3.connect(tmp)
            old.conn.backup(new)
            new.close()
            cat = Catalog(tmp)
        else:
            cat = Catalog(tmp)
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
                cat.db["snapshots"].insert(s.to_row())
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
