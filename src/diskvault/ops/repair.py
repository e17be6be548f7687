"""Repair the catalog from what the storage holds: pack trailers and snapshot records.

Packs are self-describing (each trailer lists its blobs) and every snapshot has a record
file ``snapshots/<id>.json`` naming the root of its chunk-list tree, whose nodes are
blobs in packs. So the whole catalog can be rebuilt without the old one:

1. read every pack's trailer (``pack.read_table``); packs whose trailer is damaged or
   missing are reported and left out of the index;
2. if the old catalog is readable (and ``rebuild`` was not asked), keep its locations
   where the pack agrees, and *salvage* blobs it locates in packs with a damaged trailer:
   each is read and verified (blake3) and, if sound, copied into a new sealed pack;
3. snapshots: every record file, plus (old catalog readable) rows whose record is missing,
   whose record file is then rewritten;
4. every snapshot's tree is walked against the new index; snapshots with missing tree
   nodes or chunks are reported as unrecoverable with the byte ranges lost (they stay
   listed, so ``restore --skip-damaged`` can still save the rest);
5. the new catalog is written to a temporary file, made durable and renamed over
   ``catalog.sqlite`` (an interrupted repair leaves the old catalog in place). The old
   catalog's other tables and meta are kept unless it is unreadable or ``rebuild``.

Run it while no other diskvault command uses the repository. Raises RepositoryError
when the directory is not a repository; damage is reported in the result.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass, field

from ..repository import compression, locking
from ..repository.catalog import BlobLocation, Catalog, SnapshotRecord
from ..errors import DamagedData, RepositoryNotFound
from ..repository.hashing import ZERO_ID, content_id, short
from ..repository.pack import TARGET_PACK_SIZE, Entry, PackWriter, pack_id, read_table
from ..repository import (
    CATALOG, CONFIG, FORMAT_VERSION, Repository, check_config, repository_errors, require_writable, storage_at,
)
from ..storage.local import TMP_MARK, LocalStorage, private_file
from ..repository.tree import parse
from .check import check_unlocked
from .damage import merge, node_problem

CATALOG_TABLES = ("meta", "packs", "blobs", "snapshots")


@dataclass
class RepairResult:
    repository: str
    old_catalog: str  # "used", "missing", "unreadable: …", "ignored (--rebuild-catalog)"
    packs: int = 0
    blobs: int = 0
    snapshots: int = 0
    damaged_packs: list[dict] = field(default_factory=list)  # {pack, reason}
    salvaged_blobs: int = 0
    salvage_packs: list[str] = field(default_factory=list)  # new packs holding salvaged blobs
    lost_blobs: int = 0  # located by the old catalog, unreadable now
    changed_rows: int = 0  # old blob rows now pointing elsewhere (fixed, salvaged) or dropped
    records_written: int = 0
    unrecoverable: list[dict] = field(default_factory=list)  # {id, ranges, bytes, reason}
    status_after: str = ""
    duration: float = 0.0

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _load_config(path: str) -> dict:
    try:
        with open(os.path.join(path, CONFIG), "rb") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise RepositoryNotFound(f"{path} is not a diskvault repository (no {CONFIG})") from None
    except (ValueError, OSError) as exc:
        raise RepositoryNotFound(f"{path}/{CONFIG} is unreadable ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != "diskvault" or config.get("version") != FORMAT_VERSION:
        raise RepositoryNotFound(f"{path}/{CONFIG} is not a diskvault configuration of format {FORMAT_VERSION}")
    check_config(path, config)
    return config


def _probe(cat_path: str) -> str:
    """'used' when the catalog opens and its tables read, else why not."""
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


def _read(storage: LocalStorage, loc: BlobLocation) -> bytes | memoryview:
    """Read and verify one blob (DamagedData when it is not what ``loc`` says)."""
    try:
        payload = storage.read_range(loc.pack, loc.offset, loc.stored_len)
    except FileNotFoundError:
        raise DamagedData(f"pack {pack_id(loc.pack)} is missing") from None
    return _check(loc, payload)


def _check(loc: BlobLocation, payload: bytes) -> bytes | memoryview:
    if len(payload) != loc.stored_len:
        raise DamagedData(f"blob {short(loc.id)} lies past the end of pack {pack_id(loc.pack)}")
    raw = compression.decompress(payload, loc.flags, loc.raw_len)
    if content_id(raw) != loc.id:
        raise DamagedData(f"blob {short(loc.id)} in pack {pack_id(loc.pack)} is damaged (hash mismatch)")
    return raw


def _read_records(storage: LocalStorage) -> dict[str, SnapshotRecord]:
    out: dict[str, SnapshotRecord] = {}
    for name in storage.list("snapshots"):
        if not name.endswith(".json"):
            continue
        try:
            d = json.loads(storage.read(name))
            rec = SnapshotRecord.from_json(d)
            bytes.fromhex(rec.tree)
        except (ValueError, TypeError, OSError):
            continue  # not a record: reported by check as a snapshot without record
        out[rec.id] = rec
    return out


def repair(path: str, rebuild: bool = False) -> RepairResult:
    """Rebuild the catalog under the exclusive repository lock: no other command runs.
    A read-only repository raises RepositoryReadOnly, a full disk OutOfSpace (nothing changed:
    the new catalog replaces the old one only once complete)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise RepositoryNotFound(f"repository {path} does not exist")
    require_writable(path)
    with repository_errors(path), locking.locked(path, "exclusive", "repair"):
        return _repair_locked(path, rebuild)


