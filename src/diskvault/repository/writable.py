"""Repositories this process cannot change, and operating-system and SQLite errors named as
what they are.

A repository is read-only to this process (``unwritable``) on a read-only file system or
media, or when its folders or catalog are not writable by the user; this is decided before
anything is opened, so the catalog is then opened read-only and reading commands skip the
lock. A full disk cannot be told in advance (ext4 keeps blocks back even from root): it is
found by trying (``FULL``). ``read_only_error`` is what a writing command meets (exit 3, or
6 on a full disk). ``repository_errors`` turns SQLite errors and OSErrors on the
repository's own files into the DiskvaultError they mean (docs/cli.md, "Read-only and full
repositories"); an OSError about another file (a source, a target) is left to the caller.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import DiskvaultError, OutOfSpace, RepositoryReadOnly, os_error
from ..storage.local import TMP_MARK
from . import locking
from .catalog import CATALOG, catalog_error

READ_ONLY_FS = "read-only file system"
NOT_WRITABLE = "not writable by this user"
FULL = "no space left on its disk"
NOTES = {READ_ONLY_FS: "repository is read-only", NOT_WRITABLE: "repository is not writable by this user",
         FULL: "no space left on the repository's disk"}


def unwritable(path: str) -> str | None:
    """Why this process cannot change the repository at ``path`` (READ_ONLY_FS,
    NOT_WRITABLE), or None. Decided before anything is opened: the catalog is then opened
    read-only. A full disk is found by trying (free-block counts do not tell whether root
    may still write: ext4 keeps clusters back even from root)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None  # the open that follows reports it
    if st.f_flag & os.ST_RDONLY:
        return READ_ONLY_FS
    names = (path, *(os.path.join(path, n) for n in (CATALOG, "packs", "snapshots", locking.LOCKS)))
    if any(os.path.exists(p) and not os.access(p, os.W_OK) for p in names):
        return NOT_WRITABLE
    return None


def read_only_error(path: str, reason: str) -> DiskvaultError:
    """What a command that writes meets on a repository it cannot change for ``reason``:
    OutOfSpace (exit 6) on a full disk, else RepositoryReadOnly (exit 3)."""
    if reason == FULL:
        return OutOfSpace(f"no space left on the repository's disk ({path}): free some space, then run "
                          "the command again; reading commands work as it is")
    return RepositoryReadOnly(f"repository {path} is read-only ({reason}): this command changes it; make it "
                              "writable first (remount read-write, or run as a user who may write it); reading "
                              "commands work as it is")


def require_writable(path: str) -> None:
    """Raise ``read_only_error`` unless this process can change the repository at ``path``."""
    reason = unwritable(os.path.abspath(path))
    if reason is not None:
        raise read_only_error(os.path.abspath(path), reason)


def inside(filename: str | bytes, path: str) -> bool:
    """Whether ``filename`` is ``path``, inside it, or a temporary sibling of it (init)."""
    name = os.path.abspath(os.fsdecode(filename))
    return name == path or name.startswith(path + os.sep) or name.startswith(path + TMP_MARK)


def translate(exc: BaseException | None, path: str) -> DiskvaultError | None:
    """The DiskvaultError for an SQLite error, or an OSError naming a file of the repository
    at ``path``; else None (an OSError about a source or target is the CLI's to report)."""
    if isinstance(exc, sqlite3.Error):
        return catalog_error(exc, path)
    if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
        if exc.filename is not None and inside(exc.filename, path):
            return os_error(exc, path)
    return None


@contextmanager
def repository_errors(path: str) -> Iterator[None]:
    """Raise SQLite errors and OSErrors on files of the repository at ``path`` (or being
    created there) inside the block as the DiskvaultError they mean (exit 3, or 6 when out
    of space), for code that works on the repository without an open Repository (init, repair)."""
    path = os.path.abspath(path)
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        translated = translate(exc, path)
        if translated is None:
            raise
        raise translated from None


