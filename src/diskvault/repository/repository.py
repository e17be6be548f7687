"""The repository facade: configuration, write order, deduplication and verified reads.

On disk (docs/design.md): ``config.json`` (format version, chunker parameters, encryption),
``catalog.sqlite``, ``packs/xx/<id>.pack``, ``snapshots/<id>.json`` and, when encrypted,
``keys/<id>.json`` (keys.py). Write order, which makes every crash safe:
a pack is sealed and durable before the catalog records it; a snapshot's record file and
catalog row are written only after every pack it needs is recorded. Reads re-hash every
blob and raise DamagedData naming it when the bytes are wrong or missing.

A repository's location is a local folder or an object store URL (``s3:…``, a "remote"
repository): there the store holds config.json, keys/, packs/, snapshots/ and locks/, and
the catalog is a local cache (cache.py), brought up to date from the store when the
repository is opened and whenever a lock is taken (docs/remote.md).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from . import cache, compression, locking
from .catalog import CATALOG, BlobLocation, Catalog, catalog_error
from .record import SnapshotRecord, record_file
from .config import CONFIG, ENCRYPTIONS, FORMAT_VERSION, load_config, load_remote_config
from .crypto import MODE, PLAIN, Crypto
from .chunking import Chunker, ChunkerParams
from ..errors import (
    DamagedData,
    DiskvaultError,
    OutOfSpace,
    RepositoryError,
    RepositoryNotFound,
    RepositoryReadOnly,
    SnapshotError,
    os_error,
)
from ..rawnames import readable
from .hashing import short
from .pack import TYPE_CHUNK, TYPE_TREE, pack_id
from ..storage import Storage, is_remote
from .tree import NodeCache, TreeReader
from .writer import BlobWriter
from .writable import FULL, NOTES, inside, read_only_error, translate, unwritable
from .location import (
    CATALOG_FILES, FOLDERS, cached_catalog, create_local, create_remote, not_empty, remote_storage, storage_at, unlock,
)

_DAMAGE_LOCK = threading.Lock()  # guards every repository's record of damage found (rarely taken)


class Repository:
    """An open repository. ``read_only`` (with ``read_only_reason``): this process cannot
    change it now (read-only file system or media, a user without write permission, or no
    free space); its catalog is then opened read-only and reading commands skip the lock.
    ``writing``: the caller means to change it (``open(write=True)``). ``note`` receives
    one-line notes for the user (a lock skipped)."""

    # Blobs known to be damaged or missing (the catalog's ``damaged`` table and what this
    # process found since), loaded on first use; replaced, never changed in place, so
    # ``known`` reads it without a lock. ``_damage_found``: found here, not yet recorded.
    _damaged_ids: frozenset[bytes] | None = None
    _damage_found: dict[bytes, str] | None = None
    last_sync: cache.SyncResult | None = None  # a remote repository's last ``sync``

    def __init__(self, path: str, config: dict, write: bool = True, lock: bool = True,
                 crypto: Crypto = PLAIN, key_id: str | None = None, storage: Storage | None = None) -> None:
        self.path = path
        self.remote = storage is not None  # ``storage``: the object store of a remote repository
        self.config = config
        self.crypto = crypto
        self.key_id = key_id  # the key file that opened it (encrypted)
        self.content_id = crypto.content_id  # chunk and tree ids: keyed blake3 when encrypted
        self.params = ChunkerParams(**config["chunker"])
        self.chunker = Chunker(self.params, crypto.chunker_seed, crypto.content_id)
        self.writing = write
        self.locking = lock
        self.note: Callable[[str], None] = lambda message: None
        self._nodes = NodeCache(self._read_node, self._read_nodes if self.remote else None)
        if storage is not None:
            self.read_only_reason, self.read_only = None, False
            self.storage = storage
            self.catalog = cached_catalog(str(config["id"]), crypto)
            try:
                self.sync()
            except BaseException:
                self.catalog.close()
                raise
            return
        self.read_only_reason = unwritable(path)
        self.read_only = self.read_only_reason is not None
        if self.read_only and write:
            raise self.read_only_error()
        self.storage = storage_at(path)
        for folder in FOLDERS:  # a link or a stranger's folder would lead reads, writes and deletes elsewhere
            self.storage.check_folder(folder)
        for name in CATALOG_FILES:  # SQLite follows links: a linked catalog would be written elsewhere
            self.storage.check_file(name)
        cat_path = os.path.join(path, CATALOG)
        if not os.path.exists(cat_path):
            raise RepositoryNotFound(f"the catalog of {path} is missing: rebuild it with diskvault repair -r {path}")
        if not os.access(cat_path, os.R_OK):
            raise RepositoryError(f"permission denied reading {cat_path}: run diskvault as a user who may read it")
        try:
            try:
                self.catalog = Catalog(cat_path, read_only=self.read_only, crypto=crypto)
            except sqlite3.OperationalError as exc:  # e.g. no room for the -shm on a full disk
                if self.read_only or write:
                    raise
                full = isinstance(catalog_error(exc, path), OutOfSpace)
                self.catalog = Catalog(cat_path, read_only=True, crypto=crypto)
                self.read_only, self.read_only_reason = True, FULL if full else f"its catalog cannot be written: {exc}"
            try:
                empty = "schema_version" not in self.catalog.meta()
            except BaseException:
                self.catalog.close()
                raise
            if empty:
                self.catalog.close()
                raise RepositoryNotFound(
                    f"the catalog of {path} is empty: rebuild it with diskvault repair -r {path}")
        except sqlite3.Error as exc:
            raise catalog_error(exc, path) or RepositoryError(
                f"the catalog of {path} cannot be read ({exc}): rebuild it with diskvault repair -r {path}"
            ) from None
        except OSError as exc:  # a private copy of a catalog with a WAL (read_only_uri)
            raise os_error(exc, None if exc.filename and not inside(exc.filename, path) else path) from None

    def sync(self) -> cache.SyncResult | None:
        """Bring a remote repository's cached catalog up to date with its store (cache.sync;
        None for a local repository); a pack or record it cannot read is noted (``note``)."""
        if not self.remote:
            return None
        result = self.last_sync = cache.sync(self.catalog, self.storage, self.crypto)
        for name, why in sorted(result.unreadable.items()):
            self.note(f"{name} cannot be read ({why}): left out; run diskvault check -r {self.path}")
        return result

    def read_only_error(self) -> DiskvaultError:
        """What a command that writes meets here (see ``read_only_error``)."""
        return read_only_error(self.path, self.read_only_reason or "")

    # --- life cycle --------------------------------------------------------------
    @classmethod
    def init(cls, path: str, params: ChunkerParams, now: datetime | None = None,
             passphrase: Callable[[], str] | None = None, encryption: str = MODE) -> Repository:
        """Create a repository: built in a temporary sibling directory, then renamed into
        place, so an interrupted init leaves no half-made repository at ``path`` (one killed
        outright leaves the temporary sibling ``path.tmp-xxxxxxxx``). Every file is 0600 and every
        folder 0700 (docs/security.md). ``encryption``: MODE (a new random master key, wrapped
        by the passphrase ``passphrase()`` returns, in keys/) or "none". Raises RepositoryExists
        for a non-empty path or a path inside another repository, UsageError for an empty one, RepositoryNotFound for a
        missing parent, PasswordError when an encrypted one has no passphrase."""
        if encryption not in ENCRYPTIONS:
            raise ValueError(f"encryption {encryption!r} is not one of {', '.join(ENCRYPTIONS)}")
        not_empty(path)
        if is_remote(path):
            storage = remote_storage(path)
            config, crypto, key_id = create_remote(path, storage, params, now, passphrase, encryption)
            return cls(path, config, crypto=crypto, key_id=key_id, storage=storage)
        path, config, crypto, key_id = create_local(path, params, now, passphrase, encryption)
        return cls(path, config, crypto=crypto, key_id=key_id)

    @classmethod
    def open(cls, path: str, write: bool = True, lock: bool = True,
             passphrase: Callable[[], str] | None = None) -> Repository:
        """Open the repository at ``path``. ``write``: the caller changes it, so a read-only
        one raises RepositoryReadOnly (OutOfSpace on a full disk) at once; a reader
        (``write=False``) works on either, and skips a lock it cannot take. ``lock=False``
        (``--no-lock``): take no lock at all. ``passphrase()`` is asked for only when the
        repository is encrypted, before anything is written. Raises RepositoryError (not
        found, damaged, unreadable), FormatVersionError, PasswordError; for a remote
        repository (``s3:…``) the storage's RemoteError classes too."""
        not_empty(path)
        if is_remote(path):
            storage = remote_storage(path)
            config = load_remote_config(path, storage)
            crypto, key_id = unlock(path, config, passphrase, storage)
            return cls(path, config, write, lock, crypto, key_id, storage)
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise RepositoryNotFound(f"repository {path} does not exist: create it with diskvault init -r {path}")
        storage_at(path).check_file(CONFIG)
        config = load_config(path)
        crypto, key_id = unlock(path, config, passphrase)
        return cls(path, config, write, lock, crypto, key_id)

    def mode_problems(self) -> list[str]:
        """Warnings (one line each, empty when none) about files and folders of the repository
        that others than its owner may read or change: wider than 0600 (files) or 0700 (folders),
        e.g. made by an older diskvault. Nothing is changed (docs/security.md). None for a
        remote repository (the store's access rules decide)."""
        if self.remote:
            return []
        wide = self.storage.mode_problems()
        if not wide:
            return []
        name, mode = wide[0]
        example = f"{os.path.join(self.path, name) if name else self.path} is {mode:04o}"
        more = f" and {len(wide) - 1} more" if len(wide) > 1 else ""
        return [f"other users may read or change files of this repository ({example}{more}): "
                f"run chmod -R go= {self.path}"]

    def close(self) -> None:
        self.record_damage()
        self.catalog.close()
        self.storage.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Close; an SQLite error, or an operating-system error on a file of the repository,
        that ends the block is raised as the DiskvaultError it means (``catalog_error``,
        ``os_error``): a damaged catalog found mid-command says to run repair."""
        self.close()
        translated = translate(exc, self.path)
        if translated is not None:
            raise translated from None

    # --- writing -----------------------------------------------------------------
    def blob_writer(self, repoint: bool = False) -> BlobWriter:
        """A writer of new packs; with ``repoint`` (repacking) each sealed pack takes over
        the catalog rows of the blobs it holds (Catalog.switch_pack)."""
        return BlobWriter(self, repoint=repoint)

    @contextmanager
    def lock(self, kind: str, command: str, wait: float | None = None) -> Iterator[locking.RepositoryLock | None]:
        """Context manager holding a shared or exclusive repository lock (locking.py);
        raises RepositoryLocked naming the holder. Yields None without locking when opened
        with ``lock=False``, and for a reader (``write=False``) when the lock cannot be taken
        (read-only repository, full disk), saying so through ``note``."""
        held = None
        if self.locking:
            if self.read_only and not self.writing:
                why = NOTES.get(self.read_only_reason or "", f"the repository cannot be written ({self.read_only_reason})")
                self.note(f"{why}: reading without a lock")
            else:
                try:
                    held = locking.acquire(self.path, kind, command, wait, self.crypto,
                                           self.storage if self.remote else None)
                except (RepositoryReadOnly, OutOfSpace) as exc:
                    if self.writing:
                        raise
                    why = NOTES[FULL] if isinstance(exc, OutOfSpace) else "the repository lock cannot be written"
                    self.note(f"{why}: reading without a lock")
        try:
            if self.remote and held is not None:
                self.sync()  # what others stored before the lock was taken
            yield held
        finally:
            if held is not None:
                held.release()

    def save_snapshot(self, record: SnapshotRecord, keep_seq: bool = False,
                      same: Callable[[SnapshotRecord], object] | None = None) -> SnapshotRecord | None:
        """Record a snapshot whose blobs are all durable and catalogued: gives it the next
        repository-wide sequence number (``seq``; ``keep_seq``: a copy keeps its source's, so
        copies order as they did there) and its id (the (keyed) content id of its JSON),
        then writes the record file (so ``repair`` can find it) and the catalog row that
        makes it visible, in one catalog transaction. Anything failing on the way removes
        the record file again: a snapshot that is not saved leaves no record. ``same``: what
        identifies a record (a copy's time, host, source, size); when a snapshot recorded
        meanwhile (another process's copy) has the same, nothing is saved and that one is
        returned, else None. On a remote repository the catalog is brought up to date first
        (other machines' records); a record saved by another machine after that, with the same
        content (a copy's record is its source's with the tree replaced, so two copies of one
        snapshot are one record, one id), is found by the create-only write and returned."""
        written = False
        if same is not None:
            self.sync()
        try:
            with self.catalog.transaction():
                if same is not None:
                    twin = next((s for s in self.catalog.snapshots() if same(s) == same(record)), None)
                    if twin is not None:
                        return twin
                if not (keep_seq and record.seq):
                    record.seq = self.catalog.next_seq()
                record.id = ""
                record.id = self.content_id(json.dumps(record.to_json(), sort_keys=True).encode()).hex()[:32]
                if same is None:
                    self.storage.write_atomic(*record_file(self.crypto, record))
                else:
                    try:
                        self.storage.put(*record_file(self.crypto, record))
                    except FileExistsError:  # the same record (same content, same id), saved meanwhile
                        self.catalog.add_snapshot(record)
                        return record
                written = True
                self.catalog.add_snapshot(record)
        except BaseException:
            if written:
                try:
                    self.storage.delete(f"snapshots/{record.id}.json")
                except OSError:
                    pass  # left for check/repair to report, as an interrupted snapshot's
            raise
        return None

    def save_meta(self, key: str, value: str) -> str | None:
        """Keep ``key`` = ``value`` in the catalog's meta table for a later run; returns None,
        or why it was not kept (the repository cannot be written): a reading command that
        only remembers where it stopped goes on without it."""
        if self.read_only:
            return self.read_only_reason
        try:
            self.catalog.set_meta(key, value)
        except sqlite3.OperationalError as exc:
            error = catalog_error(exc, self.path)
            if not isinstance(error, (OutOfSpace, RepositoryReadOnly)):
                raise
            return FULL if isinstance(error, OutOfSpace) else str(exc)
        return None

    # --- reading -----------------------------------------------------------------
    def read_blob(self, loc: BlobLocation) -> bytes | memoryview:
        stored = self._read_range(loc.pack, loc.offset, loc.stored_len, loc.id)
        return self.decode(loc, stored)

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

    def verified(self, loc: BlobLocation, stored: bytes | memoryview) -> tuple[bytes | memoryview, bytes | memoryview]:
        """``(payload, raw)`` of one blob's stored bytes: opened (encrypted), decompressed and
        verified; raises DamagedData naming it (and remembers the blob as damaged:
        ``note_damage``)."""
        try:
            return verify_blob(self.crypto, loc, stored)
        except DamagedData as exc:
            self.note_damage({loc.id: str(exc)})
            raise

    def decode(self, loc: BlobLocation, stored: bytes | memoryview) -> bytes | memoryview:
        """The raw bytes of one blob (``verified``)."""
        return self.verified(loc, stored)[1]

    def payload(self, loc: BlobLocation, stored: bytes | memoryview) -> bytes | memoryview:
        """The compressed payload of one blob's stored bytes, verified, for a copy into a new
        pack (which seals it anew)."""
        return self.verified(loc, stored)[0]

    def read_ranges(self, locs: list[BlobLocation], gap: int = 256 << 10, span: int | None = None):
        """Yield ``(loc, raw bytes)`` for ``locs``, reading neighbouring blobs of a pack in
        one request (order: by pack, then offset), of at most ``span`` bytes when given
        (a blob larger than that is one request). Each blob is verified."""
        for loc, _, raw in self.read_verified(locs, gap, span):
            yield loc, raw

    def read_verified(self, locs: list[BlobLocation], gap: int = 256 << 10, span: int | None = None):
        """``read_ranges`` yielding ``(loc, payload, raw)``: the compressed payload too (opened
        when encrypted), for a copy into another repository; raises DamagedData naming a
        damaged blob."""
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
                yield (loc, *self.verified(loc, data[start : start + loc.stored_len]))
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
        """A tree node's bytes (cached; on a remote repository its children are read with
        it: NodeCache). ``any_thread``: safe beside a thread that writes the catalog (see
        Catalog.locate)."""
        return self._nodes.get(nid, any_thread)

    def _read_node(self, nid: bytes, any_thread: bool) -> bytes:
        loc = self.catalog.locate([nid], any_thread).get(nid)
        if loc is None:
            raise DamagedData(f"tree node {short(nid)} is not in the catalog")
        return bytes(self.read_blob(loc))

    def _read_nodes(self, ids: Iterable[bytes], any_thread: bool) -> Iterator[tuple[bytes, bytes]]:
        for loc, raw in self.read_ranges(list(self.catalog.locate(ids, any_thread).values())):
            yield loc.id, bytes(raw)

    def tree(self) -> TreeReader:
        return TreeReader(self.load_tree_node)

    # --- snapshots -----------------------------------------------------------------
    def snapshots(self) -> list[SnapshotRecord]:
        return self.catalog.snapshots()

    def resolve(self, name: str, host: str | None = None, source: str | None = None,
                tags: list[str] | None = None, across_sources: bool = False) -> SnapshotRecord:
        """A snapshot by id, unique id prefix, ``latest`` or ``latest:TAG``, among those of
        ``host``, of ``source`` (the recorded source: an absolute path, or a stream's name;
        a relative ``source`` is also tried as an absolute path) and carrying all ``tags``.
        ``latest`` is the snapshot with the highest sequence number (then time) among them;
        when they come from more than one (host, source), ``latest`` is ambiguous and raises
        SnapshotError listing the choices (unless ``across_sources``: the newest of all, for
        read-only exports that list their names). An id that does not match the filters raises
        SnapshotError too, as does no match at all."""
        want = dict(host=host, source=source, tags=tags)

        def matches(s: SnapshotRecord) -> bool:
            return (host is None or s.host == host) and (
                source is None or s.source in (source, os.path.abspath(source))) and set(tags or ()) <= set(s.tags)

        if name == "latest" or name.startswith("latest:"):
            tag = name.partition(":")[2]
            snaps = [s for s in self.snapshots() if matches(s) and (not tag or tag in s.tags)]
            if not snaps:
                what = _filters(dict(want, tags=[*(tags or ()), *([tag] if tag else [])]))
                raise SnapshotError(f"no snapshot{what} in {self.path}: list them with diskvault snapshots")
            groups = sorted({(s.host, s.source) for s in snaps})
            if len(groups) > 1 and not across_sources:
                shown = ", ".join(f"{h} {readable(src)}" for h, src in groups[:10])
                more = f" and {len(groups) - 10} more" if len(groups) > 10 else ""
                raise SnapshotError(
                    f"{name} is ambiguous: {len(groups)} sources in this repository ({shown}{more}): "
                    "narrow it with --host/--source")
            return max(snaps, key=lambda s: (s.seq, s.time, s.id))
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
        if not matches(rec):
            raise SnapshotError(f"snapshot {name} is of host {rec.host}, source {readable(rec.source)}, tags "
                                f"{','.join(rec.tags) or '(none)'}: not{_filters(want)}")
        return rec


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _filters(want: dict) -> str:
    """`` of host H, of source S, tagged T`` for the filters given (for messages)."""
    parts = []
    if want.get("host") is not None:
        parts.append(f"of host {want['host']}")
    if want.get("source") is not None:
        parts.append(f"of source {readable(want['source'])}")
    if want.get("tags"):
        parts.append(f"tagged {','.join(want['tags'])}")
    return (" " + ", ".join(parts)) if parts else ""


def verify_blob(crypto: Crypto, loc: BlobLocation, stored: bytes | memoryview) -> tuple[bytes | memoryview, bytes | memoryview]:
    """``(payload, raw)`` of the blob ``loc`` from its ``stored`` bytes: authenticated and
    opened (encrypted), decompressed and re-hashed; raises DamagedData naming the blob."""
    try:
        payload = crypto.open_entry(pack_id(loc.pack), loc.offset, loc.type, loc.flags, loc.raw_len, loc.id, stored)
        raw = compression.decompress(payload, loc.flags, loc.raw_len)
    except DamagedData as exc:
        raise DamagedData(f"{_blob_name(loc)} is damaged: {exc}") from None
    if crypto.content_id(raw) != loc.id:
        raise DamagedData(f"{_blob_name(loc)} is damaged (hash mismatch)")
    return payload, raw


def _blob_name(loc: BlobLocation) -> str:
    return f"{'tree node' if loc.type == TYPE_TREE else 'chunk'} {short(loc.id)} in pack {pack_id(loc.pack)}"


__all__ = ["Repository", "FORMAT_VERSION", "TYPE_CHUNK", "TYPE_TREE"]
