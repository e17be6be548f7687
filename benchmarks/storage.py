"""Storage layer throughput: the local directory against SeaweedFS on loopback, through the
``Storage`` interface the repository uses (docs/remote.md, docs/benchmarks.md).

    .venv/bin/python benchmarks/storage.py [--out benchmarks/storage.json] [--dir DIR]

Pack PUT: 32 MiB packs written as the pack writer does (``create``, 64 KiB ``write``s with a
``flush`` every 4 MiB, ``commit``), one at a time and two at once (an upload overlapping the
next pack's filling); MiB/s. Ranged GET: ``read_range`` of 64 KiB, 256 KiB and
1 MiB at random offsets, one thread and four (restore reads with several); requests/s and
MiB/s. Best of ``--repeat``. The local directory is ``--dir`` (default: a temporary folder
under /var/tmp, on disk: every commit is fsynced) and its reads come from the page cache;
the S3 server keeps its data under the same folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "servers")]

from diskvault.storage.local import LocalStorage  # noqa: E402
from diskvault.storage.s3 import S3Storage  # noqa: E402

PACK = 32 << 20
WRITE = 64 << 10
RANGES = (64 << 10, 256 << 10, 1 << 20)


def pack_name(i: int) -> str:
    h = f"{i:032x}"
    return f"packs/{h[:2]}/{h}.pack"


def bench(st, repeat: int, packs: int, ranged: int) -> dict:
    data = memoryview(os.urandom(PACK))

    def put(k: int) -> None:
        w = st.create(pack_name(k))
        for off in range(0, PACK, WRITE):
            w.write(data[off:off + WRITE])
            if (off + WRITE) % (4 << 20) == 0:
                w.flush()
        w.commit()

    out = {}
    k = 0
    for threads in (1, 2):
        best_put = 0.0
        for _ in range(repeat):
            t = time.perf_counter()
            with ThreadPoolExecutor(threads) as ex:
                list(ex.map(put, range(k, k + packs)))
            k += packs
            best_put = max(best_put, packs * PACK / (time.perf_counter() - t) / 2**20)
        out[f"pack_put_t{threads}_mib_s"] = round(best_put, 1)
    rnd = random.Random(7)
    for n in RANGES:
        for threads in (1, 4):
            jobs = [(pack_name(rnd.randrange(packs)), rnd.randrange(0, PACK - n)) for _ in range(ranged)]
            best = 0.0
            for _ in range(repeat):
                t = time.perf_counter()
                if threads == 1:
                    for name, off in jobs:
                        assert len(st.read_range(name, off, n)) == n
                else:
                    with ThreadPoolExecutor(threads) as ex:
                        assert all(len(b) == n for b in ex.map(lambda j: st.read_range(j[0], j[1], n), jobs))
                best = max(best, ranged / (time.perf_counter() - t))
            key = f"range_{n >> 10}k_t{threads}"
            out[key + "_req_s"] = round(best, 1)
            out[key + "_mib_s"] = round(best * n / 2**20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--packs", type=int, default=4)
    ap.add_argument("--ranged", type=int, default=200)
    a = ap.parse_args()
    import s3servers
    res: dict = {}
    with tempfile.TemporaryDirectory(prefix="dv-storage-bench-", dir=a.dir) as tmp:
        local = Path(tmp) / "local"
        local.mkdir()
        res["local"] = bench(LocalStorage(str(local)), a.repeat, a.packs, a.ranged)
        print("local", res["local"], file=sys.stderr)
        srv = s3servers.start_seaweed(Path(tmp) / "weed")
        try:
            srv.make_bucket("bench")
            st = S3Storage(srv.endpoint, "bench", "repo", access_key_id=srv.access_key,
                           secret_access_key=srv.secret_key)
            res["seaweedfs"] = bench(st, a.repeat, a.packs, a.ranged)
            print("seaweedfs", res["seaweedfs"], file=sys.stderr)
        finally:
            srv.stop()
    ratio = {k: round(res["seaweedfs"][k] / res["local"][k], 2) for k in res["local"] if k.endswith("_mib_s")}
    doc = {"what": "Storage interface: local directory vs SeaweedFS 4.48 on loopback (obstore client)",
           "pack_mib": PACK >> 20, "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1),
           "client_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           **res, "seaweedfs_over_local": ratio}
    text = json.dumps(doc, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
