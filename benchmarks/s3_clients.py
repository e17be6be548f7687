"""boto3 against obstore on a throw-away SeaweedFS on loopback: the measurement behind the
S3 client choice (docs/remote.md, "Why boto3").

    .venv/bin/python benchmarks/s3_clients.py [--out benchmarks/s3_clients.json]

Each client runs in its own process (import time and peak RSS are per process): PUT and GET
of 32 MiB packs, then ranged GETs of 64 KiB, 256 KiB and 1 MiB at random offsets. Best of
``--repeat`` runs per figure (MiB/s; ranged GETs also in requests/s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "servers"))

PACK = 32 << 20
RANGES = (64 << 10, 256 << 10, 1 << 20)


def _child(client: str, endpoint: str, bucket: str, repeat: int, packs: int, ranged: int) -> dict:
    t0 = time.perf_counter()
    if client == "boto3":
        import boto3
        from botocore.config import Config
        import_s = time.perf_counter() - t0
        c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                         config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))

        def put(key, data):
            c.put_object(Bucket=bucket, Key=key, Body=data)

        def get(key):
            return c.get_object(Bucket=bucket, Key=key)["Body"].read()

        def get_range(key, off, n):
            return c.get_object(Bucket=bucket, Key=key, Range=f"bytes={off}-{off + n - 1}")["Body"].read()
    else:
        import obstore
        from obstore.store import S3Store
        import_s = time.perf_counter() - t0
        s = S3Store(bucket, endpoint=endpoint, region="us-east-1", virtual_hosted_style_request=False,
                    client_options={"allow_http": True})

        def put(key, data):
            obstore.put(s, key, data)

        def get(key):
            return obstore.get(s, key).bytes()

        def get_range(key, off, n):
            return obstore.get_range(s, key, start=off, length=n)
    data = os.urandom(PACK)
    out: dict = {"import_s": round(import_s, 3)}
    best_put = best_get = 0.0
    for r in range(repeat):
        t = time.perf_counter()
        for i in range(packs):
            put(f"{client}/{r}/{i}.pack", data)
        best_put = max(best_put, packs * PACK / (time.perf_counter() - t) / 2**20)
        t = time.perf_counter()
        for i in range(packs):
            assert len(get(f"{client}/{r}/{i}.pack")) == PACK
        best_get = max(best_get, packs * PACK / (time.perf_counter() - t) / 2**20)
    out["put_mib_s"], out["get_mib_s"] = round(best_put, 1), round(best_get, 1)
    rnd = random.Random(1)
    for n in RANGES:
        best = 0.0
        for _ in range(repeat):
            t = time.perf_counter()
            for _ in range(ranged):
                off = rnd.randrange(0, PACK - n)
                assert len(get_range(f"{client}/0/{rnd.randrange(packs)}.pack", off, n)) == n
            best = max(best, ranged / (time.perf_counter() - t))
        out[f"range_{n >> 10}k_req_s"] = round(best, 1)
        out[f"range_{n >> 10}k_mib_s"] = round(best * n / 2**20, 1)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--packs", type=int, default=4)
    ap.add_argument("--ranged", type=int, default=100)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(a.child[0], a.child[1], a.child[2], a.repeat, a.packs, a.ranged)))
        return
    import s3servers
    with tempfile.TemporaryDirectory(prefix="dv-s3bench-") as tmp:
        srv = s3servers.start_seaweed(Path(tmp) / "weed")
        try:
            srv.make_bucket("bench")
            env = {**os.environ, **srv.env()}
            res = {}
            for client in ("boto3", "obstore"):
                r = subprocess.run([sys.executable, __file__, "--repeat", str(a.repeat), "--packs", str(a.packs),
                                    "--ranged", str(a.ranged), "--child", client, srv.endpoint, "bench"],
                                   env=env, check=True, capture_output=True, text=True)
                res[client] = json.loads(r.stdout)
                print(client, res[client], file=sys.stderr)
        finally:
            srv.stop()
    doc = {"server": "SeaweedFS 4.48 (weed mini), loopback", "pack_mib": PACK >> 20, **res}
    text = json.dumps(doc, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
