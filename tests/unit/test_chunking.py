"""Chunk boundaries are part of the repository format: pinned here."""

import blake3
import pytest

from diskvault.repository.chunking import Chunker, ChunkerParams, parse_size
from helpers import random_bytes


def boundaries_digest(cuts):
    return blake3.blake3(repr([n for _, n in cuts]).encode()).hexdigest()[:32]


@pytest.mark.parametrize(
    "avg, count, digest",
    [
        (16 << 10, 217, "aad67ec96648ed001b17bc0683180981"),
        (64 << 10, 54, "422f9cabdda12cc51e56f937356d461e"),
    ],
)
def test_boundaries_are_pinned(avg, count, digest):
    # If this fails, a change altered chunk boundaries: existing repositories would stop
    # deduplicating against new snapshots. Never update these values casually.
    cuts = Chunker(ChunkerParams.for_average(avg)).cut(random_bytes(4 << 20, 42))
    assert len(cuts) == count
    assert boundaries_digest(cuts) == digest


def test_cuts_cover_the_input_exactly():
    data = random_bytes(1 << 20, 7)
    cuts = Chunker(ChunkerParams.for_average(16 << 10)).cut(data)
    assert cuts[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in zip(cuts, cuts[1:]))
    assert cuts[-1][0] + cuts[-1][1] == len(data)


def test_zero_runs_become_max_size_pieces():
    p = ChunkerParams.for_average(16 << 10)
    cuts = Chunker(p).cut(bytes(1 << 20))
    assert {n for _, n in cuts} == {p.max_size}


def test_stream_of_empty_input_yields_nothing():
    assert list(Chunker(ChunkerParams.for_average(16 << 10)).stream(lambda v: 0)) == []


@pytest.mark.parametrize("text, value", [("64K", 65536), ("1M", 1 << 20), ("65536", 65536), ("256KiB", 262144)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "12Q", "K"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("avg", [1000, 2048, 8 << 20])
def test_average_must_be_power_of_two_in_range(avg):
    with pytest.raises(ValueError):
        ChunkerParams.for_average(avg)


def test_guided_cut_of_a_changed_unfinished_end():
    """A hint that does not match where the rest of the data is one unfinished piece: the
    whole rest is the tail (this once looped forever)."""
    chunker = Chunker(ChunkerParams.for_average(4096))
    data = memoryview(random_bytes(1000, 1))  # shorter than min_size: one piece
    assert chunker.cut_guided(data, 0, False, {0: (bytes(32), 500)}) == ([], [], 0)
    assert chunker.cut_guided(data, 0, True, {0: (bytes(32), 500)}) == ([(0, 1000)], [None], 1000)
