"""Check a repository: structure (catalog <-> packs <-> snapshots) and, optionally, all data.

Structure: every catalogued pack exists with the recorded size and a valid trailer
(``maintenance.pack_states``) whose entries match the catalog's rows; no row points outside its
pack; every tree node and chunk reachable from every snapshot is catalogued; every snapshot
row has its record file (``snapshots/<id>.json``, which ``repair`` rebuilds from). Pack
files the catalog does not know (orphans) and records without a catalog row are warnings;
a record file that cannot be read is an error (prune refuses to run while there is one).

Known damage: every blob a check finds unavailable is recorded in the catalog's ``damaged``
table (never used for deduplication, so the next snapshot holding those bytes stores them
again and heals every snapshot that needs them); blobs read intact are cleared; recorded
damage that a snapshot still needs is an error of its own (``blob-known-damaged``).

Data (``read_data``): the selected packs are read sequentially in large reads by two
threads; every catalogued blob is decompressed and re-hashed (blake3). ``subset`` picks a
deterministic slice of packs by a hash of the pack id (see ``parse_subset``).

Every problem becomes a ``Finding``; the blobs it makes unavailable are traced to each
snapshot and byte range that needs them. Nothing is raised for damage (the report says
it); errors opening the repository propagate from Repository.open.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ...repository.catalog import BlobLocation, SnapshotRecord
from ...errors import DamagedData
from ...repository.hashing import ZERO_ID, content_id, short
from ...repository.maintenance import (
    PackState, disagrees, orphan_packs, pack_states, read_records, record_id, runs, verify_run,
)
from ...repository.pack import TYPE_TREE, pack_id
from ...repository import Repository
from ...repository.tree import parse
from .damage import merge, node_problem
from ..progress import NoProgress, Progress

SEGMENT = 8 << 20  # read-data reads packs in pieces of this size
WORKERS = 2
PPM = 1_000_000  # subset windows are measured in parts per million of the pack-id hash space
SUBSET_META = "read_data_subset_next"


@dataclass
class Finding:
    kind: str
    message: str
    pack: str | None = None  # pack id (file name without .pack)
    blob: str | None = None  # hex id of the one blob concerned, if one
    ids: set[bytes] = field(default_factory=set)  # blobs this problem makes unavailable
    snapshots: dict[str, list[list[int]]] = field(default_factory=dict)  # id -> [[offset, length]]

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "message": self.message,
            "pack": self.pack,
            "blob": self.blob,
            "blobs": len(self.ids),
            "snapshots": [{"id": sid, "ranges": r} for sid, r in self.snapshots.items()],
        }


@dataclass
class Subset:
    start: int  # ppm
    end: int  # ppm, may be < start (wraps)
    spec: str

    def contains(self, name: str) -> bool:
        pos = int.from_bytes(content_id(pack_id(name).encode())[:8], "little") % PPM
        if self.start <= self.end:
            return self.start <= pos < self.end
        return pos >= self.start or pos < self.end


@dataclass
class CheckReport:
    repository: str
    packs: int = 0
    blobs: int = 0
    snapshots: int = 0
    referenced_chunks: int = 0
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    affected: dict[str, list[list[int]]] = field(default_factory=dict)
    read_data: dict | None = None
    duration: float = 0.0

    @property
    def sound(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {
            "repository": self.repository,
            "status": "sound" if self.sound else "damaged",
            "packs": self.packs,
            "blobs": self.blobs,
            "snapshots": self.snapshots,
            "referenced_chunks": self.referenced_chunks,
            "errors": [f.to_json() for f in self.errors],
            "warnings": [f.to_json() for f in self.warnings],
            "affected_snapshots": [
                {"id": sid, "ranges": r, "bytes": sum(n for _, n in r)} for sid, r in self.affected.items()
            ],
            "read_data": self.read_data,
            "duration": self.duration,
        }


_PCT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_FRAC = re.compile(r"^(\d+)/(\d+)$")


def parse_subset(spec: str, next_start: int = 0) -> Subset:
    """``"N%"``: a window of N% of packs starting where the previous run stopped
    (``next_start``, kept in the catalog), so runs rotate over all data; ``"n/N"``: the
    n-th of N fixed slices (1-based), so running 1/N .. N/N reads every pack once.
    Raises ValueError on a malformed spec."""
    s = spec.strip()
    m = _PCT.match(s)
    if m:
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise ValueError(f"subset {spec!r}: the percentage must be above 0 and at most 100")
        width = round(pct * PPM / 100)
        if width >= PPM:
            return Subset(0, PPM, s)
        start = next_start % PPM
        return Subset(start, (start + width) % PPM, s)
    m = _FRAC.match(s)
    if m:
        n, total = int(m.group(1)), int(m.group(2))
        if not 1 <= n <= total:
            raise ValueError(f"subset {spec!r}: use n/N with 1 <= n <= N, e.g. 3/10")
        return Subset((n - 1) * PPM // total, n * PPM // total if n < total else PPM, s)
    raise ValueError(f"cannot read subset {spec!r}: use a percentage (10%) or a slice (3/10)")


# --- structure -----------------------------------------------------------------------


def _check_packs(repo: Repository, report: CheckReport) -> tuple[list[PackState], dict[str, int]]:
    """Pack rows vs pack files and trailers. Returns the packs with their rows and the
    size of each pack file that exists (for read-data)."""
    packs = pack_states(repo)
    report.packs = len(packs)
    present: dict[str, int] = {}
    for p in packs:
        name, pid, rows = p.name, pack_id(p.name), p.rows
        report.blobs += len(rows)
        if p.missing and not rows:
            report.warnings.append(Finding("pack-missing", f"pack {pid} is missing but holds no catalogued blob "
                                           "(its blobs were stored again elsewhere; prune forgets it)", pack=pid))
            continue
        if p.missing:
            report.errors.append(Finding("pack-missing", f"pack {pid} is missing ({len(rows)} blobs catalogued in it)",
                                         pack=pid, ids={r.id for r in rows}))
            continue
        if p.file_size is None:
            report.errors.append(Finding("pack-missing", f"pack {pid} cannot be read: {p.problem}",
                                         pack=pid, ids={r.id for r in rows}))
            continue
        size = present[name] = p.file_size
        if size != p.size:
            report.errors.append(Finding("pack-size", f"pack {pid} is {size} bytes, the catalog recorded {p.size}",
                                         pack=pid))
        if p.entries is None:
            beyond = {r.id for r in rows if r.offset + r.stored_len > size}
            extra = f"; {len(beyond)} catalogued blobs lie past its end" if beyond else ""
            report.errors.append(Finding("pack-trailer", f"{p.problem}{extra}", pack=pid, ids={r.id for r in rows}))
            continue
        if len(p.entries) != p.entry_count:
            report.errors.append(Finding(
                "pack-entries", f"pack {pid} holds {len(p.entries)} entries, the catalog recorded {p.entry_count}",
                pack=pid))
        entries = {e.id: e for e in p.entries}
        for r in rows:
            e = entries.get(r.id)
            if e is None:
                report.errors.append(Finding("catalog-row", f"catalog row of blob {short(r.id)} points into pack {pid}, "
                                             "whose trailer does not list it", pack=pid, blob=r.id.hex(), ids={r.id}))
            elif (e.type, e.flags, e.offset, e.stored_len, e.raw_len) != (r.type, r.flags, r.offset, r.stored_len, r.raw_len):
                report.errors.append(Finding(
                    "catalog-row",
                    f"catalog row of blob {short(r.id)} (offset {r.offset}, {r.stored_len} bytes) disagrees with "
                    f"pack {pid}'s trailer (offset {e.offset}, {e.stored_len} bytes)",
                    pack=pid, blob=r.id.hex(), ids={r.id}))
    for name, n in orphan_packs(repo, {p.name for p in packs}):
        if isinstance(n, int):
            what = f"{n} entries, not in the catalog (left by an interrupted command; repair indexes it)"
        else:
            what = f"not in the catalog and unreadable: {n}"
        report.warnings.append(Finding("orphan-pack", f"pack {pack_id(name)}: {what}", pack=pack_id(name)))
    return packs, present


def _check_records(repo: Repository, snaps: list[SnapshotRecord], report: CheckReport) -> None:
    rows = {s.id: s for s in snaps}
    records, unreadable = read_records(repo.storage, repo.crypto)
    files = {record_id(n) for n in repo.storage.list("snapshots") if n.endswith(".json")}
    for sid, s in rows.items():
        if sid not in files:
            report.errors.append(Finding("record-missing", f"snapshot {sid[:12]} has no record file snapshots/{sid}.json "
                                         "(repair rewrites it; a rebuilt catalog would lose this snapshot)"))
            continue
        rec = records.get(sid)
        if rec is not None and disagrees(rec, s):
            report.errors.append(Finding("record-mismatch", f"snapshot {sid[:12]}: record file snapshots/{sid}.json does "
                                         "not match the catalog (repair rewrites it)"))
    for name, reason in sorted(unreadable.items()):
        fix = ("repair rewrites it from the catalog" if record_id(name) in rows else
               "run diskvault repair (it recovers the snapshot if its tree root is intact)")
        report.errors.append(Finding("record-unreadable", f"snapshot record {name} cannot be read ({reason}): "
                                     f"{fix}; prune deletes nothing until then"))
    for sid in sorted(records.keys() - rows.keys()):
        report.warnings.append(Finding("record-without-row", f"snapshot record {sid[:12]} is not in the catalog "
                                       "(an interrupted snapshot or forget; repair adds it back)"))


def _check_trees(repo: Repository, snaps: list[SnapshotRecord], report: CheckReport, bad: set[bytes]) -> set[bytes]:
    """Every tree node and chunk reachable from a snapshot is catalogued and every node
    reads; returns the ids of all of them."""
    seen: set[bytes] = set()
    referenced: set[bytes] = set()
    for snap in snaps:
        stack = [bytes.fromhex(snap.tree)]
        while stack:
            nid = stack.pop()
            if nid in seen:
                continue
            seen.add(nid)
            try:
                level, items = parse(repo.load_tree_node(nid))
            except DamagedData as exc:
                if nid not in bad:
                    report.errors.append(Finding("tree-node", node_problem(nid, exc), blob=nid.hex(), ids={nid}))
                continue
            if level == 0:
                referenced.update(i for i, _ in items if i != ZERO_ID)
            else:
                stack.extend(i for i, _ in items)
    report.referenced_chunks = len(referenced)
    found = repo.catalog.known(referenced)
    missing = referenced - found
    if missing:
        first = min(missing)
        report.errors.append(Finding(
            "chunk-missing", f"{len(missing)} chunks referenced by snapshots are not in the catalog (first {short(first)})",
            blob=first.hex() if len(missing) == 1 else None, ids=missing))
    return seen | referenced


# --- data ----------------------------------------------------------------------------


def _read_data(repo: Repository, packs: list[PackState], present: dict[str, int],
               subset: Subset | None, report: CheckReport, progress: Progress) -> set[bytes]:
    """Read and verify every catalogued blob of the chosen packs; returns the ids read intact."""
    chosen = [p for p in packs if p.name in present and (subset is None or subset.contains(p.name))]
    total = sum(p.size for p in chosen)
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            progress.advance(n)

    started = time.monotonic()
    progress.start(total, "read data")
    # Work is dealt out by segment, not by pack: both threads stay busy to the end.
    bad: list[tuple[PackState, BlobLocation, str]] = []
    jobs = [(p, seg) for p in chosen for seg in runs(p.rows, SEGMENT)]
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="diskvault-check") as pool:
        results = list(pool.map(lambda job: verify_run(repo, job[0].name, present[job[0].name], job[1], advance), jobs))
    bytes_read = 0
    for (p, _), (seg_bad, done) in zip(jobs, results):
        bytes_read += done
        bad.extend((p, r, reason) for r, reason in seg_bad)
    seconds = time.monotonic() - started
    for p, r, reason in bad:
        if r.type == TYPE_TREE:
            reason = f"{reason} (a tree node)"
        report.errors.append(Finding("blob-damaged", reason, pack=pack_id(p.name), blob=r.id.hex(), ids={r.id}))
    blobs = sum(len(p.rows) for p in chosen)
    report.read_data = {
        "subset": subset.spec if subset else "all",
        "packs": len(chosen),
        "packs_total": len(packs),
        "blobs": blobs,
        "bytes": bytes_read,
        "seconds": round(seconds, 3),
        "mb_per_s": round(bytes_read / seconds / 1e6, 1) if seconds > 0 else None,
    }
    return {r.id for p in chosen for r in p.rows} - {r.id for _, r, _ in bad}


# --- attribution -----------------------------------------------------------------------


def _attribute(repo: Repository, snaps: list[SnapshotRecord], report: CheckReport) -> None:
    """Trace every unavailable blob to the snapshots and byte ranges that need it."""
    bad: dict[bytes, list[Finding]] = {}
    for f in report.errors:
        for i in f.ids:
            bad.setdefault(i, []).append(f)
    if not bad:
        return
    load = repo.load_tree_node
    clean: set[bytes] = set()  # tree nodes whose subtree needs no unavailable blob

    for snap in snaps:
        hits: dict[int, list[tuple[int, int]]] = {}  # id(finding) -> ranges
        by_id: dict[int, Finding] = {}

        def hit(ident: bytes, off: int, n: int) -> None:
            for f in bad[ident]:
                by_id[id(f)] = f
                hits.setdefault(id(f), []).append((off, n))

        def visit(nid: bytes, off: int, covered: int) -> bool:
            """Attribute the damage under ``nid``; True when there is none."""
            if nid in clean:
                return True
            if nid in bad:
                hit(nid, off, covered)
                return False
            try:
                level, items = parse(load(nid))
            except DamagedData:
                return False  # reported (and attributed) as a tree-node finding
            ok = True
            for ident, length in items:
                if level == 0:
                    if ident in bad:
                        hit(ident, off, length)
                        ok = False
                else:
                    ok = visit(ident, off, length) and ok
                off += length
            if ok:
                clean.add(nid)
            return ok

        visit(bytes.fromhex(snap.tree), 0, snap.size)
        every: list[tuple[int, int]] = []
        for key, ranges in hits.items():
            by_id[key].snapshots[snap.id] = merge(ranges)
            every.extend(ranges)
        if every:
            report.affected[snap.id] = merge(every)


def check(
    repo: Repository,
    read_data: bool = False,
    subset: str | None = None,
    progress: Progress | None = None,
) -> CheckReport:
    """Check ``repo`` under a shared lock (prune cannot move data meanwhile); ``subset``
    (implies read_data) is parsed by ``parse_subset`` (ValueError when malformed)."""
    with repo.lock("shared", "check"):
        return check_unlocked(repo, read_data, subset, progress)


def check_unlocked(
    repo: Repository,
    read_data: bool = False,
    subset: str | None = None,
    progress: Progress | None = None,
) -> CheckReport:
    """``check`` for a caller that already holds a repository lock."""
    started = time.monotonic()
    progress = progress or NoProgress()
    sub = None
    if subset is not None:
        sub = parse_subset(subset, int(repo.catalog.meta().get(SUBSET_META, "0")))
        read_data = True
    report = CheckReport(repository=repo.path)
    report.warnings.extend(Finding("modes", w) for w in repo.mode_problems())
    repo.damaged()  # loaded here, before the read-data threads may add to it
    snaps = repo.snapshots()
    report.snapshots = len(snaps)
    packs, present = _check_packs(repo, report)
    intact: set[bytes] = set()
    reading = None
    if read_data:  # beside the record and tree checks (its threads work mostly outside the GIL)
        data_report = CheckReport(repository=repo.path)
        reading = ThreadPoolExecutor(1, thread_name_prefix="diskvault-read-data")
        intact_future = reading.submit(_read_data, repo, packs, present, sub, data_report, progress)
    try:
        _check_records(repo, snaps, report)
        unavailable = set().union(*(f.ids for f in report.errors)) if report.errors else set()
        needed = _check_trees(repo, snaps, report, unavailable)
    finally:
        if reading is not None:
            reading.shutdown(wait=True, cancel_futures=True)
    if reading is not None:
        intact = intact_future.result()
        report.errors.extend(data_report.errors)
        report.read_data = data_report.read_data
        if sub is not None and sub.spec.endswith("%"):
            why = repo.save_meta(SUBSET_META, str(sub.end % PPM))
            if why:  # a read-only repository or a full disk: check still reports
                report.warnings.append(Finding("subset-not-saved", f"the next slice was not saved ({why}): "
                                               f"the next --read-data-subset {sub.spec} reads this slice again"))
    _known_damage(repo, report, needed, intact)
    _attribute(repo, snaps, report)
    report.duration = round(time.monotonic() - started, 3)
    return report


def _known_damage(repo: Repository, report: CheckReport, needed: set[bytes], intact: set[bytes]) -> None:
    """Keep the catalog's record of damage (never used for deduplication, docs/integrity.md)
    up to date: blobs this check found unavailable are recorded, blobs it read intact are
    cleared; blobs recorded earlier that a snapshot needs and this check did not read are
    errors too (``blob-known-damaged``): the damage stays until a snapshot stores them again."""
    found: dict[bytes, str] = {}
    for f in report.errors:
        for i in f.ids:
            found.setdefault(i, f.message)
    repo.clear_damage(intact - found.keys())
    repo.record_damage(found)
    known = repo.damage_report()
    for i in sorted((needed & known.keys()) - found.keys()):
        reason, when = known[i]
        report.errors.append(Finding(
            "blob-known-damaged",
            f"blob {short(i)} is known to be damaged since {when} ({reason}): snapshot a source that holds "
            "these bytes again to store them anew, or forget the snapshots that need them", blob=i.hex(), ids={i}))
