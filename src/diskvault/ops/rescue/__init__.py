"""``rescue build``: a bootable UEFI rescue image with diskvault inside (docs/rescue.md).

``build(out, ...)`` writes a GPT disk image whose only partition, the EFI System Partition,
holds Debian's signed shim (``\\EFI\\BOOT\\BOOTX64.EFI``), Debian's signed GRUB
(``grubx64.efi``) with a ``grub.cfg``, Debian's signed kernel and an initramfs made of
busybox (static), the kernel modules for disks (virtio, AHCI, NVMe, USB, MMC) and file
systems (ext4, FAT, exFAT, FUSE for ntfs-3g), host tools copied with their libraries
(sgdisk, sfdisk, blkid, lsblk, resize2fs, e2fsck, ntfs-3g, ntfsresize) and diskvault as a
self-contained tree (bundle.py). Its /init (init.sh) runs an unattended job baked in here or
given on the kernel command line, or a menu (menu.sh) on every console.

Build inputs: Debian packages fetched with ``apt-get download`` into the cache
(``DISKVAULT_RESCUE_CACHE``, default ``$XDG_CACHE_HOME/diskvault/rescue``), host tools
and the Python running this build. Errors: RescueBuildError (a tool or package missing,
exit 5), UsageError (a bad --unattended/--unattended-snapshot/--size, exit 2), TargetError
(OUT exists and is not empty without ``force``, or is not a regular file, exit 5).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import TargetError, UsageError
from . import bundle, debian, image

HERE = Path(__file__).parent
MODULES = ["virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "ahci", "ata_piix", "nvme",
           "xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd", "usb_storage", "uas", "usbhid", "hid_generic",
           "sdhci_pci", "mmc_block", "crc32c_generic", "ext4", "vfat", "nls_cp437", "nls_iso8859_1",
           "nls_utf8", "exfat", "fuse"]
#: programs copied from the build machine into the rescue system: (program, Debian package)
TOOLS = [("sgdisk", "gdisk"), ("sfdisk", "fdisk"), ("blkid", "util-linux"), ("lsblk", "util-linux"),
         ("resize2fs", "e2fsprogs"), ("e2fsck", "e2fsprogs"), ("ntfs-3g", "ntfs-3g"),
         ("ntfs-3g.probe", "ntfs-3g"), ("ntfsresize", "ntfs-3g"), ("ntfsfix", "ntfs-3g")]
#: programs the build itself runs
BUILD_TOOLS = [("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("ldd", "libc-bin"), ("mkfs.vfat", "dosfstools"),
               ("mcopy", "mtools"), ("mmd", "mtools"), ("sgdisk", "gdisk")]
CMDLINE = "console=ttyS0,115200 console=tty0 loglevel=3 panic=10"
GRUB_CFG = """set timeout=@TIMEOUT@
set default=0
insmod part_gpt
insmod fat
search --no-floppy --fs-uuid --set=root @VOLID@
@ENTRIES@"""
ENTRY = """menuentry "@TITLE@" {
    echo "diskvault rescue: loading the kernel and the rescue system ..."
    linux /boot/vmlinuz @CMDLINE@
    initrd /boot/initrd.img
}
"""
DEVICE = re.compile(r"(/dev/)?[A-Za-z0-9_.-]+")
REPO_DEVICE = re.compile(r"(LABEL=[^:\s]+|UUID=[0-9A-Fa-f-]+|(/dev/)?[A-Za-z0-9_.-]+)")


@dataclass
class BuildResult:
    image: str
    size: int
    kernel: str
    initramfs_bytes: int
    executable_bytes: int
    python: str
    distributions: list[str]
    unattended: str | None
    unattended_snapshot: str | None
    repo_hints: list[str]
    password_stored: bool
    seconds: float
    secure_boot: str = "Debian's signed shim, GRUB and kernel (the initramfs is not signed)"
    esp_files: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _no_spaced_label(option: str, spec: str) -> None:
    """UsageError naming the way out when ``spec`` holds a ``LABEL=`` with white space (the
    rescue system splits its settings and the kernel command line at spaces)."""
    m = re.search(r"LABEL=[^:]*\s", spec)
    if m:
        raise UsageError(f"{option} {spec!r}: a label with spaces cannot be given: name the disk by "
                         "UUID=... (blkid shows it) or by its device name instead")


def parse_unattended(spec: str) -> tuple[str, str, str, str]:
    """``REPO_DEVICE:PATH:SNAPSHOT:TARGET`` -> its four parts (SNAPSHOT may hold ':', as
    ``latest:TAG``); raises UsageError."""
    _no_spaced_label("--unattended", spec)
    f = spec.split(":")
    if len(f) < 4 or not all(f) or not REPO_DEVICE.fullmatch(f[0]) or not DEVICE.fullmatch(f[-1]):
        raise UsageError(f"--unattended {spec!r} is not REPO_DEVICE:PATH:SNAPSHOT:TARGET: give e.g. "
                         "LABEL=BACKUP:/repo:latest:/dev/sda")
    return f[0], f[1], ":".join(f[2:-1]), f[-1]


def parse_unattended_snapshot(spec: str) -> tuple[str, str, str]:
    """``SOURCE:REPO_DEVICE:PATH`` -> its three parts; raises UsageError."""
    _no_spaced_label("--unattended-snapshot", spec)
    f = spec.split(":")
    if len(f) < 3 or not all(f) or not DEVICE.fullmatch(f[0]) or not REPO_DEVICE.fullmatch(f[1]):
        raise UsageError(f"--unattended-snapshot {spec!r} is not SOURCE:REPO_DEVICE:PATH: give e.g. "
                         "/dev/sda:LABEL=BACKUP:/repo")
    return f[0], f[1], ":".join(f[2:])


def cache_dir() -> Path:
    """Where downloaded packages are kept between builds."""
    if os.environ.get("DISKVAULT_RESCUE_CACHE"):
        return Path(os.environ["DISKVAULT_RESCUE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diskvault" / "rescue"


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_file():
        raise TargetError(f"{out} is not a regular file: write the image to a file, then copy it to the stick "
                          "with dd or an image writer")
    if out.exists() and out.stat().st_size and not force:
        raise TargetError(f"{out} exists and is not empty: pass --force to replace it")
    if not out.parent.is_dir():
        raise TargetError(f"{out.parent} is not a directory: create it first")
    if not os.access(out.parent, os.W_OK):  # at once, not after the build's minute
        raise TargetError(f"{out.parent} is not writable (a read-only file system or no permission): "
                          "choose a writable place for the image")


def build(out: Path, size: int | None = None, repo_hints: list[str] | None = None,
          unattended: str | None = None, unattended_snapshot: str | None = None,
          password: bytes | None = None, force: bool = False,
          step: Callable[[str], None] = lambda s: None) -> BuildResult:
    """Write the rescue image ``out`` (``size`` bytes, default the smallest that fits, whole
    MiB); ``password`` is stored in the image (``/etc/diskvault/password``, read through
    DISKVAULT_PASSWORD_FILE) only with an unattended job. ``step`` gets a line per stage."""
    start = time.monotonic()
    hints = repo_hints or []
    for h in hints:
        _no_spaced_label("--repo-hint", h)
        if not REPO_DEVICE.fullmatch(h):
            raise UsageError(f"--repo-hint {h!r} is not LABEL=..., UUID=... or a device name: give e.g. LABEL=BACKUP")
    if unattended and unattended_snapshot:
        raise UsageError("--unattended and --unattended-snapshot do not go together: give one of them")
    if unattended:
        parse_unattended(unattended)
    if unattended_snapshot:
        parse_unattended_snapshot(unattended_snapshot)
    _check_out(out, force)
    debian.require(*BUILD_TOOLS, *TOOLS)
    cache = cache_dir()
    step(f"Debian packages (cache {cache})")
    vmlinuz, moddir, kver = debian.kernel(cache)
    busybox = debian.package("busybox-static", cache) / "bin/busybox"
    shim = debian.package("shim-signed", cache) / "usr/lib/shim/shimx64.efi.signed"
    grub = debian.package("grub-efi-amd64-signed", cache) / "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
    with image.workdir(Path(tempfile.gettempdir()), "diskvault-rescue-") as t:
        root = t / "root"
        for d in ("bin", "dev", "proc", "sys", "mnt", "tmp", "run", "root", "etc/diskvault", "usr/bin",
                  "usr/sbin", "usr/lib/diskvault", "lib/modules"):
            (root / d).mkdir(parents=True)
        shutil.copy(busybox, root / "bin/busybox")
        (root / "bin/sh").symlink_to("busybox")
        order = debian.modules(moddir, MODULES, root / "lib/modules")
        (root / "lib/modules/load-order").write_text("\n".join(order) + "\n")
        for name, dst in (("init.sh", "init"), ("menu.sh", "usr/lib/diskvault/menu.sh")):
            shutil.copy(HERE / name, root / dst)
            (root / dst).chmod(0o755)
        step("tools: " + ", ".join(p for p, _ in TOOLS))
        for program, pkg in TOOLS:
            bundle.copy_elf(program, root, pkg)
        step("diskvault executable (this Python, its libraries and diskvault's dependencies)")
        info = bundle.make_bundle(root / "opt/diskvault")
        (root / "usr/bin/diskvault").symlink_to("/opt/diskvault/bin/diskvault")
        conf = [f"UNATTENDED={shlex.quote(unattended or '')}",
                f"UNATTENDED_SNAPSHOT={shlex.quote(unattended_snapshot or '')}",
                f"REPO_HINTS={shlex.quote(' '.join(hints))}"]
        from ... import __version__

        (root / "etc/diskvault/version").write_text(__version__ + "\n")
        (root / "etc/diskvault/rescue.conf").write_text("\n".join(conf) + "\n")
        stored = bool(password) and bool(unattended or unattended_snapshot)
        if stored:
            pw = root / "etc/diskvault/password"
            pw.write_bytes(password)
            pw.chmod(0o600)
        step("initramfs (zstd)")
        initrd = t / "initrd.img"
        initrd.write_bytes(image.initramfs(root))
        volid = image.volume_id()
        job = (f"unattended restore {unattended}" if unattended else
               f"unattended snapshot {unattended_snapshot}" if unattended_snapshot else None)
        entries = ENTRY.replace("@TITLE@", f"diskvault rescue: {job}" if job else "diskvault rescue")
        if job:
            entries += ENTRY.replace("@TITLE@", "diskvault rescue: menu and shell (no unattended job)").replace(
                "@CMDLINE@", "@CMDLINE@ diskvault.menu")
        cfg = (GRUB_CFG.replace("@ENTRIES@", entries).replace("@CMDLINE@", CMDLINE)
               .replace("@TIMEOUT@", "3" if job else "1").replace("@VOLID@", f"{volid[:4]}-{volid[4:]}"))
        (t / "grub.cfg").write_text(cfg)
        esp = {"EFI/BOOT/BOOTX64.EFI": shim, "EFI/BOOT/grubx64.efi": grub, "EFI/BOOT/grub.cfg": t / "grub.cfg",
               "EFI/debian/grub.cfg": t / "grub.cfg", "boot/vmlinuz": vmlinuz, "boot/initrd.img": initrd}
        need = image.fat_size(esp) + 2 * image.MiB
        if size is None:
            size = need
        elif size < need:
            raise UsageError(f"--size {size} is too small: the image needs at least {need} bytes "
                             f"({need // image.MiB} MiB): give a bigger size or none")
        size = size // image.MiB * image.MiB
        step(f"disk image {out} ({size // image.MiB} MiB)")
        image.disk(out, esp, size, volid, secret=stored)
        return BuildResult(image=str(out), size=size, kernel=kver, initramfs_bytes=initrd.stat().st_size,
                           executable_bytes=info["bytes"], python=info["python"],
                           distributions=info["distributions"], unattended=unattended,
                           unattended_snapshot=unattended_snapshot, repo_hints=hints, password_stored=stored,
                           seconds=round(time.monotonic() - start, 1),
                           esp_files={k: v.stat().st_size for k, v in esp.items()})
