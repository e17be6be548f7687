"""Manage the passphrases of an encrypted repository: each is a key file wrapping the one
master key (repository/keys.py), so adding, removing or changing one rewrites no data."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import PasswordError, RepositoryError, UsageError
from ..repository import Repository
from ..repository import keys
from ..repository.keys import KeyInfo


def _require_encrypted(repo: Repository) -> None:
    if not repo.crypto.encrypted:
        raise UsageError(f"{repo.path} is not encrypted (created with --encryption none): it has no keys")


def _require_own_key(repo: Repository) -> None:
    """Under the exclusive lock: the key file that opened ``repo`` must still be there, else
    another command removed it since (two removals that cross would leave no key at all)."""
    if f"{keys.FOLDER}/{repo.key_id}.json" not in keys.key_names(repo.storage):
        raise PasswordError(f"key {repo.key_id}, which this command was opened with, was removed meanwhile by "
                            "another command: nothing was changed; run it again with a passphrase that still opens "
                            f"{repo.path}")


def list_keys(repo: Repository) -> list[KeyInfo]:
    """The repository's key files, oldest first; ``current`` marks the one that opened it."""
    _require_encrypted(repo)
    return keys.list_keys(repo.storage, repo.key_id, str(repo.config.get("id")))


def add_key(repo: Repository, new_passphrase: Callable[[], str]) -> str:
    """Add a key file for ``new_passphrase()``; returns its id. Raises UsageError for an
    unencrypted repository, PasswordError for an empty or unconfirmed passphrase."""
    _require_encrypted(repo)
    secret = new_passphrase()  # asked (perhaps typed) before the lock is taken
    with repo.lock("shared", "key add"):
        return keys.add_key(repo.storage, repo.crypto.master, secret, repo.config["id"])


def remove_key(repo: Repository, prefix: str) -> str:
    """Remove the key file whose id starts with ``prefix``; returns its id. The key that
    opened the repository and the last key are refused (RepositoryError): removing them
    would lock this or every user out; so is any removal once the key that opened the
    repository was itself removed by another command (PasswordError): under the exclusive
    lock, two removals that cross cannot remove every key."""
    _require_encrypted(repo)
    with repo.lock("exclusive", "key remove"):
        _require_own_key(repo)
        kid = keys.find_key(repo.storage, prefix)
        if kid == repo.key_id:
            raise RepositoryError(f"key {kid} is the one this command was opened with: open the repository with "
                                  "another passphrase to remove it, or use diskvault key passwd")
        keys.remove_key(repo.storage, kid)
        return kid


def change_passphrase(repo: Repository, new_passphrase: Callable[[], str]) -> tuple[str, str]:
    """Replace the key that opened the repository by one for ``new_passphrase()``: the new
    key file is durable before the old one is removed. Returns ``(new id, old id)``. Raises
    PasswordError when another command removed that key meanwhile (nothing is changed)."""
    _require_encrypted(repo)
    secret = new_passphrase()  # typed before the exclusive lock is taken: no command waits on a prompt
    with repo.lock("exclusive", "key passwd"):
        _require_own_key(repo)
        new = keys.add_key(repo.storage, repo.crypto.master, secret, repo.config["id"])
        old = repo.key_id
        keys.remove_key(repo.storage, old)
        repo.key_id = new
        return new, old
