"""Real filesystem images for the used-blocks tests: made by mkfs, filled with real files
(Python's standard library and a binary), then 40% of the files deleted (their blocks keep
the old bytes). Each builder returns the files still present ({relative path: bytes}); each
reader reads them back with the filesystem's own tool (debugfs rdump, ntfscat, mcopy, a
read-only mount)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from helpers import tool

MiB = 1 << 20
SOURCES = sorted(Path("/usr/lib/python3.11").glob("*.py"))[:120] + sorted(Path("/usr/lib/python3.11/email").glob("*.py"))


def run(*argv: str | os.PathLike, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, input=input)


def real_files(folder: Path) -> dict[str, bytes]:
    """Copy about 5 MiB of real files into ``folder`` (flat names: every filesystem takes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, src in enumerate(SOURCES):
        name = f"f{i:03}_{src.name}"
        data = src.read_bytes()
        (folder / name).write_bytes(data)
        out[name] = data
    return out


def deleted(files: dict[str, bytes]) -> list[str]:
    """The 40% of the files the tests delete (two of every five)."""
    return [n for i, n in enumerate(sorted(files)) if i % 5 in (1, 3)]


def blank(path: Path, size_mb: int) -> None:
    """An image whose every byte is written (not sparse), filled with a pattern that is not
    zero, so that skipped free space would show."""
    with open(path, "wb") as f:
        f.write(b"OLDDATA!" * (size_mb * MiB // 8))


def make_ext4(path: Path, size_mb: int, work: Path, *mkfs: str) -> dict[str, bytes]:
    """``mkfs``: mke2fs options (``-t ext2`` replaces the default ext4)."""
    blank(path, size_mb)
    files = real_files(work / "ext-content")
    run(tool("mke2fs"), "-q", "-F", *(mkfs if "-t" in mkfs else ("-t", "ext4", *mkfs)), "-E", "root_owner=0:0", "-d", work / "ext-content", path)
    script = "".join(f"rm /{n}\n" for n in deleted(files))
    run(tool("debugfs"), "-w", "-f", "-", path, input=script.encode())
    shutil.rmtree(work / "ext-content")
    return {n: d for n, d in files.items() if n not in deleted(files)}


@contextlib.contextmanager
def mounted(argv: list[str], target: Path) -> Iterator[Path]:
    target.mkdir(exist_ok=True)
    run(*argv, target)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def _fill(mnt: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into the mounted filesystem, commit them (a Btrfs frees a deleted
    file's extents only once they were committed), then delete ``deleted(files)``."""
    for n, d in files.items():
        (mnt / n).write_bytes(d)
    os.sync()
    for n in deleted(files):
        (mnt / n).unlink()


def make_ntfs(path: Path, size_mb: int, work: Path) -> dict[str, bytes]:
    blank(path, size_mb)
    run(tool("mkntfs"), "-F", "-Q", "-q", path)
    files = real_files(work / "ntfs-content")
    with mounted([tool("ntfs-3g"), str(path)], work / "ntfs-mnt") as mnt:
        _fill(mnt, files)
    shutil.rmtree(work / "ntfs-content")
    return {n: d for n, d in files.items() if n not in deleted(files)}


def make_fat32(path: Path, size_mb: int, work: Path) -> dict[str, bytes]:
    blank(path, size_mb)
    run(tool("mkfs.vfat"), "-F", "32", "-s", "1", path)  # FAT32 needs 65525 clusters: 512 B ones in 40 MiB
    files = real_files(work / "fat-content")
    run(tool("mcopy"), "-i", path, *sorted((work / "fat-content").iterdir()), "::/")
    run(tool("mdel"), "-i", path, *(f"::/{n}" for n in deleted(files)))
    shutil.rmtree(work / "fat-content")
    return {n: d for n, d in files.items() if n not in deleted(files)}


def make_exfat(path: Path, size_mb: int, work: Path) -> dict[str, bytes]:
    blank(path, size_mb)
    run(tool("mkfs.exfat"), path)
    files = real_files(work / "exfat-content")
    loop = run("losetup", "-f", "--show", path).stdout.decode().strip()
    try:
        with mounted([tool("mount.exfat-fuse"), loop], work / "exfat-mnt") as mnt:
            _fill(mnt, files)
    finally:
        run("losetup", "-d", loop)
    shutil.rmtree(work / "exfat-content")
    return {n: d for n, d in files.items() if n not in deleted(files)}


def _make_loop_fs(kind: str, path: Path, size_mb: int, work: Path, *mkfs: str) -> dict[str, bytes]:
    """An XFS or Btrfs made by mkfs.KIND with ``mkfs`` options, filled through a loop mount."""
    blank(path, size_mb)
    run(tool(f"mkfs.{kind}"), "-q", "-f", "-K", *mkfs, path)  # -K: no discard, free space keeps the old bytes
    files = real_files(work / f"{kind}-content")
    with mounted(["mount", "-o", "loop", str(path)], work / f"{kind}-mnt") as mnt:
        _fill(mnt, files)
    shutil.rmtree(work / f"{kind}-content")
    return {n: d for n, d in files.items() if n not in deleted(files)}


def make_xfs(path: Path, size_mb: int, work: Path, *mkfs: str) -> dict[str, bytes]:
    """``size_mb`` at least 300 (mkfs.xfs's minimum); ``mkfs``: more mkfs.xfs options."""
    return _make_loop_fs("xfs", path, size_mb, work, *mkfs)


def make_btrfs(path: Path, size_mb: int, work: Path, *mkfs: str) -> dict[str, bytes]:
    """``mkfs``: more mkfs.btrfs options."""
    return _make_loop_fs("btrfs", path, size_mb, work, *mkfs)


def read_ext4(path: Path) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as out:
        run(tool("debugfs"), "-R", f"rdump / {out}", path)
        return {p.name: p.read_bytes() for p in Path(out).iterdir() if p.is_file()}


def read_ntfs(path: Path, names: list[str]) -> dict[str, bytes]:
    return {n: run(tool("ntfscat"), "-f", path, n).stdout for n in names}  # -f: a dirty volume too


def read_fat(path: Path) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as out:
        run(tool("mcopy"), "-s", "-n", "-i", path, "::/", out)
        return {p.name: p.read_bytes() for p in Path(out).rglob("*") if p.is_file()}


def read_exfat(path: Path) -> dict[str, bytes]:
    loop = run("losetup", "-f", "--show", "-r", path).stdout.decode().strip()
    try:
        with tempfile.TemporaryDirectory() as d, mounted([tool("mount.exfat-fuse"), "-o", "ro", loop], Path(d)) as mnt:
            return {p.name: p.read_bytes() for p in mnt.iterdir() if p.is_file()}
    finally:
        run("losetup", "-d", loop)


def read_mounted(path: Path) -> dict[str, bytes]:
    """The files of an XFS or Btrfs image, through a read-only loop mount."""
    with tempfile.TemporaryDirectory() as d, mounted(["mount", "-o", "ro,loop", str(path)], Path(d)) as mnt:
        return {p.name: p.read_bytes() for p in mnt.iterdir() if p.is_file()}


def read_files(kind: str, path: Path, names: list[str]) -> dict[str, bytes]:
    """The files of the filesystem image ``path``, read by its own tools."""
    if kind == "ext4":
        return read_ext4(path)
    if kind == "ntfs":
        return read_ntfs(path, names)
    if kind in ("xfs", "btrfs"):
        return read_mounted(path)
    return read_fat(path) if kind == "fat32" else read_exfat(path)


MAKE = {"ext4": make_ext4, "ntfs": make_ntfs, "fat32": make_fat32, "exfat": make_exfat, "xfs": make_xfs,
        "btrfs": make_btrfs}
SIZE_MB = {"xfs": 300, "btrfs": 256}  # mkfs.xfs's minimum, and room for Btrfs's chunks; the others: 40


def fsck(kind: str, path: Path) -> subprocess.CompletedProcess:
    """The filesystem's own check, read-only; returns the finished process."""
    argv = {"ext4": [tool("e2fsck"), "-fn"], "ntfs": [tool("ntfsfix"), "-n"], "fat32": [tool("fsck.fat"), "-n"],
            "exfat": [tool("fsck.exfat"), "-n"], "xfs": [tool("xfs_repair"), "-n"], "btrfs": [tool("btrfs"), "check", "--readonly"]}[kind]
    return subprocess.run([*argv, str(path)], capture_output=True)
