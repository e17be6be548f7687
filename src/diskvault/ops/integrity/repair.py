"""Repair the catalog from what the storage holds: pack trailers and snapshot records.

Packs are self-describing (each trailer lists its blobs) and every snapshot has a record
file ``snapshots/<id>.json`` naming the root of its chunk-list tree, whose nodes are
blobs in packs. So the whole catalog can be rebuilt without the old one:

1. read every pack's trailer (``pack.read_pack_index``); packs whose trailer is damaged or
   missing are reported and left out of the index;
2. if the old catalog is readable (and ``rebuild`` was not asked), keep its locations
   where the pack agrees, and *salvage* blobs it locates in packs with a damaged trailer:
   each is read and verified (blake3) and, if sound, copied into a new sealed pack;
3. damage: blobs the old catalog knows to be damaged (its ``damaged`` table) and, without an
   old catalog, blobs stored more than once are verified; the index takes an intact copy
   where there is one, the others stay known as damaged (never used for deduplication);
4. snapshots: every readable record file, plus (old catalog readable) rows whose record is
   missing or unreadable, whose record file is then rewritten; an unreadable record whose
   tree root still reads and is intact is rebuilt around it (fields that cannot be read
   are stood in for and reported); the others are reported and kept, untouched;
5. every snapshot's tree is walked against the new index; snapshots with missing tree
   nodes or chunks are reported as unrecoverable with the byte ranges lost (they stay
   listed, so ``restore --skip-damaged`` can still save the rest); a tree node that does
   not verify is known as damaged from then on;
6. the new catalog is written to a temporary file, made durable and renamed over
   ``catalog.sqlite`` (an interrupted repair leaves the old catalog in place). The old
   catalog's other tables and meta are kept unless it is unreadable or ``rebuild``.

Run it while no other diskvault command uses the repository. Raises RepositoryError
when the directory is not a repository; damage is reported in the result.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ...repository import locking
from ...repository.catalog import BlobLocation, Catalog, SnapshotRecord
from ...errors import DamagedData, RepositoryNotFound
from ...repository.hashing import ZERO_ID, short
from ...repository.maintenance import (
    disagrees, fold_wal, pack_files, probe_catalog, read_records, read_stored, read_verified, salvage_record, swap_catalog,
    write_catalog, write_record,
)
from ...repository.pack import TARGET_PACK_SIZE, Entry, PackWriter, pack_id, read_pack_index
from ...repository import (
    CATALOG, CATALOG_FILES, CONFIG, Repository, load_config, repository_errors, require_writable, storage_at, unlock,
)
from ...repository import cache
from ...repository.config import load_remote_config
from ...repository.crypto import Crypto
from ...repository.location import remote_storage
from ...storage import is_remote
from ...storage.local import LocalStorage
from ...repository.tree import parse
from .check import check_unlocked
from .damage import merge, node_problem

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
    recovered_records: list[dict] = field(default_factory=list)  # {id, reason, from, stood_in}
    unreadable_records: list[dict] = field(default_factory=list)  # {record, reason}: kept, not indexed
    damaged_blobs: int = 0  # blobs known to be damaged, never used for deduplication
    unrecoverable: list[dict] = field(default_factory=list)  # {id, ranges, bytes, reason}
    status_after: str = ""
    duration: float = 0.0

    def to_json(self) -> dict:
        return dict(self.__dict__)


def repair(path: str, rebuild: bool = False, passphrase: Callable[[], str] | None = None) -> RepairResult:
    """Rebuild the catalog under the exclusive repository lock: no other command runs.
    A read-only repository raises RepositoryReadOnly, a full disk OutOfSpace (nothing changed:
    the new catalog replaces the old one only once complete). An encrypted repository needs
    ``passphrase()`` (its key reads trailers and records); PasswordError before anything is written.
    A remote repository (``s3:…``): its cached catalog is deleted and rebuilt from the store
    (``_repair_remote``); nothing in the store changes."""
    if is_remote(path):
        return _repair_remote(path, passphrase)
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise RepositoryNotFound(f"repository {path} does not exist")
    require_writable(path)
    with repository_errors(path):
        storage_at(path).check_file(CONFIG)
        config = load_config(path)
        crypto, kid = unlock(path, config, passphrase)
        with locking.locked(path, "exclusive", "repair", crypto=crypto):
            return _repair_locked(path, rebuild, config, crypto, kid)


def _repair_remote(location: str, passphrase: Callable[[], str] | None) -> RepairResult:
    """Delete the cached catalog of the remote repository at ``location`` and build it anew
    from the store's pack trailers and records, under a shared lock (the store is only read,
    but prune must not remove packs meanwhile). Damaged packs and records are reported."""
    started = time.monotonic()
    storage = remote_storage(location)
    config = load_remote_config(location, storage)
    crypto, kid = unlock(location, config, passphrase, storage)
    cat_path = cache.catalog_path(str(config["id"]))
    res = RepairResult(location, "ignored (the cache of a remote repository is rebuilt from the store)"
                       if os.path.exists(cat_path) else "missing")
    with locking.locked(location, "shared", "repair", crypto=crypto, storage=storage):
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(cat_path + suffix)
            except FileNotFoundError:
                pass
        with Repository(location, config, crypto=crypto, key_id=kid, storage=storage) as r:
            synced = r.last_sync
            assert synced is not None
            totals = r.catalog.blob_totals()
            res.packs = totals["packs"]
            res.blobs = sum(1 for _ in r.catalog.blob_rows())
            res.snapshots = len(r.catalog.snapshot_ids_with_prefix(""))
            for name, why in sorted(synced.unreadable.items()):
                if name.startswith("packs/"):
                    res.damaged_packs.append({"pack": pack_id(name), "reason": why})
                else:
                    res.unreadable_records.append({"record": name, "reason": why})
            report = check_unlocked(r)
    res.status_after = "sound" if report.sound else "damaged"
    res.duration = round(time.monotonic() - started, 3)
    return res


def _repair_locked(path: str, rebuild: bool, config: dict, crypto: Crypto, kid: str | None) -> RepairResult:
    started = time.monotonic()
    storage = storage_at(path)
    for name in (CONFIG, *CATALOG_FILES):  # a linked catalog would be read and replaced elsewhere
        storage.check_file(name)
    cat_path = os.path.join(path, CATALOG)
    state = probe_catalog(cat_path)
    use_old = state == "used" and not rebuild
    if state == "used":  # fold its WAL into the file: the swap below removes a stale WAL
        fold_wal(cat_path)
    res = RepairResult(path, "ignored (--rebuild-catalog)" if rebuild and state == "used" else state)
    old: Catalog | None = Catalog(cat_path, crypto=crypto) if use_old else None
    try:
        tmp = _repair(storage, crypto, config, cat_path, old, res)
    finally:
        if old is not None:
            old.close()
        storage.close()
    swap_catalog(cat_path, tmp)
    with Repository(path, config, crypto=crypto, key_id=kid) as r:
        report = check_unlocked(r)
    res.status_after = "sound" if report.sound else "damaged"
    res.duration = round(time.monotonic() - started, 3)
    return res


def _repair(storage: LocalStorage, crypto: Crypto, config: dict, cat_path: str, old: Catalog | None,
            res: RepairResult) -> str:
    """Build the new catalog; returns its temporary file."""
    old_packs = old.packs() if old is not None else []
    old_ids = {p["name"]: p["id"] for p in old_packs}
    files = pack_files(storage)
    ordered = [p["name"] for p in old_packs if p["name"] in set(files)] + sorted(set(files) - old_ids.keys())
    tables: dict[str, list[Entry]] = {}
    for name in ordered:
        try:
            tables[name] = read_pack_index(storage, name, crypto)
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
    others: dict[bytes, list[tuple[str, Entry]]] = {}  # copies of a blob besides the one indexed
    for name in ordered:
        for e in tables.get(name, ()):
            hit = index.setdefault(e.id, (name, e))
            if hit[0] != name:
                others.setdefault(e.id, []).append((name, e))

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
                payload = read_stored(storage, crypto, row)
            except DamagedData:
                res.lost_blobs += 1
                continue
            if writer is None:
                writer = PackWriter(storage, crypto)
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
    damaged = _verify_suspects(storage, crypto, index, others, old.damaged() if old is not None else {}, old is None)
    for row in old_rows:  # rows that now point elsewhere, or nowhere
        hit = index.get(row.id)
        if hit is None or hit[0] != row.pack or (hit[1].offset, hit[1].stored_len) != (row.offset, row.stored_len):
            res.changed_rows += 1

    # snapshots: record files, plus old rows whose record is missing or unreadable
    # (rewritten), plus what can be recovered from unreadable records
    snaps, unreadable = read_records(storage, crypto)
    if old is not None:
        for s in old.snapshots(skip_damaged=True):  # a row failing authentication: its record stands for it
            if s.id in snaps and disagrees(snaps[s.id], s):  # the catalog row wins, as check says
                write_record(storage, crypto, s)
                snaps[s.id] = s
                res.recovered_records.append({"id": s.id, "reason": "it did not match the catalog",
                                              "from": "catalog", "stood_in": []})
            elif s.id not in snaps:
                write_record(storage, crypto, s)
                snaps[s.id] = s
                reason = unreadable.pop(f"snapshots/{s.id}.json", None)
                if reason is None:
                    res.records_written += 1
                else:
                    res.recovered_records.append({"id": s.id, "reason": reason, "from": "catalog", "stood_in": []})
    _recover_records(storage, crypto, unreadable, index, snaps, res)

    complete: set[bytes] = set()  # tree nodes whose whole subtree is present

    def visit(nid: bytes, off: int, covered: int, lost: list[tuple[int, int]], why: list[str]) -> bool:
        if nid in complete:
            return True
        hit = index.get(nid)
        try:
            if hit is None:
                raise DamagedData("not found in any pack")
            name, e = hit
            level, items = parse(bytes(read_verified(storage, crypto, _loc(nid, name, e))))
        except DamagedData as exc:
            if hit is not None:
                damaged.setdefault(nid, (str(exc), _now()))
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
    tmp, res.packs = write_catalog(cat_path, old, config["id"], storage,
                                   [(old_ids.get(name), name, tables[name]) for name in ordered if name in tables],
                                   index, snaps.values(), damaged, crypto)
    res.damaged_blobs = len(damaged)
    res.blobs = len(index)
    res.snapshots = len(snaps)
    return tmp


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _loc(ident: bytes, name: str, e: Entry) -> BlobLocation:
    return BlobLocation(ident, e.type, name, e.offset, e.stored_len, e.raw_len, e.flags)


def _verify_suspects(storage: LocalStorage, crypto: Crypto, index: dict[bytes, tuple[str, Entry]],
                     others: dict[bytes, list[tuple[str, Entry]]], known: dict[bytes, tuple[str, str]],
                     all_copies: bool) -> dict[bytes, tuple[str, str]]:
    """Verify the indexed copy of every blob ``known`` to be damaged (the old catalog's
    ``damaged`` table) and, with ``all_copies`` (no old catalog to say which copy was in
    use), of every blob stored more than once: the index takes an intact copy where there
    is one. Returns the blobs left without one (id -> (reason, time found))."""
    damaged: dict[bytes, tuple[str, str]] = {}
    suspects = set(known) | (set(others) if all_copies else set())
    for ident in sorted(suspects):
        if ident not in index:
            continue  # not in any pack: absent, which deduplication knows without the table
        reason = ""
        for name, e in [index[ident], *others.get(ident, ())]:
            try:
                read_verified(storage, crypto, _loc(ident, name, e))
            except DamagedData as exc:
                reason = reason or str(exc)
                continue
            index[ident] = (name, e)
            break
        else:
            damaged[ident] = known.get(ident) or (reason, _now())
    return damaged


def _recover_records(storage: LocalStorage, crypto: Crypto, unreadable: dict[str, str], index: dict[bytes, tuple[str, Entry]],
                     snaps: dict[str, SnapshotRecord], res: RepairResult) -> None:
    """Rebuild the snapshots of unreadable records whose tree root still reads and is
    intact (``salvage_record``), rewriting their record files; report the others (kept)."""

    def size_of_tree(root: bytes) -> int | None:
        hit = index.get(root)
        if hit is None:
            return None
        try:
            _level, items = parse(bytes(read_verified(storage, crypto, _loc(root, *hit))))
        except DamagedData:
            return None
        return sum(n for _, n in items)

    for name, reason in sorted(unreadable.items()):
        try:
            got = salvage_record(name, storage.read(name), size_of_tree, os.path.getmtime(os.path.join(storage.root, name)))
        except OSError:
            got = None
        if got is None:
            res.unreadable_records.append({"record": name, "reason": reason})
            continue
        rec, stood_in = got
        write_record(storage, crypto, rec)
        snaps[rec.id] = rec
        res.recovered_records.append({"id": rec.id, "reason": reason, "from": "tree", "stood_in": stood_in})
