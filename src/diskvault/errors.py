"""Error classes: each carries a one-line message for the user and an exit code.

Only the CLI turns them into process exit codes; every other layer raises them.
The exit codes are part of the interface (docs/cli.md) and never change meaning.
"""

from __future__ import annotations

import errno
import os

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: unexpected exception
EXIT_USAGE = 2  # bad command line (click's own code)
EXIT_REPOSITORY = 3  # repository missing, not initialised, exists, wrong format
EXIT_SNAPSHOT = 4  # unknown or ambiguous snapshot
EXIT_SOURCE_TARGET = 5  # source or target missing, unreadable, refused
EXIT_NO_SPACE = 6  # out of space
EXIT_LOCKED = 7  # repository locked by another process
EXIT_DAMAGED = 8  # data damage found (bad chunk, missing pack)
EXIT_DIFFERS = 9  # verify: snapshot and source differ
EXIT_PASSWORD = 10  # encrypted repository: wrong or missing passphrase
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM


class DiskvaultError(Exception):
    """Base class: ``str(err)`` is the one-line message, ``exit_code`` the process exit code."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RepositoryError(DiskvaultError):
    exit_code = EXIT_REPOSITORY


class RepositoryNotFound(RepositoryError):
    pass


class RepositoryExists(RepositoryError):
    pass


class FormatVersionError(RepositoryError):
    pass


class SnapshotError(DiskvaultError):
    exit_code = EXIT_SNAPSHOT


class SourceError(DiskvaultError):
    exit_code = EXIT_SOURCE_TARGET


class TargetError(DiskvaultError):
    exit_code = EXIT_SOURCE_TARGET


class OutOfSpace(DiskvaultError):
    exit_code = EXIT_NO_SPACE


class RepositoryLocked(DiskvaultError):
    exit_code = EXIT_LOCKED


class DamagedData(DiskvaultError):
    """A chunk or pack does not hold what the catalog says it holds."""

    exit_code = EXIT_DAMAGED


class Interrupted(DiskvaultError):
    exit_code = EXIT_INTERRUPTED


class UsageError(DiskvaultError):
    """A value the user typed is out of range or unreadable, or options that do not go together
    (exit 2, as click's own usage errors)."""

    exit_code = EXIT_USAGE
class RepositoryReadOnly(RepositoryError):
    """A command that writes met a repository it cannot write (read-only file system or
    media, or a user without write permission); reading commands still work."""


class PasswordError(DiskvaultError):
    """An encrypted repository and no passphrase, or one that opens none of its key files
    (exit 10); nothing has been written. ``what``: the message without its advice on where
    the passphrase comes from (a caller with other sources, e.g. copy's destination, gives its own)."""

    exit_code = EXIT_PASSWORD

    def __init__(self, message: str, what: str | None = None) -> None:
        super().__init__(message)
        self.what = what or message


class FileAccessError(DiskvaultError):
    """The operating system refused a source or target file (permission, read-only file
    system, I/O error, too many open files)."""

    exit_code = EXIT_SOURCE_TARGET


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM)


def os_error(exc: OSError, repository: str | None = None) -> DiskvaultError:
    """The DiskvaultError for an operating-system error, named by errno (never "internal
    error"): ENOSPC/EDQUOT -> OutOfSpace (6); with ``repository`` (the error concerns the
    repository at that path) EROFS -> RepositoryReadOnly and anything else -> RepositoryError
    (3); without it the file is a source or target -> FileAccessError (5)."""
    name = exc.filename if exc.filename is not None else (repository or "")
    file = os.fsdecode(name) if isinstance(name, bytes) else str(name)
    reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
    where = f" ({file})" if file else ""
    if exc.errno in _NO_SPACE:
        disk = f"the repository's disk ({repository})" if repository else f"device{where}"
        return OutOfSpace(f"no space left on {disk}: free some space, then run the command again")
    if exc.errno == errno.EMFILE or exc.errno == errno.ENFILE:
        cls = RepositoryError if repository else FileAccessError
        return cls(f"too many open files{where}: raise the limit (ulimit -n), then run the command again")
    if repository:
        if exc.errno == errno.EROFS:
            return RepositoryReadOnly(f"repository {repository} is read-only (read-only file system{where}): "
                                      "remount it read-write to change it; reading commands work as it is")
        if exc.errno in _DENIED:
            return RepositoryError(f"permission denied{where}: run diskvault as a user who may read and write "
                                   f"the repository {repository}")
        if exc.errno == errno.EIO:
            return RepositoryError(f"input/output error{where}: the repository's disk may be failing; "
                                   "check it (dmesg), then run diskvault check")
        return RepositoryError(f"{reason}{where}: check the repository {repository}")
    if exc.errno == errno.EROFS:
        return FileAccessError(f"{file or 'the file'} is on a read-only file system: choose a writable place")
    if exc.errno in _DENIED:
        return FileAccessError(f"permission denied{where}: run diskvault as a user who may access it")
    if exc.errno == errno.EIO:
        return FileAccessError(f"input/output error{where}: the disk may be failing; check it (dmesg)")
    return FileAccessError(f"{reason}{where}: check the path")


class RemoteError(RepositoryError):
    """An object store (S3) failed a request after its retries: a server error, a timeout,
    an answer diskvault does not understand (exit 3)."""


class RemoteUnreachable(RemoteError):
    """The object store's endpoint does not answer (refused, no route, name unknown) (exit 3)."""


class RemoteAuthError(RemoteError):
    """The object store refused the credentials: no credentials, a wrong key or secret, a
    clock too far from the server's (exit 3)."""


class RescueBuildError(DiskvaultError):
    """``rescue build`` cannot make the image: a tool or package it needs is missing or a
    download failed (exit 5, like a source it cannot read; a wrong argument is a UsageError)."""

    exit_code = EXIT_SOURCE_TARGET
