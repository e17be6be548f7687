#!/usr/bin/env bash
# `make bench`: installs the peers (restic, borgbackup, casync) from Debian packages and
# matplotlib into a separate venv (.venv-bench: keeps numpy and matplotlib out of diskvault's own .venv),
# then runs benchmarks/bench.py with the project's .venv, then nbd_throughput.py and integrity.py, (extra arguments are passed on, e.g.
# `bash benchmarks/run.sh --reps 3 --scale 2` for 2-6.5 GiB widened images on a quiet machine, or
# `bash benchmarks/run.sh --quick` for a small smoke run). Results: docs/benchmarks.md, docs/benchmarks.png,
# benchmarks/results.json, benchmarks/codecs.json. At the defaults (--reps 2 --scale 0.25) it takes about
# 20-25 minutes on 2 quiet cores (44 on a busy shared one). Root is needed (loop mounts for XFS, ntfs-3g for NTFS).
set -euo pipefail
cd "$(dirname "$0")/.."
export DISKVAULT_PASSWORD=bench   # the benchmark repositories are encrypted, as init makes them by default

need=()
command -v restic >/dev/null 2>&1 || need+=(restic)
command -v borg   >/dev/null 2>&1 || need+=(borgbackup)
command -v casync >/dev/null 2>&1 || need+=(casync)
[ -x /usr/bin/time ] || need+=(time)
# the widened image set (benchmarks/images.py): XFS, Btrfs, FAT32 (mtools), NTFS (ntfs-3g), GPT
command -v mkfs.xfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.xfs ] || [ -x /sbin/mkfs.xfs ] || need+=(xfsprogs)
command -v mkfs.vfat >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.vfat ] || [ -x /sbin/mkfs.vfat ] || need+=(dosfstools)
command -v mcopy  >/dev/null 2>&1 || need+=(mtools)
command -v ntfs-3g >/dev/null 2>&1 || need+=(ntfs-3g)
command -v sgdisk >/dev/null 2>&1 || [ -x /usr/sbin/sgdisk ] || [ -x /sbin/sgdisk ] || need+=(gdisk)
command -v mkfs.btrfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.btrfs ] || [ -x /sbin/mkfs.btrfs ] || need+=(btrfs-progs)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench: need root to install: ${need[*]}" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! .venv-bench/bin/python -c "import matplotlib" 2>/dev/null; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q matplotlib
fi

PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
# every tool runs from compiled modules, as an installed copy does: a shell that sets
# PYTHONDONTWRITEBYTECODE would make each diskvault command compile its ~50 modules (~50 ms)
unset PYTHONDONTWRITEBYTECODE
"$PY" -m compileall -q src >/dev/null
env REPORT_PYTHON="$PWD/.venv-bench/bin/python" "$PY" benchmarks/bench.py "$@"
# instant access and integrity figures (fresh repositories), then the report again with them
rm -rf /var/tmp/dvaccess /var/tmp/dv-integrity-bench /var/tmp/dv-delta-bench/repo
"$PY" benchmarks/nbd_throughput.py --runs 5 --workdir /var/tmp/dvaccess --out benchmarks/nbd.json
"$PY" benchmarks/integrity.py /var/tmp/dv-integrity-bench 1024 5 benchmarks/integrity.json
"$PY" benchmarks/delta_restore.py /var/tmp/dv-delta-bench 2048 3 benchmarks/delta.json
"$PY" benchmarks/encryption.py --reps 3
"$PY" benchmarks/remote.py --reps 3
.venv-bench/bin/python benchmarks/report.py docs
