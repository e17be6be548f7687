"""Used blocks only (issue 18): snapshots of real ext4, NTFS, FAT32 and exFAT images with 40%
of their files deleted store about the used data's compressed size; restored filesystems
pass their own checks and hold every file; verify compares what was kept; a whole GPT disk
keeps its table and gaps byte for byte; a damaged map, --all-blocks and a read-write mount
read everything."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from fsimages import MAKE, SIZE_MB, MiB, blank, fsck, make_ext4, make_fat32, make_ntfs, read_files, real_files
from consistency import assert_consistent
from helpers import random_bytes, run_cli, secret, tool

from diskvault.images.filesystems import read_map
from diskvault.images.filesystems.ranges import total
from diskvault.repository import Repository, compression
from diskvault.repository.chunking import DEFAULT_AVG, ChunkerParams

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ntfs-3g/exfat mounts and loop devices need root")


def _free(data: bytes, offset: int = 0, length: int | None = None) -> list[tuple[int, int]]:
    length = len(data) - offset if length is None else length
    m = read_map(lambda o, n: data[offset + o:offset + o + n], length)
    return [(offset + s, offset + e) for s, e in m.free]


def _used_compressed(repo: Path, data: bytes, free: list[tuple[int, int]]) -> int:
    """The used data compressed by the snapshot's codec (zstd) in pieces of the repository's
    average chunk size, zeros left out."""
    size = json.loads(run_cli("info", "-r", repo, "--json").stdout)["chunker"]["avg_size"]
    buf = bytearray(data)
    for s, e in free:
        buf[s:e] = bytes(e - s)
    out = 0
    for o in range(0, len(buf), size):
        piece = bytes(buf[o:o + size])
        if piece.strip(b"\0"):
            out += len(compression.compress(piece, "zstd")[0])
    return out


@pytest.fixture
def default_repo(tmp_path: Path):
    """A new repository with the default chunk size (64 KiB on average), as ``init`` makes
    it: the size bound is the issue's, for what users get (the 16 KiB chunks of ``repo_path``
    would add four times the per-chunk metadata); checked for consistency after the test."""
    path = tmp_path / "repo"
    Repository.init(str(path), ChunkerParams.for_average(DEFAULT_AVG), passphrase=secret).close()
    yield path
    assert_consistent(path)


def _stored(repo: Path) -> int:
    return json.loads(run_cli("info", "-r", repo, "--json").stdout)["stored_bytes"]


def _kept_and_zeroed(restored: bytes, source: bytes, free: list[tuple[int, int]]) -> None:
    """``restored`` equals ``source`` outside ``free`` and is zero inside."""
    assert len(restored) == len(source)
    pos = 0
    for s, e in free + [(len(source), len(source))]:
        assert restored[pos:s] == source[pos:s], f"kept bytes {pos}..{s} differ"
        assert restored[s:e].count(0) == e - s, f"skipped bytes {s}..{e} are not zero"
        pos = e


@pytest.mark.parametrize("kind", ["ext4", "ntfs", "fat32", "exfat", "xfs", "btrfs"])
def test_filesystem_image_stores_its_used_blocks_only(tmp_path: Path, default_repo: Path, kind: str) -> None:
    repo_path = default_repo
    img = tmp_path / f"{kind}.img"
    size = SIZE_MB.get(kind, 40) * MiB
    files = MAKE[kind](img, size // MiB, tmp_path)
    source = img.read_bytes()
    free = _free(source)
    assert total(free) > 20 * MiB  # the deleted files' blocks are free, and hold their old bytes
    rec = json.loads(run_cli("snapshot", "-r", repo_path, img, "--compression", "zstd", "--json").stdout)
    (fs,) = rec["filesystems"]
    assert (fs["partition"], fs["offset"], fs["length"], fs["filesystem"]) == (None, 0, size, kind)
    assert fs["skipped_bytes"] == total(free) and fs["notes"] == []
    assert fs["used_bytes"] == size - total(free)
    assert _stored(repo_path) <= _used_compressed(repo_path, source, free) * 1.02  # issue 18: + 2% at most
    # restored: the filesystem's own check passes and every file is there
    out = tmp_path / "restored.img"
    run_cli("restore", "-r", repo_path, "latest", out, "--no-progress")
    restored = out.read_bytes()
    _kept_and_zeroed(restored, source, free)
    check = fsck(kind, out)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert read_files(kind, out, list(files)) == files
    # verify against the source (old bytes in its free blocks) compares what was kept
    res = json.loads(run_cli("verify", "-r", repo_path, "latest", img, "--json").stdout)
    assert res["identical"] and res["skipped_bytes"] == total(free)
    assert res["compared_bytes"] == size - total(free)
    human = run_cli("verify", "-r", repo_path, "latest", img, "--no-progress").stderr.decode()
    assert "identical" in human and "of free blocks the snapshot skipped" in human
    img.unlink()
    out.unlink()


def test_restore_onto_a_device_holding_garbage_zeroes_the_skipped_blocks(tmp_path: Path, repo_path: Path) -> None:
    img = tmp_path / "ext4.img"
    files = make_ext4(img, 40, tmp_path)
    source = img.read_bytes()
    free = _free(source)
    run_cli("snapshot", "-r", repo_path, img)
    backing = tmp_path / "device.img"
    backing.write_bytes(random_bytes(40 * MiB, 7))
    loop = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        run_cli("restore", "-r", repo_path, "latest", loop, "--force", "--no-progress")
        with open(loop, "rb") as f:
            _kept_and_zeroed(f.read(), source, free)
        assert fsck("ext4", Path(loop)).returncode == 0
        # a delta restore onto garbage again: only what differs is written, skipped blocks zeroed
        with open(loop, "r+b") as f:
            f.write(random_bytes(40 * MiB, 8))
        run_cli("restore", "-r", repo_path, "latest", loop, "--force", "--delta", "--no-progress")
        with open(loop, "rb") as f:
            _kept_and_zeroed(f.read(), source, free)
        assert run_cli("verify", "-r", repo_path, "latest", loop).returncode == 0
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    # a regular file holding garbage too
    target = tmp_path / "old.img"
    target.write_bytes(random_bytes(40 * MiB, 9))
    run_cli("restore", "-r", repo_path, "latest", target, "--force", "--no-progress")
    _kept_and_zeroed(target.read_bytes(), source, free)
    assert read_files("ext4", target, list(files)) == files
    for p in (img, backing, target):
        p.unlink()


def _gpt_disk(tmp_path: Path) -> tuple[Path, dict[int, tuple[int, int, str, dict[str, bytes]]]]:
    """A 104 MiB GPT disk: EFI FAT32 (36 MiB), NTFS (24 MiB), ext4 (34 MiB), 1 MiB gaps
    between them holding old bytes; every partition with 40% of its files deleted."""
    disk = tmp_path / "disk.img"
    blank(disk, 104)
    layout = [(1, 36, "EF00", "fat32", make_fat32), (2, 24, "0700", "ntfs", make_ntfs), (3, 34, "8300", "ext4", make_ext4)]
    args, start, parts = [], 2048, {}
    for number, mb, code, kind, make in layout:
        args += ["-n", f"{number}:{start}:+{mb}M", "-t", f"{number}:{code}"]
        parts[number] = (start * 512, mb * MiB, kind, {})
        start += (mb + 1) * 2048
    subprocess.run([tool("sgdisk"), *args, str(disk)], check=True, capture_output=True)
    for number, mb, _code, kind, make in layout:
        part = tmp_path / f"p{number}.img"
        offset, length, _, _ = parts[number]
        parts[number] = (offset, length, kind, make(part, mb, tmp_path))
        with open(disk, "r+b") as f:
            f.seek(offset)
            f.write(part.read_bytes())
        part.unlink()
    return disk, parts


def test_gpt_disk_per_partition(tmp_path: Path, default_repo: Path) -> None:
    repo_path = default_repo
    disk, parts = _gpt_disk(tmp_path)
    source = disk.read_bytes()
    free = sorted(r for offset, length, _k, _f in parts.values() for r in _free(source, offset, length))
    rec = json.loads(run_cli("snapshot", "-r", repo_path, disk, "--compression", "zstd", "--json").stdout)
    got = {fs["partition"]: fs for fs in rec["filesystems"]}
    assert sorted(got) == [1, 2, 3]
    for number, (offset, length, kind, _files) in parts.items():
        assert (got[number]["filesystem"], got[number]["offset"], got[number]["length"]) == (kind, offset, length)
        assert got[number]["skipped_bytes"] == total(_free(source, offset, length)) > 10 * MiB
    assert _stored(repo_path) <= _used_compressed(repo_path, source, free) * 1.02  # issue 18: + 2% at most
    info = run_cli("info", "-r", repo_path, "latest").stdout.decode()
    for number, (_o, _l, kind, _f) in parts.items():
        assert re.search(rf"^partition {number}\s+{kind}, used [\d.]+ \w+, skipped as free ", info, re.M), info
    out = tmp_path / "restored.img"
    run_cli("restore", "-r", repo_path, "latest", out, "--no-progress")
    restored = out.read_bytes()
    _kept_and_zeroed(restored, source, free)  # the table and the gaps between partitions byte for byte
    for number, (offset, length, kind, files) in parts.items():
        part = tmp_path / f"r{number}.img"
        part.write_bytes(restored[offset:offset + length])
        check = fsck(kind, part)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        assert read_files(kind, part, list(files)) == files
        part.unlink()
    assert run_cli("verify", "-r", repo_path, "latest", disk).returncode == 0
    one = tmp_path / "p2.img"  # one partition alone: the same bytes
    run_cli("restore", "-r", repo_path, "latest", "--partition", "2", one)
    offset, length, _kind, _files = parts[2]
    assert one.read_bytes() == restored[offset:offset + length]
    for p in (disk, out, one):
        p.unlink()


def test_damaged_bitmap_falls_back_to_all_blocks(tmp_path: Path, repo_path: Path) -> None:
    img = tmp_path / "ext4.img"
    make_ext4(img, 40, tmp_path)
    dump = subprocess.run([tool("dumpe2fs"), str(img)], capture_output=True, text=True, check=True).stdout
    bs = int(re.search(r"^Block size:\s+(\d+)", dump, re.M).group(1))
    bitmap = int(re.search(r"Block bitmap at (\d+)", dump).group(1)) * bs
    with open(img, "r+b") as f:  # bytes flipped in the bitmap area
        f.seek(bitmap + 100)
        f.write(b"\x00" * 8)
    proc = run_cli("snapshot", "-r", repo_path, img, "--json")
    rec = json.loads(proc.stdout)
    (fs,) = rec["filesystems"]
    assert fs["filesystem"] == "ext4" and fs["skipped_bytes"] == 0
    assert "cannot be trusted" in fs["notes"][0] and "checksum" in fs["notes"][0]
    assert any("cannot be trusted" in w for w in rec["warnings"])
    out = tmp_path / "restored.img"
    run_cli("restore", "-r", repo_path, "latest", out)
    assert out.read_bytes() == img.read_bytes()
    img.unlink()
    out.unlink()


def test_all_blocks_reads_everything(tmp_path: Path, repo_path: Path) -> None:
    img = tmp_path / "ntfs.img"
    make_ntfs(img, 40, tmp_path)
    rec = json.loads(run_cli("snapshot", "-r", repo_path, img, "--all-blocks", "--json").stdout)
    assert rec["filesystems"] is None
    assert rec["data_bytes"] > 40 * MiB - total(_free(img.read_bytes())) + 20 * MiB  # the free blocks' old bytes too
    out = tmp_path / "restored.img"
    run_cli("restore", "-r", repo_path, "latest", out)
    assert out.read_bytes() == img.read_bytes()
    res = json.loads(run_cli("verify", "-r", repo_path, "latest", img, "--json").stdout)
    assert res["identical"] and res["skipped_bytes"] == 0 and res["compared_bytes"] == 40 * MiB
    img.unlink()
    out.unlink()


@pytest.mark.parametrize("kind", ["ext4", "xfs", "btrfs"])
def test_read_write_mount_reads_everything(tmp_path: Path, repo_path: Path, kind: str) -> None:
    """A read-write mounted filesystem, named by its loop device or its image file, is
    refused; with --allow-mounted read whole; and no restore writes over it. (A Btrfs mount
    shows an anonymous device number in mountinfo, not its device's.)"""
    img = tmp_path / f"{kind}.img"
    MAKE[kind](img, SIZE_MB.get(kind, 40), tmp_path)
    loop = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=True).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", loop, str(mnt)], check=True)
        try:
            for source in (loop, img):
                proc = run_cli("snapshot", "-r", repo_path, source, "--json", check=False)
                assert proc.returncode == 5 and b"mounted read-write" in proc.stderr  # refused, as before
            rec = json.loads(run_cli("snapshot", "-r", repo_path, loop, "--allow-mounted", "--json").stdout)
            proc = run_cli("restore", "-r", repo_path, "latest", loop, "--force", "--no-progress", check=False)
            assert proc.returncode == 5 and b"mounted on" in proc.stderr
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    (fs,) = rec["filesystems"]
    assert fs["skipped_bytes"] == 0 and "mounted read-write" in fs["notes"][0]
    img.unlink()


