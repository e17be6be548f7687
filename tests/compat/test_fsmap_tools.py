"""The allocation readers (images/filesystems) against the filesystems' own tools: dumpe2fs's
free block ranges, ntfscluster's free space, fsck.fat's and dump.exfat's cluster counts,
xfs_db's free extents, Btrfs's scrub of the image with its free space zeroed, on real images with 40% of their files deleted; and damaged maps (and
an XFS or Btrfs log left to replay) refused."""

from __future__ import annotations

import os
import re
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsimages import make_btrfs, make_exfat, make_ext4, make_fat32, make_ntfs, make_xfs, mounted, read_mounted, run
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


SMALL_XFS = dict(os.environ, TEST_DIR="1", TEST_DEV="1", QA_CHECK_FS="1")  # mkfs.xfs allows < 300 MB, logs < 64 MB


def _xfs_db(img: Path, *commands: str) -> str:
    argv = [tool("xfs_db"), "-r"] + [a for c in commands for a in ("-c", c)] + [str(img)]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _assert_xfs_free_equals_xfs_db(img: Path, m) -> None:
    """``m.free`` is xfs_db's free extents (``freesp -d``) less the AG free lists' blocks."""
    sb = _xfs_db(img, "sb 0", "p blocksize agblocks agcount")
    bs, agblocks, agcount = (int(re.search(rf"^{k} = (\d+)", sb, re.M).group(1)) for k in ("blocksize", "agblocks", "agcount"))
    theirs = normalise([((int(a) * agblocks + int(b)) * bs, (int(a) * agblocks + int(b) + int(n)) * bs) for a, b, n in
                        re.findall(r"^\s*(\d+)\s+(\d+)\s+(\d+)$", _xfs_db(img, "freesp -d"), re.M)])
    on_free_lists = sum(int(re.search(r"flcount = (\d+)", _xfs_db(img, f"agf {ag}", "p flcount")).group(1))
                        for ag in range(agcount))
    assert m.filesystem == "xfs" and m.notes == [] and m.block_size == bs
    assert all(any(s <= a and b <= e for s, e in theirs) for a, b in m.free)
    assert total(theirs) - total(m.free) == on_free_lists * bs


@pytest.mark.parametrize("kind", ["default", "1k-blocks", "v4"])
def test_xfs_free_extents_equal_xfs_db(tmp_path: Path, kind: str) -> None:
    img = tmp_path / "x.img"
    if kind == "default":  # v5 (CRCs), 4 KiB blocks, 4 AGs, files written through the kernel
        make_xfs(img, 300, tmp_path)
    elif kind == "1k-blocks":  # free space in ~800 pieces: two-level btrees (a leaf holds 121 records)
        make_xfs(img, 300, tmp_path, "-b", "size=1024", "-d", "agcount=2")
        with mounted(["mount", "-o", "loop", str(img)], tmp_path / "mnt") as mnt:
            for i in range(1600):
                (mnt / f"t{i}").write_bytes(os.urandom(1000))
            os.sync()
            for i in range(0, 1600, 2):
                (mnt / f"t{i}").unlink()
        assert "bnolevel = 2" in _xfs_db(img, "agf 0", "p bnolevel")
    else:  # v4, no CRCs (this kernel no longer mounts it: as mkfs.xfs made it)
        img.write_bytes(b"OLDDATA!" * (300 << 17))
        run(tool("mkfs.xfs"), "-q", "-f", "-K", "-m", "crc=0", img)
    _assert_xfs_free_equals_xfs_db(img, _map(img))
    img.unlink()


