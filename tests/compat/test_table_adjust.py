"""Fitting a GPT or MBR table to a bigger or smaller target, judged by sgdisk and sfdisk.

Images are made with sgdisk/sfdisk (EFI + Microsoft reserved + basic data + Linux), their
partitions filled with distinct bytes, copied onto a target of another size, and adjusted
with images/table_adjust.py. ``sgdisk -v`` must print "No problems found" (it exits 0 even
when it finds problems), ``sfdisk --verify`` must report nothing, ``sfdisk --dump`` must
show the same partitions with the new last LBA, and every partition's bytes must be equal.
4096-byte sectors use a loop device with ``losetup --sector-size 4096`` (root).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from diskvault.errors import TargetError
from diskvault.images.partitions import read_table
from diskvault.images.table_adjust import plan_adjustment
from helpers import random_bytes, tool

MiB = 1 << 20


@contextlib.contextmanager
def loop(path: Path, sector_size: int):
    dev = subprocess.run(["losetup", "--find", "--show", "--sector-size", str(sector_size), str(path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@contextlib.contextmanager
def as_disk(path: Path, sector_size: int):
    """A name sgdisk/sfdisk see with the right logical sector size: the file itself for 512."""
    if sector_size == 512:
        yield str(path)
    else:
        with loop(path, sector_size) as dev:
            yield dev


def make_gpt(path: Path, size: int, ss: int) -> list[tuple[int, int]]:
    """A GPT disk image of ``size`` bytes with four partitions (the last ending well before
    the end, so a smaller target can hold it), each filled with distinct bytes; returns the
    partitions' (offset, length)."""
    path.write_bytes(b"")
    os.truncate(path, size)
    with as_disk(path, ss) as disk:
        subprocess.run([tool("sgdisk"), "-n", "1:0:+8M", "-t", "1:EF00", "-n", "2:0:+4M", "-t", "2:0C01",
                        "-n", "3:0:+8M", "-t", "3:0700", "-n", "4:0:+12M", "-t", "4:8300", disk],
                       check=True, capture_output=True)
    table = read_table(_reader(path), size)
    assert table.sector_size == ss and len(table.partitions) == 4
    out = []
    with open(path, "r+b") as f:
        for p in table.partitions:
            f.seek(p.offset)
            f.write(random_bytes(min(p.length, 1 * MiB), p.number) * (p.length // min(p.length, 1 * MiB)))
            out.append((p.offset, p.length))
    return out


def _reader(path: Path):
    def read(offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)
    return read


def restore_onto(image: Path, target: Path, target_size: int, ss: int, grow: int | None = None):
    """Copy the image's bytes onto a new target file of ``target_size`` and apply the plan."""
    size = image.stat().st_size
    adj = plan_adjustment(_reader(image), size, target_size, ss, grow)
    target.write_bytes(b"")
    os.truncate(target, target_size)
    with open(image, "rb") as src, open(target, "r+b") as dst:
        dst.write(src.read(adj.copy_bytes))
        for w in adj.writes:
            assert 0 <= w.offset and w.offset + len(w.data) <= target_size
            dst.seek(w.offset)
            dst.write(w.data)
    return adj


def sgdisk_clean(disk: str) -> str:
    out = subprocess.run([tool("sgdisk"), "-v", disk], capture_output=True, text=True).stdout
    assert "No problems found" in out, out
    return out


def sfdisk_dump(disk: str) -> tuple[dict, list[str]]:
    verify = subprocess.run([tool("sfdisk"), "--verify", disk], capture_output=True, text=True)
    out = verify.stdout + verify.stderr
    assert verify.returncode == 0 and "No errors detected" in out and "backup" not in out.lower(), out
    text = subprocess.run([tool("sfdisk"), "--dump", disk], capture_output=True, text=True, check=True).stdout
    header = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line and " : " not in line)
    parts = [line.split(" : ", 1)[1] for line in text.splitlines() if " : " in line]
    return header, parts


def same_partitions(image: Path, target: Path, ranges: list[tuple[int, int]]) -> None:
    with open(image, "rb") as a, open(target, "rb") as b:
        for off, length in ranges:
            a.seek(off), b.seek(off)
            assert a.read(length) == b.read(length), f"partition at {off} differs"


@pytest.mark.root
@pytest.mark.parametrize("ss", [512, 4096])
@pytest.mark.parametrize("factor", [1, 1.5, 3])
def test_gpt_onto_bigger_target(tmp_path, ss, factor):
    image, target = tmp_path / "disk.img", tmp_path / "target.img"
    size = 64 * MiB
    ranges = make_gpt(image, size, ss)
    with as_disk(image, ss) as disk:
        header0, parts0 = sfdisk_dump(disk)
    target_size = int(size * factor) // ss * ss
    adj = restore_onto(image, target, target_size, ss)
    assert adj.needed == (factor != 1)
    with as_disk(target, ss) as disk:
        sgdisk_clean(disk)
        header, parts = sfdisk_dump(disk)
    assert parts == [p.replace(os.fspath(image), os.fspath(target)) for p in parts0] or \
        [p.split(",", 2)[:2] for p in parts] == [p.split(",", 2)[:2] for p in parts0]
    assert int(header["last-lba"]) == target_size // ss - 1 - 1 - (128 * 128 // ss)
    assert header["label-id"] == header0["label-id"]
    same_partitions(image, target, ranges)
    if factor != 1:  # nothing of the old backup table is left in the middle of the disk
        data = target.read_bytes()
        assert data.count(b"EFI PART") == 2


@pytest.mark.root
@pytest.mark.parametrize("ss", [512, 4096])
def test_gpt_grow_last_partition(tmp_path, ss):
    image, target = tmp_path / "disk.img", tmp_path / "target.img"
    ranges = make_gpt(image, 64 * MiB, ss)
    adj = restore_onto(image, target, 128 * MiB, ss, grow=4)
    assert adj.grown["partition"] == 4 and adj.grown["new_size"] > adj.grown["old_size"]
    assert "resize2fs" in adj.grown["grow_hint"]
    with as_disk(target, ss) as disk:
        sgdisk_clean(disk)
        header, _ = sfdisk_dump(disk)
    table = read_table(_reader(target), 128 * MiB)
    p4 = table.get(4)
    assert p4.offset + p4.length == adj.grown["new_size"] + p4.offset
    assert (p4.offset + p4.length) % MiB == 0 and 128 * MiB - (p4.offset + p4.length) < MiB + 64 << 10
    same_partitions(image, target, ranges)  # the file system's bytes are left alone


def test_gpt_smaller_target(tmp_path):
    image, target = tmp_path / "disk.img", tmp_path / "target.img"
    ranges = make_gpt(image, 64 * MiB, 512)
    end = max(o + n for o, n in ranges)
    restore_onto(image, target, end + MiB, 512)  # room for the backup table: fine
    sgdisk_clean(str(target))
    same_partitions(image, target, ranges)
    with pytest.raises(TargetError, match=r"too small: partition 4 .* needs at least \d+ bytes"):
        plan_adjustment(_reader(image), 64 * MiB, end, 512)


def test_only_the_last_partition_grows(tmp_path):
    image = tmp_path / "disk.img"
    make_gpt(image, 64 * MiB, 512)
    with pytest.raises(TargetError, match="partition 2 is not the last"):
        plan_adjustment(_reader(image), 64 * MiB, 128 * MiB, 512, grow=2)


def test_other_sector_size_is_refused(tmp_path):
    image = tmp_path / "disk.img"
    make_gpt(image, 64 * MiB, 512)
    with pytest.raises(TargetError, match="512-byte sectors and the target has 4096-byte"):
        plan_adjustment(_reader(image), 64 * MiB, 128 * MiB, 4096)


def test_mbr_needs_nothing_moved_and_grows(tmp_path):
    image, target = tmp_path / "mbr.img", tmp_path / "target.img"
    image.write_bytes(b"")
    os.truncate(image, 48 * MiB)
    subprocess.run([tool("sfdisk"), str(image)], input=",16M,c,*\n,16M,83\n", text=True,
                   check=True, capture_output=True)
    assert not plan_adjustment(_reader(image), 48 * MiB, 96 * MiB).needed
    adj = restore_onto(image, target, 96 * MiB, 512, grow=2)
    _, parts = sfdisk_dump(str(target))
    assert adj.grown["partition"] == 2 and adj.grown["new_size"] == 96 * MiB - 17 * MiB
    assert f"size={(96 - 17) * 2048}" in parts[1].replace(" ", "")


def test_a_hybrid_mbr_stays_valid(tmp_path):
    """sgdisk -h makes a hybrid MBR (partition 1 also in the MBR): its 0xEE entry is left alone."""
    image, target = tmp_path / "disk.img", tmp_path / "target.img"
    make_gpt(image, 64 * MiB, 512)
    subprocess.run([tool("sgdisk"), "-h", "1", str(image)], check=True, capture_output=True)
    sgdisk_clean(str(image))
    restore_onto(image, target, 128 * MiB, 512, grow=4)
    sgdisk_clean(str(target))


def test_mbr_extended_partition_must_fit_a_smaller_disk(tmp_path):
    image = tmp_path / "mbr.img"
    image.write_bytes(b"")
    os.truncate(image, 200 * MiB)
    subprocess.run([tool("sfdisk"), str(image)], input=",32M,c\n,,5\n,40M,83\n", text=True,
                   check=True, capture_output=True)
    with pytest.raises(TargetError, match="partition 2 ends at byte"):
        plan_adjustment(_reader(image), 200 * MiB, 120 * MiB)
