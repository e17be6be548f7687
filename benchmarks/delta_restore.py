"""Delta restore vs full restore onto the same target: rolling a disk back.

Usage: python benchmarks/delta_restore.py [WORKDIR] [SIZE_MIB] [RUNS] [OUT_JSON]

The ext4 benchmark images (benchmarks/images.py): ``base.ext4`` is snapshotted; the target
is a fully allocated copy of ``changed.ext4`` (the same file system after a night of changes
made with debugfs: new, deleted and rewritten files), as a disk holding the newer state.
Each run resets the target (``cp --sparse=never``), syncs and drops the page cache (root),
then times ``restore --no-delta --force`` (writes everything) and ``restore --delta
--force`` (reads the target, writes what differs), alternating, and checks the result with
``cmp``. Prints the best of RUNS for each, the bytes each wrote (``/proc/PID/io``
write_bytes of the command, cross-checked with ``--json`` bytes_written) and the ratio
(acceptance, issue 16: delta wall time <= 40% of the full restore's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))

from images import build_ext4  # noqa: E402

MiB = 1 << 20


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass  # not root: warm caches for both, said in the output


def restore(repo: Path, target: Path, mode: str) -> tuple[float, dict, int]:
    """(seconds, --json document, bytes the process wrote to storage)."""
    t = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(repo), str(target), mode], env=ENV,
                            stdout=subprocess.PIPE)
    out, _ = proc.communicate()
    seconds = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"restore {mode} failed ({proc.returncode})")
    doc, wrote = out.decode().splitlines()[-2:]
    return seconds, json.loads(doc), int(wrote)


# runs the CLI in-process and prints its JSON, then the write_bytes of this process
RUNNER = """
import contextlib, io, json, sys
from diskvault.cli import app
repo, target, mode = sys.argv[1:]
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    try:
        app(["restore", "-r", repo, "latest", target, "--force", "--json", "--no-progress", mode],
            standalone_mode=False)
    except SystemExit:
        pass
doc = buf.getvalue()
fields = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print(json.dumps(json.loads(doc)))
print(fields["write_bytes"])
"""


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/dv-delta-bench")
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    work.mkdir(parents=True, exist_ok=True)
    base, changed, desc = build_ext4(work, mib * MiB, mib * MiB * 45 // 100)
    repo = work / "repo"
    if not repo.exists():
        subprocess.run([sys.executable, "-m", "diskvault", "init", "-r", str(repo)], env=ENV, check=True)
        subprocess.run([sys.executable, "-m", "diskvault", "snapshot", "-r", str(repo), str(base), "--no-progress"],
                       env=ENV, check=True)
    target = work / "target.img"
    cold = os.geteuid() == 0
    best: dict[str, tuple[float, dict, int]] = {}
    for _ in range(runs):
        for mode in ("--no-delta", "--delta"):
            subprocess.run(["cp", "--sparse=never", str(changed), str(target)], check=True)
            drop_caches()
            seconds, res, wrote = restore(repo, target, mode)
            subprocess.run(["cmp", str(base), str(target)], check=True)
            if mode not in best or seconds < best[mode][0]:
                best[mode] = (seconds, res, wrote)
    target.unlink()
    (full_s, full_res, full_w), (delta_s, delta_res, delta_w) = best["--no-delta"], best["--delta"]
    out = {
        "image_mib": mib, "change": desc, "runs": runs, "page_cache_dropped": cold,
        "full_restore_s": round(full_s, 2), "full_written_bytes": full_w,
        "delta_restore_s": round(delta_s, 2), "delta_written_bytes": delta_w,
        "delta_json_bytes_written": delta_res["bytes_written"], "delta_json_bytes_zeroed": delta_res["bytes_zeroed"],
        "delta_bytes_read_target": delta_res["bytes_read_target"],
        "delta_chunks_unchanged": delta_res["chunks_unchanged"],
        "delta_vs_full_time": round(delta_s / full_s, 3),
    }
    print(json.dumps(out, indent=2))
    if len(sys.argv) > 4:
        Path(sys.argv[4]).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