def test_stream_and_unknown_contents_read_everything(tmp_path: Path, repo_path: Path) -> None:
    data = random_bytes(3 * MiB, 4)
    rec = json.loads(run_cli("snapshot", "-r", repo_path, "-", "--json", input=data).stdout)
    assert rec["filesystems"] is None
    img = tmp_path / "random.img"
    img.write_bytes(data)
    rec = json.loads(run_cli("snapshot", "-r", repo_path, img, "--json").stdout)
    (fs,) = rec["filesystems"]
    assert fs["filesystem"] is None and fs["skipped_bytes"] == 0 and "all blocks read" in fs["notes"][0]
    assert real_files  # (the content helper is shared with the builders)


def _set_ntfs_dirty(img: Path) -> None:
    """Set the dirty flag in $Volume's $VOLUME_INFORMATION, as Windows leaves it."""
    import struct

    from diskvault.images.filesystems.ntfs import ATTR_VOLUME_INFORMATION, _Volume

    data = img.read_bytes()
    v = _Volume(lambda o, n: data[o:o + n], len(data))
    base = v.mft_lcn * v.cluster + 3 * v.record
    rec = bytearray(data[base:base + v.record])
    assert v.fixup(rec, 3)
    off = struct.unpack_from("<H", rec, 0x14)[0]
    while struct.unpack_from("<I", rec, off)[0] != ATTR_VOLUME_INFORMATION:
        off += struct.unpack_from("<I", rec, off + 4)[0]
    flags = off + struct.unpack_from("<H", rec, off + 0x14)[0] + 0x0A
    assert flags % 512 < 510  # not under an update-sequence slot
    mirror = struct.unpack_from("<Q", data, 0x38)[0] * v.cluster + 3 * v.record  # $MFTMirr's copy too
    with open(img, "r+b") as f:
        for where in (base, mirror):
            f.seek(where + flags)
            f.write(struct.pack("<H", struct.unpack_from("<H", rec, flags)[0] | 1))


