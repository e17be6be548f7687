"""Walking a snapshot's chunk list when parts of it may be damaged, and byte-range sets.

``walk(load, root, size)`` yields the snapshot's leaves in image order like
``TreeReader.leaves`` but never raises for a missing or damaged tree node: it yields a
``Lost(offset, length, node, reason)`` for the byte range that node covers and goes on.
``merge`` turns ``(offset, length)`` pairs into sorted, non-overlapping ranges.
Used by check (attribution), restore --skip-damaged and repair. Never raises DamagedData.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..errors import DamagedData
from ..hashing import short
from ..tree import Leaf, parse


@dataclass(frozen=True, slots=True)
class Lost:
    offset: int
    length: int
    node: bytes
    reason: str


def walk(load: Callable[[bytes], bytes], root: bytes, size: int) -> Iterator[Leaf | Lost]:
    yield from _walk(load, root, 0, size)


def _walk(load: Callable[[bytes], bytes], nid: bytes, offset: int, covered: int) -> Iterator[Leaf | Lost]:
    try:
        level, items = parse(load(nid))
    except DamagedData as exc:
        yield Lost(offset, covered, nid, node_problem(nid, exc))
        return
    for ident, length in items:
        if level == 0:
            yield Leaf(offset, ident, length)
        else:
            yield from _walk(load, ident, offset, length)
        offset += length


def node_problem(nid: bytes, exc: Exception) -> str:
    """A message about tree node ``nid`` that names it once."""
    text = str(exc)
    return text if short(nid) in text else f"tree node {short(nid)}: {text}"


def merge(ranges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Sorted ``[offset, length]`` ranges with touching or overlapping ones joined."""
    out: list[list[int]] = []
    for off, n in sorted(ranges):
        if n <= 0:
            continue
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][0] + out[-1][1], off + n) - out[-1][0]
        else:
            out.append([off, n])
    return out
