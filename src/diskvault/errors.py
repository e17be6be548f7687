"""Error classes: each carries a one-line message for the user and an exit code.

Only the CLI turns them into process exit codes; every other layer raises them.
The exit codes are part of the interface (docs/cli.md) and never change meaning.
"""

from __future__ import annotations

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