def test_ntfs_hibernated_by_fast_startup_uses_its_bitmap(tmp_path: Path, repo_path: Path) -> None:
    from fsimages import mounted

    img = tmp_path / "ntfs.img"
    files = make_ntfs(img, 40, tmp_path)
    with mounted([tool("ntfs-3g"), str(img)], tmp_path / "mnt") as mnt:
        (mnt / "hiberfil.sys").write_bytes(b"HIBR" + random_bytes(300_000, 5))
    _set_ntfs_dirty(img)
    free = _free(img.read_bytes())
    rec = json.loads(run_cli("snapshot", "-r", repo_path, img, "--json").stdout)
    (fs,) = rec["filesystems"]
    assert fs["skipped_bytes"] == total(free) > 20 * MiB
    assert any("marked dirty" in n for n in fs["notes"]) and any("hibernated" in n for n in fs["notes"])
    out = tmp_path / "restored.img"
    run_cli("restore", "-r", repo_path, "latest", out)
    _kept_and_zeroed(out.read_bytes(), img.read_bytes(), free)
    assert read_files("ntfs", out, list(files)) == files
    assert run_cli("verify", "-r", repo_path, "latest", img).returncode == 0
    info = run_cli("info", "-r", repo_path, "latest").stdout.decode()
    assert re.search(r"^filesystem\s+ntfs, .*hibernated", info, re.M), info
    img.unlink()
    out.unlink()


