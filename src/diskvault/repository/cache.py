"""The catalog of a remote repository: a local cache, brought up to date from the store.

A repository in an object store (``s3:…``) keeps no catalog there: each machine keeps its
own copy under its cache directory, ``DISKVAULT_CACHE_DIR`` or else the user's cache
directory (platformdirs: ``~/.cache/diskvault`` on Linux), in one folder per repository id
(config.json): ``<cache>/<id>/catalog.sqlite``. Everything in it can be rebuilt from the
store, since packs describe themselves (their trailers) and every snapshot has its record;
``sync`` does so incrementally, ``repair`` from scratch (delete and sync).

``sync`` costs requests in proportion to what changed since the last one, not to the
repository's size: one LIST per 1,000 records and packs, then per pack not yet in the cache
a HEAD and three ranged GETs of its header, footer and table, per new record one GET;
packs and records gone from the store are forgotten without a request. Records are listed
before packs: a record is written only after every pack it needs is durable, so every pack
a listed record needs is in the pack listing that follows. The cache is read before both
listings, so a pack or record another process of this machine adds meanwhile is never taken
for one removed from the store; adding one twice is harmless (Catalog.add_pack, add_snapshot).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from ..errors import DamagedData, RepositoryError
from ..storage import Storage
from .catalog import CATALOG, Catalog
from .crypto import Crypto
from .pack import read_pack_index
from .record import parse_record, record_id

CACHE_ENV = "DISKVAULT_CACHE_DIR"


def cache_root() -> str:
    """The cache directory: ``DISKVAULT_CACHE_DIR``, else the user's (platformdirs)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return os.path.abspath(root)
    import platformdirs

    return platformdirs.user_cache_dir("diskvault")


def catalog_path(repository_id: str) -> str:
    """Where the cached catalog of the repository ``repository_id`` lives (its folder is
    made, mode 0700, when missing). Raises RepositoryError when it cannot be made or
    written (every command syncs the cache: a read-only one serves none)."""
    if not repository_id or any(c not in "0123456789abcdef" for c in repository_id):
        raise RepositoryError(f"the repository id {repository_id!r} in config.json is not an id: "
                              "restore config.json from a copy")
    folder = os.path.join(cache_root(), repository_id)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):  # a read-only mount, another user's folder
            code = errno.EROFS if _read_only_mount(folder) else errno.EACCES
            raise OSError(code, os.strerror(code))
    except OSError as exc:
        raise RepositoryError(f"cannot make or write the cache folder {folder} ({(exc.strerror or str(exc)).lower()}): "
                              f"set {CACHE_ENV} to a folder this user may write") from None
    return os.path.join(folder, CATALOG)


def _read_only_mount(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


@dataclass
class SyncResult:
    """What a sync changed in the cache, and what it could not read (``unreadable``: store
    names with why; left out, tried again at the next sync)."""

    packs_added: int = 0
    packs_removed: int = 0
    snapshots_added: int = 0
    snapshots_removed: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)


def sync(catalog: Catalog, storage: Storage, crypto: Crypto) -> SyncResult:
    """Bring ``catalog`` up to date with the packs and records ``storage`` holds (see the
    module docstring). Raises the storage's errors (RemoteError…); a damaged pack or record
    is left out and named in the result."""
    out = SyncResult()
    # the cache first: what it held before the listings is in them unless removed from the store
    have = set(catalog.snapshot_ids_with_prefix(""))
    known_packs = {p["name"]: p["id"] for p in catalog.packs()}
    records = {record_id(n): n for n in storage.list("snapshots") if n.endswith(".json")}
    packs = {n for n in storage.list("packs") if n.endswith(".pack")}
    gone = [pid for name, pid in known_packs.items() if name not in packs]
    if gone:  # first: a pack that replaced them (prune's repacking) then takes their blobs
        catalog.delete_packs(gone)
        out.packs_removed = len(gone)
    for name in sorted(packs - known_packs.keys()):
        try:
            size = storage.size(name)
            entries = read_pack_index(storage, name, crypto, size)
        except FileNotFoundError:
            continue  # removed since the listing (prune)
        except DamagedData as exc:
            out.unreadable[name] = str(exc)
            continue
        catalog.add_pack(name, size, entries)
        out.packs_added += 1
    removed = have - records.keys()
    if removed:
        catalog.remove_snapshots(removed)
        out.snapshots_removed = len(removed)
    for sid in sorted(records.keys() - have):
        name = records[sid]
        try:
            rec = parse_record(name, storage.read(name), crypto)
        except FileNotFoundError:
            continue  # forgotten since the listing
        except DamagedData as exc:
            out.unreadable[name] = str(exc)
            continue
        with catalog.transaction():
            catalog.add_snapshot(rec)
        out.snapshots_added += 1
    return out
