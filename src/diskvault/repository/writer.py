"""Writing new blobs into packs: the first half of the write order.

A pack is filled to the target size (TARGET_PACK_SIZE, or ``DISKVAULT_PACK_SIZE`` for tests
and tuning), sealed (durable: the pack file is fsynced and renamed into place by the
storage) and only then recorded in the catalog, so every catalogued blob is on disk. A
crash before the catalog commit leaves an unrecorded pack file that ``prune`` removes.
"""

from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING

from ..errors import UsageError
from . import compression
from .pack import TARGET_PACK_SIZE, TYPE_TREE, PackWriter

if TYPE_CHECKING:
    from .repository import Repository


def pack_target_size() -> int:
    """TARGET_PACK_SIZE, or ``DISKVAULT_PACK_SIZE`` bytes for tests and tuning; raises
    UsageError (exit 2) unless that is a whole number from 4096 (4 KiB) to 4294967296 (4 GiB)."""
    text = os.environ.get("DISKVAULT_PACK_SIZE")
    if text is None:
        return TARGET_PACK_SIZE
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 4096 <= size <= 1 << 32:
        raise UsageError(f"DISKVAULT_PACK_SIZE={text!r} is out of range: set it to bytes from 4096 to 4294967296, or unset it")
    return size


class BlobWriter:
    """Writes new blobs into packs. A pack is sealed (durable) at TARGET_PACK_SIZE and then
    recorded in the catalog, so every catalogued blob is on disk. A pack holding a new copy
    of a blob known to be damaged takes over that blob's row (``Repository._healed``). ``has`` tells whether a
    blob was written in this session but may not be visible to catalog lookups yet."""

    def __init__(self, repo: Repository, repoint: bool = False) -> None:
        self.repo = repo
        self.repoint = repoint
        repo.damaged()  # loaded now, in the thread that starts writing, before any lookup
        self.target_size = pack_target_size()
        self.pack: PackWriter | None = None
        self.open_ids: set[bytes] = set()
        self.recent: deque[set[bytes]] = deque(maxlen=2)
        self.packs_written = 0

    def has(self, ident: bytes) -> bool:
        return ident in self.open_ids or any(ident in s for s in self.recent)

    def add(self, ident: bytes, kind: int, payload: bytes | memoryview, flags: int, raw_len: int) -> int:
        if self.pack is None:
            self.pack = PackWriter(self.repo.storage, self.repo.crypto)
        stored = self.pack.add(ident, kind, flags, payload, raw_len).stored_len
        self.open_ids.add(ident)
        if self.pack.size >= self.target_size:
            self.seal()
        return stored

    def flush(self) -> None:
        """Hand the open pack's payloads to storage: until then a payload may be held, not
        copied, so a caller that reuses its buffers calls this first."""
        if self.pack is not None:
            self.pack.flush()

    def add_raw(self, ident: bytes, kind: int, data: bytes) -> int:
        """Compress and add ``data`` unless this session or the catalog has it already."""
        if self.has(ident) or self.repo.known([ident]):
            return 0
        payload, flags = compression.compress(data)
        return self.add(ident, kind, payload, flags, len(data))

    def add_tree_node(self, ident: bytes, node: bytes) -> None:
        self.add_raw(ident, TYPE_TREE, node)

    def seal(self) -> None:
        if self.pack is None:
            return
        pack, self.pack = self.pack, None
        size = pack.seal()
        bad = self.repo.damaged()
        healed = bad.intersection(e.id for e in pack.entries) if bad else set()
        if healed:  # new copies (a snapshot's, or verified ones a repack made) take over
            self.repo._healed(pack.name, size, pack.entries, healed)
        elif self.repoint:
            self.repo.catalog.switch_pack(pack.name, size, pack.entries)
        else:
            self.repo.catalog.add_pack(pack.name, size, pack.entries)
        self.recent.append(self.open_ids)
        self.open_ids = set()
        self.packs_written += 1

    def abort(self) -> None:
        if self.pack is not None:
            self.pack.abort()
            self.pack = None
