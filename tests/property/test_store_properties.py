"""Core invariants of the store, over arbitrary images."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from diskvault.ops.restore import restore
from diskvault.ops.snapshot import take_snapshot
from diskvault.repository import Repository
from helpers import random_bytes, secret

# An image: runs of random bytes, zeros and repeated text, in any order.
piece = st.one_of(
    st.builds(lambda n, s: random_bytes(n, s), st.integers(1, 120_000), st.integers(0, 1000)),
    st.builds(bytes, st.integers(1, 150_000)),
    st.builds(lambda n: b"diskvault " * n, st.integers(1, 8000)),
    st.binary(min_size=1, max_size=300),
)
image = st.lists(piece, max_size=8).map(b"".join)


@settings(max_examples=25)
@given(data=image, codec=st.sampled_from(["auto", "lz4", "zstd"]))
def test_any_image_restores_identically(tmp_path_factory, repo_path, data, codec):
    tmp = tmp_path_factory.mktemp("img")
    src, out = tmp / "src.img", tmp / "out.img"
    src.write_bytes(data)
    with Repository.open(str(repo_path), passphrase=secret) as repo:
        snap = take_snapshot(repo, str(src), compression_mode=codec)
        restore(repo, repo.resolve(snap.id), str(out))
    assert out.read_bytes() == data
    assert snap.size == len(data) == snap.data_bytes + snap.zero_bytes


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000), edits=st.lists(st.tuples(st.integers(0, 399_999), st.binary(min_size=1, max_size=2000)), max_size=5))
def test_mutated_copy_stores_only_chunks_it_did_not_have(tmp_path_factory, repo_path, seed, edits):
    tmp = tmp_path_factory.mktemp("img")
    base = bytearray(random_bytes(400_000, seed))
    (tmp / "a.img").write_bytes(base)
    for at, blob in edits:
        base[at : at + len(blob)] = blob
    (tmp / "b.img").write_bytes(base)
    with Repository.open(str(repo_path), passphrase=secret) as repo:
        take_snapshot(repo, str(tmp / "a.img"))
        before = repo.catalog.blob_totals()
        snap = take_snapshot(repo, str(tmp / "b.img"))
        after = repo.catalog.blob_totals()
        leaves = [l for l in repo.tree().leaves(bytes.fromhex(snap.tree))]
        restore(repo, snap, str(tmp / "out.img"))
    assert (tmp / "out.img").read_bytes() == bytes(base)
    # new chunks are exactly those of b not already stored, and each is stored once
    assert after["chunks"] - before["chunks"] == snap.new_chunks
    assert snap.new_chunks <= len({l.id for l in leaves})
    max_chunk = 4 * 16 << 10
    assert snap.new_bytes <= len(edits) * (2 * max_chunk + 2000)


def test_interrupted_snapshot_leaves_repository_consistent(tmp_path, repo_path):
    src = tmp_path / "src.img"
    src.write_bytes(random_bytes(3 << 20, 5))
    with Repository.open(str(repo_path), passphrase=secret) as repo:
        first = take_snapshot(repo, str(src))

        class Boom(Exception):
            pass

        class Progress:
            def start(self, total, what):
                self.n = 0

            def advance(self, n):
                self.n += n
                if self.n > 1 << 20:
                    raise Boom

        src.write_bytes(random_bytes(3 << 20, 6))
        try:
            take_snapshot(repo, str(src), progress=Progress())
        except Boom:
            pass
        assert [s.id for s in repo.snapshots()] == [first.id]
        restore(repo, first, str(tmp_path / "out.img"))
    assert (tmp_path / "out.img").read_bytes() == random_bytes(3 << 20, 5)
    assert not [p for p in (repo_path / "packs").rglob("*") if ".tmp-" in p.name]
