"""copy's invariants over arbitrary snapshot series: whatever is copied, in whatever batches
and order, restores bit-identically from the destination, which stays sound, holds each
chunk once, and never gains a snapshot twice (docs/design.md "Copy between repositories")."""

from hypothesis import given, settings
from hypothesis import strategies as st

from diskvault.ops.copy import copy
from diskvault.ops.integrity.check import check
from diskvault.ops.restore import restore
from diskvault.ops.snapshot import take_snapshot
from diskvault.repository import Repository
from diskvault.repository.chunking import ChunkerParams
from helpers import random_bytes, secret

edit = st.tuples(st.integers(0, 299_999), st.sampled_from(["random", "zeros"]), st.integers(1, 40_000))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), series=st.lists(st.lists(edit, max_size=3), min_size=1, max_size=4),
       rounds=st.lists(st.sets(st.integers(0, 3)), min_size=1, max_size=3), plain=st.booleans())
def test_copies_in_any_batches_restore_identically(tmp_path_factory, repo_path, seed, series, rounds, plain):
    tmp = tmp_path_factory.mktemp("copy")
    img = tmp / "disk.img"
    data = bytearray(random_bytes(300_000, seed))
    images = []
    with Repository.open(str(repo_path), passphrase=secret) as src:
        for i, edits in enumerate(series):
            for at, kind, n in edits:
                data[at : at + n] = random_bytes(n, seed + i + at) if kind == "random" else bytes(n)
            img.write_bytes(data)
            snap = take_snapshot(src, str(img))
            images.append((snap.id, bytes(data)))
        dst_path = tmp / "dst"
        Repository.init(str(dst_path), ChunkerParams.for_average(16 << 10), passphrase=secret,
                        encryption="none" if plain else "aes-256-gcm").close()
        with Repository.open(str(dst_path), passphrase=secret) as dst:
            for chosen in rounds + [set(range(len(images)))]:  # the last round copies what is left
                names = [images[i][0] for i in sorted(chosen) if i < len(images)]
                if names:
                    copy(src, dst, names)
            copies = dst.snapshots()
            assert len(copies) == len(images)  # each once, however often it was asked for
            by_time = {s.time: s for s in copies}
            for sid, want in images:
                twin = by_time[src.resolve(sid).time]
                out = tmp / "out.img"
                restore(dst, twin, str(out), force=True)
                assert out.read_bytes() == want
            assert check(dst, read_data=True).sound
            rows = list(dst.catalog.blob_rows())
            assert len(rows) == len({r[0] for r in rows})  # every blob stored once
