"""AEAD nonces never repeat under one key (crypto.py): an entry's nonce is its offset in a
pack whose key is derived from the pack's random id; records take random nonces. Every
AES-GCM sealing is recorded here as (key, nonce) and checked unique, in one process over
1,000,000 sealings and across restarts (other processes, the same repository key)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import SRC, cli_env

from diskvault.errors import DamagedData
from diskvault.repository.crypto import Crypto
from diskvault.repository.pack import TYPE_CHUNK, PackWriter, pack_id
from diskvault.storage.local import LocalStorage

MASTER = bytes(range(32))

RECORDER = '''
import blake3
from cryptography.hazmat.primitives.ciphers import aead

_AESGCM = aead.AESGCM
SEEN = []  # 64-bit digests of (key, nonce), one per sealing


class Recording:
    def __init__(self, key):
        self.inner = _AESGCM(key)
        self.key = bytes(key)

    def encrypt(self, nonce, data, associated_data):
        SEEN.append(int.from_bytes(blake3.blake3(self.key + bytes(nonce)).digest(8), "little"))
        return self.inner.encrypt(nonce, data, associated_data)

    def decrypt(self, nonce, data, associated_data):
        return self.inner.decrypt(nonce, data, associated_data)


aead.AESGCM = Recording  # what crypto.py imports from then on
'''


def seal_many(root: Path, entries: int, records: int) -> list[int]:
    """Seal ``entries`` one-byte entries (1,000 per pack) and ``records`` records with the
    repository key MASTER; the (key, nonce) digests of every sealing."""
    namespace: dict = {}
    exec(RECORDER, namespace)
    crypto = Crypto(MASTER)
    root.mkdir()
    storage = LocalStorage(str(root))
    writer = None
    for k in range(entries):
        if writer is None:
            writer = PackWriter(storage, crypto)
        writer.add(k.to_bytes(32, "little"), TYPE_CHUNK, 0, b"x", 1)
        if len(writer.entries) == 1000:
            writer.abort()  # the sealings are what is checked, not the files
            writer = None
    for k in range(records):
        crypto.seal(b"snapshots/x.json", b"{}")
    seen = namespace["SEEN"]
    import cryptography.hazmat.primitives.ciphers.aead as aead

    aead.AESGCM = namespace["_AESGCM"]
    return seen


def test_nonces_never_repeat_over_a_million_sealings_and_across_restarts(tmp_path):
    seen = seal_many(tmp_path / "here", 1_000_000, 2_000)
    assert len(seen) == 1_002_000 and len(set(seen)) == len(seen)
    code = ("import sys; sys.path[:0] = sys.argv[1:4]; from pathlib import Path;"
            "from test_nonce_properties import seal_many;"
            "print('\\n'.join(map(str, seal_many(Path(sys.argv[4]), 50_000, 500))))")
    here = set(seen)
    for run in range(2):
        out = subprocess.run([sys.executable, "-c", code, str(SRC), str(Path(__file__).parent),
                              str(Path(__file__).parents[1]), str(tmp_path / f"r{run}")],
                             capture_output=True, check=True, env=cli_env()).stdout.split()
        other = {int(x) for x in out}
        assert len(other) == len(out) == 50_500
        assert not other & here, "a (key, nonce) pair of another process repeated"
        here |= other


@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=40), flip=st.integers(0, 1 << 30))
def test_sealed_entries_open_only_where_and_as_written(tmp_path_factory, sizes, flip):
    """Entries of any sizes round-trip; each nonce (offset) is new in its pack; a changed
    byte, another offset, another pack or another id fails authentication."""
    crypto = Crypto(MASTER)
    storage = LocalStorage(str(tmp_path_factory.mktemp("seal")))
    writer = PackWriter(storage, crypto)
    payloads = [blake3.blake3(b"%d" % i).digest(n) for i, n in enumerate(sizes)]
    added = [writer.add(bytes([i]) * 32, TYPE_CHUNK, 0, p, len(p)) for i, p in enumerate(payloads)]
    offsets = [e.offset for e in added]
    assert offsets == sorted(set(offsets))  # strictly increasing: no nonce twice in a pack
    writer.seal()
    pid = pack_id(writer.name)
    for e, p in zip(added, payloads):
        stored = storage.read_range(writer.name, e.offset, e.stored_len)
        assert e.stored_len == len(p) + crypto.overhead
        assert crypto.open_entry(pid, e.offset, e.type, e.flags, e.raw_len, e.id, stored) == p
    e, p = added[flip % len(added)], payloads[flip % len(added)]
    stored = bytearray(storage.read_range(writer.name, e.offset, e.stored_len))
    stored[flip % len(stored)] ^= 1 << (flip % 8)
    for args in ((pid, e.offset, e.id, bytes(stored)),
                 (pid, e.offset + 1, e.id, storage.read_range(writer.name, e.offset, e.stored_len)),
                 ("0" * 32, e.offset, e.id, storage.read_range(writer.name, e.offset, e.stored_len)),
                 (pid, e.offset, b"\xff" * 32, storage.read_range(writer.name, e.offset, e.stored_len))):
        with pytest.raises(DamagedData, match="authentication failed"):
            crypto.open_entry(args[0], args[1], e.type, e.flags, e.raw_len, args[2], args[3])