def _repair_locked(path: str, rebuild: bool) -> RepairResult:
    started = time.monotonic()
    config = _load_config(path)
    storage = storage_at(path)
    cat_path = os.path.join(path, CATALOG)
    state = _probe(cat_path)
    use_old = state == "used" and not rebuild
    if state == "used":  # fold its WAL into the file: the swap below removes a stale WAL
        conn = sqlite3.connect(cat_path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    res = RepairResult(path, "ignored (--rebuild-catalog)" if rebuild and state == "used" else state)
    old: Catalog | None = Catalog(cat_path) if use_old else None
    try:
        _repair(storage, config, cat_path, old, res)
    finally:
        if old is not None:
            old.close()
        storage.close()
    _swap(cat_path, res)
    with Repository.open(path) as r:
        report = check_unlocked(r)
    res.status_after = "sound" if report.sound else "damaged"
    res.duration = round(time.monotonic() - started, 3)
    return res


def _repair(storage: LocalStorage, config: dict, cat_path: str, old: Catalog | None, res: RepairResult) -> None:
    old_packs = old.packs() if old is not None else []
    old_ids = {p["name"]: p["id"] for p in old_packs}
    files = [n for n in storage.list("packs") if n.endswith(".pack")]
    ordered = [p["name"] for p in old_packs if p["name"] in set(files)] + sorted(set(files) - old_ids.keys())
    tables: dict[str, list[Entry]] = {}
    for name in ordered:
        try:
            tables[name] = read_table(storage, name)
        except (DamagedData, OSError) as exc:
            res.damaged_packs.append({"pack": pack_id(name), "reason": str(exc)})
    for name in old_ids:
        if name not in set(files):
            res.damaged_packs.append({"pack": pack_id(name), "reason": "missing"})

    index: dict[bytes, tuple[str, Entry]] = {}
    old_rows: list[BlobLocation] = []
    if old is not None:
        rows_of = old.blobs_by_pack()
        old_rows = [row for p in old_packs for row in rows_of.get(p["id"], ())]
        by_pack = {name: {e.id: e for e in entries} for name, entries in tables.items()}
        for row in old_rows:
            e = by_pack.get(row.pack, {}).get(row.id)
            if e is not None and (e.offset, e.stored_len, e.raw_len, e.flags, e.type) == (
                    row.offset, row.stored_len, row.raw_len, row.flags, row.type):
                index[row.id] = (row.pack, e)
    for name in ordered:
        for e in tables.get(name, ()):
            index.setdefault(e.id, (name, e))

    # salvage blobs the old catalog locates in packs whose trailer is gone: verified, then
    # copied (stored bytes as they are) into new packs, sealed before the catalog uses them
    writer: PackWriter | None = None

    def seal() -> None:
        nonlocal writer
        if writer is not None:
            writer.seal()
            tables[writer.name] = writer.entries
            ordered.append(writer.name)
            res.salvage_packs.append(pack_id(writer.name))
            writer = None

    try:
        for row in old_rows:
            if row.id in index or row.pack in tables:
                continue
            try:
                payload = storage.read_range(row.pack, row.offset, row.stored_len)
                _check(row, payload)
            except (DamagedData, OSError):
                res.lost_blobs += 1
                continue
            if writer is None:
                writer = PackWriter(storage)
            e = writer.add(row.id, row.type, row.flags, payload, row.raw_len)
            index[row.id] = (writer.name, e)
            res.salvaged_blobs += 1
            if writer.size >= TARGET_PACK_SIZE:
                seal()
        seal()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    for row in old_rows:  # rows that now point elsewhere, or nowhere
        hit = index.get(row.id)
        if hit is None or hit[0] != row.pack or (hit[1].offset, hit[1].stored_len) != (row.offset, row.stored_len):
            res.changed_rows += 1

    # snapshots: record files, plus old rows whose record is missing (rewritten)
    snaps = _read_records(storage)
    if old is not None:
        for s in old.snapshots():
            if s.id not in snaps:
                body = json.dumps(s.to_json(), indent=2, sort_keys=True).encode() + b"\n"
                storage.write_atomic(f"snapshots/{s.id}.json", body)
                res.records_written += 1
                snaps[s.id] = s

    complete: set[bytes] = set()  # tree nodes whose whole subtree is present

    def visit(nid: bytes, off: int, covered: int, lost: list[tuple[int, int]], why: list[str]) -> bool:
        if nid in complete:
            return True
        hit = index.get(nid)
        try:
            if hit is None:
                raise DamagedData("not found in any pack")
            name, e = hit
            level, items = parse(bytes(_read(storage, BlobLocation(nid, e.type, name, e.offset, e.stored_len, e.raw_len, e.flags))))
        except DamagedData as exc:
            lost.append((off, covered))
            why.append(node_problem(nid, exc))
            return False
        whole = True
        for ident, length in items:
            if level > 0:
                whole = visit(ident, off, length, lost, why) and whole
            elif ident != ZERO_ID and ident not in index:
                lost.append((off, length))
                why.append(f"chunk {short(ident)} is not in any pack")
                whole = False
            off += length
        if whole:
            complete.add(nid)
        return whole

    for s in sorted(snaps.values(), key=lambda s: (s.time, s.id)):
        lost: list[tuple[int, int]] = []
        why: list[str] = []
        visit(bytes.fromhex(s.tree), 0, s.size, lost, why)
        reason = why[0] if why else ""
        if lost:
            ranges = merge(lost)
            res.unrecoverable.append({"id": s.id, "ranges": ranges, "bytes": sum(n for _, n in ranges), "reason": reason})

    # write the new catalog beside the old one
    tmp = f"{cat_path}{TMP_MARK}{secrets.token_hex(4)}"
    try:
        os.close(private_file(tmp))  # 0600: SQLite gives its -wal, -shm, -journal this mode
        if old is not None:
            new = sqlite3.connect(tmp)
            old.conn.backup(new)
            new.close()
            cat = Catalog(tmp)
        else:
            cat = Catalog(tmp)
            cat.create({"repository_id": config["id"]})
        conn = cat.conn
        conn.execute("PRAGMA foreign_keys=OFF")
        with cat.transaction():
            conn.execute("DELETE FROM blobs")
            conn.execute("DELETE FROM packs")
            conn.execute("DELETE FROM snapshots")
            rowid: dict[str, int] = {}
            for name in ordered:
                if name not in tables:
                    continue
                cur = conn.execute("INSERT INTO packs(id, name, size, entries) VALUES (?,?,?,?)",
                                   (old_ids.get(name), name, storage.size(name), len(tables[name])))
                rowid[name] = cur.lastrowid
            conn.executemany(
                "INSERT INTO blobs VALUES (?,?,?,?,?,?,?)",
                [(i, e.type, rowid[name], e.offset, e.stored_len, e.raw_len, e.flags) for i, (name, e) in index.items()],
            )
            for s in snaps.values():
                cat.add_snapshot(s)
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
    res.packs = len(rowid)
    res.blobs = len(index)
    res.snapshots = len(snaps)
    res._tmp = tmp  # type: ignore[attr-defined]


def _swap(cat_path: str, res: RepairResult) -> None:
    """Replace the catalog by the new one. The old WAL was checkpointed when its last
    connection closed; a stale -wal/-shm must not be applied to the new file."""
    tmp = res.__dict__.pop("_tmp")
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(cat_path + suffix)
        except FileNotFoundError:
            pass
    os.rename(tmp, cat_path)
    fd = os.open(os.path.dirname(cat_path), os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
