"""Argon2id key derivation (RFC 9106, through argon2-cffi), and deriving ahead of need.

Every command that opens an encrypted repository derives one key-encryption key: ~0.1 s of
wall time on both cores here (DEFAULT_PARAMS), as long as a small incremental's whole work
on a 2 GiB image. Argon2 releases the GIL, so the command line's entry point
(``diskvault.entry``) starts that derivation in a background thread before it imports the
rest of diskvault (~0.15 s), whenever the repository and the passphrase can be read from the
command line and the environment without side effects: a local repository (``-r``/``--repo``
or DISKVAULT_REPO), its passphrase from ``--password-file``/DISKVAULT_PASSWORD_FILE (a
regular file: a pipe such as ``<(pass show backup)`` can be read only once, by the command) or
DISKVAULT_PASSWORD (never a ``--password-command``, never a prompt), and the first key file
in ``keys/`` that opening would accept (``load_key_file``, made for this repository), the
repository's files read only as regular files, never through a link. ``derive`` then waits for a
derivation started ahead with the same passphrase, salt and parameters instead of starting its
own. A guess that turns out wrong (another key file opens, an option the entry point read
otherwise than the command line) only costs that derivation: a result is used only for
exactly its inputs, and the key file's AEAD still decides whether it opens anything.

Imports nothing of diskvault: it runs before the rest is loaded.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import threading

# RFC 9106 §4, second recommended option (64 MiB, 3 passes, 4 lanes): ~0.1 s here
DEFAULT_PARAMS = {"time_cost": 3, "memory_cost": 64 * 1024, "parallelism": 4}
MIN_PARAMS = {"time_cost": 3, "memory_cost": 64 * 1024, "parallelism": 1}
# at most 16 passes over 1 GiB (~85 times the default's work: ~12 s and 1 GiB here, per such
# key file tried): a key file edited to absurd costs would make every command spend minutes
# and gigabytes before finding it fails authentication
MAX_PARAMS = {"time_cost": 16, "memory_cost": 1024 * 1024, "parallelism": 16}
KEY_LEN = 32  # bytes of a derived key, and of the master key a key file wraps

_ahead: dict[tuple, tuple[threading.Thread, list]] = {}
_KEY_FILE = re.compile(r"[0-9a-f]{16}\.json")


def derive(passphrase: str, salt: bytes, params: dict) -> bytes:
    """The 32-byte Argon2id key of ``passphrase`` (UTF-8, undecodable bytes kept) with
    ``salt`` and ``params`` (``time_cost`` passes, ``memory_cost`` KiB, ``parallelism`` lanes);
    a derivation started ahead for the same inputs is waited for instead of repeated."""
    secret = passphrase.encode("utf-8", "surrogateescape")
    started = _ahead.pop(_inputs(secret, salt, params), None)
    if started is not None:
        thread, result = started
        thread.join()
        if result:
            return result[0]
    return _argon2id(secret, salt, params)


def _inputs(secret: bytes, salt: bytes, params: dict) -> tuple:
    return secret, salt, params["time_cost"], params["memory_cost"], params["parallelism"]


def load_key_file(data: bytes) -> dict:
    """A key file's JSON (format: repository/keys.py), its fields checked, ``salt``, ``nonce``
    and ``key`` decoded; raises ValueError saying what is wrong (also for bad JSON)."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != 1 or doc.get("kdf") != "argon2id":
        raise ValueError("it is not a version 1 argon2id key file")
    if not isinstance(doc.get("repository"), str):
        raise ValueError("it names no repository (made by a development version before key files named theirs)")
    for k, low in MIN_PARAMS.items():
        v = doc.get(k)
        if type(v) is not int:
            raise ValueError(f"its {k} is not a whole number")
        if v < low:
            raise ValueError(f"its Argon2 {k} {v} is below the minimum {low} (the file was weakened)")
        if v > MAX_PARAMS[k]:
            raise ValueError(f"its Argon2 {k} {v} is above the maximum {MAX_PARAMS[k]}")
    for k in ("salt", "nonce", "key"):
        if not isinstance(doc.get(k, ""), str):
            raise ValueError(f"its {k} is not base64 text")
        doc[k] = base64.b64decode(doc.get(k, ""), validate=True)
    if len(doc["salt"]) < 16 or len(doc["nonce"]) != 12 or len(doc["key"]) != KEY_LEN + 16:
        raise ValueError("its salt, nonce or sealed key has the wrong length")
    return doc


