"""``config.json``: the format marker of a repository, written once by ``init``.

It names the format (``"diskvault"``), its version (FORMAT_VERSION; READ_VERSIONS are read),
the repository id, the chunker's sizes and the encryption (ENCRYPTIONS; absent in version 1:
"none"). It is the one file never sealed (docs/design.md). Raises RepositoryError for
impossible values (``check_config``); the lookups return None or False for what is not a
readable repository.
"""

from __future__ import annotations

import json
import os

from ..errors import FormatVersionError, RepositoryError, RepositoryNotFound
from .chunking import ChunkerParams
from .crypto import MODE

FORMAT_VERSION = 2  # 2: config.json names its encryption ("none" or "aes-256-gcm")
READ_VERSIONS = (1, 2)  # 1: unencrypted, from before encryption
ENCRYPTIONS = (MODE, "none")
CONFIG = "config.json"


def _read(path: str) -> dict | None:
    """The readable diskvault ``config.json`` in the folder ``path``, else None."""
    try:
        with open(os.path.join(path, CONFIG), "rb") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and config.get("format") == "diskvault" else None


def is_repository(path: str) -> bool:
    """Whether ``path`` holds a readable diskvault ``config.json``."""
    return _read(path) is not None


def encryption_of(path: str) -> str | None:
    """The encryption ``config.json`` of the repository at ``path`` names ("aes-256-gcm",
    "none"), or None when there is no readable repository there."""
    config = _read(path)
    return None if config is None else config.get("encryption", "none")


def enclosing_repository(path: str) -> str | None:
    """The repository that ``path`` (a folder, links resolved) is or lies in, or None."""
    here = os.path.realpath(path)
    while True:
        if is_repository(here):
            return here
        up = os.path.dirname(here)
        if up == here:
            return None
        here = up


def check_config(path: str, config: dict) -> None:
    """Raise RepositoryError (exit 3) when config.json's chunker sizes are impossible
    (missing, not integers, not what init writes): nothing could be read or stored right."""
    try:
        ChunkerParams.from_config(config.get("chunker"))
    except ValueError as exc:
        raise RepositoryError(f"{path}/{CONFIG} is damaged: {exc}: restore config.json from a copy "
                              "(its chunker sizes are fixed when the repository is created)") from None


def load_config(path: str) -> dict:
    """The checked ``config.json`` of the repository at ``path``. Raises RepositoryNotFound
    (missing, unreadable, not diskvault's), RepositoryError (permission denied, impossible
    chunker sizes), FormatVersionError (a version this diskvault does not read)."""
    try:
        with open(os.path.join(path, CONFIG), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise RepositoryNotFound(
            f"{path} is not a diskvault repository (no {CONFIG}): create one with diskvault init -r {path}"
        ) from None
    except PermissionError:
        raise RepositoryError(f"permission denied reading {path}/{CONFIG}: run diskvault as a user who may "
                              "read the repository") from None
    except OSError as exc:
        raise RepositoryNotFound(f"{path}/{CONFIG} is unreadable ({exc})") from None
    return parse_config(path, data)


def load_remote_config(location: str, storage) -> dict:
    """The checked ``config.json`` of the repository in the object store ``storage`` (named
    ``location`` in messages); raises as ``load_config``, and the storage's RemoteError classes."""
    try:
        data = storage.read(CONFIG)
    except FileNotFoundError:
        raise RepositoryNotFound(
            f"{location} is not a diskvault repository (no {CONFIG}): create one with diskvault init -r {location}"
        ) from None
    return parse_config(location, data)


def parse_config(path: str, data: bytes) -> dict:
    """``data``, the ``config.json`` of the repository at ``path``, parsed and checked (as ``load_config``)."""
    try:
        config = json.loads(data)
    except ValueError as exc:
        raise RepositoryNotFound(f"{path}/{CONFIG} is unreadable ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != "diskvault":
        raise RepositoryNotFound(f"{path}/{CONFIG} is not a diskvault configuration")
    if config.get("version") not in READ_VERSIONS:
        raise FormatVersionError(
            f"{path} has repository format version {config.get('version')}, this diskvault reads "
            f"versions {' and '.join(map(str, READ_VERSIONS))}: use a matching diskvault release"
        )
    check_config(path, config)
    return config
