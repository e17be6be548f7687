"""Measure `check --read-data` against `restore` to /dev/null on the same repository.

Usage: python benchmarks/integrity.py [WORKDIR] [SIZE_MIB] [RUNS] [OUT_JSON]
Builds WORKDIR/repo from a SIZE_MIB image (half random, half compressible, 1/16 zeros) unless it exists, then times both commands RUNS times, alternating, and prints
the best time of each and their ratio (acceptance: check >= 80% of restore's speed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import blake3

BOILER = (b"log line: all is well, nothing to report. " * 13)[:512]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))


def dv(*args: str) -> float:
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "diskvault", *args], check=True, env=ENV, stdout=subprocess.DEVNULL)
    return time.monotonic() - t


def main() -> None:
    work = sys.argv[1] if len(sys.argv) > 1 else "/tmp/dv-integrity-bench"
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    os.makedirs(work, exist_ok=True)
    repo = os.path.join(work, "repo")
    if not os.path.exists(repo):
        img = os.path.join(work, "src.img")
        with open(img, "wb") as f:
            for i in range(mib):
                if i % 16 == 15:
                    f.write(bytes(1 << 20))
                elif i % 2:  # unique but lz4-compressible: random 512 B + 512 B of boilerplate
                    noise = blake3.blake3(i.to_bytes(8, "little")).digest(length=1 << 19)
                    f.write(b"".join(noise[k : k + 512] + BOILER for k in range(0, 1 << 19, 512)))
                else:
                    f.write(blake3.blake3(i.to_bytes(8, "little")).digest(length=1 << 20))
        dv("init", "-r", repo)
        print(f"snapshot of {mib} MiB: {dv('snapshot', '-r', repo, img):.2f} s")
        os.unlink(img)
    best_c = best_r = float("inf")
    for _ in range(runs):
        best_r = min(best_r, dv("restore", "-r", repo, "latest", "/dev/null"))
        best_c = min(best_c, dv("check", "-r", repo, "--read-data"))
    print(f"restore to /dev/null: {best_r:.2f} s ({mib / best_r:.0f} MiB/s logical)")
    print(f"check --read-data:    {best_c:.2f} s ({mib / best_c:.0f} MiB/s logical)")
    print(f"check speed / restore speed: {best_r / best_c:.0%}")
    if len(sys.argv) > 4:
        with open(sys.argv[4], "w") as f:
            json.dump({"size_mib": mib, "runs": runs, "restore_devnull_s": round(best_r, 3),
                       "check_read_data_s": round(best_c, 3), "check_vs_restore": round(best_r / best_c, 2)}, f, indent=2)


if __name__ == "__main__":
    main()