def _argon2id(secret: bytes, salt: bytes, params: dict) -> bytes:
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(secret, salt, params["time_cost"], params["memory_cost"], params["parallelism"],
                           KEY_LEN, Type.ID)


def derive_ahead(argv: list[str], environ: dict[str, str] | os._Environ) -> bool:
    """Start deriving, in a background thread, the key of the repository and passphrase that
    ``argv`` (the command's arguments) and ``environ`` name, when that needs nothing but
    reading files (see the module's text); True when one was started. Never raises: a guess
    that cannot be made is no guess."""
    try:
        guess = _guess(argv, environ)
        if guess is None:
            return False
        secret, salt, params = guess
        result: list[bytes] = []

        def run() -> None:
            try:
                result.append(_argon2id(secret, salt, params))
            except Exception:  # noqa: BLE001 - e.g. out of memory: ``derive`` derives again and reports it
                pass

        thread = threading.Thread(target=run, name="derive-ahead", daemon=True)
        _ahead[_inputs(secret, salt, params)] = (thread, result)
        thread.start()
        return True
    except Exception:  # noqa: BLE001 - only a guess: the command derives what it needs itself
        return False


def _option(argv: list[str], long: str, short: str | None = None) -> str | None:
    """The value of option ``long`` (``--x V``, ``--x=V``) or ``short`` (``-r V``, ``-rV``)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == long or arg == short:
            return argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith(long + "="):
            return arg[len(long) + 1:]
        if short and arg.startswith(short) and not arg.startswith("--") and len(arg) > len(short):
            return arg[len(short):]
    return None


def _guess(argv: list[str], environ) -> tuple[bytes, bytes, dict] | None:
    repo = _option(argv, "--repo", "-r") or environ.get("DISKVAULT_REPO")
    if not repo or repo.startswith("s3:") or _option(argv, "--password-command") \
            or environ.get("DISKVAULT_PASSWORD_COMMAND"):
        return None
    password_file = _option(argv, "--password-file") or environ.get("DISKVAULT_PASSWORD_FILE")
    if password_file:
        data = _read_regular(password_file)  # a pipe (<(pass show x), /dev/stdin) is read once, by the command
        if data is None:
            return None
        text = data.decode("utf-8", "surrogateescape")
    else:
        text = environ.get("DISKVAULT_PASSWORD", "")
    secret = text.strip().encode("utf-8", "surrogateescape")  # as the command line reads it (cli/common.py)
    if not secret:
        return None
    config = _read_regular(os.path.join(repo, "config.json"), follow=False)
    if config is None:
        return None
    config = json.loads(config)
    if config.get("encryption", "none") == "none":
        return None
    folder = os.path.join(repo, "keys")
    for name in sorted(n for n in os.listdir(folder) if _KEY_FILE.fullmatch(n)):  # as keys.unlock tries them
        data = _read_regular(os.path.join(folder, name), follow=False)
        try:
            doc = load_key_file(data) if data is not None else None
        except (ValueError, TypeError):
            continue
        if doc is not None and doc["repository"] == str(config.get("id")):
            return secret, doc["salt"], {k: doc[k] for k in DEFAULT_PARAMS}
    return None


def _read_regular(path: str, follow: bool = True, limit: int = 1 << 16) -> bytes | None:
    """The first ``limit`` bytes of ``path`` when it is a regular file (``follow``: through
    symbolic links; the repository's own files are never links), else None: a pipe or device
    is never opened (opening a FIFO would wake its writer and lose what it writes)."""
    info = os.stat(path) if follow else os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        return None
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced meanwhile
            return None
        return f.read(limit)