def test_damaged_partition_table_reads_everything(tmp_path: Path, repo_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(random_bytes(8 * MiB, 12))
    subprocess.run([tool("sgdisk"), "-n", "1:2048:0", "-t", "1:8300", str(disk)], check=True, capture_output=True)
    with open(disk, "r+b") as f:  # both GPT headers fail their CRC32
        for lba in (1, 8 * MiB // 512 - 1):
            f.seek(lba * 512 + 24)
            f.write(b"\xff" * 8)
    rec = json.loads(run_cli("snapshot", "-r", repo_path, disk, "--json").stdout)
    (fs,) = rec["filesystems"]
    assert fs["partition"] is None and fs["skipped_bytes"] == 0
    assert "the partition table cannot be read" in fs["notes"][0]
    assert any("the partition table cannot be read" in w for w in rec["warnings"])
    out = tmp_path / "restored.img"
    run_cli("restore", "-r", repo_path, "latest", out)
    assert out.read_bytes() == disk.read_bytes()


def test_mounts_in_another_namespace_and_over_a_nested_loop_are_refused(tmp_path: Path, repo_path: Path) -> None:
    """Not in this process's mount table: a mount in another mount namespace (a container)
    is found by the kernel's exclusive claim on the device, a loop over a loop by following
    the chain; both refused as snapshot sources and as restore targets."""
    img = tmp_path / "ext4.img"
    make_ext4(img, 40, tmp_path)
    run_cli("snapshot", "-r", repo_path, img, "--json")
    loop = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=True).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        ready = tmp_path / "ready"
        ns = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               f"mount {loop} {mnt} && touch {ready} && sleep 60"])
        try:
            for _ in range(100):
                if ready.exists():
                    break
                time.sleep(0.1)
            assert ready.exists() and not os.path.ismount(mnt)  # mounted there, not here
            for source in (loop, img):
                proc = run_cli("snapshot", "-r", repo_path, source, "--json", check=False)
                assert proc.returncode == 5, proc.stderr
                assert b"not in this mount namespace" in proc.stderr
            proc = run_cli("restore", "-r", repo_path, "latest", img, "--force", "--no-progress", check=False)
            assert proc.returncode == 5 and b"open exclusively" in proc.stderr, proc.stderr
        finally:
            ns.kill()
            ns.wait()
        nested = subprocess.run(["losetup", "-f", "--show", loop], capture_output=True, text=True,
                                check=True).stdout.strip()
        try:
            subprocess.run(["mount", nested, str(mnt)], check=True)
            try:
                for source in (loop, img):
                    proc = run_cli("snapshot", "-r", repo_path, source, "--json", check=False)
                    assert proc.returncode == 5 and f"{nested} on {mnt}".encode() in proc.stderr, proc.stderr
            finally:
                subprocess.run(["umount", str(mnt)], check=True)
        finally:
            subprocess.run(["losetup", "-d", nested], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    img.unlink()
