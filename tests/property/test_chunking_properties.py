"""Chunking is deterministic, independent of how the stream is buffered, and resynchronises
after an edit."""

from hypothesis import given
from hypothesis import strategies as st

from diskvault.chunking import Chunker, ChunkerParams
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
