"""Where a repository lives, and what making or opening one there takes: its storage (a local
folder holding only the repository's own names, or an object store, ``s3:…``), a new
config.json and key, a remote repository's cached catalog (cache.py), and the key that opens
an encrypted one. The facade (repository.py) builds on these; nothing here keeps state."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timezone

from . import cache, keys
from .catalog import CATALOG, Catalog, catalog_error
from .chunking import ChunkerParams
from .config import CONFIG, ENCRYPTIONS, FORMAT_VERSION, enclosing_repository
from .crypto import MODE, PLAIN, Crypto
from ..errors import PasswordError, RepositoryError, RepositoryExists, RepositoryNotFound, UsageError, os_error
from ..storage import Storage, is_remote, open_storage
from ..storage.local import LocalStorage, private_dir, private_file

FOLDERS = ("packs", "snapshots", "locks", keys.FOLDER)
CATALOG_FILES = (CATALOG, CATALOG + "-wal", CATALOG + "-shm", CATALOG + "-journal")
# every name the repository stores: its storage lists, deletes and cleans up only these
NAMES = re.compile(
    r"config\.json|catalog\.sqlite"
    r"|packs/(?P<dir>[0-9a-f]{2})/(?P=dir)[0-9a-f]{30}\.pack"  # pack.new_pack_name
    r"|snapshots/[0-9a-f]{32}\.json"  # a snapshot record (ops/snapshot.py: 32 hex digits)
    r"|locks/[0-9a-f]{16}\.json"  # locking.py
    r"|keys/[0-9a-f]{16}\.json"  # keys.py
)


def storage_at(path: str) -> LocalStorage:
    """The storage of the repository at ``path``, holding only the repository's own names."""
    return LocalStorage(path, NAMES)


def remote_storage(location: str) -> Storage:
    """The object store of the remote repository at ``location`` (``s3:…``), holding only
    the repository's own names. Raises UsageError for a malformed URL, RemoteAuthError
    when no credentials are set."""
    return open_storage(location, NAMES)


def not_empty(path: str) -> None:
    """Raises UsageError for an empty location (an unset variable in ``-r "$REPO"``): it
    would otherwise name the current directory."""
    if not path.strip():
        raise UsageError("the repository location is empty (an unset variable?): give a path or an s3: URL")


STALE_INIT = 600  # seconds: an init takes about one; an older PATH.tmp-XXXXXXXX was left by a killed one


