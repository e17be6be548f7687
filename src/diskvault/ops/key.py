"""Manage the passphrases of an encrypted repository: each is a key file wrapping the one
master key (repository/keys.py), so adding, removing or changing one rewrites no data."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import RepositoryError, UsageError
from ..repository import Repository
from ..repository import keys
from ..repository.keys import KeyInfo


def _require_encrypted(repo: Repository) -> None:
    if not repo.crypto.encrypted:
        raise UsageError(f"{repo.path} is not encrypted (created with --encryption none): it has no keys")


def list_keys(repo: Repository) -> list[KeyInfo]:
    """The repository's key files, oldest first; ``current`` marks the one that opened it."""
    _require_encrypted(repo)
    return keys.list_keys(repo.storage, repo.key_id)


def add_key(repo: Repository, new_passphrase: Callable[[], str]) -> str:
    """Add a key file for ``new_passphrase()``; returns its id. Raises UsageError for an
    unencrypted repository, PasswordError for an empty or unconfirmed passphrase."""
    _require_encrypted(repo)
    with repo.lock("shared", "key add"):
        return keys.add_key(repo.storage, repo.crypto.master, new_passphrase())


def remove_key(repo: Repository, prefix: str) -> str:
    """Remove the key file whose id starts with ``prefix``; returns its id. The key that
    opened the repository and the last key are refused (RepositoryError): removing them
    would lock this or every user out."""
    _require_encrypted(repo)
    with repo.lock("shared", "key remove"):
        kid = keys.find_key(repo.storage, prefix)
        if kid == repo.key_id:
            raise RepositoryError(f"key {kid} is the one this command was opened with: open the repository with "
                                  "another passphrase to remove it, or use diskvault key passwd")
        keys.remove_key(repo.storage, kid)
        return kid


def change_passphrase(repo: Repository, new_passphrase: Callable[[], str]) -> tuple[str, str]:
    """Replace the key that opened the repository by one for ``new_passphrase()``: the new
    key file is durable before the old one is removed. Returns ``(new id, old id)``."""
    _require_encrypted(repo)
    with repo.lock("shared", "key passwd"):
        new = keys.add_key(repo.storage, repo.crypto.master, new_passphrase())
        old = repo.key_id
        keys.remove_key(repo.storage, old)
        repo.key_id = new
        return new, old
