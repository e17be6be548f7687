"""A real bootable UEFI disk, built at test time from Debian packages, and a boot check in QEMU.

``build_boot_disk(path, size)`` writes a GPT disk (no loop devices, no mounts):

- p1, the EFI System Partition: FAT32 (``mkfs.vfat``, filled with ``mcopy``) holding
  ``\\EFI\\BOOT\\BOOTX64.EFI``, a standalone GRUB (``grub-mkstandalone``) whose embedded
  config finds the root file system by UUID (``search --fs-uuid``) and boots the kernel;
- p2, the root: ext4 (``mke2fs -d``) with a Debian kernel (``apt-get download`` +
  ``dpkg-deb -x``, cached), an initramfs (busybox-static) whose ``/init`` mounts the root by
  UUID, prints ``BOOT-OK <marker>`` (a random marker per build, read from the root) and the
  sha256 of a known file, then powers off.

``boot(path)`` boots a disk image headless (``qemu-system-x86_64 -machine q35 -accel tcg``
with OVMF, ``-snapshot`` so the image is never written) and returns the console log;
``BootResult.ok(marker)`` holds only when the marker and the known file's hash appear and
the kernel printed no ``GPT:`` complaint (an unadjusted table still boots, with warnings).

Packages (installed by scripts/setup.sh): qemu-system-x86 ovmf grub-efi-amd64-bin
busybox-static dosfstools mtools gdisk e2fsprogs. The layout follows the reference in
``../shared/boot/`` (read, not copied).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
ROOT_UUID = "d15c0000-0000-4000-8000-00000000b007"
ESP_MIB = 48  # FAT32 needs >= 65525 clusters: 48 MiB of 512-byte clusters
MODULES = ["crc32c_generic", "ext4", "virtio_pci", "virtio_blk"]
KNOWN = b"".join(b"%07d\n" % i for i in range(131072))[:MiB]  # deterministic 1 MiB file
KNOWN_SHA256 = hashlib.sha256(KNOWN).hexdigest()
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diskvault-tests" / "boot"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS.fd"


def _run(*cmd: str | os.PathLike, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, **kw)


def _kernel() -> tuple[Path, list[Path]]:
    """The cached kernel image and its modules for MODULES in load order (dependencies first)."""
    ready = CACHE / "ready"
    if not ready.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        deps = _run("apt-cache", "depends", "linux-image-amd64", text=True).stdout
        pkg = re.search(r"Depends: (linux-image-\S+)", deps).group(1)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            _run("apt-get", "download", pkg, cwd=tmp)
            deb = next(Path(tmp).glob("*.deb"))
            _run("dpkg-deb", "-x", deb, Path(tmp) / "x")
            kver = next((Path(tmp) / "x/lib/modules").iterdir()).name
            shutil.copy(Path(tmp) / f"x/boot/vmlinuz-{kver}", CACHE / "vmlinuz")
            kos = {p.name.split(".ko")[0].replace("-", "_"): p
                   for p in (Path(tmp) / f"x/lib/modules/{kver}/kernel").rglob("*.ko")}
            order: list[str] = []

            def add(name: str) -> None:
                name = name.replace("-", "_")
                if name in order or name not in kos:  # absent: built into the kernel
                    return
                deps = re.search(rb"depends=([^\0]*)", kos[name].read_bytes())
                for d in (deps.group(1).decode().split(",") if deps else []):
                    if d:
                        add(d)
                order.append(name)

            for m in MODULES:
                add(m)
            (CACHE / "modules").mkdir(exist_ok=True)
            for name in order:
                shutil.copy(kos[name], CACHE / "modules" / f"{name}.ko")
            (CACHE / "load-order").write_text("\n".join(order) + "\n")
        ready.touch()
    order = (CACHE / "load-order").read_text().split()
    return CACHE / "vmlinuz", [CACHE / "modules" / f"{n}.ko" for n in order]


INIT = """#!/bin/sh
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
fail() { echo 1 > /proc/sys/kernel/printk; echo "BOOT-FAIL $*"; sleep 1; poweroff -f; }
for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m.ko; done
dev=""; i=0
while [ $i -lt 100 ]; do dev=$(findfs UUID=@ROOT@ 2>/dev/null) && [ -n "$dev" ] && break; i=$((i+1)); sleep 0.2; done
[ -n "$dev" ] || fail "root UUID=@ROOT@ not found: $(cat /proc/partitions | tr '\\n' ' ')"
mount -t ext4 -o ro "$dev" /mnt || fail "cannot mount $dev"
echo 1 > /proc/sys/kernel/printk
echo "BOOT-ROOTFS size_kib=$(df -k /mnt | awk 'NR==2{print $2}')"
echo "BOOT-OK $(cat /mnt/etc/boot-marker)"
echo "BLOB-SHA256 $(sha256sum /mnt/data/known.bin | cut -d' ' -f1)"
echo "BOOT-END"
umount /mnt; sync; poweroff -f
"""

GRUB_CFG = """set timeout=0
insmod part_gpt
insmod ext2
insmod efi_gop
if search --no-floppy --fs-uuid --set=root @ROOT@; then
    linux /boot/vmlinuz root=UUID=@ROOT@ ro console=ttyS0,115200 panic=-1
    initrd /boot/initrd.img
    boot
