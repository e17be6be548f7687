"""Sequential read through NBD (nbdcopy to null:) vs restore, on one snapshot (docs/benchmarks.md).

usage: python benchmarks/nbd_throughput.py [--size-mib 1024] [--runs 5] [--workdir /var/tmp/dvaccess]

Builds a ~1 GiB image (3/4 incompressible, 1/8 text, 1/8 zeros), snapshots it, then alternates
`diskvault restore` to /dev/null (or, where restore refuses /dev/null, to a tmpfs file in
/dev/shm: no disk in the way) and `nbdcopy nbd://.../latest null:` against a running
`diskvault serve`, and prints the median of each (restore's own reported duration, without
interpreter start-up, and wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import blake3

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
DV = [sys.executable, "-m", "diskvault"]


def make_image(path: Path, mib: int) -> None:
    step = 16 << 20
    with open(path, "wb") as f:
        for i in range(mib // 16):
            if i % 8 == 7:
                f.write(bytes(step))
            elif i % 8 == 3:
                line = b"log line %d: all is well, nothing to report\n" % i
                f.write((line * (step // len(line) + 1))[:step])
            else:
                f.write(blake3.blake3(i.to_bytes(8, "little")).digest(length=step))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", default="/var/tmp/dvaccess")
    ap.add_argument("--out", help="also write the JSON figures to this file (make bench: benchmarks/nbd.json)")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    img, repo = work / "bench.img", work / "bench-repo"
    if not repo.exists():
        make_image(img, args.size_mib)
        subprocess.run([*DV, "init", "-r", repo], check=True, env=ENV, capture_output=True)
        subprocess.run([*DV, "snapshot", "-r", repo, img, "--no-progress"], check=True, env=ENV, capture_output=True)
    server = subprocess.Popen([*DV, "serve", "-r", repo, "--bind", "127.0.0.1:0", "--json"],
                              stdout=subprocess.PIPE, env=ENV)
    port = json.loads(server.stdout.readline())["port"]
    restore_own, restore_wall, nbd_wall = [], [], []
    target = Path("/dev/null")
    probe = subprocess.run([*DV, "restore", "-r", repo, "latest", target, "--json", "--no-progress"],
                           env=ENV, capture_output=True)
    if probe.returncode != 0:  # this restore refuses /dev/null
        target = Path("/dev/shm/dvbench-restore.img")
    try:
        for _ in range(args.runs):
            if target.name != "null":
                target.unlink(missing_ok=True)
            t = time.monotonic()
            out = subprocess.run([*DV, "restore", "-r", repo, "latest", target, "--json", "--no-progress"],
                                 check=True, env=ENV, capture_output=True)
            restore_wall.append(time.monotonic() - t)
            res = json.loads(out.stdout)
            restore_own.append(res["duration"])
            size = res["size"]
            if target.name != "null":
                target.unlink()
            t = time.monotonic()
            subprocess.run([shutil.which("nbdcopy"), f"nbd://127.0.0.1:{port}/latest", "null:"], check=True)
            nbd_wall.append(time.monotonic() - t)
    finally:
        server.terminate()
        server.wait()
        if target.name != "null":
            target.unlink(missing_ok=True)
    mb = size / 1e6
    r_own, r_wall, n = (statistics.median(x) for x in (restore_own, restore_wall, nbd_wall))
    figures = {
        "size_bytes": size, "runs": args.runs, "restore_target": str(target),
        "restore_s": round(r_own, 3), "restore_MBps": round(mb / r_own),
        "restore_wall_s": round(r_wall, 3), "restore_wall_MBps": round(mb / r_wall),
        "nbdcopy_s": round(n, 3), "nbdcopy_MBps": round(mb / n),
        "nbd_vs_restore": round(r_own / n, 2), "nbd_vs_restore_wall": round(r_wall / n, 2),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
