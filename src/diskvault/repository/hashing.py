"""Content ids: blake3-256 of the uncompressed bytes. Never fails."""

from __future__ import annotations

import blake3

ID_LEN = 32
ZERO_ID = bytes(ID_LEN)  # reserved: marks a zero extent in a chunk list, never a real hash


def content_id(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(data).digest()


def short(ident: bytes | str, n: int = 12) -> str:
    text = ident.hex() if isinstance(ident, bytes) else ident
    return text[:n]
