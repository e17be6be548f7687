"""The repository facade: configuration, write order, deduplication and verified reads.

On disk (docs/design.md): ``config.json`` (format version, chunker parameters), ``catalog.sqlite``,
``packs/xx/<id>.pack`` and ``snapshots/<id>.json``. Write order, which makes every crash safe:
a pack is sealed and durable before the catalog records it; a snapshot's record file and
catalog row are written only after every pack it needs is recorded. Reads re-hash every
blob and raise DamagedData naming it when the bytes are wrong or missing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import threading
from collections import OrderedDict, deque
from datetime import datetime, timezone

from . import compression, locking
from .catalog import BlobLocation, Catalog, SnapshotRecord
from .chunking import Chunker, ChunkerParams
from ..errors import DamagedData, FormatVersionError, RepositoryExists, RepositoryNotFound, SnapshotError
from .hashing import content_id, short
from .pack import TARGET_PACK_SIZE, TYPE_CHUNK, TYPE_TREE, PackWriter, pack_id
from ..storage.local import LocalStorage
from .tree import TreeReader

FORMAT_VERSION = 1
CONFIG = "config.json"
CATALOG = "catalog.sqlite"
_DAMAGE_LOCK = threading.Lock()  # guards every repository's record of damage found (rarely taken)


class Repository:
    # Blobs known to be damaged or missing (the catalog's ``damaged`` table and what this
    # process found since), loaded on first use; replaced, never changed in place, so
    # ``known`` reads it without a lock. ``_damage_found``: found here, not yet recorded.
    _damaged_ids: frozenset[bytes] | None = None
    _damage_found: dict[bytes, str] | None = None

    def __init__(self, path: str, config: dict) -> None:
        self.path = path
        self.config = config
        self.params = ChunkerParams(**config["chunker"])
        self.chunker = Chunker(self.params)
        self.storage = LocalStorage(path)
        if not os.path.exists(os.path.join(path, CATALOG)):
            raise RepositoryNotFound(f"the catalog of {path} is missing: rebuild it with diskvault repair -r {path}")
        try:
            self.catalog = Catalog(os.path.join(path, CATALOG))
            if "schema_version" not in self.catalog.meta():
                self.catalog.close()
                raise sqlite3.DatabaseError("it is empty")
        except sqlite3.DatabaseError as exc:
            raise RepositoryNotFound(
                f"the catalog of {path} cannot be read ({exc}): rebuild it with diskvault repair -r {path}"
            ) from None
        self._nodes: OrderedDict[bytes, bytes] = OrderedDict()
        self._nodes_lock = threading.Lock()

    # --- life cycle --------------------------------------------------------------
    @classmethod
    def init(cls, path: str, params: ChunkerParams, now: datetime | None = None) -> Repository:
        """Create a repository: built in a temporary sibling directory, then renamed into
        place, so an interrupted init leaves nothing behind."""
        path = os.path.abspath(path)
        if os.path.exists(os.path.join(path, CONFIG)):
            raise RepositoryExists(f"{path} is already a diskvault repository: use it, or choose another path")
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise RepositoryExists(f"{path} exists and is not empty: give a new or empty directory")
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise RepositoryNotFound(f"parent directory {parent} does not exist: create it first")
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        os.mkdir(tmp)
        try:
            now = now or datetime.now(timezone.utc)
            config = {
                "format": "diskvault",
                "version": FORMAT_VERSION,
                "id": secrets.token_hex(16),
                "created": now.isoformat().replace("+00:00", "Z"),
                "chunker": params.to_dict(),
            }
            for sub in ("packs", "snapshots", "locks"):
                os.mkdir(os.path.join(tmp, sub))
            cat = Catalog(os.path.join(tmp, CATALOG))
            cat.create({"repository_id": config["id"]})
            cat.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cat.close()
            LocalStorage(tmp).write_atomic(CONFIG, json.dumps(config, indent=2).encode() + b"\n")
            os.rename(tmp, path)  # replaces an empty directory atomically
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(fd)
            os.close(fd)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(path, config)

    @classmethod
    def open(cls, path: str) -> Repository:
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise RepositoryNotFound(f"repository {path} does not exist: create it with diskvault init -r {path}")
        try:
            with open(os.path.join(path, CONFIG), "rb") as f:
                config = json.load(f)
        except FileNotFoundError:
            raise RepositoryNotFound(
                f"{path} is not a diskvault repository (no {CONFIG}): create one with diskvault init -r {path}"
            ) from None
        except PermissionError:
            raise RepositoryNotFound(f"permission denied reading {path}: run as its owner") from None
        except (ValueError, OSError) as exc:
            raise RepositoryNotFound(f"{path}/{CONFIG} is unreadable ({exc})") from None
        if not isinstance(config, dict) or config.get("format") != "diskvault":
            raise RepositoryNotFound(f"{path}/{CONFIG} is not a diskvault configuration")
        if config.get("version") != FORMAT_VERSION:
            raise FormatVersionError(
                f"{path} has repository format version {config.get('version')}, this diskvault reads "
                f"version {FORMAT_VERSION}: use a matching diskvault release"
            )
        return cls(path, config)

    def close(self) -> None:
        self.record_damage()
        self.catalog.close()
        self.storage.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing -----------------------------------------------------------------
    def blob_writer(self, repoint: bool = False) -> BlobWriter:
        """A writer of new packs; with ``repoint`` (repacking) each sealed pack takes over
        the catalog rows of the blobs it holds (Catalog.switch_pack)."""
        return BlobWriter(self, repoint=repoint)

    def lock(self, kind: str, command: str, wait: float | None = None):
        """Context manager holding a shared or exclusive repository lock (locking.py);
        raises RepositoryLocked naming the holder."""
        return locking.locked(self.path, kind, command, wait)

    def save_snapshot(self, record: SnapshotRecord) -> None:
        """Record a snapshot whose blobs are all durable and catalogued: the record file
        first (so ``repair`` can find it), then the catalog row that makes it visible."""
        body = json.dumps(record.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        self.storage.write_atomic(f"snapshots/{record.id}.json", body)
        self.catalog.add_snapshot(record)

    # --- reading -----------------------------------------------------------------
    def read_blob(self, loc: BlobLocation) -> bytes | memoryview:
        payload = self._read_range(loc.pack, loc.offset, loc.stored_len, loc.id)
        return self.decode(loc, payload)

    def _read_range(self, pack: str, offset: int, length: int, ident: bytes | None = None) -> bytes:
        try:
            data = self.storage.read_range(pack, offset, length)
        except FileNotFoundError:
            what = f"chunk {short(ident)}" if ident else "data"
            if ident:
                self.note_damage({ident: f"pack {pack_id(pack)} is missing"})
            raise DamagedData(f"{what} is in pack {pack_id(pack)}, which is missing") from None
        if len(data) != length:
            what = f"chunk {short(ident)}" if ident else "data"
            raise DamagedData(f"{what} lies past the end of pack {pack_id(pack)} (truncated)")
        return data

    def decode(self, loc: BlobLocation, payload: bytes | memoryview) -> bytes | memoryview:
        """Decompress and verify one blob's stored bytes; raises DamagedData naming it (and
        remembers the blob as damaged: ``note_damage``)."""
        try:
            return self.verify(loc, payload)
        except DamagedData as exc:
            self.note_damage({loc.id: str(exc)})
            raise

    @staticmethod
    def verify(loc: BlobLocation, payload: bytes | memoryview) -> bytes | memoryview:
        """``decode`` without a repository: the raw bytes of ``payload`` (the stored bytes of
        the blob ``loc``), decompressed and re-hashed; raises DamagedData naming the blob."""
        try:
            raw = compression.decompress(payload, loc.flags, loc.raw_len)
        except DamagedData as exc:
            raise DamagedData(f"chunk {short(loc.id)} in pack {pack_id(loc.pack)} is damaged: {exc}") from None
        if content_id(raw) != loc.id:
            raise DamagedData(f"chunk {short(loc.id)} in pack {pack_id(loc.pack)} is damaged (hash mismatch)")
        return raw

    def read_ranges(self, locs: list[BlobLocation], gap: int = 256 << 10, span: int | None = None):
        """Yield ``(loc, raw bytes)`` for ``locs``, reading neighbouring blobs of a pack in
        one request (order: by pack, then offset), of at most ``span`` bytes when given
        (a blob larger than that is one request). Each blob is verified."""
        order = sorted(locs, key=lambda l: (l.pack, l.offset))
        i = 0
        while i < len(order):
            first = order[i]
            j = i + 1
            end = first.offset + first.stored_len
            while (j < len(order) and order[j].pack == first.pack and order[j].offset - end <= gap
                   and (span is None or order[j].offset + order[j].stored_len - first.offset <= span)):
                end = max(end, order[j].offset + order[j].stored_len)
                j += 1
            data = memoryview(self._read_range(first.pack, first.offset, end - first.offset, first.id))
            for loc in order[i:j]:
                start = loc.offset - first.offset
                yield loc, self.decode(loc, data[start : start + loc.stored_len])
            i = j

    def locate(self, ids) -> dict[bytes, BlobLocation]:
        return self.catalog.locate(ids)

    # --- damage: what is known to be damaged is never used for deduplication -------------
    def known(self, ids) -> set[bytes]:
        """Which of ``ids`` the repository holds a copy of that deduplication may use: the
        catalogued ones, less those known to be damaged or missing (their next copy is
        stored again and heals every snapshot that needs them, see BlobWriter.seal). Safe to
        call from any thread."""
        found = self.catalog.known(ids)
        bad = self.damaged()
        return found - bad if bad else found

    def damaged(self) -> frozenset[bytes]:
        """Ids of the blobs known to be damaged or missing (loaded once, then kept up to date
        by this process)."""
        bad = self._damaged_ids
        if bad is None:
            with _DAMAGE_LOCK:
                if self._damaged_ids is None:
                    self._damaged_ids = frozenset(self.catalog.damaged())
                bad = self._damaged_ids
        return bad

    def damage_report(self) -> dict[bytes, tuple[str, str]]:
        """Known damage: blob id -> (reason, ISO time found), recorded or found here."""
        out = self.catalog.damaged()
        when = _now()
        with _DAMAGE_LOCK:
            for i, reason in (self._damage_found or {}).items():
                out.setdefault(i, (reason, when))
        return out

    def note_damage(self, found: dict[bytes, str]) -> None:
        """Remember blobs found damaged or missing (id -> reason): from now on they are not
        used for deduplication, and ``record_damage`` (at the latest ``close``) records them
        in the catalog."""
        self.damaged()
        with _DAMAGE_LOCK:
            pending = self._damage_found = dict(self._damage_found or {})
            for i, reason in found.items():
                pending.setdefault(i, reason)
            self._damaged_ids = self._damaged_ids | found.keys()

    def record_damage(self, found: dict[bytes, str] | None = None) -> bool:
        """Record what ``note_damage`` (and ``found``) noted in the catalog's ``damaged``
        table; False when the catalog cannot be written (a read-only repository: the damage
        is then only known to this process)."""
        if found:
            self.note_damage(found)
        with _DAMAGE_LOCK:
            pending, self._damage_found = self._damage_found, None
        if not pending:
            return True
        try:
            self.catalog.mark_damaged(pending, _now())
        except sqlite3.Error:
            return False
        return True

    def clear_damage(self, ids) -> None:
        """Forget that ``ids`` were damaged (a verified read of the catalogued copy found
        them intact); best effort in a read-only repository."""
        ids = set(ids) & self.damaged()
        if not ids:
            return
        with _DAMAGE_LOCK:
            self._damaged_ids = self._damaged_ids - ids
            if self._damage_found:
                self._damage_found = {i: r for i, r in self._damage_found.items() if i not in ids}
        try:
            self.catalog.clear_damaged(ids)
        except sqlite3.Error:
            pass

    def _healed(self, name: str, size: int, entries, healed: set[bytes]) -> None:
        """Record the sealed pack ``name`` that holds new copies of the damaged ``healed``:
        their rows point at it from now on, they leave the damaged set, and packs whose
        file is gone and that nothing points at any more are forgotten."""
        old = {loc.pack for loc in self.catalog.locate(healed).values()}
        self.catalog.heal_pack(name, size, entries, healed)
        with _DAMAGE_LOCK:
            self._damaged_ids = self._damaged_ids - healed
            if self._damage_found:
                self._damage_found = {i: r for i, r in self._damage_found.items() if i not in healed}
        self.catalog.forget_empty_packs(n for n in old if not self.storage.exists(n))

    def load_tree_node(self, nid: bytes, any_thread: bool = False) -> bytes:
        """A tree node's bytes (cached). ``any_thread``: safe beside a thread that writes
        the catalog (see Catalog.locate)."""
        with self._nodes_lock:
            node = self._nodes.get(nid)
            if node is not None:
                self._nodes.move_to_end(nid)
                return node
        loc = self.catalog.locate([nid], any_thread).get(nid)
        if loc is None:
            raise DamagedData(f"tree node {short(nid)} is not in the catalog")
        node = bytes(self.read_blob(loc))
        with self._nodes_lock:
            self._nodes[nid] = node
            while len(self._nodes) > 1024:
                self._nodes.popitem(last=False)
        return node

    def tree(self) -> TreeReader:
        return TreeReader(self.load_tree_node)

    # --- snapshots -----------------------------------------------------------------
    def snapshots(self) -> list[SnapshotRecord]:
        return self.catalog.snapshots()

    def resolve(self, name: str) -> SnapshotRecord:
        """A snapshot by id, unique id prefix, ``latest`` or ``latest:TAG``."""
        if name == "latest" or name.startswith("latest:"):
            tag = name.partition(":")[2]
            snaps = [s for s in self.snapshots() if not tag or tag in s.tags]
            if not snaps:
                what = f"with tag {tag!r} " if tag else ""
                raise SnapshotError(f"no snapshot {what}in {self.path}: take one with diskvault snapshot")
            return snaps[-1]
        ident = name.lower()
        if not ident or any(c not in "0123456789abcdef" for c in ident):
            raise SnapshotError(f"{name!r} is not a snapshot id: use an id (or a prefix), latest or latest:TAG")
        found = self.catalog.snapshot_ids_with_prefix(ident)
        if not found:
            raise SnapshotError(f"no snapshot {name} in {self.path}: list them with diskvault snapshots")
        if len(found) > 1:
            raise SnapshotError(f"snapshot prefix {name} is ambiguous ({len(found)} match): give more characters")
        rec = self.catalog.get_snapshot(found[0])
        assert rec is not None
        return rec


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def pack_target_size() -> int:
    """TARGET_PACK_SIZE, or ``DISKVAULT_PACK_SIZE`` bytes (min 4 KiB) for tests and tuning."""
    try:
        return max(4096, int(os.environ["DISKVAULT_PACK_SIZE"]))
    except (KeyError, ValueError):
        return TARGET_PACK_SIZE


class BlobWriter:
    """Writes new blobs into packs. A pack is sealed (durable) at TARGET_PACK_SIZE and then
    recorded in the catalog, so every catalogued blob is on disk. A pack holding a new copy
    of a blob known to be damaged takes over that blob's row (``Repository._healed``). ``has`` tells whether a
    blob was written in this session but may not be visible to catalog lookups yet."""

    def __init__(self, repo: Repository, repoint: bool = False) -> None:
        self.repo = repo
        self.repoint = repoint
        repo.damaged()  # loaded now, in the thread that starts writing, before any lookup
        self.target_size = pack_target_size()
        self.pack: PackWriter | None = None
        self.open_ids: set[bytes] = set()
        self.recent: deque[set[bytes]] = deque(maxlen=2)
        self.packs_written = 0

    def has(self, ident: bytes) -> bool:
        return ident in self.open_ids or any(ident in s for s in self.recent)

    def add(self, ident: bytes, kind: int, payload: bytes | memoryview, flags: int, raw_len: int) -> int:
        if self.pack is None:
            self.pack = PackWriter(self.repo.storage)
        self.pack.add(ident, kind, flags, payload, raw_len)
        self.open_ids.add(ident)
        if self.pack.size >= self.target_size:
            self.seal()
        return len(payload)

    def flush(self) -> None:
        """Hand the open pack's payloads to storage: until then a payload may be held, not
        copied, so a caller that reuses its buffers calls this first."""
        if self.pack is not None:
            self.pack.flush()

    def add_raw(self, ident: bytes, kind: int, data: bytes) -> int:
        """Compress and add ``data`` unless this session or the catalog has it already."""
        if self.has(ident) or self.repo.known([ident]):
            return 0
        payload, flags = compression.compress(data)
        return self.add(ident, kind, payload, flags, len(data))

    def add_tree_node(self, ident: bytes, node: bytes) -> None:
        self.add_raw(ident, TYPE_TREE, node)

    def seal(self) -> None:
        if self.pack is None:
            return
        pack, self.pack = self.pack, None
        size = pack.seal()
        bad = self.repo.damaged()
        healed = bad.intersection(e.id for e in pack.entries) if bad else set()
        if healed:  # new copies (a snapshot's, or verified ones a repack made) take over
            self.repo._healed(pack.name, size, pack.entries, healed)
        elif self.repoint:
            self.repo.catalog.switch_pack(pack.name, size, pack.entries)
        else:
            self.repo.catalog.add_pack(pack.name, size, pack.entries)
        self.recent.append(self.open_ids)
        self.open_ids = set()
        self.packs_written += 1

    def abort(self) -> None:
        if self.pack is not None:
            self.pack.abort()
            self.pack = None


__all__ = ["Repository", "BlobWriter", "TYPE_CHUNK", "TYPE_TREE", "FORMAT_VERSION"]
