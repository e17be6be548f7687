"""The allocation readers (images/filesystems) against the filesystems' own tools: dumpe2fs's
free block ranges, ntfscluster's free space, fsck.fat's and dump.exfat's cluster counts, on
real images with 40% of their files deleted; and damaged maps refused."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest

from fsimages import make_exfat, make_ext4, make_fat32, make_ntfs
from helpers import tool

from diskvault.images.filesystems import read_map
from diskvault.images.filesystems.ranges import normalise, total


def _map(path: Path):
    data = path.read_bytes()
    return read_map(lambda o, n: data[o:o + n], len(data))


def _dumpe2fs_free(path: Path) -> tuple[int, list[tuple[int, int]]]:
    out = subprocess.run([tool("dumpe2fs"), str(path)], capture_output=True, text=True, check=True).stdout
    bs = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))
    cluster = re.search(r"^Cluster size:\s+(\d+)", out, re.M)  # bigalloc: a range ends with a cluster's first block
    last = int(cluster.group(1)) if cluster else bs
    ranges = []
    for line in re.findall(r"^\s+Free blocks: (.*)$", out, re.M):
        for part in filter(None, (p.strip() for p in line.split(","))):
            a, _, b = part.partition("-")
            ranges.append((int(a) * bs, int(b or a) * bs + last))
    return bs, normalise(ranges)  # (dumpe2fs splits runs at group ends)


@pytest.mark.parametrize("mkfs", [
    [],  # ext4 defaults: metadata_csum, flex_bg, 64bit, BLOCK_UNINIT groups
    ["-b", "1024"],  # 1 KiB blocks: the first data block is 1
    ["-O", "^metadata_csum,uninit_bg"],  # group descriptor CRC16, no bitmap checksums
    ["-O", "^flex_bg,^64bit"],  # bitmaps in their own groups, 32-byte descriptors
    ["-O", "meta_bg,^resize_inode"],  # descriptors spread over the meta groups
    ["-t", "ext2"],  # no journal, no extents
    ["-O", "bigalloc", "-C", "16384"],  # the bitmaps count 16 KiB clusters
], ids=["ext4", "1k", "uninit_bg", "no-flex_bg", "meta_bg", "ext2", "bigalloc"])
def test_ext_free_ranges_equal_dumpe2fs(tmp_path: Path, mkfs: list[str]) -> None:
    img = tmp_path / "e.img"
    make_ext4(img, 40, tmp_path, *mkfs)
    m = _map(img)
    _bs, expected = _dumpe2fs_free(img)
    assert m.notes == []
    assert m.filesystem in ("ext4", "ext2")
    assert m.free == expected
    assert m.used_bytes == 40 * (1 << 20) - total(expected)
    img.unlink()


def test_ntfs_free_space_equals_ntfscluster(tmp_path: Path) -> None:
    img = tmp_path / "n.img"
    make_ntfs(img, 40, tmp_path)
    m = _map(img)
    out = subprocess.run([tool("ntfscluster"), "-q", str(img)], capture_output=True, text=True, check=True).stdout
    assert m.filesystem == "ntfs" and m.notes == []
    assert total(m.free) == int(re.search(r"bytes of free space\s*:\s*(\d+)", out).group(1))
    # ntfscluster finds no file, directory index or system file in any free range
    assert len(m.free) > 5
    for start, end in m.free:
        found = subprocess.run([tool("ntfscluster"), "-c", f"{start // m.block_size}-{end // m.block_size - 1}", str(img)],
                               capture_output=True, text=True).stdout
        assert "Inode" not in found, (start, end, found)
    img.unlink()


def test_fat32_free_clusters_equal_fsck_fat(tmp_path: Path) -> None:
    img = tmp_path / "f.img"
    make_fat32(img, 40, tmp_path)
    m = _map(img)
    out = subprocess.run([tool("fsck.fat"), "-n", "-v", str(img)], capture_output=True, text=True).stdout
    used, count = map(int, re.search(r"(\d+)/(\d+) clusters", out).groups())
    cluster = int(re.search(r"(\d+) bytes per cluster", out).group(1))
    assert m.filesystem == "fat32" and m.notes == [] and m.block_size == cluster
    assert total(m.free) == (count - used) * cluster
    img.unlink()


def test_exfat_free_clusters_equal_dump_exfat(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    make_exfat(img, 40, tmp_path)
    m = _map(img)
    out = subprocess.run([tool("dump.exfat"), str(img)], capture_output=True, text=True, check=True).stdout
    free = int(re.search(r"Free Clusters:\s*(\d+)", out).group(1))
    assert m.filesystem == "exfat" and m.notes == []
    assert total(m.free) == free * m.block_size
    img.unlink()


def _flip(img: Path, offset: int, n: int = 16) -> None:
    with open(img, "r+b") as f:
        f.seek(offset)
        old = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))


def _ext_bitmap(img: Path) -> int:
    out = subprocess.run([tool("dumpe2fs"), str(img)], capture_output=True, text=True, check=True).stdout
    bs = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))
    return int(re.search(r"Block bitmap at (\d+)", out).group(1)) * bs


@pytest.mark.parametrize("mkfs", [[], ["-t", "ext2"]], ids=["ext4-csum", "ext2"])
def test_damaged_ext_bitmap_is_not_trusted(tmp_path: Path, mkfs: list[str]) -> None:
    img = tmp_path / "e.img"
    make_ext4(img, 40, tmp_path, *mkfs)
    _flip(img, _ext_bitmap(img) + 300)
    m = _map(img)
    assert m.free == [] and "cannot be trusted" in m.notes[0]
    assert ("checksum" if not mkfs else "free clusters") in m.notes[0]
    img.unlink()


def test_damaged_ntfs_bitmap_is_not_trusted(tmp_path: Path) -> None:
    from diskvault.images.filesystems.ntfs import _Volume

    img = tmp_path / "n.img"
    make_ntfs(img, 40, tmp_path)
    data = img.read_bytes()
    v = _Volume(lambda o, n: data[o:o + n], len(data))
    rec = bytearray(data[v.mft_lcn * v.cluster + 6 * v.record:][:v.record])
    v.fixup(rec, 6)
    (lcn, _count), = v.data(rec, 6)[0][:1]
    with open(img, "r+b") as f:  # the bits of the first 128 clusters (boot sector, files) cleared
        f.seek(lcn * v.cluster)
        f.write(bytes(16))
    m = _map(img)
    assert m.free == [] and "cannot be trusted" in m.notes[0] and "MFT record" in m.notes[0]
    img.unlink()


def test_damaged_fat_is_not_trusted(tmp_path: Path) -> None:
    img = tmp_path / "f.img"
    make_fat32(img, 40, tmp_path)
    boot = img.read_bytes()[:512]
    reserved = struct.unpack_from("<H", boot, 0x0E)[0]
    _flip(img, reserved * 512 + 64)  # the first FAT; the second no longer agrees
    m = _map(img)
    assert m.free == [] and "copies of the FAT differ" in m.notes[0]
    img.unlink()


def test_bitlocker_is_imaged_whole() -> None:
    boot = bytearray(8192)
    boot[3:11] = b"-FVE-FS-"
    m = read_map(lambda o, n: bytes(boot[o:o + n]), len(boot))
    assert m.filesystem == "bitlocker" and m.free == [] and "ciphertext" in m.notes[0]


def test_unknown_filesystem_reads_everything() -> None:
    data = bytes(range(256)) * 64
    m = read_map(lambda o, n: data[o:o + n], len(data))
    assert m.filesystem is None and m.free == [] and "all blocks read" in m.notes[0]


def test_overlapping_partitions_are_read_whole(tmp_path: Path) -> None:
    """An MBR whose partition 2 lies inside partition 1 (ext4): neither map is used."""
    from diskvault.images.filesystems import disk_plan

    fs = tmp_path / "e.img"
    make_ext4(fs, 40, tmp_path)
    disk = bytearray(1 << 20) + fs.read_bytes()
    for i, (start, count) in enumerate([(2048, 81920), (4096, 40960)]):
        struct.pack_into("<B3sB3sII", disk, 446 + 16 * i, 0, b"\0\0\0", 0x83, b"\0\0\0", start, count)
    disk[510:512] = b"\x55\xaa"
    areas, notes = disk_plan(lambda o, n: bytes(disk[o:o + n]), len(disk))
    assert [(a.partition, a.map.free, a.map.notes) for a in areas] == [
        (1, [], ["it overlaps partition 2: all blocks read"]), (2, [], ["it overlaps partition 1: all blocks read"])]
    # without the overlap, partition 1's free blocks are found
    struct.pack_into("<B3sB3sII", disk, 446 + 16, 0, b"\0\0\0", 0, b"\0\0\0", 0, 0)
    (area,), _ = disk_plan(lambda o, n: bytes(disk[o:o + n]), len(disk))
    assert area.map.filesystem == "ext4" and area.map.free
    fs.unlink()
