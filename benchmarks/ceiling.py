"""The ceiling: what the libraries alone do on an image, with no repository.

Two threads each take half of the bytes diskvault reads of the image (its data extents less
the free blocks of the filesystems it understands: holes and free space skipped, as diskvault
does) and read them with ``preadv`` into 8 MiB buffers; an all-zero buffer is skipped (one
memcmp, as diskvault does); the others are cut into chunks (pyfastcdc), every chunk is
blake3-hashed and compressed with the full snapshot's codec (``--compression auto`` on new
data: zstd level 1; ``compress=False``: hashing only, the incremental case where almost
nothing is new). No deduplication, no repository. Prints ``seconds`` for the whole image.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import blake3
import pyfastcdc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from diskvault.images.source import open_source  # noqa: E402
from diskvault.ops.fsmap import plan  # noqa: E402
from diskvault.ops.snapshot import _Codec  # noqa: E402
from diskvault.repository import compression  # noqa: E402


def ceiling(path: str, avg: int = 64 << 10, compress: bool = True, threads: int = 2) -> float:
    src = open_source(path)
    extents = [(o, n) for o, n, d in plan(src, []).extents(src.extents()) if d]
    zeros = bytes(8 << 20)
    pieces = []  # split data into ~64 MiB pieces, dealt out round-robin
    for o, n in extents:
        for s in range(o, o + n, 64 << 20):
            pieces.append((s, min(64 << 20, o + n - s)))

    def work(mine: list[tuple[int, int]]) -> None:
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        cdc = pyfastcdc.FastCDC(avg_size=avg, min_size=avg // 4, max_size=avg * 4, normalized_chunking=1)
        for off, n in mine:
            done = 0
            while done < n:
                got = os.preadv(src.fd, [view[: min(len(buf), n - done)]], off + done)
                part = view[:got]
                done += got
                if zeros.startswith(part):
                    continue
                for c in cdc.cut_buf(part):
                    piece = part[c.offset : c.offset + c.length]
                    blake3.blake3(piece).digest()
                    if compress:
                        compression.compress(piece, *_Codec.AUTO_BULK)

    ts = [threading.Thread(target=work, args=(pieces[i::threads],)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    src.close()
    return dt


if __name__ == "__main__":
    path = sys.argv[1]
    comp = len(sys.argv) < 3 or sys.argv[2] != "nocompress"
    print(f"{ceiling(path, compress=comp):.3f}")
