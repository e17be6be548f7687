"""Assembling the rescue image: initramfs (newc cpio, zstd), ESP (FAT32), GPT disk.

``initramfs(root)`` packs a directory into the bytes the kernel unpacks (owner root, modes
kept, zstd level 10: CONFIG_RD_ZSTD is on in Debian's kernels). ``disk(out, esp_files,
size)`` writes a GPT disk holding one EFI System Partition with ``esp_files`` (path on the
ESP -> local file), made with ``mkfs.vfat`` and ``mcopy``/``mmd`` (no loop device, no
mount) and partitioned with ``sgdisk``; the file is written beside ``out`` and renamed over
it when complete. Raises RescueBuildError when a tool fails or is missing, OutOfSpace when
the image's folder is full.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ...errors import OutOfSpace, RescueBuildError

MiB = 1 << 20


def _cpio_entry(name: str, st: os.stat_result, data: bytes, ino: int) -> bytes:
    fields = [ino, st.st_mode, 0, 0, 1 if not stat.S_ISDIR(st.st_mode) else 2, 0, len(data),
              0, 0, 0, 0, len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = head + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


def initramfs(root: Path) -> bytes:
    """``root``'s tree as a zstd-compressed newc cpio archive (files owned by root)."""
    import zstandard

    parts = []
    for ino, p in enumerate(sorted(root.rglob("*")), start=1):
        st = p.lstat()
        data = (os.readlink(p).encode() if stat.S_ISLNK(st.st_mode)
                else p.read_bytes() if stat.S_ISREG(st.st_mode) else b"")
        parts.append(_cpio_entry(str(p.relative_to(root)), st, data, ino))
    parts.append(_cpio_entry("TRAILER!!!", os.stat_result((0,) * 10), b"", 0))
    return zstandard.ZstdCompressor(level=10).compress(b"".join(parts))


def _run(*cmd: str | Path) -> None:
    try:
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    except FileNotFoundError:
        raise RescueBuildError(f"rescue build needs {cmd[0]}: install it") from None
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        if "No space left on device" in done.stderr:
            raise OutOfSpace(f"rescue build: {cmd[0]} ran out of space ({last}): free some space where the "
                             "image is written, then build again")
        raise RescueBuildError(f"rescue build: {cmd[0]} failed: {last}")


def fat_size(esp_files: dict[str, Path]) -> int:
    """The smallest ESP (bytes, whole MiB, >= 40 MiB for FAT32) that holds ``esp_files``."""
    need = sum(p.stat().st_size for p in esp_files.values())
    return max(40 * MiB, (need * 105 // 100 + 4 * MiB + MiB - 1) // MiB * MiB)


@contextlib.contextmanager
def workdir(folder: Path, prefix: str) -> Iterator[Path]:
    """A new folder ``folder/PREFIX<pid>-XXXXXXXX`` for one build, deleted when it ends.
    Folders of ``prefix`` that a build killed outright left behind (its pid is gone) are
    deleted first, so a kill -9 costs no space for long (and leaves no passphrase behind)."""
    for old in folder.glob(f"{glob.escape(prefix)}*-*"):
        pid = old.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and old.is_dir() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(dir=folder, prefix=f"{prefix}{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_space(folder: Path, need: int) -> None:
    """OutOfSpace when ``folder``'s file system has less than ``need`` bytes free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise OutOfSpace(f"{folder} has {free // MiB} MiB free and writing the rescue image there needs "
                         f"{-(-need // MiB)} MiB: free some space, or write the image elsewhere")


def disk(out: Path, esp_files: dict[str, Path], size: int, volume_id: str, secret: bool = False) -> None:
    """Write the GPT disk image ``out`` of ``size`` bytes: partition 1, the ESP, from 1 MiB to
    1 MiB before the end, FAT32 (volume id ``volume_id``, 8 hex digits) holding ``esp_files``;
    mode 0600 when ``secret`` (it holds a passphrase). It is made in ``.OUT.partial-PID-XXXX``
    beside ``out`` (twice the files' size while it is made: OutOfSpace when that is not free)
    and renamed over ``out`` when complete, so ``out`` is never a half-written image."""
    esp_bytes = size - 2 * MiB
    check_space(out.parent, 2 * fat_size(esp_files))
    with workdir(out.parent, f".{out.name}.partial-") as tmp:
        esp = Path(tmp) / "esp.img"
        with open(esp, "wb") as f:
            f.truncate(esp_bytes)
        _run("mkfs.vfat", "-F", "32", "-s", "1", "-S", "512", "-i", volume_id, "-n", "DVRESCUE", esp)
        dirs = sorted({str(Path(p).parent) for p in esp_files} - {"."}, key=lambda d: d.count("/"))
        made: set[str] = set()
        for d in dirs:
            parts = Path(d).parts
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub not in made:
                    _run("mmd", "-i", esp, f"::/{sub}")
                    made.add(sub)
        for dst, src in esp_files.items():
            _run("mcopy", "-i", esp, src, f"::/{dst}")
        img = Path(tmp) / "disk.img"
        with open(img, "wb") as f:
            f.truncate(size)
        last = size // 512 - 2049
        _run("sgdisk", "-Z", "-o", "-n", f"1:2048:{last}", "-t", "1:ef00", "-c", "1:diskvault rescue",
             "-U", "R", img)
        with open(esp, "rb") as src_f, open(img, "r+b") as dst_f:
            dst_f.seek(MiB)
            while chunk := src_f.read(4 * MiB):
                if chunk.count(0) == len(chunk):
                    dst_f.seek(len(chunk), os.SEEK_CUR)  # stays sparse
                else:
                    dst_f.write(chunk)
            dst_f.flush()
            os.fsync(dst_f.fileno())
        if secret:
            img.chmod(0o600)
        os.replace(img, out)
        dir_fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename survives a power cut
        finally:
            os.close(dir_fd)


def volume_id() -> str:
    """A random FAT volume id, 8 hex digits (GRUB finds the ESP by it: ``XXXX-XXXX``)."""
    return secrets.token_hex(4).upper()
