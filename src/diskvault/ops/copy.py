"""Copy snapshots from one repository to another (restic's ``copy``): the 3-2-1 rule's
second copy, offsite.

Each selected snapshot of the source repository that the destination does not hold yet
(the same time, host, source and size: a copy keeps them) is rebuilt there: its tree is
walked in image order, every chunk is read once and verified, and stored in the
destination only when the destination lacks it. The destination's chunk ids are its own
(keyed blake3 when encrypted: ids of two repositories never match), so each chunk is
hashed anew under the destination's key; its compressed payload is copied as it is (sealed
anew under the destination's key), never recompressed. The chunk boundaries stay those of
the source repository's chunker: copies of one source deduplicate against each other in
the destination, not against snapshots the destination took itself with its own seeded
chunker (restic without ``--copy-chunker-params`` behaves alike). The record keeps time,
host, source, tags, partitions, filesystems and sequence number (so ``latest`` and ``forget``
order the copies of a source as the source did, whatever order they were copied in); sizes
and counts describe the copy.

Crash safety is a snapshot's: packs are sealed and catalogued before the record is saved,
so a copy interrupted at any point leaves the destination consistent, and the next run
copies what is missing (idempotent).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import DamagedData, UsageError
from ..repository import Repository
from ..repository.catalog import BlobLocation, SnapshotRecord
from ..repository.hashing import ZERO_ID, short
from ..repository.pack import TYPE_CHUNK
from ..repository.tree import Leaf, Lost, TreeBuilder
from .integrity.damage import walk
from .progress import NoProgress, Progress

BATCH = 32 << 20  # bytes of image handled per round of lookups and reads


@dataclass
class CopyResult:
    dry_run: bool
    copied: list[dict] = field(default_factory=list)  # {"source_id", "id", "time", "host", "source", "size", ...}
    skipped: list[dict] = field(default_factory=list)  # {"source_id", "id"}: the destination has it already
    bytes_read: int = 0  # stored bytes read from the source repository
    warnings: list[str] = field(default_factory=list)
    duration: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _key(snap: SnapshotRecord) -> tuple:
    """What a copy keeps of a snapshot and so identifies it in another repository."""
    return snap.time, snap.host, snap.source, snap.size


def select(repo: Repository, names: list[str] | None, host: str | None = None, source: str | None = None,
           tags: list[str] | None = None) -> list[SnapshotRecord]:
    """The named snapshots (ids, prefixes, latest, latest:TAG, as Repository.resolve with the
    filters), else every snapshot of ``host``, of ``source`` and carrying all ``tags``;
    oldest first. Raises SnapshotError for a name that matches nothing."""
    if names:
        found = {s.id: s for s in (repo.resolve(n, host, source, tags) for n in names)}
        return sorted(found.values(), key=lambda s: (s.seq, s.time))
    want = set(tags or ())
    return sorted((s for s in repo.snapshots()
                   if (host is None or s.host == host)
                   and (source is None or s.source in (source, os.path.abspath(source)))
                   and want <= set(s.tags)), key=lambda s: (s.seq, s.time))


def copy(src: Repository, dst: Repository, names: list[str] | None = None, host: str | None = None,
         source: str | None = None, tags: list[str] | None = None, dry_run: bool = False,
         progress: Progress | None = None) -> CopyResult:
    """Copy the selected snapshots (``select``) of ``src`` that ``dst`` lacks, oldest first,
    under a shared lock on each. Raises UsageError when both are one repository,
    SnapshotError (a name that matches nothing), DamagedData (a source blob or tree node
    that cannot be read: nothing of that snapshot is recorded), OutOfSpace, RepositoryLocked."""
    started = time.monotonic()
    progress = progress or NoProgress()
    if src.config.get("id") == dst.config.get("id"):
        raise UsageError(f"{dst.path} is the repository {src.path} itself: copy to another repository")
    res = CopyResult(dry_run)
    if src.crypto.encrypted and not dst.crypto.encrypted:
        res.warnings.append(f"{dst.path} is not encrypted: the copies are stored there in the clear")
    with src.lock("shared", "copy"), dst.lock("shared", "copy"):
        wanted = select(src, names, host, source, tags)
        have = {_key(d): d for d in dst.snapshots()}
        todo = []
        for snap in wanted:
            twin = have.get(_key(snap))
            if twin is not None:
                res.skipped.append({"source_id": snap.id, "id": twin.id})
            else:
                todo.append(snap)
        progress.start(sum(s.size for s in todo), "copy")
        pairs = [(s, have[_key(s)]) for s in src.snapshots() if _key(s) in have]  # copied before
        for snap in todo:
            if dry_run:
                res.copied.append(_summary(snap, None, None))
                continue
            guide = _guide(src, dst, snap, pairs)
            record, read, twin, stats = _copy_one(src, dst, snap, progress, guide)
            pairs.append((snap, record))
            res.bytes_read += read
            if twin:  # another copy recorded it meanwhile: its chunks are shared, ours are left to prune
                res.skipped.append({"source_id": snap.id, "id": record.id})
            else:
                res.copied.append(_summary(snap, record, stats))
    res.duration = round(time.monotonic() - started, 3)
    return res


def _summary(snap: SnapshotRecord, copy: SnapshotRecord | None, stats: dict | None) -> dict:
    """What ``copy --json`` lists for one snapshot; ``stats``: what copying it stored (the
    record keeps the source's figures)."""
    out = {"source_id": snap.id, "id": copy.id if copy else None, "time": snap.time, "host": snap.host,
           "source": snap.source, "tags": snap.tags, "size": snap.size}
    if stats is not None:
        out.update({k: stats[k] for k in ("chunks", "new_chunks", "new_bytes", "stored_bytes")})
    return out


class _Guide:
    """What an earlier copy of the same source already mapped: the leaves of its source
    snapshot beside those of its copy (one structure, so they pair up in order), consumed
    in step with the snapshot being copied. A chunk at the same offset with the same source
    id and length as there has the copy's id: it is neither read nor hashed again (the
    chunk lists of a disk's snapshots mostly agree offset for offset)."""

    def __init__(self, src: Repository, dst: Repository, parent: SnapshotRecord, twin: SnapshotRecord) -> None:
        theirs = walk(src.load_tree_node, bytes.fromhex(parent.tree), parent.size)
        ours = walk(dst.load_tree_node, bytes.fromhex(twin.tree), twin.size)
        self._pairs = zip(theirs, ours)
        self._at: tuple[Leaf | Lost, Leaf | Lost] | None = next(self._pairs, None)

    def known(self, leaf: Leaf) -> bytes | None:
        """The destination id of ``leaf`` (offsets only grow between calls), or None."""
        while self._at is not None and self._at[0].offset < leaf.offset:
            self._at = next(self._pairs, None)
        if self._at is None:
            return None
        a, b = self._at
        if isinstance(a, Leaf) and isinstance(b, Leaf) and a.offset == leaf.offset and a.id == leaf.id \
                and a.length == leaf.length == b.length:
            return b.id
        return None


def _guide(src: Repository, dst: Repository, snap: SnapshotRecord,
           pairs: list[tuple[SnapshotRecord, SnapshotRecord]]) -> _Guide | None:
    """A guide from the newest earlier-copied snapshot of the same host and source."""
    same = [(s, d) for s, d in pairs if s.host == snap.host and s.source == snap.source]
    if not same:
        return None
    parent, twin = max(same, key=lambda p: (p[0].seq, p[0].time))
    return _Guide(src, dst, parent, twin)


def _batches(leaves: Iterator[Leaf | Lost], snap: SnapshotRecord) -> Iterator[list[Leaf]]:
    batch: list[Leaf] = []
    size = 0
    for leaf in leaves:
        if isinstance(leaf, Lost):
            raise DamagedData(f"snapshot {snap.id[:12]} cannot be copied: {leaf.reason} (bytes {leaf.offset}-"
                              f"{leaf.offset + leaf.length}): run diskvault check, then repair")
        batch.append(leaf)
        size += leaf.length
        if size >= BATCH:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _copy_one(src: Repository, dst: Repository, snap: SnapshotRecord, progress: Progress,
              guide: _Guide | None = None) -> tuple[SnapshotRecord, int, bool, dict]:
    """Rebuild ``snap`` in ``dst`` (chunks the ``guide`` knows are taken from it); returns the
    saved record, the stored bytes read, whether the record is instead one another copy
    saved meanwhile (two copies into one destination at once record each snapshot once),
    and what this copy stored (``chunks``, ``new_chunks``, ``new_bytes``, ``stored_bytes``, ...)."""
    writer = dst.blob_writer()
    builder = TreeBuilder(writer.add_tree_node, dst.content_id)
    stats = dict(data_bytes=0, zero_bytes=0, chunks=0, new_chunks=0, new_bytes=0, stored_bytes=0)
    read = 0
    try:
        for batch in _batches(walk(src.load_tree_node, bytes.fromhex(snap.tree), snap.size), snap):
            ids = {}  # source chunk id -> destination chunk id (a batch's: memory stays flat)
            if guide is not None:
                for leaf in batch:
                    if leaf.id != ZERO_ID and leaf.id not in ids:
                        did = guide.known(leaf)
                        if did is not None:
                            ids[leaf.id] = did
                usable = dst.known(ids.values())  # never one known to be damaged: that is stored again
                ids = {k: v for k, v in ids.items() if v in usable}
            need = {leaf.id for leaf in batch if leaf.id != ZERO_ID and leaf.id not in ids}
            locs = src.locate(need)
            if len(locs) != len(need):
                first = min(need - locs.keys())
                raise DamagedData(f"snapshot {snap.id[:12]} cannot be copied: chunk {short(first)} is not in "
                                  f"{src.path}'s catalog: run diskvault check, then repair")
            got: list[tuple[BlobLocation, bytes | memoryview, bytes]] = []
            for loc, payload, raw in src.read_verified(list(locs.values()), span=8 << 20):
                got.append((loc, payload, dst.content_id(raw)))
                read += loc.stored_len
            known = dst.known(d for _, _, d in got)
            for loc, payload, did in got:
                ids[loc.id] = did
                if did not in known and not writer.has(did):
                    stats["stored_bytes"] += writer.add(did, TYPE_CHUNK, payload, loc.flags, loc.raw_len)
                    stats["new_chunks"] += 1
                    stats["new_bytes"] += loc.raw_len
            writer.flush()  # payloads are views into this batch's reads
            for leaf in batch:
                if leaf.id == ZERO_ID:
                    builder.add_zero(leaf.length)
                    stats["zero_bytes"] += leaf.length
                else:
                    builder.add(ids[leaf.id], leaf.length)
                    stats["chunks"] += 1
                    stats["data_bytes"] += leaf.length
                progress.advance(leaf.length)
        root = builder.finish()
        writer.seal()
    except BaseException:
        writer.abort()
        raise
    # the source's record with the tree replaced (its sizes and duration as the source recorded
    # them), so two machines copying this snapshot at once save one record with one id
    record = dataclasses.replace(snap, id="", tree=root.hex(), warnings=[])
    twin = dst.save_snapshot(record, keep_seq=True, same=_key)  # keep_seq: latest and forget order as the source
    return twin or record, read, twin is not None, stats
