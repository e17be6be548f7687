"""Content-defined chunking with FastCDC (pyfastcdc), fixed per repository.

``Chunker.cut`` cuts one buffer; ``Chunker.stream`` cuts a stream of buffers, carrying the
unfinished tail of each buffer into the next, so boundaries never depend on buffer sizes
(a property test checks that). ``Chunker.cut_guided`` finds the same boundaries faster when
an earlier cut of similar data (the parent snapshot) is known. Boundaries are part of the
repository format: a test pins them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .hashing import content_id

DEFAULT_AVG = 64 * 1024  # chosen by measurement, see docs/design.md "Chunk size"
MIN_AVG = 4 * 1024
MAX_AVG = 4 * 1024 * 1024


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int
    avg_size: int
    max_size: int

    @classmethod
    def for_average(cls, avg: int) -> ChunkerParams:
        if avg & (avg - 1) or not MIN_AVG <= avg <= MAX_AVG:
            raise ValueError(
                f"chunk size {avg} must be a power of two between {MIN_AVG} and {MAX_AVG} bytes"
            )
        return cls(min_size=avg // 4, avg_size=avg, max_size=avg * 4)

    @classmethod
    def from_config(cls, value: object) -> ChunkerParams:
        """The parameters config.json records, checked: raises ValueError unless they are
        ones ``init`` writes (``for_average`` of a power of two from 4K to 4M: sizes in bytes,
        min = avg / 4, max = 4 avg)."""
        keys = {"min_size", "avg_size", "max_size"}
        if not isinstance(value, dict) or set(value) != keys or any(type(v) is not int for v in value.values()):
            raise ValueError(f"chunker {value!r} is not {{min_size, avg_size, max_size}} in bytes")
        params = cls(**value)
        expected = cls.for_average(params.avg_size)
        if params != expected:
            raise ValueError(f"chunker sizes {params.min_size}/{params.avg_size}/{params.max_size} (min/avg/max) are not "
                             f"{expected.min_size}/{expected.avg_size}/{expected.max_size}")
        return params

    def to_dict(self) -> dict[str, int]:
        return {"min_size": self.min_size, "avg_size": self.avg_size, "max_size": self.max_size}


class Chunker:
    """Cuts bytes into (offset, length) pieces; safe to share between threads (stateless).
    ``seed`` (0: none; an encrypted repository's comes from its key) is XORed into FastCDC's
    gear table, so the same data is cut elsewhere in another repository; ``content_id`` is
    the repository's id function (``cut_guided`` compares ids)."""

    def __init__(self, params: ChunkerParams, seed: int = 0,
                 content_id: Callable[[bytes | bytearray | memoryview], bytes] = content_id) -> None:
        from pyfastcdc import FastCDC  # imported here: the CLI reads DEFAULT_AVG without it

        if not 0 <= seed < 1 << 63:
            raise ValueError("the chunker seed is a 63-bit number")
        self.params = params
        self.content_id = content_id
        self._fastcdc = FastCDC
        self._params = dict(
            avg_size=params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=1,
            seed=seed,
        )

    def cut(self, buf: bytes | bytearray | memoryview) -> list[tuple[int, int]]:
        """Boundaries of ``buf`` taken as a whole stream (the last piece ends at its end)."""
        if not len(buf):
            return []
        cdc = self._fastcdc(**self._params)
        return [(c.offset, c.length) for c in cdc.cut_buf(buf)]

    def cut_guided(
        self, view: memoryview, start: int, final: bool, hints: dict[int, tuple[bytes, int]]
    ) -> tuple[list[tuple[int, int]], list[bytes | None], int]:
        """The boundaries ``cut`` finds in ``view`` from ``start`` (a boundary), found with
        ``hints``: chunks of an earlier cut, ``{offset: (id, length)}``, each one that ended
        at a cut FastCDC chose (not where its data ended).

        FastCDC decides where a chunk ends from the chunk's own bytes alone, so where the
        bytes at a boundary hash to a hint's id, cutting would end that chunk where the hint
        ends: the hint is taken after one blake3 pass, with no gear hashing. Elsewhere the
        data is cut until a cut ends where a hint starts. Returns ``(cuts, ids, tail)``:
        ``ids[k]`` is cut k's id where a hint gave it (else None), and ``tail`` is where the
        unfinished last piece starts (``len(view)`` when ``final``: the data ends here).
        """
        n = len(view)
        cuts: list[tuple[int, int]] = []
        ids: list[bytes | None] = []
        pos = start
        while pos < n:
            hint = hints.get(pos)
            if hint is not None and pos + hint[1] <= n and self.content_id(view[pos : pos + hint[1]]) == hint[0]:
                cuts.append((pos, hint[1]))
                ids.append(hint[0])
                pos += hint[1]
                continue
            if hint is not None and pos + hint[1] > n and not final:
                return cuts, ids, pos  # the hinted chunk goes on past this data: unfinished
            # cut until a cut ends at a hint (after a change: soon); with no hints, all at once
            span = 2 * self.params.max_size if hints else n
            met = False
            while True:
                end = min(n, pos + span)
                piece = self.cut(view[pos:end])
                if end < n or not final:
                    piece.pop()  # it ends where the data ends, not at a cut
                for off, length in piece:
                    cuts.append((pos + off, length))
                    ids.append(None)
                    if pos + off + length in hints:
                        met = True
                        break
                if piece:
                    pos = cuts[-1][0] + cuts[-1][1]
                if met or end == n:
                    break
                span *= 4
            if not met:  # cut to the end: the rest, if any, is unfinished
                return cuts, ids, n if final else pos
        return cuts, ids, n

    def stream(
        self, fill: Callable[[memoryview], int], bufsize: int = 8 << 20
    ) -> Iterator[tuple[bytearray, list[tuple[int, int]]]]:
        """Cut the stream that ``fill`` produces into pieces, buffer by buffer.

        ``fill(view)`` fills ``view`` as far as it can and returns the byte count; fewer
        than ``len(view)`` means the stream ended. Yields ``(buffer, cuts)``: each buffer
        starts with the carried unfinished tail of the previous one, and ``cuts`` cover it
        exactly. Data is read straight into the buffer; only the tail (< max_size) is copied.
        A fresh bytearray is yielded every time, so consumers may keep it.
        """
        bufsize = max(bufsize, 2 * self.params.max_size)
        carry = b""
        while True:
            buf = bytearray(len(carry) + bufsize)
            buf[: len(carry)] = carry
            got = fill(memoryview(buf)[len(carry):])
            eof = got < bufsize
            if eof:
                del buf[len(carry) + got:]
            cuts = self.cut(buf)
            if not eof and cuts:
                start, _ = cuts.pop()
                carry = bytes(memoryview(buf)[start:])
                del buf[start:]
            if cuts:
                yield buf, cuts
            if eof:
                return


def parse_size(text: str) -> int:
    """'64K', '1M', '65536' -> bytes (binary units)."""
    units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B") if text.strip() else ""
    num = t.rstrip("KMGT")
    unit = t[len(num):]
    try:
        value = int(num)
    except ValueError:
        raise ValueError(f"cannot read size {text!r}: use e.g. 64K, 1M or 65536") from None
    if unit not in units or value < 0:
        raise ValueError(f"cannot read size {text!r}: use e.g. 64K, 1M or 65536")
    return value * units[unit]
