"""Create a repository with fixed chunker parameters."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable

from ..errors import RepositoryError, os_error
from ..repository.catalog import catalog_error
from ..repository.chunking import DEFAULT_AVG, ChunkerParams
from ..repository import Repository


def init_repository(path: str, chunk_size: int = DEFAULT_AVG, encryption: str = "aes-256-gcm",
                    passphrase: Callable[[], str] | None = None) -> Repository:
    """Create a repository, encrypted with a new master key wrapped by ``passphrase()`` unless
    ``encryption`` is "none". Raises ValueError for a bad chunk size, RepositoryExists /
    RepositoryNotFound, PasswordError, and RepositoryError / OutOfSpace when the system
    refuses to create it (read-only, full)."""
    params = ChunkerParams.for_average(chunk_size)
    try:
        return Repository.init(path, params, passphrase=passphrase, encryption=encryption)
    except OSError as exc:
        path = os.path.abspath(path)
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise RepositoryError(f"cannot create repository {path} ({(exc.strerror or '').lower()} in "
                                  f"{os.path.dirname(path)}): choose a directory this user may write") from None
        raise os_error(exc, path) from None
    except sqlite3.Error as exc:  # e.g. no room for the new catalog
        error = catalog_error(exc, os.path.dirname(os.path.abspath(path)))
        if error is None:
            raise
        raise error from None
