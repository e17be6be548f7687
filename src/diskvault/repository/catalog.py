"""The SQLite catalog (``catalog.sqlite``): an index over what the storage holds.

Tables (see docs/design.md): ``meta``, ``packs``, ``blobs`` (content id -> pack, offset,
lengths), ``snapshots`` (one row per snapshot; its chunk list is a tree of blobs, so a
snapshot costs one row plus the tree nodes that changed) and ``damaged`` (blobs whose stored
copy is known to be damaged or missing: never used for deduplication, see docs/integrity.md;
created on first use in a catalog made before it, absent means empty). Everything here can be rebuilt
from the packs and snapshot records (``repair``). WAL mode, synchronous=FULL: a commit that
returned is durable. Raises sqlite3 errors only for a broken file (``catalog_error`` names
them). A catalog that must not be written (read-only repository, full disk) is opened
read-only, immutable where nothing can change it (``read_only_uri``).

Every statement uses the standard sqlite3 module: sqlite-utils, used at first, took ~0.1 s to
import (click, dateutil, ...), up to a third of a command's start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import DamagedData, DiskvaultError, OutOfSpace, RepositoryError, RepositoryLocked, RepositoryReadOnly
from .crypto import PLAIN, Crypto
from .pack import Entry
from .record import SnapshotRecord

SCHEMA_VERSION = 1
CATALOG = "catalog.sqlite"  # its file name in the repository
LOOKUP_BATCH = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    entries INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB PRIMARY KEY,
    type INTEGER NOT NULL,
    pack INTEGER NOT NULL REFERENCES packs(id),
    offset INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len INTEGER NOT NULL,
    flags INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    time TEXT NOT NULL,
    host TEXT NOT NULL,
    source TEXT NOT NULL,
    size INTEGER NOT NULL,
    tags TEXT NOT NULL,
    tree TEXT NOT NULL,
    data_bytes INTEGER NOT NULL,
    zero_bytes INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    new_chunks INTEGER NOT NULL,
    new_bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    duration REAL NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    mounted TEXT,
    size_changed TEXT,
    format TEXT,
    filesystems TEXT,
    sealed BLOB
);
CREATE INDEX IF NOT EXISTS snapshots_time ON snapshots(time);
CREATE TABLE IF NOT EXISTS damaged (
    id BLOB PRIMARY KEY,
    reason TEXT NOT NULL,
    time TEXT NOT NULL
) WITHOUT ROWID;
"""
# snapshot columns added after schema version 1 was released: created in new catalogs by
# SCHEMA, added to an older catalog by its first write of a snapshot row (a catalog opened
# only for reading may lack them: its rows read as the defaults)
ADDED_SNAPSHOT_COLUMNS = {"seq": "INTEGER NOT NULL DEFAULT 0", "mounted": "TEXT", "size_changed": "TEXT",
                          "format": "TEXT", "filesystems": "TEXT", "sealed": "BLOB"}
DAMAGED_TABLE = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS damaged"):].strip().rstrip(";")


@dataclass(frozen=True, slots=True)
class BlobLocation:
    id: bytes
    type: int
    pack: str  # pack file name in storage
    offset: int
    stored_len: int
    raw_len: int
    flags: int


def _text(data: bytes) -> str:
    """A TEXT value as str, invalid UTF-8 kept (surrogateescape): an edited row (e.g. a sealed
    blob that sqlite3's shell turned into TEXT) then fails authentication or parsing as damage,
    not as a decoding error inside SQLite's cursor."""
    return data.decode("utf-8", "surrogateescape")


