"""Property: whatever single byte of a pack is damaged, restore never writes wrong bytes.

For a random byte of a random pack (payload, table, footer or header) flipped, truncated
at, or zeroed from there: a plain restore is bit-identical or fails with DamagedData;
``check --read-data`` is not sound whenever restore failed; ``--skip-damaged`` output
equals the original outside the reported ranges and is zero inside them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import random_bytes, secret
from hypothesis import given
from hypothesis import strategies as st

from diskvault.repository.chunking import ChunkerParams
from diskvault.errors import DamagedData
from diskvault.ops.integrity.check import check
from diskvault.ops.restore import restore
from diskvault.ops.snapshot import take_snapshot
from diskvault.repository import Repository


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, bytes, str]:
    base = tmp_path_factory.mktemp("tpl")
    img = base / "a.img"
    data = random_bytes(150_000, 7) + bytes(40_000) + (b"text " * 20_000)
    img.write_bytes(data)
    with Repository.init(str(base / "repo"), ChunkerParams.for_average(16 << 10), passphrase=secret) as r:
        sid = take_snapshot(r, str(img)).id
    return base / "repo", data, sid


@given(where=st.floats(0, 1, exclude_max=True), how=st.sampled_from(["flip", "truncate", "zero"]), n=st.integers(1, 64))
def test_restore_never_writes_wrong_bytes(template, tmp_path_factory, where, how, n):
    src, data, sid = template
    work = tmp_path_factory.mktemp("case")
    repo = work / "repo"
    shutil.copytree(src, repo)
    pack = next((repo / "packs").rglob("*.pack"))
    blob = bytearray(pack.read_bytes())
    at = int(where * len(blob))
    if how == "flip":
        blob[at] ^= 0xFF
    elif how == "truncate":
        del blob[at:]
    else:
        blob[at : at + n] = bytes(len(blob[at : at + n]))
    pack.write_bytes(bytes(blob))
    with Repository.open(str(repo), passphrase=secret) as r:
        snap = r.resolve(sid)
        out = work / "out.img"
        try:
            restore(r, snap, str(out))
            failed = False
            assert out.read_bytes() == data
        except DamagedData:
            failed = True
            assert not out.exists()
        report = check(r, read_data=True)
        if failed:
            assert not report.sound and sid in report.affected
        if report.sound:
            assert not failed
        res = restore(r, snap, str(work / "skip.img"), skip_damaged=True)
        got = (work / "skip.img").read_bytes()
        want = bytearray(data)
        for u in res.unrestored:
            want[u["offset"] : u["offset"] + u["length"]] = bytes(u["length"])
        assert got == bytes(want)
        assert bool(res.unrestored) == failed
