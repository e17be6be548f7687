"""diskvault unlock: remove stale repository locks (every lock with ``remove_all``)."""

from __future__ import annotations

from ..repository import locking
from ..repository import Repository


def unlock(repo: Repository, remove_all: bool = False) -> dict:
    removed, kept = locking.unlock(repo.path, remove_all, repo.crypto, repo.storage if repo.remote else None)
    return {
        "removed": [dict(lock.to_json(), reason=reason) for lock, reason in removed],
        "kept": [lock.to_json() for lock in kept],
    }
