"""What encryption costs: diskvault encrypted (the default) vs `--encryption none` vs restic
(which always encrypts), side by side in one run on the benchmark's ext4 pair (a real ext4
image and the same image changed in place by debugfs; benchmarks/images.py).

For each tool and repetition (the order rotates between repetitions): full snapshot,
incremental, restore of the incremental (verified by blake3 against the image) and
`check --read-data` (restic: `check --read-data`), each a fresh process timed with its
sync, via bench.py's ``series``. Writes benchmarks/encryption.json; report.py turns it into
the "Encryption" section of docs/benchmarks.md.

    python benchmarks/encryption.py [--work DIR] [--reps 3] [--ext4-size BYTES --ext4-used BYTES]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
from pathlib import Path

import bench
import images

HERE = Path(__file__).resolve().parent
TOOLS = ("diskvault", "diskvault-none", "restic")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/var/tmp/diskvault-bench-encryption")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ext4-size", type=int, default=2 << 30)
    ap.add_argument("--ext4-used", type=int, default=1 << 30)
    ap.add_argument("--out", default=str(HERE / "encryption.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    base, changed, change = images.build_ext4(work, args.ext4_size, args.ext4_used)
    verify = {p: bench.digest(p) for p in (base, changed)}
    tools = [bench.Diskvault(), bench.DiskvaultPlain(), bench.Restic()]
    if not shutil.which("restic"):
        raise bench.Failed("restic is not installed: run benchmarks/run.sh (make bench) as root")
    results: dict[str, dict] = {t.name: {} for t in tools}
    for rep in range(args.reps):
        for t in tools[rep % len(tools):] + tools[: rep % len(tools)]:
            print(f"rep {rep + 1}/{args.reps}: {t.name}", flush=True)
            bench.series(t, work, base, changed, verify if rep == 0 else None, results[t.name])
    out = dict(date=started.isoformat(timespec="seconds"), machine=bench.machine(), reps=args.reps,
               image=dict(size=base.stat().st_size, allocated=base.stat().st_blocks * 512), change=change,
               versions={t.name: t.version() for t in tools}, results=results)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} ({(datetime.datetime.now(datetime.timezone.utc) - started).seconds // 60} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