def remove_stale_init_dirs(path: str) -> None:
    """Remove what a killed ``init`` of ``path`` left beside it (``PATH.tmp-`` and 8 hex
    digits, untouched for STALE_INIT seconds: never a running init's)."""
    parent, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(name) + r"\.tmp-[0-9a-f]{8}")
    try:
        leftovers = [e for e in os.scandir(parent) if pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for e in leftovers:
        try:
            if time.time() - e.stat(follow_symlinks=False).st_mtime > STALE_INIT:
                shutil.rmtree(e.path, ignore_errors=True)
        except OSError:
            pass


def _new_key(where: str, encryption: str, passphrase: Callable[[], str] | None) -> tuple[bytes | None, str | None]:
    """A new master key and the passphrase that will wrap it (``(None, None)`` unencrypted);
    raises PasswordError when an encrypted repository has no passphrase."""
    if encryption != MODE:
        return None, None
    if passphrase is None:
        raise PasswordError(f"creating the encrypted repository {where} needs a passphrase")
    secret = passphrase()
    return keys.new_master_key(), secret


def create_local(path: str, params: ChunkerParams, now: datetime | None, passphrase: Callable[[], str] | None,
                 encryption: str) -> tuple[str, dict, Crypto, str | None]:
    """Make the repository folder ``path`` (Repository.init says how); returns its absolute
    path, config, Crypto and key id."""
    path = os.path.abspath(path)
    if os.path.exists(os.path.join(path, CONFIG)):
        raise RepositoryExists(f"{path} is already a diskvault repository: use it, or choose another path")
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise RepositoryExists(f"{path} exists and is not empty: give a new or empty directory")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise RepositoryNotFound(f"parent directory {parent} does not exist: create it first")
    outer = enclosing_repository(parent)
    if outer is not None:
        raise RepositoryExists(
            f"{path} is inside the diskvault repository {outer}, whose commands would take the new "
            "repository's files for their own: choose a path outside it"
        )
    master, secret = _new_key(path, encryption, passphrase)
    remove_stale_init_dirs(path)
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    private_dir(tmp, adopt=False)  # root's repository stays root's, wherever it is made
    try:
        config = new_config(params, encryption, now)
        for sub in FOLDERS:
            if sub != keys.FOLDER or master is not None:
                private_dir(os.path.join(tmp, sub))
        key_id = keys.add_key(storage_at(tmp), master, secret, config["id"]) if master is not None else None
        os.close(private_file(os.path.join(tmp, CATALOG)))  # SQLite gives its -wal, -shm this mode
        cat = Catalog(os.path.join(tmp, CATALOG))
        cat.create({"repository_id": config["id"]})
        cat.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cat.close()
        storage_at(tmp).write_atomic(CONFIG, json.dumps(config, indent=2).encode() + b"\n")
        os.rename(tmp, path)  # replaces an empty directory atomically
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path, config, Crypto(master), key_id


def create_remote(location: str, storage: Storage, params: ChunkerParams, now: datetime | None,
                  passphrase: Callable[[], str] | None, encryption: str) -> tuple[dict, Crypto, str | None]:
    """``init`` in the object store ``storage``: the key first, config.json last and
    create-only, so the repository exists once config.json is there and two inits cannot both
    succeed; a prefix that holds any of a repository's names is refused (RepositoryExists).
    Returns the config, Crypto and key id."""
    if storage.exists(CONFIG):
        raise RepositoryExists(f"{location} is already a diskvault repository: use it, or choose another prefix")
    if any(True for _ in storage.list("")):
        raise RepositoryExists(f"{location} holds objects of a repository but no {CONFIG} (an interrupted init?): "
                               "delete them, or choose another prefix")
    master, secret = _new_key(location, encryption, passphrase)
    config = new_config(params, encryption, now)
    key_id = keys.add_key(storage, master, secret, config["id"]) if master is not None else None
    try:
        storage.put(CONFIG, json.dumps(config, indent=2).encode() + b"\n")
    except FileExistsError:
        if key_id is not None:  # the other init's repository keeps only its own key
            storage.delete(f"{keys.FOLDER}/{key_id}.json")
        raise RepositoryExists(f"{location} was made a repository meanwhile by another diskvault init: "
                               "use it, or choose another prefix") from None
    return config, Crypto(master), key_id


def new_config(params: ChunkerParams, encryption: str, now: datetime | None) -> dict:
    """The config.json of a new repository (a new random id)."""
    now = now or datetime.now(timezone.utc)
    return {
        "format": "diskvault",
        "version": FORMAT_VERSION,
        "id": secrets.token_hex(16),
        "created": now.isoformat().replace("+00:00", "Z"),
        "chunker": params.to_dict(),
        "encryption": encryption,
    }


def cached_catalog(repository_id: str, crypto: Crypto) -> Catalog:
    """The cached catalog of the remote repository ``repository_id`` (cache.py), made empty
    when missing (the sync that follows fills it). Raises RepositoryError when it cannot be
    opened (``repair`` rebuilds it)."""
    cat_path = cache.catalog_path(repository_id)
    try:
        if not os.path.exists(cat_path):
            os.close(private_file(cat_path))
        cat = Catalog(cat_path, crypto=crypto)
        try:
            try:
                fresh = "schema_version" not in cat.meta()
            except sqlite3.OperationalError:  # a new file: no tables yet
                fresh = True
            if fresh:
                cat.create({"repository_id": repository_id})
        except BaseException:
            cat.close()
            raise
    except sqlite3.Error as exc:
        raise catalog_error(exc, os.path.dirname(cat_path)) or RepositoryError(
            f"the cached catalog {cat_path} cannot be read ({exc}): delete it, or rebuild it with diskvault repair"
        ) from None
    except OSError as exc:
        raise os_error(exc, os.path.dirname(cat_path)) from None
    return cat


def unlock(path: str, config: dict, passphrase: Callable[[], str] | None,
           storage: Storage | None = None) -> tuple[Crypto, str | None]:
    """The Crypto of the repository at ``path`` (configured by ``config``) and the id of the
    key file that opened it. Raises RepositoryError for an unknown encryption or an
    unencrypted configuration beside key files (an edited config.json), PasswordError
    (exit 10) for a missing or wrong passphrase; reads only, so a wrong passphrase writes
    nothing. ``storage``: the repository's (a remote one's object store), else the folder ``path``."""
    mode = config.get("encryption", "none")
    storage = storage if storage is not None else storage_at(path)
    if mode not in ENCRYPTIONS:
        raise RepositoryError(f"{path}/{CONFIG} names encryption {mode!r}, which this diskvault does not know: "
                              "use a matching diskvault release")
    if mode == "none":
        if any(True for _ in keys.key_names(storage)):
            raise RepositoryError(f"{path}/{CONFIG} says the repository is not encrypted, but it has key files "
                                  f"in {keys.FOLDER}/: config.json was changed; restore it from a copy")
        return PLAIN, None
    folder = os.path.join(path, keys.FOLDER)
    if not is_remote(path) and os.path.isdir(folder) and not os.access(folder, os.R_OK | os.X_OK):
        # a folder listing skips what it may not read: say so rather than "no key file"
        raise RepositoryError(f"permission denied reading {folder}: run diskvault as a user who may read it")
    if passphrase is None:
        raise PasswordError(f"{path} is encrypted: give its passphrase")
    master, kid = keys.unlock(storage, passphrase(), path, str(config.get("id")))
    return Crypto(master), kid
