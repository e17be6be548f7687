"""Storage backends: where pack files and snapshot records live.

A backend stores named objects ("packs/ab/ab12….pack", "snapshots/….json") and knows nothing
above that: no catalog, no chunk ids. ``Storage`` is the contract every backend passes
(tests/storage/test_contract.py runs one suite over the local directory, SeaweedFS and Ceph
RGW); backends: ``local.LocalStorage`` (a directory) and ``s3.S3Storage`` (an S3 bucket and
prefix). The contract is what an object store can honour; docs/design.md, "Storage contract".

Names: relative, "/"-separated, each part of ``NAME_CHARS`` and neither "." nor ".."; anything
else is a bug (ValueError), so no name ever leads outside the backend's root or prefix.

Semantics every backend keeps:

- **Atomic visibility.** An object appears under its name whole, or not at all: ``put`` and
  ``FileWriter.commit`` make it visible when they return (durable: fsynced locally, acknowledged
  by the store remotely); before that no ``get``, ``size``, ``exists`` or ``list`` sees it, and
  ``abort`` (or a crash) leaves nothing under the name. Locally a temporary file is renamed;
  on S3 the object is uploaded on commit (one PUT, or a multipart upload completed last).
- **Immutable names.** ``put`` and ``commit`` create; they never replace. A name that exists
  with the same bytes is a no-op (a retried request whose first answer was lost); with other
  bytes it raises FileExistsError and the stored bytes stay. Create-only is atomic where the
  backend can make it so (a hard link locally, ``If-None-Match: *`` on S3); a multipart
  upload (objects above the backend's single-PUT limit) checks first and relies on the name
  being fresh (pack names are 128 random bits). ``replace`` is the one overwriting write
  (config, a record repair rewrites); it is atomic too.
- **Read after write, list after write.** Once a write or delete returns, every later call
  in any process sees it (local files; AWS S3, Ceph RGW and SeaweedFS are strongly consistent;
  a store that is only eventually consistent is not supported).
- **Errors.** A missing name raises FileNotFoundError; a full store OutOfSpace; an
  unreachable, refusing or failing remote store the RemoteError classes (errors.py), after
  the backend's retries.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol

# every character a stored name may hold (the repository uses hex digits, "packs/", ".pack",
# ".json", "config.json", "catalog.sqlite-wal" and the local backend's ".tmp-" files)
NAME_CHARS = "A-Za-z0-9._-"
_NAME = re.compile(rf"[{NAME_CHARS}]+(?:/[{NAME_CHARS}]+)*")


def check_name(name: str) -> str:
    """``name`` when it is a valid stored name (see the module docstring); raises ValueError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or any(p in (".", "..") for p in name.split("/")):
        raise ValueError(f"{name!r} is not a valid storage name")
    return name


class FileWriter(Protocol):
    """An object being written; invisible under its name until ``commit``."""

    def write(self, data: bytes | memoryview) -> None: ...  # kept, not copied, until the next flush
    def flush(self) -> None: ...  # writes given so far taken over: the caller may reuse its buffers
    def tell(self) -> int: ...  # bytes written so far
    def commit(self) -> None: ...  # visible and durable under its name when this returns (create-only)
    def abort(self) -> None: ...  # nothing left under the name; safe to call twice or after a failure


class Storage(Protocol):
    def create(self, name: str) -> FileWriter: ...  # a streaming put: packs
    def put(self, name: str, data: bytes) -> None: ...  # create-only, atomic; FileExistsError
    def replace(self, name: str, data: bytes) -> None: ...  # atomic overwrite (config, repaired records)
    def write_atomic(self, name: str, data: bytes) -> None: ...  # = replace (older name)
    def read(self, name: str) -> bytes: ...  # the whole object; FileNotFoundError
    def read_range(self, name: str, offset: int, length: int) -> bytes: ...  # shorter at the end
    def size(self, name: str) -> int: ...  # bytes; FileNotFoundError
    def exists(self, name: str) -> bool: ...
    def list(self, folder: str) -> Iterator[str]: ...  # names below folder/ ("" for all), no order promised
    def delete(self, name: str) -> None: ...  # nothing when missing
    def clean_temporary(self) -> int: ...  # leftovers of interrupted writes removed
    def close(self) -> None: ...


def is_remote(location: str) -> bool:
    """True for a storage URL (``s3:…``), False for a local path."""
    return location.startswith("s3:")


def open_storage(location: str, names: re.Pattern[str] | None = None) -> Storage:
    """The backend for ``location``: ``s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]`` (s3.py) or
    a local folder. ``names``: the names it holds (see LocalStorage). Raises UsageError for a
    malformed URL, RemoteAuthError when no credentials are set."""
    if is_remote(location):
        from .s3 import S3Storage
        return S3Storage.from_url(location, names=names)
    from .local import LocalStorage
    return LocalStorage(location, names)