def connect(path: str, uri: str | None = None) -> sqlite3.Connection:
    """A connection to the catalog at ``path``: read-write in WAL mode, or read-only through
    ``uri`` (see ``read_only_uri``)."""
    if uri is not None:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=60)
        conn.text_factory = _text
        return conn
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
    conn.text_factory = _text
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def read_only_uri(path: str) -> tuple[str, str | None]:
    """How to read the catalog at ``path`` without writing anything beside it: ``(uri, copy
    directory or None)``. In order: ``mode=ro`` when SQLite can share the WAL index (the
    ``-shm`` file exists, or the directory is writable); else, when the WAL holds committed
    transactions, a private copy of the catalog and its WAL in a temporary directory (the
    caller removes it); else ``immutable=1``: no WAL content, and SQLite could not create the
    ``-shm``, so nobody who writes as SQLite expects can be writing it now (a read-only file
    system, a full disk, or a directory this user cannot write; a writer that ignores the
    repository lock could still change it, and then a read sees an error, never wrong data,
    because every blob read is verified). Raises sqlite3.Error when none of them opens."""
    base = f"file:{urllib.parse.quote(path)}"
    try:
        probe = sqlite3.connect(f"{base}?mode=ro", uri=True)
        try:
            probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return f"{base}?mode=ro", None
        finally:
            probe.close()
    except sqlite3.OperationalError:  # cannot open or create the -shm: not damage
        pass
    wal = f"{path}-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        folder = tempfile.mkdtemp(prefix="diskvault-catalog-")
        try:
            copy = os.path.join(folder, os.path.basename(path))
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, f"{copy}-wal")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return f"file:{urllib.parse.quote(copy)}?mode=ro", folder
    return f"{base}?mode=ro&immutable=1", None


def catalog_error(exc: sqlite3.Error, repository: str | None = None) -> DiskvaultError | None:
    """The DiskvaultError for an SQLite error on the catalog of ``repository``, or None when
    it is none of these (a bug): damaged (CORRUPT, NOTADB) -> RepositoryError with the hint
    to run repair; FULL -> OutOfSpace; READONLY -> RepositoryReadOnly; IOERR, CANTOPEN ->
    RepositoryError (OutOfSpace when the disk is full); BUSY, LOCKED -> RepositoryLocked."""
    code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
    repo = repository or "the repository"
    full = _disk_full(repository) if repository else False
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        r = repository or "REPO"
        return RepositoryError(f"the catalog of {repo} is damaged ({exc}): rebuild it with diskvault repair -r {r}")
    if code == sqlite3.SQLITE_FULL or (full and code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN)):
        return OutOfSpace(f"no space left on the repository's disk ({repo}): free some space, then run the command again")
    if code == sqlite3.SQLITE_READONLY:
        return RepositoryReadOnly(f"repository {repo} is read-only ({exc}): make it writable to change it; "
                                  "reading commands work as it is")
    if code == sqlite3.SQLITE_IOERR:
        return RepositoryError(f"input/output error on the catalog of {repo} ({exc}): the disk may be failing; "
                               "check it (dmesg)")
    if code == sqlite3.SQLITE_CANTOPEN:
        return RepositoryError(f"cannot open the catalog of {repo} ({exc}): check that this user may read it "
                               "and that the open-files limit (ulimit -n) is not reached")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return RepositoryLocked(f"the catalog of {repo} is busy ({exc}): another process holds it; try again later")
    return None


