"""The parallel snapshot pipeline (speculative cutting per window, stitched in order) gives
exactly the chunk list of cutting each data extent as one stream, whatever the window size."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest
from hypothesis import given, strategies as st
from helpers import random_bytes, secret

from consistency import assert_consistent

from diskvault.repository.chunking import ChunkerParams
from diskvault.repository.hashing import ZERO_ID
from diskvault.images.source import open_source
from diskvault.ops import snapshot as snapshot_mod
from diskvault.ops.restore import restore
from diskvault.repository import Repository


def reference_leaves(repo, path: str) -> list[tuple[bytes, int]]:
    """(id, length) per chunk from Chunker.stream over each extent; zero runs merged."""
    out: list[tuple[bytes, int]] = []

    def add(ident: bytes, n: int) -> None:
        if ident == ZERO_ID and out and out[-1][0] == ZERO_ID:
            out[-1] = (ZERO_ID, out[-1][1] + n)
        else:
            out.append((ident, n))

    src = open_source(path)
    for off, length, is_data in src.extents():
        if not is_data:
            add(ZERO_ID, length)
            continue
        for buf, cuts in repo.chunker.stream(src.filler(off, length), 1 << 20):
            for o, n in cuts:
                ident = repo.content_id(memoryview(buf)[o : o + n])
                add(ZERO_ID if ident == repo.content_id(bytes(n)) else ident, n)
    src.close()
    return out


def snapshot_leaves(repo, path: str) -> list[tuple[bytes, int]]:
    rec = snapshot_mod.take_snapshot(repo, path)
    return [(leaf.id, leaf.length) for leaf in repo.tree().leaves(bytes.fromhex(rec.tree))]


@contextlib.contextmanager
def window_size(n: int):
    """The pipeline's window size for one test (hypothesis: no function-scoped monkeypatch)."""
    old, snapshot_mod.BUFFER = snapshot_mod.BUFFER, n
    try:
        yield
    finally:
        snapshot_mod.BUFFER = old