fi
echo "GRUB-FAIL: root file system @ROOT@ not found"
sleep 1
halt
"""


def build_boot_disk(path: Path, size: int = 128 * MiB) -> str:
    """Write a bootable UEFI disk image of ``size`` bytes (>= 100 MiB) to ``path``; returns its
    random marker (what ``boot`` must print)."""
    vmlinuz, modules = _kernel()
    marker = f"diskvault-boot-{secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        ir = t / "initramfs"
        for d in ("bin", "dev", "proc", "sys", "mnt", "lib/modules"):
            (ir / d).mkdir(parents=True)
        shutil.copy(shutil.which("busybox"), ir / "bin/busybox")
        (ir / "bin/sh").symlink_to("busybox")
        for m in modules:
            shutil.copy(m, ir / "lib/modules" / m.name)
        (ir / "lib/modules/load-order").write_text("\n".join(m.stem for m in modules) + "\n")
        (ir / "init").write_text(INIT.replace("@ROOT@", ROOT_UUID))
        (ir / "init").chmod(0o755)
        files = sorted(str(p.relative_to(ir)) for p in ir.rglob("*"))
        cpio = subprocess.run(["busybox", "cpio", "-o", "-H", "newc"], input="\n".join(files).encode(),
                              cwd=ir, capture_output=True, check=True).stdout
        root = t / "root"
        for d in ("boot", "etc", "data"):
            (root / d).mkdir(parents=True)
        shutil.copy(vmlinuz, root / "boot/vmlinuz")
        (root / "boot/initrd.img").write_bytes(gzip.compress(cpio, 6, mtime=0))
        (root / "etc/boot-marker").write_text(marker + "\n")
        (root / "data/known.bin").write_bytes(KNOWN)
        (t / "grub.cfg").write_text(GRUB_CFG.replace("@ROOT@", ROOT_UUID))
        _run("grub-mkstandalone", "-O", "x86_64-efi", "-o", t / "BOOTX64.EFI",
             "--install-modules=normal part_gpt ext2 search search_fs_uuid linux echo test sleep halt gzio "
             "efi_gop configfile", "--modules=part_gpt ext2", "--locales=", "--fonts=", "--themes=",
             f"boot/grub/grub.cfg={t / 'grub.cfg'}")
        path.unlink(missing_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)
        sectors = size // 512
        root_end = (sectors - 34) // 2048 * 2048 - 1
        _run("sgdisk", "-Z", "-o", "-n", f"1:2048:+{ESP_MIB}M", "-t", "1:ef00", "-c", "1:EFI System",
             "-n", f"2:0:{root_end}", "-t", "2:8304", "-c", "2:root", path)
        p2_start = 2048 + ESP_MIB * 2048
        esp = t / "esp.img"
        with open(esp, "wb") as f:
            f.truncate(ESP_MIB * MiB)
        _run("mkfs.vfat", "-F", "32", "-s", "1", "-S", "512", "-n", "EFI", esp)
        _run("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT")
        _run("mcopy", "-i", esp, t / "BOOTX64.EFI", "::/EFI/BOOT/BOOTX64.EFI")
        fs = t / "root.ext4"
        _run("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-U", ROOT_UUID, "-E", f"hash_seed={ROOT_UUID}",
             "-d", root, fs, f"{(root_end - p2_start + 1) // 8 * 4}k")
        with open(path, "r+b") as out:
            for src, sector in ((esp, 2048), (fs, p2_start)):
                with open(src, "rb") as f:
                    out.seek(sector * 512)
                    shutil.copyfileobj(f, out, 4 * MiB)
    return marker


@dataclass
class BootResult:
    log: str
    seconds: float

    def ok(self, marker: str) -> bool:
        return (f"BOOT-OK {marker}" in self.log and f"BLOB-SHA256 {KNOWN_SHA256}" in self.log
                and not self.gpt_warnings())

    def gpt_warnings(self) -> list[str]:
        return [line for line in self.log.splitlines() if "GPT:" in line]

    def tail(self, n: int = 25) -> str:
        return "\n".join(self.log.splitlines()[-n:])


FAIL_FAST = re.compile(r"Shell> |^grub> |Kernel panic|^BOOT-FAIL|^GRUB-FAIL|Boot Failed", re.M)


def boot(path: Path, timeout: float = 240) -> BootResult:
    """Boot ``path`` (raw disk image) in QEMU with OVMF; stops at BOOT-END, at a failure
    sign (UEFI shell, GRUB prompt, panic, BOOT-FAIL) or after ``timeout`` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "console.log"
        vars_fd = Path(tmp) / "vars.fd"
        shutil.copy(OVMF_VARS, vars_fd)
        log.touch()
        start = time.monotonic()
        qemu = subprocess.Popen(
            ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "512", "-nographic",
             "-monitor", "none", "-serial", f"file:{log}",
             "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
             "-drive", f"if=pflash,format=raw,file={vars_fd}",
             "-drive", f"if=none,id=disk0,format=raw,file={os.path.realpath(path)}",
             "-device", "virtio-blk-pci,drive=disk0,bootindex=1", "-nic", "none", "-snapshot", "-no-reboot"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        text = ""
        try:
            while time.monotonic() - start < timeout:
                text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", log.read_text(errors="replace").replace("\r", ""))
                if qemu.poll() is not None or "BOOT-END" in text or FAIL_FAST.search(text):
                    break
                time.sleep(0.25)
            try:
                qemu.wait(5)
            except subprocess.TimeoutExpired:
                pass
        finally:
            if qemu.poll() is None:
                qemu.kill()
                qemu.wait()
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", log.read_text(errors="replace").replace("\r", ""))
        return BootResult(text, time.monotonic() - start)