def _disk_full(path: str) -> bool:
    """Less than 1 MiB available to ordinary users where ``path`` is: after a failure, the
    likely cause (SQLite reports a full disk as an I/O error when it cannot grow the
    ``-shm`` file)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


class Catalog:
    def __init__(self, path: str, read_only: bool = False, crypto: Crypto = PLAIN) -> None:
        """Open the catalog at ``path``; ``read_only``: write nothing, not even beside it
        (see ``read_only_uri``); its writes raise sqlite3.OperationalError (READONLY).
        An encrypting ``crypto``: snapshot rows keep only id and sequence number in the clear,
        the rest (host, source, tags, time, figures) is sealed in their ``sealed`` column,
        since the catalog travels with the repository."""
        self.path = path
        self.read_only = read_only
        self.crypto = crypto
        self._uri, self._copy = read_only_uri(path) if read_only else (None, None)
        try:
            self.conn = connect(path, self._uri)
        except BaseException:
            self._remove_copy()
            raise
        self._pack_names: dict[int, str] = {}
        self._lookup_lock = threading.Lock()
        self._lookup_conns: list[sqlite3.Connection] = []
        self._local = threading.local()

    def _remove_copy(self) -> None:
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None

    def _dicts(self, sql: str, params=()) -> list[dict]:
        cur = self.conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]

    # --- schema ---------------------------------------------------------------
    def create(self, meta: dict[str, str]) -> None:
        with self.transaction():
            for stmt in SCHEMA.strip().split(";"):
                if stmt.strip():
                    self.conn.execute(stmt)
            rows = [*meta.items(), ("schema_version", str(SCHEMA_VERSION))]
            self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?,?)", rows)

    def meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM meta"))

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))

    def transaction(self):
        return _Transaction(self.conn)

    def close(self) -> None:
        """Close; folds the WAL back into the database file first (best effort: another
        process reading the catalog may keep part of it; never when read-only)."""
        if not self.read_only:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
        self.conn.close()
        with self._lookup_lock:
            for conn in self._lookup_conns:
                conn.close()
            self._lookup_conns.clear()
        self._remove_copy()

    def compact(self) -> None:
        """Fold the WAL into the database, and VACUUM when a quarter of it is free pages;
        skipped (until next time) while a reader holds the catalog open."""
        try:
            free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
            if pages and free * 4 > pages:
                self.conn.execute("VACUUM")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:  # a reader (e.g. diskvault snapshots) has it open
            pass

    # --- packs and blobs --------------------------------------------------------
    def add_pack(self, name: str, size: int, entries: list[Entry]) -> None:
        """Record a sealed (durable) pack and its entries in one transaction."""
        with self.transaction():
            self._insert_pack(name, size, entries, repoint=False)

    def _insert_pack(self, name: str, size: int, entries: list[Entry], repoint: bool) -> int:
        """Insert a pack row and its blob rows (inside a transaction); with ``repoint``, rows
        of blobs already catalogued elsewhere are pointed at this pack, else they are kept.
        A pack already recorded under ``name`` keeps its row (the cache of a remote repository
        is shared by the processes of a machine: another one's sync may record it first)."""
        row = self.conn.execute("SELECT id FROM packs WHERE name=?", (name,)).fetchone()
        if row is not None:
            pid = row[0]
        else:
            pid = self.conn.execute(
                "INSERT INTO packs(name, size, entries) VALUES (?,?,?)", (name, size, len(entries))
            ).lastrowid
        conflict = (" ON CONFLICT(id) DO UPDATE SET type=excluded.type, pack=excluded.pack, offset=excluded.offset, "
                    "stored_len=excluded.stored_len, raw_len=excluded.raw_len, flags=excluded.flags")
        self.conn.executemany(
            "INSERT INTO blobs VALUES (?,?,?,?,?,?,?)" + conflict if repoint else
            "INSERT OR IGNORE INTO blobs VALUES (?,?,?,?,?,?,?)",
            [(e.id, e.type, pid, e.offset, e.stored_len, e.raw_len, e.flags) for e in entries],
        )
        return pid

    def blobs_by_pack(self) -> dict[int, list[BlobLocation]]:
        """Every blob row, grouped by pack id, each pack's rows by offset (check, repair).
        One pass over the table: there is no index on ``pack`` (it would add ~45 bytes per
        chunk to every repository for the sake of these whole-repository commands)."""
        names = {p["id"]: p["name"] for p in self.packs()}
        out: dict[int, list[BlobLocation]] = {pid: [] for pid in names}
        for b, t, pid, o, n, r, f in self.blob_rows():
            out.setdefault(pid, []).append(BlobLocation(b, t, names.get(pid, ""), o, n, r, f))
        for rows in out.values():
            rows.sort(key=lambda loc: loc.offset)
        return out

    def switch_pack(self, name: str, size: int, entries: list[Entry]) -> None:
        """Record a sealed (durable) pack written by repacking and point every one of its
        blobs at it, in one transaction: rows that pointed at an older copy are re-pointed
        (the older copy is deleted only afterwards, see ops/retention/prune.py)."""
        with self.transaction():
            self._insert_pack(name, size, entries, repoint=True)

    def heal_pack(self, name: str, size: int, entries: list[Entry], healed: Iterable[bytes]) -> None:
        """Record a sealed (durable) pack holding new copies of the damaged blobs ``healed``,
        in one transaction: every blob row of the pack points at it (the damaged copies are
        no longer used) and ``healed`` leave the ``damaged`` table."""
        with self.transaction():
            self._insert_pack(name, size, entries, repoint=True)
            self.conn.execute(DAMAGED_TABLE)  # the damage may be known only to this process
            self.conn.executemany("DELETE FROM damaged WHERE id=?", [(i,) for i in healed])

    # --- damage ------------------------------------------------------------------
    def damaged(self) -> dict[bytes, tuple[str, str]]:
        """Blobs known to be damaged or missing: id -> (reason, ISO time it was found).
        Empty for a catalog made before the table existed."""
        try:
            rows = self.conn.execute("SELECT id, reason, time FROM damaged").fetchall()
        except sqlite3.OperationalError:  # no such table
            return {}
        return {i: (r, t) for i, r, t in rows}

    def mark_damaged(self, found: dict[bytes, str], when: str) -> None:
        """Record blobs found damaged or missing (id -> reason) at ``when`` (ISO time), in one
        transaction; an id already recorded keeps its first reason. Raises sqlite3.Error when
        the catalog cannot be written (a read-only repository)."""
        if not found:
            return
        with self.transaction():
            self.conn.execute(DAMAGED_TABLE)
            self.conn.executemany("INSERT OR IGNORE INTO damaged VALUES (?,?,?)",
                                  [(i, reason, when) for i, reason in found.items()])

    def clear_damaged(self, ids: Iterable[bytes]) -> None:
        """Forget that ``ids`` were damaged (a verified read found them intact)."""
        ids = [(i,) for i in ids]
        if ids:
            with self.transaction():
                self.conn.execute(DAMAGED_TABLE)
                self.conn.executemany("DELETE FROM damaged WHERE id=?", ids)

    def forget_empty_packs(self, names: Iterable[str]) -> None:
        """Forget the packs ``names`` that no blob row points at (packs whose file is gone
        once their blobs were stored again elsewhere)."""
        names = list(names)
        if names:
            with self.transaction():
                self.conn.execute(
                    f"DELETE FROM packs WHERE name IN ({','.join('?' * len(names))}) "
                    "AND NOT EXISTS (SELECT 1 FROM blobs WHERE blobs.pack = packs.id)", names)
            self._pack_names.clear()

    def delete_packs(self, pack_ids: Iterable[int], keep_ids: set[bytes] | None = None) -> int:
        """Forget packs and every blob row pointing at them, in one transaction; returns the
        number of blob rows removed. With ``keep_ids``, refuses (ValueError, nothing changed)
        when a row to remove has one of those ids: a safety net against deleting live data."""
        pack_ids = list(pack_ids)
        if not pack_ids:
            return 0
        marks = ",".join("?" * len(pack_ids))
        with self.transaction():  # one pass over the table, whatever the number of packs
            if keep_ids is not None:
                for bid, pid in self.conn.execute(f"SELECT id, pack FROM blobs WHERE pack IN ({marks})", pack_ids):
                    if bid in keep_ids:
                        raise ValueError(f"pack {pid} still holds live blob {bid.hex()[:12]}")
            removed = self.conn.execute(f"DELETE FROM blobs WHERE pack IN ({marks})", pack_ids).rowcount
            self.conn.execute(f"DELETE FROM packs WHERE id IN ({marks})", pack_ids)
            if self.damaged():  # damage of a blob that is gone no longer matters
                self.conn.execute("DELETE FROM damaged WHERE NOT EXISTS (SELECT 1 FROM blobs WHERE blobs.id = damaged.id)")
        self._pack_names.clear()  # ids of deleted packs may be reused
        return removed

    def blob_rows(self) -> Iterable[tuple[bytes, int, int, int, int, int, int]]:
        """Every blob row ``(id, type, pack id, offset, stored_len, raw_len, flags)``."""
        return self.conn.execute("SELECT id, type, pack, offset, stored_len, raw_len, flags FROM blobs")

    def remove_snapshots(self, ids: Iterable[str]) -> None:
        """Delete snapshot rows in one transaction (the record files go afterwards)."""
        with self.transaction():
            self.conn.executemany("DELETE FROM snapshots WHERE id=?", [(i,) for i in ids])

    def pack_name(self, pid: int) -> str:
        return self._pack_name(self.conn, pid)

    def _pack_name(self, conn: sqlite3.Connection, pid: int) -> str:
        name = self._pack_names.get(pid)
        if name is None:
            row = conn.execute("SELECT name FROM packs WHERE id=?", (pid,)).fetchone()
            name = row[0]
            self._pack_names[pid] = name
        return name

    def packs(self) -> list[dict]:
        return self._dicts("SELECT id, name, size, entries FROM packs ORDER BY id")

    def _reader(self) -> sqlite3.Connection:
        """This thread's own read connection, for reads beside the thread that writes (one
        per thread: the snapshot's workers and its parent walk never wait for each other)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, self._uri)
            with self._lookup_lock:
                self._lookup_conns.append(conn)
        return conn

    def known(self, ids: Iterable[bytes]) -> set[bytes]:
        """Which of ``ids`` the catalog has; safe to call from any thread (own connection).
        One result row per batch (the ids concatenated in hex): every row a query returns
        costs a round trip through the GIL, which under the snapshot's busy threads can
        wait milliseconds."""
        ids = list(ids)
        found: set[bytes] = set()
        c = self._reader()
        for i in range(0, len(ids), LOOKUP_BATCH):
            part = ids[i : i + LOOKUP_BATCH]
            q = f"SELECT group_concat(hex(id), '') FROM blobs WHERE id IN ({','.join('?' * len(part))})"
            text = c.execute(q, part).fetchone()[0] or ""
            found.update(bytes.fromhex(text[k : k + 64]) for k in range(0, len(text), 64))
        return found

    def locate(self, ids: Iterable[bytes], any_thread: bool = False) -> dict[bytes, BlobLocation]:
        """Where blobs are. ``any_thread``: through this thread's read connection, safe beside a
        thread that writes (the snapshot's writer)."""
        return self._locate(self._reader() if any_thread else self.conn, ids)

    def _locate(self, conn: sqlite3.Connection, ids: Iterable[bytes]) -> dict[bytes, BlobLocation]:
        ids = list(dict.fromkeys(ids))
        out: dict[bytes, BlobLocation] = {}
        for i in range(0, len(ids), LOOKUP_BATCH):
            part = ids[i : i + LOOKUP_BATCH]
            q = (
                "SELECT id, type, pack, offset, stored_len, raw_len, flags FROM blobs "
                f"WHERE id IN ({','.join('?' * len(part))})"
            )
            for bid, kind, pid, off, stored, raw, flags in conn.execute(q, part):
                out[bid] = BlobLocation(bid, kind, self._pack_name(conn, pid), off, stored, raw, flags)
        return out

    def blob_totals(self) -> dict[str, int]:
        row = self.conn.execute(
            "SELECT count(*), coalesce(sum(raw_len),0), coalesce(sum(stored_len),0) FROM blobs WHERE type=1"
        ).fetchone()
        packs = self.conn.execute("SELECT count(*), coalesce(sum(size),0) FROM packs").fetchone()
        return {"chunks": row[0], "raw_bytes": row[1], "stored_bytes": row[2],
                "packs": packs[0], "pack_bytes": packs[1]}

    # --- snapshots ---------------------------------------------------------------
    def add_snapshot(self, snap: SnapshotRecord) -> None:
        """Insert a snapshot row (one statement: atomic); adds missing columns first. A row
        of the same id is replaced: ids are content ids, so it is the same snapshot, recorded
        first by another process's sync of a remote repository's cache."""
        self.upgrade()
        row = snap.to_row()
        if self.crypto.encrypted:
            sealed = self.crypto.seal(b"DVC1" + snap.id.encode(), json.dumps(snap.to_json()).encode())
            row = {"id": snap.id, "seq": snap.seq, "time": "", "host": "", "source": "", "size": 0, "tags": "[]",
                   "tree": "", "data_bytes": 0, "zero_bytes": 0, "chunks": 0, "new_chunks": 0, "new_bytes": 0,
                   "stored_bytes": 0, "duration": 0.0, "sealed": sealed}
        self.conn.execute(
            f"INSERT OR REPLACE INTO snapshots ({','.join(row)}) VALUES ({','.join(':' + k for k in row)})", row)

    def upgrade(self) -> None:
        """Add the snapshot columns an older catalog lacks (ADDED_SNAPSHOT_COLUMNS); writes."""
        if getattr(self, "_upgraded", False):
            return
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(snapshots)")}
        for name, decl in ADDED_SNAPSHOT_COLUMNS.items():
            if name not in have:
                self.conn.execute(f"ALTER TABLE snapshots ADD COLUMN {name} {decl}")
        self._upgraded = True

    def next_seq(self) -> int:
        """One more than the highest snapshot sequence number (1 for the first)."""
        self.upgrade()
        return self.conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM snapshots").fetchone()[0]

    def has_snapshots(self) -> bool:
        return self.conn.execute("SELECT 1 FROM snapshots LIMIT 1").fetchone() is not None

    def snapshots(self, skip_damaged: bool = False) -> list[SnapshotRecord]:
        """Every snapshot, oldest first: by sequence number, then time (records from before
        sequence numbers have seq 0 and order by time), then id. A row that fails
        authentication raises DamagedData, or is left out with ``skip_damaged`` (repair: its
        record file stands for it)."""
        rows = []
        for r in self._dicts("SELECT * FROM snapshots"):
            try:
                rows.append(self._record(r))
            except DamagedData:
                if not skip_damaged:
                    raise
        return sorted(rows, key=lambda s: (s.seq, s.time, s.id))

    def _record(self, row: dict) -> SnapshotRecord:
        sealed = row.pop("sealed", None)
        if sealed is None:
            if self.crypto.encrypted:
                raise DamagedData(f"the catalog's row of snapshot {row['id']} is not sealed, unlike its repository: "
                                  "rebuild the catalog with diskvault repair")
            return SnapshotRecord.from_row(row)
        if not self.crypto.encrypted:  # never taken for damage: repair would drop every row
            raise RepositoryError(f"the catalog's row of snapshot {row['id']} is sealed, but config.json says the "
                                  "repository is not encrypted: config.json was changed; restore it and keys/ from a "
                                  "copy of the repository")
        try:
            return SnapshotRecord.from_json(json.loads(self.crypto.open(b"DVC1" + row["id"].encode(), sealed)))
        except (DamagedData, ValueError, TypeError):
            raise DamagedData(f"the catalog's row of snapshot {row['id']} fails authentication: "
                              "rebuild the catalog with diskvault repair") from None

    def snapshot_ids_with_prefix(self, prefix: str) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT id FROM snapshots WHERE id >= ? AND id < ? ORDER BY id", (prefix, prefix + "g"))]

    def get_snapshot(self, sid: str) -> SnapshotRecord | None:
        rows = self._dicts("SELECT * FROM snapshots WHERE id=?", [sid])
        return self._record(rows[0]) if rows else None


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")

