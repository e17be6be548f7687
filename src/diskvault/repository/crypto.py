"""What the repository's key does to stored bytes: keyed ids, AEAD sealing, the chunker seed.

``Crypto(None)`` serves an unencrypted repository: ids are plain blake3-256, bytes are stored
as they are, the chunker is unseeded. ``Crypto(master)`` serves an encrypted one (docs/design.md
"Encryption", docs/security.md). From the 32-byte master key (keys.py keeps it, wrapped by
each passphrase) it derives, with blake3's key-derivation mode (a context string per use):

- the **id key**: chunk and tree ids are blake3 keyed hashes, so an id says nothing about its
  content to someone without the key, and the same data has other ids in another repository;
- the **pack key**: each pack's AES-256-GCM key is blake3(pack id, key=pack key), a pseudo-random
  function of the pack's 128-bit random id; an entry's nonce is its byte offset in the pack
  (96-bit little-endian), the trailer's nonce the table's offset. Entries lie back to back
  and each takes at least the 16-byte tag, so no two sealings in one pack share a nonce, and a
  nonce is never reused under a key as long as pack ids never repeat (a fresh random id per
  pack written, never a rewrite under the same name; 2^-64 odds of a repeat after 2^32 packs);
- the **record key**: snapshot records and the catalog's sealed snapshot rows, each sealed
  with a random 96-bit nonce stored in front (a few sealings per snapshot: far below the
  2^32 random-nonce limit of NIST SP 800-38D §8.3);
- the **chunker seed**: 63 bits XORed into FastCDC's gear table (pyfastcdc ``seed``).

Associated data binds every ciphertext to what it claims to be: an entry to its type, flags,
raw length and id (and, through key and nonce, to its pack and offset), so swapping two
blobs, moving one to another pack or editing the trailer fails authentication. The AEAD is
AES-256-GCM from ``cryptography`` (OpenSSL; AES-NI makes it ~7 GB/s here, against ~3 GB/s
for ChaCha20-Poly1305). ``open_*`` raise DamagedData when authentication fails.
"""

from __future__ import annotations

import functools
import os
import struct

import blake3

from ..errors import DamagedData
from .hashing import content_id

TAG = 16  # bytes an AES-GCM sealing adds
NONCE = 12
MODE = "aes-256-gcm"
_ENTRY_AD = struct.Struct("<4sBBI32s")
_CONTEXT = "diskvault 2026-11-30 {}"


def derive(master: bytes, purpose: str, length: int = 32) -> bytes:
    """A subkey of ``master`` for ``purpose`` (blake3 derive_key mode)."""
    return blake3.blake3(master, derive_key_context=_CONTEXT.format(purpose)).digest(length)


class Crypto:
    """Keyed ids and sealing for one repository; ``Crypto(None)``: none of it (unencrypted)."""

    def __init__(self, master: bytes | None) -> None:
        self.encrypted = master is not None
        self.mode = MODE if master is not None else "none"
        self.overhead = TAG if master is not None else 0  # bytes sealing adds to an entry
        if master is None:
            self.master = None
            self.content_id = content_id
            self.chunker_seed = 0
            return
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # only encrypted repositories load OpenSSL

        self._aesgcm = AESGCM
        self.master = master  # kept to wrap it anew for another passphrase (``key add``)
        id_key = derive(master, "chunk id key")
        self._pack_key = derive(master, "pack key")
        self._record = AESGCM(derive(master, "record key"))
        self.chunker_seed = int.from_bytes(derive(master, "chunker seed", 8), "little") >> 1 or 1

        def keyed_id(data: bytes | bytearray | memoryview) -> bytes:
            return blake3.blake3(data, key=id_key).digest()

        self.content_id = keyed_id

    # --- pack entries and trailers -----------------------------------------------------
    @functools.lru_cache(maxsize=64)  # noqa: B019 (one Crypto per open repository)
    def _pack_cipher(self, pack_id: str):
        return self._aesgcm(blake3.blake3(bytes.fromhex(pack_id), key=self._pack_key).digest())

    @staticmethod
    def _entry_ad(kind: int, flags: int, raw_len: int, ident: bytes) -> bytes:
        return _ENTRY_AD.pack(b"DVB1", kind, flags, raw_len, ident)

    def seal_entry(self, pack_id: str, offset: int, kind: int, flags: int, raw_len: int, ident: bytes,
                   payload: bytes | memoryview) -> bytes | memoryview:
        """The bytes to store at ``offset`` of pack ``pack_id`` for one entry's payload."""
        if not self.encrypted:
            return payload
        return self._pack_cipher(pack_id).encrypt(offset.to_bytes(NONCE, "little"), payload,
                                                  self._entry_ad(kind, flags, raw_len, ident))

    def open_entry(self, pack_id: str, offset: int, kind: int, flags: int, raw_len: int, ident: bytes,
                   stored: bytes | memoryview) -> bytes | memoryview:
        """The payload sealed in ``stored``; raises DamagedData when authentication fails."""
        if not self.encrypted:
            return stored
        try:
            return self._pack_cipher(pack_id).decrypt(offset.to_bytes(NONCE, "little"), stored,
                                                      self._entry_ad(kind, flags, raw_len, ident))
        except Exception:  # cryptography.exceptions.InvalidTag, or a ciphertext shorter than a tag
            raise DamagedData("its authentication failed (its bytes were changed or moved)") from None

    def seal_table(self, pack_id: str, offset: int, count: int, table: bytes) -> bytes:
        if not self.encrypted:
            return table
        return self._pack_cipher(pack_id).encrypt(offset.to_bytes(NONCE, "little"), table, b"DVT1" + struct.pack("<I", count))

    def open_table(self, pack_id: str, offset: int, count: int, stored: bytes) -> bytes:
        if not self.encrypted:
            return stored
        try:
            return self._pack_cipher(pack_id).decrypt(offset.to_bytes(NONCE, "little"), stored,
                                                      b"DVT1" + struct.pack("<I", count))
        except Exception:
            raise DamagedData(f"pack {pack_id} trailer fails authentication (its bytes were changed)") from None

    # --- snapshot records and catalog rows -----------------------------------------------
    def seal(self, purpose: bytes, data: bytes) -> bytes:
        """``data`` sealed under the record key for ``purpose`` (the associated data, e.g. the
        record's file name): random nonce, then ciphertext and tag."""
        if not self.encrypted:
            return data
        nonce = os.urandom(NONCE)
        return nonce + self._record.encrypt(nonce, data, purpose)

    def open(self, purpose: bytes, sealed: bytes) -> bytes:
        """What ``seal(purpose, ...)`` sealed; raises DamagedData when authentication fails."""
        if not self.encrypted:
            return sealed
        try:
            return self._record.decrypt(sealed[:NONCE], sealed[NONCE:], purpose)
        except Exception:
            raise DamagedData("it fails authentication (its bytes were changed, or it belongs elsewhere)") from None


PLAIN = Crypto(None)
