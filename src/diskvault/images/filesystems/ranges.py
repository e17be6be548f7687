"""Byte-range arithmetic for allocation maps, and the compact form a snapshot record keeps.

A range list is a sorted list of disjoint, non-touching ``(start, end)`` pairs (end
exclusive). ``encode(ranges, unit)`` writes one as text: the ranges in ``unit``-byte blocks,
delta-encoded (the gap since the previous range's end, then the length), each as an
unsigned LEB128 varint, zlib-compressed and base64-encoded; ``decode(text, unit)`` reverses
it (ValueError for text that is not such a list). A badly fragmented filesystem gives a
long list: ``bounded(ranges, unit, limit)`` drops the shortest ranges until the encoding
fits ``limit`` characters.
"""

from __future__ import annotations

import base64
import bisect
import zlib
from collections.abc import Iterable, Iterator

Ranges = list[tuple[int, int]]


def normalise(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sort, drop empty ranges and merge overlapping or touching ones."""
    out: Ranges = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def total(ranges: Iterable[tuple[int, int]]) -> int:
    return sum(end - start for start, end in ranges)


def overlapping(ranges: Ranges, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The parts of ``ranges`` (a range list) inside ``[start, end)``, in order."""
    i = bisect.bisect_right(ranges, (start, float("inf"))) - 1
    i = max(i, 0)
    while i < len(ranges) and ranges[i][0] < end:
        lo, hi = max(ranges[i][0], start), min(ranges[i][1], end)
        if lo < hi:
            yield lo, hi
        i += 1


def subtract(start: int, end: int, ranges: Ranges) -> Iterator[tuple[int, int, bool]]:
    """Split ``[start, end)`` by ``ranges``: ``(offset, length, kept)`` pieces in order
    covering it, ``kept`` False for the parts inside ``ranges``."""
    pos = start
    for lo, hi in overlapping(ranges, start, end):
        if lo > pos:
            yield pos, lo - pos, True
        yield lo, hi - lo, False
        pos = hi
    if pos < end:
        yield pos, end - pos, True


def _varint(n: int, out: bytearray) -> None:
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def encode(ranges: Ranges, unit: int) -> str:
    """The compact text of ``ranges`` (each start and end a multiple of ``unit``)."""
    raw = bytearray()
    pos = 0
    for start, end in ranges:
        if start % unit or end % unit or start < pos or end <= start:
            raise ValueError(f"range {start}..{end} is not a sorted, {unit}-byte aligned range")
        _varint((start - pos) // unit, raw)
        _varint((end - start) // unit, raw)
        pos = end
    return base64.b64encode(zlib.compress(bytes(raw), 9)).decode("ascii")


def decode(text: str, unit: int) -> Ranges:
    """The range list ``encode`` wrote; ValueError for anything else."""
    try:
        raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
    except (ValueError, zlib.error) as exc:
        raise ValueError(f"not an encoded range list: {exc}") from None
    nums: list[int] = []
    n = shift = 0
    for b in raw:
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            nums.append(n)
            n = shift = 0
    if shift or len(nums) % 2:
        raise ValueError("not an encoded range list: it ends inside a range")
    out: Ranges = []
    pos = 0
    for gap, length in zip(nums[::2], nums[1::2]):
        if length == 0 or (out and gap == 0):
            raise ValueError("not an encoded range list: an empty or touching range")
        start = pos + gap * unit
        pos = start + length * unit
        out.append((start, pos))
    return out


def bounded(ranges: Ranges, unit: int, limit: int) -> tuple[Ranges, str]:
    """``(kept ranges, their encoding)`` with the encoding at most ``limit`` characters:
    ranges shorter than a doubling threshold are dropped (their bytes are then read like
    used ones) until it fits."""
    text = encode(ranges, unit)
    least = unit
    while len(text) > limit and ranges:
        least *= 2
        ranges = [r for r in ranges if r[1] - r[0] >= least]
        text = encode(ranges, unit)
    return ranges, text
