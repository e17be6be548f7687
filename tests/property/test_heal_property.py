"""Property (issue 11): any single byte of any pack, changed in any way, is found by
``check --read-data`` -- unless it lies inside a compressed payload and changes nothing
that payload decodes to, when every snapshot still restores bit-identically.

Header, table, footer and raw payloads cover every other byte of a pack (read_pack_index
checks that payloads lie back to back), and each is checked: magic, version and flags;
reserved words; the table's blake3; every entry's blake3 after decoding.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import random_bytes, secret
from hypothesis import given
from hypothesis import strategies as st

from diskvault.ops.integrity.check import check
from diskvault.ops.restore import restore
from diskvault.ops.snapshot import take_snapshot
from diskvault.repository import Repository
from diskvault.repository.chunking import ChunkerParams
from diskvault.repository.pack import read_pack_index


@pytest.fixture(scope="module", params=["aes-256-gcm", "none"])
def template(tmp_path_factory, request) -> tuple[Path, bytes, str]:
    base = tmp_path_factory.mktemp("heal-tpl")
    img = base / "a.img"
    data = random_bytes(120_000, 9) + (b"log line: all is well\n" * 4_000)  # raw and compressed payloads
    img.write_bytes(data)
    with Repository.init(str(base / "repo"), ChunkerParams.for_average(16 << 10), passphrase=secret,
                         encryption=request.param) as r:
        sid = take_snapshot(r, str(img)).id
    return base / "repo", data, sid


# where: anywhere (a fraction of the pack), or in the 16-byte header, or in the 48-byte footer
WHERE = st.one_of(st.floats(0, 1, exclude_max=True), st.tuples(st.just("header"), st.integers(0, 15)),
                  st.tuples(st.just("footer"), st.integers(1, 48)))


@given(which=st.integers(0, 1 << 16), where=WHERE, mask=st.integers(1, 255))
def test_any_changed_byte_of_a_pack_is_found_or_harmless(template, tmp_path_factory, which, where, mask):
    src, data, sid = template
    work = tmp_path_factory.mktemp("heal-case")
    repo = work / "repo"
    shutil.copytree(src, repo)
    packs = sorted((repo / "packs").rglob("*.pack"))
    pack = packs[which % len(packs)]
    with Repository.open(str(repo), passphrase=secret) as r:
        compressed = [(e.offset, e.offset + e.stored_len)
                      for e in read_pack_index(r.storage, str(pack.relative_to(repo)), r.crypto) if e.flags]
    blob = bytearray(pack.read_bytes())
    if isinstance(where, float):
        at = int(where * len(blob))
    else:
        at = where[1] if where[0] == "header" else len(blob) - where[1]
    blob[at] ^= mask
    pack.write_bytes(bytes(blob))
    with Repository.open(str(repo), passphrase=secret) as r:
        if check(r, read_data=True).sound:
            assert not r.crypto.encrypted, f"byte {at} of {len(blob)} changed unnoticed: every byte is authenticated"
            assert any(a <= at < b for a, b in compressed), f"byte {at} of {len(blob)} changed unnoticed"
            restore(r, r.resolve(sid), str(work / "out.img"))
            assert (work / "out.img").read_bytes() == data
    shutil.rmtree(work)
