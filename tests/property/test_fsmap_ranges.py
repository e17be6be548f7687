"""Properties of the range arithmetic behind used-blocks snapshots (images/filesystems/ranges
and ops/fsmap): subtracting free ranges from a source's extents, the compact encoding a
snapshot record keeps, its bound, and the bitmap-to-ranges conversion."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from diskvault.images.filesystems.common import free_ranges
from diskvault.images.filesystems.ranges import bounded, decode, encode, normalise, overlapping, subtract, total
from diskvault.images.source import HOLE_MERGE
from diskvault.ops.fsmap import UsedPlan

UNIT = 512


@st.composite
def range_lists(draw, unit: int = UNIT, span: int = 4096):
    """A sorted list of disjoint, non-touching ranges aligned to ``unit``."""
    cuts = sorted(set(draw(st.lists(st.integers(0, span), max_size=40))))
    pairs = [(a * unit, b * unit) for a, b in zip(cuts[::2], cuts[1::2])]
    return normalise(pairs)


def _set(ranges) -> set[int]:
    return {b // UNIT for s, e in ranges for b in range(s, e, UNIT)}


@given(range_lists())
def test_encode_decode_roundtrip(ranges) -> None:
    assert decode(encode(ranges, UNIT), UNIT) == ranges


@given(range_lists(), st.integers(16, 400))
def test_bounded_fits_and_keeps_only_listed_ranges(ranges, limit) -> None:
    kept, text = bounded(ranges, UNIT, limit)
    assert decode(text, UNIT) == kept
    assert set(kept) <= set(ranges)
    assert len(text) <= limit or not kept


@given(range_lists(), st.integers(0, 4096 * UNIT), st.integers(0, 4096 * UNIT))
def test_subtract_covers_the_extent_and_skips_exactly_the_free_part(free, a, b) -> None:
    start, end = min(a, b), max(a, b)
    pieces = list(subtract(start, end, free))
    pos = start
    for off, n, _kept in pieces:  # in order, no gap, no overlap, nothing empty
        assert off == pos and n > 0
        pos += n
    assert pos == end or (start == end and not pieces)
    skipped = [(o, o + n) for o, n, kept in pieces if not kept]
    assert skipped == list(overlapping(free, start, end))
    assert all(not any(True for _ in overlapping(free, o, o + n)) for o, n, kept in pieces if kept)


@given(range_lists(unit=4096, span=2048), st.lists(st.tuples(st.integers(0, 2048), st.integers(1, 600)), max_size=6))
def test_plan_extents_hole_only_long_free_ranges(free, data) -> None:
    """Data extents minus the free ranges of at least HOLE_MERGE bytes; the rest of the
    source as it was."""
    extents, pos = [], 0
    for gap, length in data:
        if gap:
            extents.append((pos, gap * 4096, False))
            pos += gap * 4096
        extents.append((pos, length * 4096, True))
        pos += length * 4096
    plan = UsedPlan(skip=free)
    out = list(plan.extents(iter(extents)))
    assert sum(n for _, n, _ in out) == pos
    big = [r for r in free if r[1] - r[0] >= HOLE_MERGE]
    data_bytes = {b for o, n, d in out if d for b in range(o // 4096, (o + n) // 4096)}
    want = {b for o, n, d in extents if d for b in range(o // 4096, (o + n) // 4096)}
    want -= {b for s, e in big for b in range(s // 4096, e // 4096)}
    assert data_bytes == want


@given(st.binary(min_size=0, max_size=64), st.sampled_from([0, 1]))
def test_free_ranges_are_the_free_bits(bitmap, free_bit) -> None:
    limit = 1000 + max(len(bitmap) * 8 - 3, 0) * UNIT  # the last 3 bits lie past the end
    got = free_ranges(bitmap, 1000, UNIT, limit, free_bit)
    want = {k for k in range(len(bitmap) * 8) if (bitmap[k // 8] >> (k % 8) & 1) == free_bit
            and 1000 + (k + 1) * UNIT <= limit}
    assert got == normalise(got)
    assert {(s - 1000) // UNIT + i for s, e in got for i in range((e - s) // UNIT)} == want
    assert total(got) == len(want) * UNIT


def _fat_reference(table: bytes, width: int, count: int) -> tuple[list[tuple[int, int]], int] | str:
    """The FAT read entry by entry, as the specification says (free runs, free count, or the
    error message): what ``fat._scan`` computes with the regular-expression engine."""
    top = 0x0FFFFFF7 if width == 4 else 0xFFF7
    runs: list[tuple[int, int]] = []
    nfree = 0
    for n in range(2, count + 2):
        e = int.from_bytes(table[n * width:(n + 1) * width], "little") & (0x0FFFFFFF if width == 4 else 0xFFFF)
        if e == 0:
            nfree += 1
            if runs and runs[-1][1] == n:
                runs[-1] = (runs[-1][0], n + 1)
            else:
                runs.append((n, n + 1))
        elif e < top and not 2 <= e < count + 2:
            return f"FAT entry {n} points to cluster {e}, which does not exist"
    return runs, nfree


@st.composite
def fat_tables(draw):
    width = draw(st.sampled_from([2, 4]))
    count = draw(st.integers(1, 300))
    top = 0x0FFFFFF7 if width == 4 else 0xFFF7
    entry = st.one_of(
        st.just(0), st.just(0), st.integers(2, count + 1),  # free (often), a cluster that exists
        st.integers(top, 0x0FFFFFFF if width == 4 else 0xFFFF),  # bad cluster, end of chain
        st.just(1), st.integers(1, 0x0FFFFFFF if width == 4 else 0xFFFF),  # clusters that do not exist
    )
    entries = [draw(st.integers(0, 0xFFFFFFFF if width == 4 else 0xFFFF))] * 2
    entries += draw(st.lists(entry, min_size=count, max_size=count))
    if width == 4:  # the reserved top 4 bits, which readers must ignore
        entries = [e | draw(st.sampled_from([0, 0, 0x10000000, 0xF0000000])) for e in entries]
    table = b"".join(e.to_bytes(width, "little") for e in entries) + draw(st.binary(max_size=8))
    return table, width, count


@given(fat_tables())
def test_fat_scan_equals_the_entry_by_entry_reading(case) -> None:
    from diskvault.images.filesystems.common import Inconsistent
    from diskvault.images.filesystems.fat import _scan

    table, width, count = case
    want = _fat_reference(table, width, count)
    try:
        got = _scan(table, width, count)
    except Inconsistent as exc:
        got = str(exc)
    assert got == want
