"""Codec trade-off table: lz4 and zstd at several levels on the benchmark images' chunks.

Each image's data extents (holes skipped) are cut into chunks with diskvault's chunker
(64 KiB average, as ``init`` does), all-zero chunks are dropped (diskvault never stores
them) and repeated chunks counted once (deduplication), up to ``--sample`` bytes per image
taken evenly over the image. Then for every codec x level, on one thread, one core:
compress every chunk as diskvault stores it (``repository/compression.py``: the codec's
output, or the raw bytes when that saves less than 1/16), then decompress every payload.

Reported per codec: stored bytes / raw bytes, compress and decompress MB/s **per core**
(raw bytes / CPU seconds of this thread, so other jobs on a shared machine change the
figures less than wall time would; still, read them as relative). zstd runs with
multithreading off (diskvault's two workers each compress their own chunks), no checksum,
no content size (as stored). Writes JSON (``--out``) for report.py.

    python benchmarks/codecs.py IMAGE [IMAGE...] --out benchmarks/codecs.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import lz4.block
import zstandard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
from diskvault.images.source import open_source  # noqa: E402
from diskvault.repository.chunking import Chunker, ChunkerParams, DEFAULT_AVG  # noqa: E402
from diskvault.repository.hashing import content_id  # noqa: E402

ZSTD_LEVELS = (-5, -3, -1, 1, 2, 3, 4)
MB = 1e6


def chunks_of(path: str, sample: int) -> list[bytes]:
    """Unique non-zero chunks of ``path``'s data, about ``sample`` bytes spread over it."""
    chunker = Chunker(ChunkerParams.for_average(DEFAULT_AVG))
    src = open_source(path)
    extents = [(o, n) for o, n, d in src.extents() if d]
    total = sum(n for _, n in extents)
    piece = 32 << 20  # read 32 MiB pieces, every k-th one
    step = max(1, -(-total // sample)) if sample else 1
    out, seen = [], set()
    k = 0
    for off, n in extents:
        for pos in range(off, off + n, piece):
            k += 1
            if (k - 1) % step:
                continue
            m = min(piece, off + n - pos)
            buf = bytearray(m)
            got = os.preadv(src.fd, [memoryview(buf)], pos)
            view = memoryview(buf)[:got]
            for o, ln in chunker.cut(view):
                c = view[o : o + ln]
                if not any(c[:64]) and c.tobytes() == bytes(ln):
                    continue
                ident = content_id(c)
                if ident not in seen:
                    seen.add(ident)
                    out.append(c.tobytes())
    src.close()
    return out


def codecs() -> list[tuple[str, object, object]]:
    """(name, compress(bytes) -> bytes, decompress(payload, raw_len) -> bytes)."""
    out = [("lz4", lambda b: lz4.block.compress(b, store_size=False),
            lambda p, n: lz4.block.decompress(p, uncompressed_size=n))]
    for level in ZSTD_LEVELS:
        zc = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=False, threads=0)
        zd = zstandard.ZstdDecompressor()
        out.append((f"zstd {level}", zc.compress, lambda p, n, zd=zd: zd.decompress(p, max_output_size=n)))
    return out


def measure(chunks: list[bytes], reps: int = 1) -> list[dict]:
    raw = sum(len(c) for c in chunks)
    rows = []
    for name, comp, decomp in codecs():
        best_c = best_d = float("inf")
        for _ in range(reps):
            t0 = time.thread_time()
            payloads = []
            for c in chunks:
                p = comp(c)
                payloads.append(p if len(p) < len(c) - (len(c) >> 4) else None)  # None: kept raw
            best_c = min(best_c, time.thread_time() - t0)
            t0 = time.thread_time()
            for p, c in zip(payloads, chunks):
                if p is not None:
                    decomp(p, len(c))
            best_d = min(best_d, time.thread_time() - t0)
        stored = sum(len(c) if p is None else len(p) for p, c in zip(payloads, chunks))
        rows.append(dict(codec=name, raw=raw, stored=stored, ratio=stored / raw,
                         compress_MBps=raw / best_c / MB, decompress_MBps=raw / best_d / MB))
        print(f"  {name:8} stored {stored / raw:6.1%}  compress {raw / best_c / MB:7.0f} MB/s  "
              f"decompress {raw / best_d / MB:7.0f} MB/s per core", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="+", help="NAME=PATH or PATH")
    ap.add_argument("--sample", type=int, default=256 << 20, help="bytes of data per image (0: all)")
    ap.add_argument("--reps", type=int, default=2, help="timings: best of this many passes")
    ap.add_argument("--out", default=str(HERE / "codecs.json"))
    args = ap.parse_args()
    result = dict(chunk_avg=DEFAULT_AVG, sample=args.sample, images={})
    for spec in args.images:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).name
        chunks = chunks_of(path, args.sample)
        print(f"{name}: {len(chunks)} unique chunks, {sum(map(len, chunks)) / MB:.0f} MB", flush=True)
        result["images"][name] = measure(chunks, args.reps)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