def _fsync_loop(img: Path, mnt_dir: Path, rounds: int, dirty: bool) -> None:
    """Write and fsync small files ``rounds`` times (each fsync is a log write), then unmount
    (``dirty``: shut the filesystem down first, leaving its log unreplayed)."""
    with mounted(["mount", "-o", "loop", str(img)], mnt_dir) as mnt:
        for i in range(rounds):
            fd = os.open(mnt / f"f{i % 300}", os.O_WRONLY | os.O_CREAT)
            os.write(fd, b"x" * (i % 7000))
            os.fsync(fd)
            os.close(fd)
        (mnt / "last").write_bytes(b"y" * 100_000)
        if dirty:
            run(tool("xfs_io"), "-x", "-c", "shutdown -f", mnt)


@pytest.mark.parametrize("dirty", [False, True], ids=["clean", "dirty"])
@pytest.mark.parametrize("rounds", [50, 6000], ids=["first-pass", "wrapped"])
def test_xfs_log_must_end_with_an_unmount_record(tmp_path: Path, rounds: int, dirty: bool) -> None:
    """A 64 MiB XFS with the smallest log (5.3 MiB): 6000 fsyncs wrap it (cycle 2 or more);
    shut down before unmounting, its log holds changes xfs_repair calls valuable."""
    img = tmp_path / "x.img"
    img.write_bytes(b"OLDDATA!" * (64 << 17))
    subprocess.run([tool("mkfs.xfs"), "-q", "-f", "-K", "-l", "size=1368b", str(img)], env=SMALL_XFS, check=True)
    _fsync_loop(img, tmp_path / "mnt", rounds, dirty)
    data = img.read_bytes()
    logstart = int(re.search(r"logstart = (\d+)", _xfs_db(img, "sb 0", "p logstart")).group(1))
    at = int(re.search(r"0x([0-9a-f]+)", _xfs_db(img, f"convert fsblock {logstart} byte")).group(1), 16)
    first_cycle = struct.unpack_from(">II", data, at)[1]  # the first log record's header: its cycle
    assert first_cycle == (1 if rounds == 50 else 2) or (rounds > 50 and first_cycle > 2)
    repair = subprocess.run([tool("xfs_repair"), "-n", str(img)], capture_output=True, text=True)
    assert ("valuable metadata changes in a log" in repair.stdout + repair.stderr) == dirty
    m = _map(img)
    if dirty:
        assert m.free == [] and m.notes == [
            "its allocation map cannot be trusted (its log holds changes not yet written back; it was not cleanly "
            "unmounted): all blocks read"]
    else:
        _assert_xfs_free_equals_xfs_db(img, m)
    img.unlink()


