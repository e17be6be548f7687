"""Key files: the repository's master key, wrapped by each passphrase (``keys/<id>.json``).

An encrypted repository has one random 32-byte master key (crypto.py derives every key from
it). Each key file holds it sealed with AES-256-GCM under a key-encryption key that Argon2id
(RFC 9106, argon2-cffi) derives from one passphrase and the file's random 16-byte salt. The
Argon2 parameters are stored in the file and are part of the associated data, so an edited
parameter fails authentication; parameters below the minimums (MIN_PARAMS) are refused
before any work, so a key file edited to be cheaper to attack is never used, and absurdly
high ones are refused as damaged (they would only make opening hang). Several key files (one per
passphrase) wrap the same master key: ``add``, ``remove``, ``passwd`` change files, never data.

Key file (JSON): ``version`` 1, ``kdf`` "argon2id", ``time_cost`` (passes), ``memory_cost``
(KiB), ``parallelism`` (lanes), ``repository`` (the id in config.json: a key file opens only
its own repository), ``salt`` and ``nonce`` (base64), ``key`` (base64: sealed master
key), ``created`` (ISO 8601 UTC), ``host``, ``username`` (who added it; not secret).

Argon2 runs once per key file and passphrase in a process: what it opened is remembered
(``_opened``, keyed by blake3 of the file and of the passphrase) for the process's next open of
the same repository (``forget --prune``, a server, a test), holding nothing that the open
repository does not hold in memory anyway.

Errors: PasswordError (exit 10) when no key file opens with the passphrase; RepositoryError
when the repository has no usable key file.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timezone

import blake3

from ..errors import PasswordError, RepositoryError
from ..kdf import DEFAULT_PARAMS, KEY_LEN, MAX_PARAMS, MIN_PARAMS, derive, load_key_file
from ..storage import Storage

FOLDER = "keys"
NAME = re.compile(r"keys/([0-9a-f]{16})\.json")
MASTER_LEN = KEY_LEN
_opened: dict[tuple[bytes, bytes], bytes] = {}
_AD = "diskvault key file v1 {id} repository={repository} argon2id t={time_cost} m={memory_cost} p={parallelism}"


@dataclass
class KeyInfo:
    """A key file as ``key list`` shows it; ``current``: the one that opened the repository."""

    id: str
    created: str
    host: str
    username: str
    current: bool = False
    problem: str | None = None  # why it cannot open the repository (damaged, weakened, another repository's)

    def to_json(self) -> dict:
        return {"id": self.id, "current": self.current, "created": self.created, "host": self.host,
                "username": self.username, "problem": self.problem}


def _memo(data: bytes, passphrase: str) -> tuple[bytes, bytes]:
    return blake3.blake3(data).digest(), blake3.blake3(passphrase.encode("utf-8", "surrogateescape")).digest()


def _aesgcm(key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def new_master_key() -> bytes:
    return secrets.token_bytes(MASTER_LEN)


def add_key(storage: Storage, master: bytes, passphrase: str, repository: str, params: dict | None = None) -> str:
    """Write a new key file wrapping ``master`` with ``passphrase`` for the repository whose
    id (config.json) is ``repository``; returns its id."""
    params = dict(params or DEFAULT_PARAMS)
    kid = secrets.token_hex(8)
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    sealed = _aesgcm(derive(passphrase, salt, params)).encrypt(
        nonce, master, _AD.format(id=kid, repository=repository, **params).encode())
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    doc = {"version": 1, "kdf": "argon2id", "repository": repository, **params,
           "salt": base64.b64encode(salt).decode(), "nonce": base64.b64encode(nonce).decode(),
           "key": base64.b64encode(sealed).decode(),
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
           "host": socket.gethostname(), "username": user}
    data = json.dumps(doc, indent=2).encode() + b"\n"
    storage.write_atomic(f"{FOLDER}/{kid}.json", data)
    _opened[_memo(data, passphrase)] = master
    return kid


def key_names(storage: Storage) -> list[str]:
    return sorted(n for n in storage.list(FOLDER) if NAME.fullmatch(n))


def unlock(storage: Storage, passphrase: str, repo: str, repository: str) -> tuple[bytes, str]:
    """The master key and the id of the key file that ``passphrase`` opens (each key file is
    tried in turn, as restic does) among those made for the repository whose id is
    ``repository``: a key file copied from another repository is refused (its id is in the
    associated data, so editing it fails authentication). Raises PasswordError (exit 10) when none opens,
    RepositoryError when there is no key file, or every one is refused (damaged, weakened)."""
    names = key_names(storage)
    refused: list[str] = []
    tried = 0
    for name in names:
        kid = NAME.fullmatch(name).group(1)
        try:
            data = storage.read(name)
        except PermissionError:
            raise RepositoryError(f"permission denied reading {repo}/{name}: run diskvault as a user who may read it") from None
        try:
            doc = load_key_file(data)
            if doc["repository"] != repository:
                raise ValueError(f"it belongs to repository {doc['repository'][:32]}, not to this one ({repository})")
        except (ValueError, TypeError, OSError) as exc:
            refused.append(f"{name}: {exc}")
            continue
        params = {k: doc[k] for k in DEFAULT_PARAMS}
        tried += 1
        memo = _memo(data, passphrase)
        if memo in _opened:
            return _opened[memo], kid
        from argon2.exceptions import HashingError
        from cryptography.exceptions import InvalidTag

        try:
            kek = derive(passphrase, doc["salt"], params)  # an interrupt, or no memory for Argon2, is not a wrong passphrase
        except HashingError as exc:
            raise RepositoryError(f"cannot derive the key of {name} ({exc}): free memory and run the command again") from None
        try:
            master = _aesgcm(kek).decrypt(doc["nonce"], doc["key"], _AD.format(id=kid, repository=repository, **params).encode())
        except InvalidTag:  # another passphrase's key file
            continue
        _opened[memo] = master
        return master, kid
    if not tried:
        why = f" ({'; '.join(refused)})" if refused else ""
        raise RepositoryError(f"{repo} is encrypted but has no usable key file in {FOLDER}/{why}: "
                              "restore the keys folder from a copy of the repository")
    note = f" ({len(refused)} key file{'s' if len(refused) > 1 else ''} refused: {refused[0]})" if refused else ""
    what = f"wrong passphrase for {repo}: no key file opens with it{note}"
    raise PasswordError(f"{what}: check DISKVAULT_PASSWORD, DISKVAULT_PASSWORD_FILE or --password-file/--password-command",
                        what)


def list_keys(storage: Storage, current: str | None = None, repository: str | None = None) -> list[KeyInfo]:
    """Every key file, oldest first; one that cannot open the repository whose id is
    ``repository`` (unreadable, damaged, weakened, made for another repository) is listed
    with its ``problem``, so it can be found and removed."""
    out = []
    for name in key_names(storage):
        kid = NAME.fullmatch(name).group(1)
        doc: object = None
        problem = None
        try:
            data = storage.read(name)
            doc = json.loads(data)
            found = load_key_file(data)
            if repository is not None and found["repository"] != repository:
                raise ValueError(f"it belongs to repository {found['repository'][:32]}")
        except OSError as exc:
            problem = f"unreadable: {exc.strerror or exc}"
        except json.JSONDecodeError:
            problem = "damaged: it is not JSON"
        except (ValueError, TypeError) as exc:
            problem = f"refused: {exc}"
        fields = doc if isinstance(doc, dict) else {}
        out.append(KeyInfo(kid, str(fields.get("created", "")), str(fields.get("host", "")),
                           str(fields.get("username", "")), kid == current, problem))
    return sorted(out, key=lambda k: (k.created, k.id))


def find_key(storage: Storage, prefix: str) -> str:
    """The id of the one key file whose id starts with ``prefix`` (readable or not: a damaged
    key file can be removed too); raises RepositoryError."""
    ids = [NAME.fullmatch(n).group(1) for n in key_names(storage)]
    found = [k for k in ids if k.startswith(prefix.lower())] if prefix else []
    if len(found) != 1:
        what = "no key" if not found else f"{len(found)} keys"
        raise RepositoryError(f"{what} with id {prefix!r}: list them with diskvault key list")
    return found[0]


def remove_key(storage: Storage, kid: str) -> None:
    storage.delete(f"{FOLDER}/{kid}.json")
