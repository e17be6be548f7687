"""Chunking is deterministic, independent of how the stream is buffered, and resynchronises
after an edit."""

from hypothesis import given
from hypothesis import strategies as st

from diskvault.repository.chunking import Chunker, ChunkerParams
from diskvault.repository.hashing import content_id
from helpers import random_bytes

CHUNKER = Chunker(ChunkerParams.for_average(4 << 10))


def streamed(data: bytes, bufsize: int) -> list[tuple[int, int]]:
    pos = 0

    def fill(view):
        nonlocal pos
        n = min(len(view), len(data) - pos)
        view[:n] = data[pos : pos + n]
        pos += n
        return n

    out, base = [], 0
    for buf, cuts in CHUNKER.stream(fill, bufsize):
        out += [(base + o, n) for o, n in cuts]
        base += sum(n for _, n in cuts)
    return out


@given(seed=st.integers(0, 2**32), size=st.integers(0, 600_000), bufsize=st.integers(1, 200_000))
def test_stream_cuts_equal_whole_buffer_cuts(seed, size, bufsize):
    data = random_bytes(size, seed) if size else b""
    assert streamed(data, bufsize) == CHUNKER.cut(data)


@given(seed=st.integers(0, 2**32), at=st.integers(0, 300_000), insert=st.binary(min_size=1, max_size=64))
def test_boundaries_resynchronise_after_an_insert(seed, at, insert):
    data = random_bytes(400_000, seed)
    edited = data[:at] + insert + data[at:]
    before = {data[o : o + n] for o, n in CHUNKER.cut(data)}
    after = [edited[o : o + n] for o, n in CHUNKER.cut(edited)]
    changed = [c for c in after if c not in before]
    # only the chunks around the edit differ: a few chunks, never the whole tail
    assert sum(len(c) for c in changed) <= 4 * CHUNKER.params.max_size


edits = st.lists(st.tuples(st.sampled_from(["insert", "delete", "overwrite"]), st.integers(0, 10**9),
                           st.integers(1, 20_000), st.integers(0, 99)), max_size=5)


def edited(data: bytes, changes) -> bytes:
    for kind, at, n, seed in changes:
        at %= len(data) + 1
        if kind == "insert":
            data = data[:at] + random_bytes(n, seed) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + n :]
        else:
            data = data[:at] + random_bytes(n, seed) + data[at + n :]
    return data


bogus = st.lists(st.tuples(st.integers(0, 300_000), st.integers(1, 70_000)), max_size=6)


def hints_of(data: bytes) -> dict[int, tuple[bytes, int]]:
    """Every chunk of ``data`` but its last (which ended with the data) as a hint."""
    cuts = CHUNKER.cut(data)[:-1]
    return {o: (content_id(data[o : o + n]), n) for o, n in cuts}


@given(seed=st.integers(0, 2**32), size=st.integers(1, 300_000), changes=edits, repeat=st.booleans(), wrong=bogus)
def test_guided_cuts_equal_plain_cuts(seed, size, changes, repeat, wrong):
    """With the hints of an earlier version, cut_guided finds exactly cut's boundaries, and
    every id it hands out is the hash of that chunk's bytes."""
    data = random_bytes(size, seed)
    if repeat:  # a repeating block: hints recur at offsets where no hinted chunk started
        data = (data[: 1000 + seed % 30_000] * (size // 1000 + 1))[:size]
    new = edited(data, changes)
    if not new:
        return
    hints = hints_of(data) | {at: (bytes(32), n) for at, n in wrong}
    cuts, ids, tail = CHUNKER.cut_guided(memoryview(new), 0, True, hints)
    assert cuts == CHUNKER.cut(new) and tail == len(new)
    for (o, n), ident in zip(cuts, ids):
        assert ident is None or ident == content_id(new[o : o + n])


@given(seed=st.integers(0, 2**32), size=st.integers(1, 300_000), changes=edits, cut_at=st.integers(1, 300_000),
       wrong=bogus)
def test_guided_cuts_of_an_unfinished_buffer_are_a_prefix(seed, size, changes, cut_at, wrong):
    """Not ``final`` (more data follows): the cuts are the first of the plain cuts of all
    the data, and ``tail`` is where the next one starts. Hints whose bytes are not there
    (``wrong``: anywhere, any length) change nothing."""
    data = random_bytes(size, seed)
    new = edited(data, changes)
    part = new[: cut_at % (len(new) + 1)]
    hints = hints_of(data) | {at: (bytes(32), n) for at, n in wrong}
    cuts, _, tail = CHUNKER.cut_guided(memoryview(part), 0, False, hints)
    assert cuts == CHUNKER.cut(new)[: len(cuts)]
    assert tail == (cuts[-1][0] + cuts[-1][1] if cuts else 0)