def write_image(path, segs) -> None:
    with open(path, "wb") as f:
        for kind, n, seed in segs:
            if kind == "random":
                f.write(random_bytes(n, seed))
            elif kind == "zeros":
                f.write(bytes(n))
            elif kind == "repeat":
                f.write((b"line %d of a log\n" % seed) * (n // 16 + 1))
            elif kind == "period":  # a random block over and over: chunks repeat within a window
                block = random_bytes(1000 + seed * 1499, seed)
                f.write((block * (n // len(block) + 1))[:n])
            else:
                f.seek(n + (2 << 20), os.SEEK_CUR)  # a real hole (longer than HOLE_MERGE)
        f.truncate()


segments = st.lists(
    st.tuples(st.sampled_from(["random", "zeros", "repeat", "period", "hole"]), st.integers(1, 300_000), st.integers(0, 99)),
    min_size=1, max_size=8,
)


@given(segs=segments, window=st.sampled_from([64 << 10, 100_000, 256 << 10, 1 << 20]))
def test_windows_give_the_stream_boundaries(tmp_path_factory, segs, window):
    tmp = tmp_path_factory.mktemp("img")
    repo_path = tmp / "repo"
    Repository.init(str(repo_path), ChunkerParams.for_average(16 << 10), passphrase=secret).close()
    img = tmp / "a.img"
    write_image(img, segs)
    with window_size(window), Repository.open(str(repo_path), passphrase=secret) as repo:
        assert snapshot_leaves(repo, str(img)) == reference_leaves(repo, str(img))
        out = tmp / "out.img"
        restore(repo, repo.resolve("latest"), str(out))
        assert out.read_bytes() == img.read_bytes()
    assert_consistent(repo_path)


@pytest.mark.parametrize("window", [64 << 10, 1 << 20])
def test_stdin_like_stream_without_size(tmp_path, repo, window, monkeypatch):
    """A pipe has no size and no extents: windows end when the stream does."""
    data = random_bytes(700_000, 3) + bytes(300_000) + random_bytes(123_457, 4)
    img = tmp_path / "a.img"
    img.write_bytes(data)
    monkeypatch.setattr(snapshot_mod, "BUFFER", window)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, data) if len(data) < 65536 else [os.write(w, data[i : i + 65536]) for i in range(0, len(data), 65536)]
        os._exit(0)
    os.close(w)
    try:
        rec = snapshot_mod.take_snapshot(repo, f"/proc/self/fd/{r}")
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    got = [(leaf.id, leaf.length) for leaf in repo.tree().leaves(bytes.fromhex(rec.tree))]
    assert got == reference_leaves(repo, str(img))


def test_repeat_of_a_replaced_speculative_chunk_is_stored(tmp_path, monkeypatch):
    """A window's speculative first chunk is replaced by the stitch; when the same chunk comes
    again later in that window, that later occurrence must be stored (it is the only one).
    The data is made for the unseeded chunker: an unencrypted repository."""
    Repository.init(str(tmp_path / "repo"), ChunkerParams.for_average(16 << 10), encryption="none").close()
    repo = Repository.open(str(tmp_path / "repo"))
    period = random_bytes(400_000, 33)[:94_260]  # cut by FastCDC (16K) at every multiple of its length
    window = 256 << 10
    # the window at 256K starts with the period: its speculative first chunk (period[:6838],
    # replaced by the stitch) comes once more, at 256K + len(period), and nowhere else
    data = random_bytes(window, 1) + period + period[:20_000] + random_bytes(300_000, 2)
    img = tmp_path / "a.img"
    img.write_bytes(data)
    monkeypatch.setattr(snapshot_mod, "BUFFER", window)
    spec = {o for o, _ in repo.chunker.cut(data[window : 2 * window])}
    true = {o - window for o, _ in repo.chunker.cut(data)}
    assert {0, len(period)} <= spec and 0 not in true and len(period) in true
    rec = snapshot_mod.take_snapshot(repo, str(img))
    out = tmp_path / "out.img"
    restore(repo, rec, str(out))
    assert out.read_bytes() == data
    assert [(leaf.id, leaf.length) for leaf in repo.tree().leaves(bytes.fromhex(rec.tree))] == reference_leaves(repo, str(img))
    repo.close()


@given(segs=segments, changes=st.lists(st.tuples(st.integers(0, 7), segments), min_size=1, max_size=3),
       window=st.sampled_from([64 << 10, 256 << 10, 1 << 20]), same_path=st.booleans())
def test_a_parent_guides_to_the_same_boundaries(tmp_path_factory, segs, changes, window, same_path):
    """The second snapshot of a changed image (parent: the first, by path or by size) has
    exactly the chunk list of cutting the changed image with no parent: segments replaced,
    inserted, extents grown or cut short by holes."""
    tmp = tmp_path_factory.mktemp("img")
    repo_path = tmp / "repo"
    Repository.init(str(repo_path), ChunkerParams.for_average(16 << 10), passphrase=secret).close()
    first, second = tmp / "a.img", tmp / ("a.img" if same_path else "b.img")
    write_image(first, segs)
    new = list(segs)
    for at, seg in changes:
        at %= len(new) + 1
        new[at:at + 1] = seg
    with window_size(window), Repository.open(str(repo_path), passphrase=secret) as repo:
        snapshot_mod.take_snapshot(repo, str(first))
        write_image(second, new)
        if not same_path:
            os.truncate(second, first.stat().st_size)  # found by its size
        assert snapshot_mod._parent(repo, str(second), second.stat().st_size, socket.gethostname())
        assert snapshot_leaves(repo, str(second)) == reference_leaves(repo, str(second))
        out = tmp / "out.img"
        restore(repo, repo.resolve("latest", source=str(second)), str(out))
        assert out.read_bytes() == second.read_bytes()
    assert_consistent(repo_path)


def test_a_chunk_that_ended_with_its_extent_is_no_hint(tmp_path, repo):
    """The last chunk of a data extent ended where the data did, not at a cut: when the
    next image has data after it, that chunk must be cut again, not taken from the parent."""
    a, c = random_bytes(50 * 4096, 5), random_bytes(100_000, 6)  # the extent ends where a does
    img = tmp_path / "a.img"
    write_image(img, [("random", len(a), 5), ("hole", 1 << 20, 0), ("random", len(c), 6)])
    snapshot_mod.take_snapshot(repo, str(img))
    img.write_bytes(a + random_bytes(img.stat().st_size - len(a) - len(c), 7) + c)
    assert snapshot_leaves(repo, str(img)) == reference_leaves(repo, str(img))


zero_heavy = st.lists(
    st.tuples(st.sampled_from(["random", "zeros", "zeros", "period", "hole"]), st.integers(1, 1_500_000),
              st.integers(0, 99)),
    min_size=1, max_size=6,
)


@given(segs=zero_heavy, window=st.sampled_from([64 << 10, 100_000, 200_003, 256 << 10]), parent=st.booleans())
def test_all_zero_windows_give_the_stream_boundaries(tmp_path_factory, segs, window, parent):
    """Zero runs that span whole windows (which are not cut: see _stitch_zeros), entered with
    an unfinished chunk of any length, ending mid-window, at a window's end or with the
    extent: the chunk list is still that of Chunker.stream, with or without a parent."""
    tmp = tmp_path_factory.mktemp("img")
    repo_path = tmp / "repo"
    Repository.init(str(repo_path), ChunkerParams.for_average(16 << 10), passphrase=secret).close()
    img = tmp / "a.img"
    with window_size(window), Repository.open(str(repo_path), passphrase=secret) as repo:
        if parent:
            write_image(img, list(reversed(segs)))
            snapshot_mod.take_snapshot(repo, str(img))
        write_image(img, segs)
        assert snapshot_leaves(repo, str(img)) == reference_leaves(repo, str(img))
        out = tmp / "out.img"
        restore(repo, repo.resolve("latest"), str(out))
        assert out.read_bytes() == img.read_bytes()
    assert_consistent(repo_path)


@pytest.mark.parametrize("head", [0, 1, 5000, 16383, 16384, 40_000, 65_535])
@pytest.mark.parametrize("zeros", [64 << 10, (64 << 10) + 1, 3 * (64 << 10) - 7, 1 << 20])
def test_zero_windows_after_a_head_of_any_length(tmp_path, repo, monkeypatch, head, zeros):
    """Random data ending ``head`` bytes into a window (so the first zero window is entered
    with an unfinished chunk of about that length), then zeros, then data again."""
    monkeypatch.setattr(snapshot_mod, "BUFFER", 64 << 10)
    data = random_bytes((64 << 10) * 3 + head, 8) + bytes(zeros) + random_bytes(200_000, 9)
    img = tmp_path / "a.img"
    img.write_bytes(data)
    assert snapshot_leaves(repo, str(img)) == reference_leaves(repo, str(img))


def test_zero_run_chunk_length_is_what_fastcdc_cuts(repo):
    """_Zeros.run: the chunk FastCDC cuts at any start inside a long run of zeros."""
    z = snapshot_mod._Zeros(repo.chunker, 1 << 20)
    cuts = repo.chunker.cut(bytes(1 << 20))
    assert {n for _, n in cuts[:-1]} == {z.run}
    assert z.test(memoryview(bytes(1000))) and z.test(memoryview(b""))
    assert not z.test(memoryview(bytes(999) + b"\x01")) and not z.test(memoryview(bytes(500) + b"\x01" + bytes(500)))


def test_repeats_far_apart_are_compressed_once(tmp_path, repo, monkeypatch):
    """A disk holds many copies of some files: a chunk that recurs windows later (before its
    pack is sealed, so the catalog does not know it yet) is compressed by one worker once,
    not again for every copy; every copy still restores."""
    part = random_bytes(300_000, 41) + b"text " * 40_000  # several chunks, partly compressible
    data = b"".join(random_bytes(200_000, 50 + i) + part for i in range(6))
    img = tmp_path / "a.img"
    img.write_bytes(data)
    monkeypatch.setattr(snapshot_mod, "BUFFER", 256 << 10)  # the copies lie in different windows
    calls: list[int] = []
    real = snapshot_mod.compression.compress

    def counting(data, *args):
        calls.append(len(data))
        return real(data, *args)

    monkeypatch.setattr(snapshot_mod.compression, "compress", counting)
    rec = snapshot_mod.take_snapshot(repo, str(img))
    # each new chunk once, plus at most the first chunks of each window that the stitch
    # replaced after a worker compressed them (before: every copy, 183 calls for 86 new chunks)
    windows = -(-len(data) // (256 << 10))
    assert rec.new_chunks <= len(calls) <= rec.new_chunks + 2 * windows
    out = tmp_path / "out.img"
    restore(repo, rec, str(out))
    assert out.read_bytes() == data
