"""Property: whatever was snapshotted and forgotten, prune keeps every surviving snapshot
restorable bit-identically, and with --max-unused 0 leaves no unused pack behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import blake3
from hypothesis import given, settings
from hypothesis import strategies as st
from retention_helpers import assert_no_unreferenced_packs, digest

from diskvault.repository.chunking import ChunkerParams
from diskvault.ops.retention.forget import forget_snapshots
from diskvault.ops.retention.prune import prune
from diskvault.ops.restore import restore
from diskvault.ops.snapshot import take_snapshot
from diskvault.repository import Repository
from helpers import secret

BLOCK = 4096


@st.composite
def histories(draw):
    blocks = draw(st.integers(8, 48))
    steps = draw(st.lists(
        st.lists(st.tuples(st.integers(0, blocks - 1), st.integers(0, 3)), max_size=6),  # (block, content)
        min_size=1, max_size=5,
    ))
    forget = draw(st.lists(st.booleans(), min_size=len(steps), max_size=len(steps)))
    return blocks, steps, forget


@settings(max_examples=12)
@given(histories(), st.sampled_from(["0", "2%", "30%", "unlimited"]), st.booleans(), st.sampled_from([8192, 65536]))
def test_prune_keeps_survivors_and_frees_the_rest(history, max_unused, repack_small, pack_size):
    blocks, steps, forget = history
    root = Path(tempfile.mkdtemp(prefix="dv-prune-prop-"))
    old = os.environ.get("DISKVAULT_PACK_SIZE")
    os.environ["DISKVAULT_PACK_SIZE"] = str(pack_size)
    try:
        Repository.init(str(root / "repo"), ChunkerParams.for_average(4096), passphrase=secret).close()
        data = bytearray(blake3.blake3(b"base").digest(length=blocks * BLOCK))
        image = root / "img"
        taken = []
        with Repository.open(str(root / "repo"), passphrase=secret) as r:
            for changes in steps:
                for b, content in changes:
                    data[b * BLOCK : (b + 1) * BLOCK] = bytes(BLOCK) if content == 0 else \
                        blake3.blake3(bytes([content, b])).digest(length=BLOCK)
                image.write_bytes(data)
                taken.append((take_snapshot(r, str(image)).id, blake3.blake3(data).hexdigest()))
            gone = {sid for (sid, _), f in zip(taken, forget) if f}
            if gone:
                forget_snapshots(r, sorted(gone))
            prune(r, max_unused=max_unused, repack_small=repack_small)
            survivors = [(sid, h) for sid, h in taken if sid not in gone]
            assert [s.id for s in r.snapshots()] == list(dict.fromkeys(sid for sid, _ in survivors))
            for sid, want in survivors:
                restore(r, r.resolve(sid), str(root / "out"), force=True)
                assert digest(root / "out") == want
            if max_unused == "0":
                prune(r, max_unused="0")
        if max_unused == "0":
            assert_no_unreferenced_packs(root / "repo")
    finally:
        if old is None:
            os.environ.pop("DISKVAULT_PACK_SIZE", None)
        else:
            os.environ["DISKVAULT_PACK_SIZE"] = old
        shutil.rmtree(root, ignore_errors=True)
