"""Walking a snapshot's chunk list when parts of it may be damaged, and byte-range sets.

``walk(load, root, size)`` is ``TreeReader.leaves`` in tolerant mode: it never raises for a
missing or damaged tree node, it yields a ``Lost(offset, length, node, reason)`` for the
byte range that node covers and goes on.
``merge`` turns ``(offset, length)`` pairs into sorted, non-overlapping ranges.
Used by check (attribution), restore --skip-damaged and repair. Never raises DamagedData.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ...repository.tree import Leaf, Lost, TreeReader, node_problem

__all__ = ["Lost", "merge", "node_problem", "walk"]


def walk(load: Callable[[bytes], bytes], root: bytes, size: int) -> Iterator[Leaf | Lost]:
    return TreeReader(load).leaves(root, size, tolerant=True)


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
