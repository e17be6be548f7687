"""diskvault vs restic, borg and casync on the same real images, plus the library ceiling.

Run by ``make bench`` (benchmarks/run.sh). Builds the images (benchmarks/images.py), then for
each repetition runs every tool in turn (order rotated per repetition, fresh repository per
repetition) on the same images: full snapshot, incremental snapshot, restore, data-verifying
check; measures wall time (command plus ``sync``, so every tool's data is durable), peak RSS
(``/usr/bin/time -v``) and repository bytes. Medians over the repetitions go to
``docs/benchmarks.md`` (+ ``docs/benchmarks.png``) and the raw figures to
``benchmarks/results.json``. A chunk-size study and the ceiling (benchmarks/ceiling.py) run in
the same invocation. Page cache: warm for every tool alike (each image is read once before
each step); the machine is shared, so caches are not dropped.

The widened set (benchmarks/images.py ``widened``: ext4 and NTFS with deleted files, a fully
allocated NTFS, FAT32, XFS, Btrfs, a GPT disk, each with a changed copy) runs the same series
(check only on the ext4 pair, to save time); ``--scale`` sizes it (default 0.25: 256 MiB to
0.8 GiB images, meant to keep the run near 25 minutes on 2 quiet cores; it took 44 on a busy
shared machine; 2.0 gives 2-6.5 GiB images), ``--quick`` is a small smoke run. The machine's write bound (``dd`` of the
ext4 image's size to a file with ``conv=fsync``, and without it: page cache) and the codec
table (benchmarks/codecs.py, run as a script) are measured in the same invocation.

Fails (non-zero exit, one line) when a tool is missing or a restore is not bit-identical.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import blake3

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import ceiling as ceiling_mod  # noqa: E402
import images  # noqa: E402

PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"), RESTIC_PASSWORD="bench", DISKVAULT_PASSWORD="bench",
           BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes", BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
MB = 1e6


class Failed(Exception):
    pass


def run(argv: list[str], cwd: Path | None = None, rss_file: Path | None = None) -> tuple[float, int, str]:
    """Run argv under /usr/bin/time -v, then sync; returns (seconds, peak RSS bytes, stdout)."""
    rss_file = rss_file or Path("/tmp/diskvault-bench-time.txt")
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", "-o", str(rss_file), *argv], cwd=cwd, env=ENV,
                          capture_output=True)
    os.sync()
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise Failed(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    rss = 0
    for line in rss_file.read_text().splitlines():
        if "Maximum resident set size" in line:
            rss = int(line.split(":")[1]) * 1024
    return dt, rss, proc.stdout.decode(errors="replace")


def tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.readinto(bytearray(8 << 20)):
            pass


# --- the tools ------------------------------------------------------------------------
class Tool:
    name = ""
    settings = ""

    def init(self, repo: Path) -> None: ...
    def backup(self, repo: Path, image: Path, name: str) -> list[str]: ...
    def restore(self, repo: Path, name: str, out: Path) -> tuple[list[str], Path | None]: ...
    def check(self, repo: Path) -> list[str] | None: ...
    def version(self) -> str: ...


class Diskvault(Tool):
    name = "diskvault"

    def __init__(self, chunk: str | None = None, check_src: str | None = None) -> None:
        self.chunk = chunk
        self.check_env = dict(ENV, PYTHONPATH=check_src) if check_src else ENV
        self.has_check = b"--read-data" in subprocess.run(
            [PY, "-m", "diskvault", "check", "--help"], env=self.check_env, capture_output=True).stdout
        self.settings = ("defaults: 64 KiB average chunks, `--compression auto` (zstd level 1 while much of the data read "
                         "is new, as in the full snapshot; zstd level 3 for an incremental's few new chunks), encrypted "
                         "(AES-256-GCM, the default)")
        self.check_label = ("`check --read-data`" if self.has_check else
                            "stand-in: benchmarks/verify_packs.py (sequential read + lz4 + blake3 of every pack "
                            "entry, 2 threads) because `check --read-data` is not on this branch")
        if check_src and self.has_check:
            self.check_label += f" from {check_src} (same repository format)"

    def cli(self, *args: str) -> list[str]:
        return [PY, "-m", "diskvault", *args]

    def init(self, repo: Path) -> None:
        extra = ["--chunk-size", self.chunk] if self.chunk else []
        subprocess.run(self.cli("init", "-r", str(repo), *extra), env=ENV, check=True, capture_output=True)

    def backup(self, repo, image, name):
        return self.cli("snapshot", "-r", str(repo), str(image), "--tag", name, "--no-progress", "--json")

    def restore(self, repo, name, out):
        target = out / "restored.img"
        return self.cli("restore", "-r", str(repo), f"latest:{name}", str(target), "--no-progress"), target

    def check(self, repo):
        if self.has_check:
            return ["env", f"PYTHONPATH={self.check_env['PYTHONPATH']}", *self.cli("check", "-r", str(repo), "--read-data")]
        return [PY, str(HERE / "verify_packs.py"), str(repo)]

    def version(self):
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                              capture_output=True, text=True).stdout.strip() or "?"


class DiskvaultPlain(Diskvault):
    """diskvault with ``init --encryption none``: what encryption costs (benchmarks/encryption.py)."""

    name = "diskvault-none"

    def __init__(self, check_src: str | None = None) -> None:
        super().__init__(check_src=check_src)
        self.settings = self.settings.replace("encrypted (AES-256-GCM, the default)", "`--encryption none`")

    def init(self, repo: Path) -> None:
        subprocess.run(self.cli("init", "-r", str(repo), "--encryption", "none"), env=ENV, check=True,
                       capture_output=True)


class Restic(Tool):
    name = "restic"
    settings = "defaults (repository v2, auto zstd compression, AES-256 encryption always on)"

    def init(self, repo):
        subprocess.run(["restic", "init", "-q", "-r", str(repo)], env=ENV, check=True, capture_output=True)

    def backup(self, repo, image, name):
        return ["restic", "backup", "-q", "-r", str(repo), "--host", "bench", "--tag", name, str(image)]

    def restore(self, repo, name, out):
        return ["restic", "restore", "-q", "-r", str(repo), "latest", "--tag", name, "--target", str(out)], None

    def check(self, repo):
        return ["restic", "check", "-q", "--read-data", "-r", str(repo)]

    def version(self):
        return subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.split()[1]


class Borg(Tool):
    name = "borg"
    settings = "`--compression lz4` (borg's default), `-e none`, default chunker (2 MiB average)"

    def init(self, repo):
        subprocess.run(["borg", "init", "-e", "none", str(repo)], env=ENV, check=True, capture_output=True)

    def backup(self, repo, image, name):
        return ["borg", "create", "--compression", "lz4", f"{repo}::{name}", str(image)]

    def restore(self, repo, name, out):
        return ["borg", "extract", f"{repo}::{name}"], None

    def check(self, repo):
        return ["borg", "check", "--verify-data", str(repo)]

    def version(self):
        return subprocess.run(["borg", "--version"], capture_output=True, text=True).stdout.split()[1]


class Casync(Tool):
    name = "casync"
    settings = "defaults (64 KiB average chunks, zstd); casync has no data-verifying check"

    def init(self, repo):
        repo.mkdir()

    def backup(self, repo, image, name):
        return ["casync", "make", "--store", str(repo / "store"), str(repo / f"{name}.caibx"), str(image)]

    def restore(self, repo, name, out):
        target = out / "restored.img"
        return ["casync", "extract", "--store", str(repo / "store"), str(repo / f"{name}.caibx"), str(target)], target

    def check(self, repo):
        return None

    def version(self):
        out = subprocess.run(["casync", "--version"], capture_output=True, text=True).stdout.split()
        return out[-1] if out else "?"


def restored_file(out: Path) -> Path:
    files = [Path(d) / f for d, _, fs in os.walk(out) for f in fs]
    if len(files) != 1:
        raise Failed(f"restore into {out} produced {len(files)} files, expected 1")
    return files[0]


def digest(path: Path) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as f:
        buf = bytearray(16 << 20)
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


# --- one repetition --------------------------------------------------------------------
def series(tool: Tool, work: Path, base: Path, changed: Path | None, verify: dict[Path, str] | None,
           rec: dict, check: bool = True) -> None:
    """full (+ incremental) snapshot, restore of the last one, check; appends to rec."""
    repo = work / f"repo-{tool.name}"
    out = work / f"out-{tool.name}"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    tool.init(repo)
    os.sync()
    before = tree_bytes(repo)
    warm(base)
    dt, rss, stdout = run(tool.backup(repo, base, "full"), cwd=out)
    add(rec, "full_s", dt), add(rec, "full_rss", rss)
    if tool.name.startswith("diskvault"):
        add(rec, "full_inner_s", json.loads(stdout)["duration"])
    after_full = tree_bytes(repo)
    add(rec, "repo_full", after_full - before)
    last, last_name = base, "full"
    if changed is not None:
        warm(changed)
        dt, rss, stdout = run(tool.backup(repo, changed, "incr"), cwd=out)
        add(rec, "incr_s", dt), add(rec, "incr_rss", rss)
        if tool.name.startswith("diskvault"):
            add(rec, "incr_inner_s", json.loads(stdout)["duration"])
        add(rec, "repo_incr", tree_bytes(repo) - after_full)
        last, last_name = changed, "incr"
    argv, target = tool.restore(repo, last_name, out)
    dt, rss, _ = run(argv, cwd=out)
    add(rec, "restore_s", dt), add(rec, "restore_rss", rss)
    if verify is not None and tool.name.startswith("diskvault"):
        # free blocks of a filesystem are not stored (docs/design.md "Used blocks only"): the
        # restored image must equal the snapshot, and the snapshot the image, on what was kept
        for image in (target, last):
            proc = subprocess.run(tool.cli("verify", "-r", str(repo), f"latest:{last_name}", str(image)), env=ENV,
                                  capture_output=True)
            if proc.returncode != 0:
                raise Failed(f"{tool.name}: verify of {image.name} exited {proc.returncode}: {proc.stderr[-300:]!r}")
    elif verify is not None:
        got = digest(target or restored_file(out))
        if got != verify[last]:
            raise Failed(f"{tool.name}: restored image differs from {last.name}")
    shutil.rmtree(out)
    argv = tool.check(repo)
    if argv is not None and changed is not None and check:
        dt, rss, _ = run(argv, cwd=work)
        add(rec, "check_s", dt), add(rec, "check_rss", rss)
    shutil.rmtree(repo, ignore_errors=True)


def add(rec: dict, key: str, value: float) -> None:
    rec.setdefault(key, []).append(value)


# --- chunk-size study ----------------------------------------------------------------------
def chunk_study(work: Path, base: Path, changed: Path, sizes: list[str], reps: int) -> list[dict]:
    """Per average size: full snapshot of base, incremental of changed (median of reps)."""
    rows = []
    for size in sizes:
        tool = Diskvault(size)
        rec: dict = {}
        for _ in range(reps):
            repo = work / "repo-chunks"
            shutil.rmtree(repo, ignore_errors=True)
            tool.init(repo)
            warm(base)
            full_s, full_rss, _ = run(tool.backup(repo, base, "full"))
            after_full = tree_bytes(repo)
            warm(changed)
            incr_s, _, out = run(tool.backup(repo, changed, "incr"))
            for k, v in dict(full_s=full_s, incr_s=incr_s, repo_full=after_full,
                             incr_added=tree_bytes(repo) - after_full, rss=full_rss,
                             catalog=sum(os.path.getsize(p) for p in repo.glob("catalog.sqlite*")),
                             chunks=json.loads(out)["chunks"]).items():
                add(rec, k, v)
            shutil.rmtree(repo)
        row = dict(avg=size, **{k: statistics.median(v) for k, v in rec.items()})
        rows.append(row)
        print(f"  chunks {size}: full {row['full_s']:.2f}s incr {row['incr_s']:.2f}s added "
              f"{row['incr_added'] / MB:.1f} MB catalog {row['catalog'] / MB:.1f} MB", flush=True)
    return rows


# --- report ----------------------------------------------------------------------------------
def med(rec: dict, key: str) -> float | None:
    vals = rec.get(key)
    return statistics.median(vals) if vals else None


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return f"{cpu}, {os.cpu_count()} cores, {mem} MiB RAM, {platform.system()} {platform.release()}"


def write_bound(work: Path, size: int) -> dict:
    """MB/s of writing ``size`` bytes with dd (8 MiB blocks): to a file with conv=fsync (the
    disk), to a file without it (the page cache), and of reading them back to /dev/null."""
    target = work / "write-bound.img"
    out = {}
    count = max(1, size // (8 << 20))
    for key, extra in (("fsync_MBps", ["conv=fsync"]), ("cache_MBps", [])):
        target.unlink(missing_ok=True)
        os.sync()
        t0 = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=8M", f"count={count}", "status=none", *extra], check=True)
        out[key] = count * (8 << 20) / (time.perf_counter() - t0) / MB
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={target}", "of=/dev/null", "bs=8M", "status=none"], check=True)
    out["read_cached_MBps"] = count * (8 << 20) / (time.perf_counter() - t0) / MB
    out["bytes"] = count * (8 << 20)
    target.unlink()
    return out


def codec_table(imgs: dict[str, Path], sample: int) -> None:
    """benchmarks/codecs.py on these images (a script: its name would shadow the stdlib's)."""
    subprocess.run([PY, str(HERE / "codecs.py"), *[f"{k}={v}" for k, v in imgs.items()], "--sample", str(sample),
                    "--out", str(HERE / "codecs.json")], check=True, env=ENV)


def render(docs: Path) -> None:
    """report.py needs matplotlib, which lives in its own venv (see run.sh)."""
    py = os.environ.get("REPORT_PYTHON", PY)
    subprocess.run([py, str(HERE / "report.py"), str(docs)], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=os.environ.get("BENCH_WORK", "/var/tmp/diskvault-bench"))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--scale", type=float, default=0.25, help="size of the widened set (1.0: 1-3.3 GiB images)")
    ap.add_argument("--quick", action="store_true", help="a small smoke run: scale 1/16, 1 repetition, small "
                    "legacy images, no huge image")
    ap.add_argument("--codec-sample", type=int, default=64 << 20, help="bytes per image for the codec table")
    ap.add_argument("--ext4-size", type=int, default=2 << 30)
    ap.add_argument("--ext4-used", type=int, default=1 << 30)
    ap.add_argument("--ntfs-size", type=int, default=1 << 30)
    ap.add_argument("--vm-size", type=int, default=8 << 30)
    ap.add_argument("--huge-size", type=int, default=64 << 30,
                    help="a sparse image only diskvault snapshots, for its peak RSS")
    ap.add_argument("--study-reps", type=int, default=2)
    ap.add_argument("--tools", default="diskvault,restic,borg,casync")
    ap.add_argument("--chunk-sizes", default="", help="chunk-size study, e.g. 16K,32K,64K,128K,256K (off by default)")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--check-src", help="src/ directory of a diskvault that has `check --read-data` "
                    "(when this one does not)")
    args = ap.parse_args()
    if args.quick:
        args.scale, args.reps, args.huge_size = 1 / 16, 1, 0
        args.ext4_size, args.ext4_used, args.ntfs_size, args.vm_size = 256 << 20, 128 << 20, 256 << 20, 1 << 30
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)

    print("building images ...", flush=True)
    base, changed, change_desc = images.build_ext4(work, args.ext4_size, args.ext4_used)
    notes = []
    try:
        ntfs = images.build_ntfs(work, args.ntfs_size, args.ntfs_size * 4 // 10)
    except (subprocess.CalledProcessError, OSError) as exc:
        ntfs = None
        notes.append(f"NTFS image skipped: {exc}")
    vm = images.build_vm(work, args.vm_size, ntfs)
    huge = images.build_vm(work, args.huge_size, ntfs, name="huge.img") if args.huge_size else None
    imgs = {"ext4": base, "ext4 changed": changed, "vm": vm}
    if ntfs is not None:
        imgs["ntfs"] = ntfs
    try:
        wide = images.widened(work / "widened", args.scale)
    except (subprocess.CalledProcessError, OSError) as exc:
        wide = []
        notes.append(f"widened set skipped: {exc}")
    for pair in wide:
        imgs[pair.name] = pair.base
        imgs[f"{pair.name} changed"] = pair.changed
    verify = {p: digest(p) for p in imgs.values()}
    print("write bound and codec table ...", flush=True)
    bound = write_bound(work, base.stat().st_size)
    codec_imgs = {"ext4": base, **{p.name: p.base for p in wide if p.name in ("ntfs-full", "xfs", "fat32")}}
    codec_table(codec_imgs, args.codec_sample)

    all_tools: dict[str, Tool] = {"diskvault": Diskvault(check_src=args.check_src), "restic": Restic(), "borg": Borg(), "casync": Casync()}
    tools = [all_tools[t] for t in args.tools.split(",")]
    for t in tools:
        if t.name != "diskvault" and not shutil.which(t.name):
            raise Failed(f"{t.name} is not installed: run benchmarks/run.sh (make bench) as root")
    results: dict[str, dict[str, dict]] = {"ext4": {}, "ntfs": {}, "vm": {}, **{p.name: {} for p in wide}}
    ceil: dict = {}
    for rep in range(args.reps):
        order = tools[rep % len(tools):] + tools[: rep % len(tools)]
        for t in order:
            print(f"rep {rep + 1}/{args.reps}: {t.name}", flush=True)
            v = verify if rep == 0 else None
            series(t, work, base, changed, v, results["ext4"].setdefault(t.name, {}))
            if ntfs is not None:
                series(t, work, ntfs, None, v, results["ntfs"].setdefault(t.name, {}))
            series(t, work, vm, None, v, results["vm"].setdefault(t.name, {}))
            for pair in wide:
                series(t, work, pair.base, pair.changed, v, results[pair.name].setdefault(t.name, {}), check=False)
        warm(base)
        add(ceil, "full_s", ceiling_mod.ceiling(str(base), compress=True))
        warm(changed)
        add(ceil, "incr_s", ceiling_mod.ceiling(str(changed), compress=False))
        print(f"  ceiling full {ceil['full_s'][-1]:.2f}s incr {ceil['incr_s'][-1]:.2f}s", flush=True)
        for name in ("ntfs", "vm", *(p.name for p in wide)):  # every image's full-snapshot bound
            if name in imgs:
                warm(imgs[name])
                add(ceil.setdefault("images", {}).setdefault(name, {}), "full_s",
                    ceiling_mod.ceiling(str(imgs[name]), compress=True))

    print("huge sparse image (diskvault only, peak RSS) ...", flush=True)
    huge_rec: dict = {}
    for _ in range(args.reps if huge else 0):
        repo = work / "repo-huge"
        shutil.rmtree(repo, ignore_errors=True)
        all_tools["diskvault"].init(repo)
        dt, rss, _ = run(all_tools["diskvault"].backup(repo, huge, "full"))
        add(huge_rec, "full_s", dt), add(huge_rec, "full_rss", rss)
        shutil.rmtree(repo)
    print("chunk-size study ...", flush=True)
    study = (chunk_study(work, base, changed, args.chunk_sizes.split(","), args.study_reps)
             if args.chunk_sizes else [])

    versions = {t.name: t.version() for t in tools}
    raw = dict(date=started.isoformat(timespec="seconds"), machine=machine(), versions=versions,
               reps=args.reps, images={k: dict(path=str(p), size=p.stat().st_size,
                                               allocated=p.stat().st_blocks * 512) for k, p in imgs.items()},
               change=change_desc, notes=notes, results=results, ceiling=ceil, chunk_study=study,
               huge=dict(size=huge.stat().st_size, allocated=huge.stat().st_blocks * 512, **huge_rec) if huge else None,
               widened=[dict(name=p.name, desc=p.desc, change=p.change) for p in wide], scale=args.scale,
               write_bound=bound,
               settings={t.name: t.settings for t in tools},
               check_label=all_tools["diskvault"].check_label)
    (HERE / "results.json").write_text(json.dumps(raw, indent=1) + "\n")
    render(Path(args.docs))
    print(f"wrote {args.docs}/benchmarks.md, benchmarks.png and benchmarks/results.json "
          f"({(datetime.datetime.now(datetime.timezone.utc) - started).seconds // 60} min)")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except Failed as exc:
        print(f"bench: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
