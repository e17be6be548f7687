"""Used blocks only: which bytes of a source a snapshot skips as free, and how the record
keeps them.

``plan(source, mounted)`` reads the allocation maps of the source's filesystems
(images/filesystems: per partition of a GPT/MBR disk, or the whole source) and returns a
UsedPlan: the absolute byte ranges to skip and the record's ``filesystems`` entries, one
per filesystem area::

    {"partition": 2 | null, "offset": bytes, "length": bytes, "filesystem": "ext4" | null,
     "block_size": bytes, "used_bytes": bytes | null, "skipped_bytes": bytes,
     "notes": [str], "skipped": "<ranges.encode text, in block_size units from offset>"}

Skipped bytes are recorded as zeros: ranges of at least HOLE_MERGE bytes become zero extents
(never read), shorter ones are zeroed in the read buffer (their chunks hold zeros there). So
``restore`` writes zeros there like any zero extent, ``serve``/``mount`` show zeros, and
``verify`` leaves them out (``skipped(record)``). The encoded list is bounded to
SKIPPED_LIMIT characters per area (ranges.bounded: the shortest free ranges are read then).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import SourceError
from ..images.filesystems import disk_plan
from ..images.filesystems.ranges import Ranges, bounded, decode, normalise, overlapping, subtract, total
from ..images.source import HOLE_MERGE, Source
from ..rawnames import readable
from ..repository.catalog import SnapshotRecord

SKIPPED_LIMIT = 64 << 10  # characters of encoded ranges per filesystem in a record


@dataclass
class UsedPlan:
    skip: Ranges = field(default_factory=list)  # absolute byte ranges recorded as zeros, not read
    filesystems: list[dict] | None = None  # the record's field
    warnings: list[str] = field(default_factory=list)

    def extents(self, extents: Iterator[tuple[int, int, bool]]) -> Iterator[tuple[int, int, bool]]:
        """The source's ``(offset, length, is_data)`` extents with skipped ranges of at
        least HOLE_MERGE bytes turned into holes."""
        big = [r for r in self.skip if r[1] - r[0] >= HOLE_MERGE]
        for offset, length, is_data in extents:
            if not is_data or length < 0 or not big:
                yield offset, length, is_data
                continue
            yield from subtract(offset, offset + length, big)

    def filler(self, source: Source, pos: int, n: int) -> Callable[[memoryview], int]:
        """``source.filler(pos, n)``, zeroing the skipped ranges in what it reads."""
        fill = source.filler(pos, n)
        if not any(True for _ in overlapping(self.skip, pos, pos + n)):
            return fill

        def masked(view: memoryview) -> int:
            got = fill(view)
            for lo, hi in overlapping(self.skip, pos, pos + got):
                view[lo - pos:hi - pos] = bytes(hi - lo)
            return got

        return masked


def plan(source: Source, mounted: list[dict]) -> UsedPlan:
    """What to skip of ``source`` (an image file or device; anything else: nothing).
    ``mounted``: where it is mounted; read-write (--allow-mounted) reads every block. Raises
    SourceError when the source cannot be read."""
    if source.size is None or source.kind not in ("file", "device"):
        return UsedPlan()
    if any(m["mode"] == "rw" for m in mounted):
        note = "mounted read-write: its allocation may change while it is read (unless frozen), so every block is read"
        return UsedPlan(filesystems=[_entry(None, 0, source.size, None, 0, None, [], "", [note])])

    def read(offset: int, length: int) -> bytes:
        try:
            return os.pread(source.fd, length, offset)
        except OSError as exc:
            raise SourceError(f"cannot read {readable(source.path)} at byte {offset}: {exc.strerror}") from None

    areas, notes = disk_plan(read, source.size)
    out = UsedPlan(filesystems=[_entry(None, 0, source.size, None, 0, None, [], "", notes)] if notes else [],
                   warnings=list(notes))  # a damaged partition table: everything is read
    for a in areas:
        m = a.map
        free, text = bounded(m.free, m.block_size or 1, SKIPPED_LIMIT)
        notes = list(m.notes)
        if len(free) < len(m.free):
            left = total(m.free) - total(free)
            notes.append(f"{len(m.free) - len(free)} short free ranges ({left} bytes) read anyway, to keep the "
                         "record small")
        out.filesystems.append(_entry(a.partition, a.offset, a.length, m.filesystem, m.block_size, m.used_bytes,
                                      free, text, notes))
        out.skip += [(a.offset + s, a.offset + e) for s, e in free]
        if m.filesystem is not None and not free and m.notes:
            where = f"partition {a.partition}" if a.partition is not None else readable(source.path)
            out.warnings.append(f"{where} ({m.filesystem}): {m.notes[0]}")
    out.skip = normalise(out.skip)
    return out


def _entry(partition: int | None, offset: int, length: int, filesystem: str | None, block_size: int,
           used: int | None, free: Ranges, text: str, notes: list[str]) -> dict:
    return {"partition": partition, "offset": offset, "length": length, "filesystem": filesystem,
            "block_size": block_size, "used_bytes": used, "skipped_bytes": total(free), "notes": notes,
            "skipped": text}


def skipped(record: SnapshotRecord) -> Ranges:
    """The absolute byte ranges ``record`` skipped as free (its ``filesystems``); ValueError
    for a record whose list does not decode."""
    out: Ranges = []
    for fs in record.filesystems or ():
        if fs.get("skipped"):
            out += [(fs["offset"] + s, fs["offset"] + e) for s, e in decode(fs["skipped"], fs["block_size"] or 1)]
    return normalise(out)
