"""diskvault prune: mark and sweep, under the exclusive repository lock.

0. Refuse (DamagedData, nothing deleted) while a snapshot record file cannot be read: the
   snapshot it names may need data that would otherwise look unused.
1. Clean: remove ``.tmp-`` files, snapshot record files without a catalog row (left by an
   interrupted forget or snapshot) and pack files the catalog does not know (left by an
   interrupted snapshot or prune). Only safe because the exclusive lock guarantees that no
   snapshot is writing.
2. Mark: every tree node and chunk reachable from a catalogued snapshot is live
   (TreeReader.nodes with one seen-set, so shared subtrees are walked once). A live blob the
   catalog does not know stops prune with DamagedData: nothing is deleted from a damaged
   repository.
3. Plan: packs without live blobs are deleted; packs are repacked, most unused first, until
   the unused bytes left are within ``--max-unused``; with ``--repack-small`` packs under 80 %
   of the target size are merged.
4. Repack: live entries are copied (verified, still compressed) into new packs through a
   BlobWriter in repoint mode: each new pack is sealed (durable), then recorded with its blob
   rows switched to it in one transaction (Catalog.switch_pack).
5. Sweep: one transaction forgets the old packs and their now dead rows (refused if a live
   blob would lose its row), then the old pack files are deleted.

The catalog therefore never points at a file that is gone, at any instant: killing prune
anywhere leaves every snapshot restorable, and the next prune removes what was left over.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from ...repository.catalog import BlobLocation
from ...errors import DamagedData
from ...repository.hashing import ZERO_ID, short
from ...repository.maintenance import copy_verified, disagrees, read_records
from ...repository.pack import TYPE_CHUNK, pack_overhead
from ...policy import DEFAULT_MAX_UNUSED, parse_max_unused
from ...repository import Repository, pack_target_size
from ..progress import NoProgress, Progress

SMALL_FRACTION = 0.8  # --repack-small: packs under this share of the target size


@dataclass
class PackStat:
    id: int
    name: str
    size: int
    live: list[BlobLocation] = field(default_factory=list)
    dead_chunks: int = 0
    dead_trees: int = 0
    tag: int = 0  # bytes its trailer's sealing adds (encrypted)

    @property
    def live_bytes(self) -> int:
        return sum(loc.stored_len for loc in self.live)

    @property
    def unused(self) -> int:
        if not self.live:
            return self.size
        return max(0, self.size - self.live_bytes - pack_overhead(len(self.live)) - self.tag)


@dataclass
class PruneResult:
    dry_run: bool
    snapshots: int  # surviving snapshots
    orphan_records_removed: int
    tmp_files_removed: int
    orphan_packs_removed: int
    live_blobs: int
    chunks_removed: int  # catalogued chunks no snapshot references, dropped with their packs
    tree_nodes_removed: int
    packs_before: int
    packs_deleted: int
    packs_repacked: int
    packs_written: int
    bytes_before: int  # pack bytes, including unknown packs
    bytes_after: int
    bytes_reclaimed: int
    bytes_repacked: int  # live bytes copied into new packs
    unused_before: int
    unused_after: int
    duration: float

    def to_json(self) -> dict:
        return asdict(self)


def _allowed_unused(limit: tuple[str, float], live_bytes: int) -> float:
    kind, value = limit
    if kind == "percent":  # unused / (used + unused) <= value %
        return value / (100 - value) * live_bytes
    return value


def mark(repo: Repository, progress: Progress) -> set[bytes]:
    """Ids of every tree node and chunk reachable from a catalogued snapshot."""
    snaps = repo.snapshots()
    progress.start(sum(s.size for s in snaps), "mark")
    tree = repo.tree()
    seen: set[bytes] = set()
    chunks: set[bytes] = set()
    for snap in snaps:
        for _nid, level, items in tree.nodes(bytes.fromhex(snap.tree), seen):
            if level == 0:
                chunks.update(i for i, _ in items if i != ZERO_ID)
        progress.advance(snap.size)
    return seen | chunks


def prune(
    repo: Repository,
    max_unused: str = DEFAULT_MAX_UNUSED,
    repack_small: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> PruneResult:
    limit = parse_max_unused(max_unused)
    with repo.lock("exclusive", "prune --dry-run" if dry_run else "prune"):
        return _prune(repo, limit, repack_small, dry_run, progress or NoProgress())


def _prune(repo: Repository, limit: tuple[str, float], repack_small: bool, dry_run: bool,
           progress: Progress) -> PruneResult:
    started = time.monotonic()
    storage, catalog = repo.storage, repo.catalog

    # 0. never delete what cannot be accounted for: a record that does not read may name
    # a snapshot whose data would otherwise look unused
    records, unreadable = read_records(storage, repo.crypto)
    for row in catalog.snapshots():
        if row.id in records and disagrees(records[row.id], row):
            raise DamagedData(f"snapshot record snapshots/{row.id}.json does not match the catalog: prune deletes "
                              "nothing until diskvault repair has rewritten it")
    if unreadable:
        name, reason = min(unreadable.items())
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise DamagedData(f"snapshot record {name}{more} cannot be read ({reason}): prune deletes nothing while a "
                          "record is unreadable; run diskvault repair, which recovers the snapshot if it can")

    # 1. clean what interrupted commands left behind
    tmp_removed = 0 if dry_run else storage.clean_temporary()
    known_ids = {s.id for s in catalog.snapshots()}
    orphan_records = [n for n in storage.list("snapshots")
                      if n.endswith(".json") and n.rsplit("/", 1)[-1][:-5] not in known_ids]
    packs = catalog.packs()
    names = {p["name"] for p in packs}
    orphan_packs = [n for n in storage.list("packs") if n.endswith(".pack") and n not in names]
    orphan_bytes = sum(storage.size(n) for n in orphan_packs)
    if not dry_run:
        for n in orphan_records:
            storage.delete(n)
        for n in orphan_packs:
            storage.delete(n)

    # 2. mark
    live = mark(repo, progress)

    # 3. plan
    stats = {p["id"]: PackStat(p["id"], p["name"], p["size"], tag=repo.crypto.overhead) for p in packs}
    catalogued: set[bytes] = set()
    for bid, kind, pid, off, stored, raw, flags in list(catalog.blob_rows()):
        st = stats[pid]
        catalogued.add(bid)
        if bid in live:
            st.live.append(BlobLocation(bid, kind, st.name, off, stored, raw, flags))
        elif kind == TYPE_CHUNK:
            st.dead_chunks += 1
        else:
            st.dead_trees += 1
    missing = live - catalogued
    if missing:
        raise DamagedData(
            f"{len(missing)} blobs referenced by snapshots are not in the catalog (e.g. {short(next(iter(missing)))}): "
            "prune deletes nothing in a damaged repository; run diskvault check / repair first"
        )
    dead = [st for st in stats.values() if not st.live]
    partial = sorted((st for st in stats.values() if st.live and st.unused),
                     key=lambda st: (st.unused / st.size, st.unused), reverse=True)
    live_bytes = sum(st.live_bytes for st in stats.values())
    allowed = _allowed_unused(limit, live_bytes)
    unused_left = sum(st.unused for st in partial)
    repack: list[PackStat] = []
    for st in partial:
        if unused_left <= allowed:
            break
        repack.append(st)
        unused_left -= st.unused
    if repack_small:
        chosen = {st.id for st in repack}
        small = [st for st in stats.values()
                 if st.live and st.id not in chosen and st.size < SMALL_FRACTION * pack_target_size()]
        if small and len(small) + len(repack) >= 2:
            repack.extend(small)
    unused_before = sum(st.unused for st in stats.values()) + orphan_bytes
    bytes_before = sum(st.size for st in stats.values()) + orphan_bytes
    result = PruneResult(
        dry_run=dry_run, snapshots=len(known_ids), orphan_records_removed=len(orphan_records),
        tmp_files_removed=tmp_removed, orphan_packs_removed=len(orphan_packs), live_blobs=len(live),
        chunks_removed=sum(st.dead_chunks for st in dead + repack),
        tree_nodes_removed=sum(st.dead_trees for st in dead + repack),
        packs_before=len(stats) + len(orphan_packs), packs_deleted=len(dead) + len(repack),
        packs_repacked=len(repack), packs_written=0, bytes_before=bytes_before, bytes_after=0,
        bytes_reclaimed=0, bytes_repacked=sum(st.live_bytes for st in repack),
        unused_before=unused_before, unused_after=0, duration=0.0,
    )
    gone_ids = {st.id for st in dead + repack}
    if dry_run:
        kept = [st for st in stats.values() if st.id not in gone_ids]
        new_packs = -(-result.bytes_repacked // pack_target_size()) if repack else 0
        new_bytes = result.bytes_repacked + pack_overhead(sum(len(st.live) for st in repack), new_packs, repo.crypto)
        result.bytes_after = sum(st.size for st in kept) + new_bytes
        result.unused_after = sum(st.unused for st in kept)
    else:
        # 4. repack: new packs durable and switched in the catalog before anything is deleted
        progress.start(result.bytes_repacked, "repack")
        writer = repo.blob_writer(repoint=True)
        try:
            for st in repack:
                copy_verified(repo, st.name, st.live, writer, progress.advance)
            writer.seal()
        except BaseException:
            writer.abort()
            raise
        result.packs_written = writer.packs_written
        # 5. sweep: forget old packs (refused if a live blob would lose its row), then delete
        gone = dead + repack
        try:
            catalog.delete_packs([st.id for st in gone], keep_ids=live)
        except ValueError as exc:  # a bug, never expected: stop before deleting any file
            raise DamagedData(f"prune stopped before deleting anything: {exc}") from None
        progress.start(sum(st.size for st in gone), "delete")
        for st in gone:
            storage.delete(st.name)
            progress.advance(st.size)
        catalog.compact()
        after = catalog.packs()
        result.bytes_after = sum(p["size"] for p in after)
        result.unused_after = sum(st.unused for st in stats.values() if st.id not in gone_ids)
    result.bytes_reclaimed = result.bytes_before - result.bytes_after
    result.duration = round(time.monotonic() - started, 3)
    return result