def test_damaged_xfs_btree_is_not_trusted(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    make_xfs(img, 300, tmp_path)
    root = int(re.search(r"bnoroot = (\d+)", _xfs_db(img, "agf 1", "p bnoroot")).group(1))
    agblocks = int(re.search(r"agblocks = (\d+)", _xfs_db(img, "sb 0", "p agblocks")).group(1))
    _flip(img, (agblocks + root) * 4096 + 64, 8)  # AG 1's first free extent
    m = _map(img)
    assert m.free == [] and m.notes == [
        "its allocation map cannot be trusted (block %d of allocation group 1 fails its checksum): all blocks read" % root]
    img.unlink()


def _super(img: Path, field: str) -> int:
    out = subprocess.run([tool("btrfs"), "inspect-internal", "dump-super", str(img)], capture_output=True, text=True,
                         check=True).stdout
    return int(re.search(rf"^{re.escape(field)}\s+(\d+)", out, re.M).group(1))


@pytest.mark.parametrize("mkfs", [[], ["-m", "single", "-n", "4096"], ["--mixed"], ["-d", "dup"]],
                         ids=["default", "single-metadata-4k-nodes", "mixed", "dup-data"])
def test_btrfs_free_space_zeroed_passes_scrub(tmp_path: Path, mkfs: list[str]) -> None:
    """The image with every byte the map calls free zeroed: `btrfs check` is clean, a scrub
    (every data and metadata checksum) finds no error, every file is there; and the map
    skipped more than the unallocated device space (the deleted files' extents), except where
    data chunks are kept whole (mixed data and metadata, two copies of the data)."""
    img = tmp_path / "b.img"
    files = make_btrfs(img, 256, tmp_path, *mkfs)
    if mkfs == ["-m", "single", "-n", "4096"]:  # 4 KiB nodes: trees of two levels and more
        with mounted(["mount", "-o", "loop", str(img)], tmp_path / "mnt") as mnt:
            for i in range(3000):
                (mnt / f"t{i}").write_bytes(os.urandom(3000 + i))
            os.sync()
            for i in range(0, 3000, 2):
                (mnt / f"t{i}").unlink()
                files[f"t{i + 1}"] = (mnt / f"t{i + 1}").read_bytes()
    m = _map(img)
    assert m.filesystem == "btrfs" and m.notes == [] and m.block_size == 4096
    unallocated = _super(img, "dev_item.total_bytes") - _super(img, "dev_item.bytes_used")
    if mkfs in (["--mixed"], ["-d", "dup"]):
        assert unallocated - (2 << 20) < total(m.free) <= unallocated
    else:
        assert total(m.free) > unallocated + 8 * (1 << 20)
    with open(img, "r+b") as f:
        for a, b in m.free:
            f.seek(a)
            f.write(bytes(b - a))
    check = subprocess.run([tool("btrfs"), "check", "--readonly", str(img)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    with mounted(["mount", "-o", "ro,loop", str(img)], tmp_path / "mnt") as mnt:
        scrub = subprocess.run([tool("btrfs"), "scrub", "start", "-B", "-r", str(mnt)], capture_output=True, text=True)
        assert "no errors found" in scrub.stdout, scrub.stdout + scrub.stderr
    assert read_mounted(img) == files
    img.unlink()


@pytest.mark.parametrize("case", ["log-tree", "xxhash", "two-devices", "damaged-extent-tree"])
def test_btrfs_map_not_trusted(tmp_path: Path, case: str) -> None:
    img = tmp_path / "b.img"
    if case == "log-tree":  # fsynced, copied before the transaction commits: the log must be replayed
        make_btrfs(img, 256, tmp_path)
        copy = tmp_path / "copy.img"
        with mounted(["mount", "-o", "loop,commit=300", str(img)], tmp_path / "mnt") as mnt:
            os.sync()
            fd = os.open(mnt / "fsynced", os.O_WRONLY | os.O_CREAT)
            os.write(fd, os.urandom(200_000))
            os.fsync(fd)
            os.close(fd)
            run("cp", img, copy)
        assert _super(copy, "log_root") != 0
        img.unlink()
        img = copy
        why = "its log tree holds fsynced changes not yet committed; it was not cleanly unmounted"
    elif case == "xxhash":
        make_btrfs(img, 256, tmp_path, "--csum", "xxhash")
        why = "its checksums are of type 1 (only CRC32C is checked here)"
    elif case == "two-devices":
        other = tmp_path / "b2.img"
        for p in (img, other):
            p.write_bytes(bytes(256 << 20))
        run(tool("mkfs.btrfs"), "-q", "-f", "-d", "single", "-m", "single", img, other)
        other.unlink()
        why = "it spans 2 devices"
    else:
        make_btrfs(img, 256, tmp_path)
        out = subprocess.run([tool("btrfs"), "inspect-internal", "dump-tree", "-t", "extent", str(img)],
                             capture_output=True, text=True, check=True).stdout
        leaf = int(re.search(r"^(?:leaf|node) (\d+) ", out, re.M).group(1))  # the extent tree's root, logical
        chunks = subprocess.run([tool("btrfs"), "inspect-internal", "dump-tree", "-t", "chunk", str(img)],
                                capture_output=True, text=True, check=True).stdout
        for logical, length, stripe in re.findall(r"CHUNK_ITEM (\d+)\).*?length (\d+).*?stripe 0 devid 1 offset (\d+)",
                                                  chunks, re.S):
            if int(logical) <= leaf < int(logical) + int(length):
                _flip(img, int(stripe) + leaf - int(logical) + 200, 8)
                break
        else:
            raise AssertionError("no chunk holds the extent tree's root")
        why = f"tree block {leaf} fails its checksum"
    m = _map(img)
    assert m.filesystem == "btrfs" and m.free == []
    assert m.notes == [f"its allocation map cannot be trusted ({why}): all blocks read"]
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


@pytest.fixture(scope="module", params=["v5", "v4"])
def small_xfs(request, tmp_path_factory) -> tuple[bytes, list[tuple[int, int]], list[list[int]]]:
    """A clean 64 MiB XFS (v5: with files written through the kernel; v4, which this kernel
    no longer mounts: as mkfs.xfs made it), its free ranges, and where its metadata lies: each
    AG's first four sectors (superblock, AGF, AGI, AGFL), the fields of its btree records,
    the log's first blocks."""
    work = tmp_path_factory.mktemp("xfs")
    img = work / "x.img"
    img.write_bytes(b"OLDDATA!" * (64 << 17))
    crc = ["-m", "crc=0"] if request.param == "v4" else []
    subprocess.run([tool("mkfs.xfs"), "-q", "-f", "-K", *crc, "-l", "size=1368b", str(img)], env=SMALL_XFS, check=True)
    if request.param == "v5":
        _fsync_loop(img, work / "mnt", 300, dirty=False)
    data = img.read_bytes()
    img.unlink()
    m = read_map(lambda o, n: data[o:o + n], len(data))
    from diskvault.images.filesystems.xfs import _Fs

    fs = _Fs(lambda o, n: data[o:o + n], len(data))
    headers, records = [], []
    for ag in range(fs.agcount):
        base = ag * fs.agblocks * fs.bs
        headers += range(base, base + 2048)
        for root, _levels in fs.agf(ag)[:2]:
            n = struct.unpack_from(">H", data, base + root * fs.bs + 6)[0]
            records += range(base + root * fs.bs + fs.hdr, base + root * fs.bs + fs.hdr + 8 * n)
    log = (fs.logstart >> fs.agblklog) * fs.agblocks * fs.bs + (fs.logstart & ((1 << fs.agblklog) - 1)) * fs.bs
    assert m.notes == [] and m.free and records
    return data, m.free, [headers, records, list(range(log, log + 8192))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_flipped_xfs_metadata_never_frees_a_used_block(small_xfs, data) -> None:
    """Bytes of the superblock and AG headers, of the free-space btrees' records, or of the
    log changed at random: the reader never raises, and whatever it still calls free was free
    (on v4, without checksums, the two btrees and the free counts must catch it)."""
    image, free, groups = small_xfs
    spots = data.draw(st.sampled_from(groups))
    flips = {data.draw(st.sampled_from(spots)): data.draw(st.integers(1, 255)) for _ in range(data.draw(st.integers(1, 3)))}

    def read(o: int, n: int) -> bytes:
        b = bytearray(image[o:o + n])
        for at, x in flips.items():
            if o <= at < o + n:
                b[at - o] ^= x
        return bytes(b)

    m = read_map(read, len(image))
    assert all(any(s <= a and b <= e for s, e in free) for a, b in m.free)


@pytest.mark.parametrize("kind", ["xfs", "btrfs"])
def test_image_shorter_than_its_filesystem_is_read_whole(tmp_path: Path, kind: str) -> None:
    img = tmp_path / "t.img"
    (make_xfs if kind == "xfs" else make_btrfs)(img, 300, tmp_path)
    os.truncate(img, 200 << 20)
    m = _map(img)
    assert m.filesystem == kind and m.free == []
    assert m.notes == [f"its allocation map cannot be trusted (the filesystem is {300 << 20} bytes, longer than the "
                       f"{200 << 20} bytes that hold it): all blocks read"]
    img.unlink()
