"""Bare-metal restore: a whole-disk snapshot onto a disk of another size, and delta restore.

GPT disks made with sgdisk (EFI + Microsoft reserved + basic data + Linux; 512- and
4096-byte sectors) are snapshotted and restored with the CLI onto files and loop devices
1x, 1.5x and 3x their size: ``sgdisk -v`` clean, ``sfdisk --dump`` the same partitions with
the new last LBA, every partition's bytes equal, ``verify`` exit 0. ``verify`` still reports
an unadjusted copy or a changed byte. Delta restore writes only what differs (bytes checked
against /proc/self/io) and finishes after any SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compat"))

from test_table_adjust import (  # noqa: E402
    as_disk, loop, make_gpt, restore_onto, same_partitions, sfdisk_dump, sgdisk_clean,
)

from diskvault.ops.restore import restore  # noqa: E402
from diskvault.ops.snapshot import take_snapshot  # noqa: E402
from helpers import cli_env, random_bytes, run_cli  # noqa: E402

MiB = 1 << 20


def verify_json(repo, target, code):
    proc = run_cli("verify", "-r", repo, "latest", target, "--json", check=False)
    assert proc.returncode == code, proc.stderr.decode()
    return json.loads(proc.stdout)


@contextlib.contextmanager
def loop_device(size: int, ss: int, tmp: Path):
    """A loop device of ``size`` bytes and ``ss``-byte sectors over a new sparse file."""
    backing = tmp / f"loop-{size}-{ss}.img"
    with open(backing, "wb") as f:
        f.truncate(size)
    try:
        with loop(backing, ss) as dev:
            yield dev
    finally:
        backing.unlink()


def test_verify_accepts_a_fitted_table_and_nothing_else(tmp_path, repo_path):
    image = tmp_path / "disk.img"
    ranges = make_gpt(image, 64 * MiB, 512)
    run_cli("snapshot", "-r", repo_path, image)
    big = tmp_path / "big.img"
    restore_onto(image, big, 96 * MiB, 512)
    v = verify_json(repo_path, big, 0)
    assert v["identical"] and v["table_adjusted"] and v["not_compared"] == {"offset": 64 * MiB, "length": 32 * MiB}
    grown = tmp_path / "grown.img"
    restore_onto(image, grown, 96 * MiB, 512, grow=4)
    v = verify_json(repo_path, grown, 0)
    assert v["grown_partition"] == 4
    # a byte changed inside a partition is still a difference
    with open(big, "r+b") as f:
        f.seek(ranges[2][0] + 12345)
        f.write(b"\xff")
    v = verify_json(repo_path, big, 9)
    [d] = v["differing"]
    assert d["offset"] <= ranges[2][0] + 12345 < d["offset"] + d["length"] and d["length"] <= 4096
    # the image copied onto a bigger disk without fitting the table differs
    raw = tmp_path / "raw.img"
    raw.write_bytes(image.read_bytes())
    os.truncate(raw, 96 * MiB)
    v = verify_json(repo_path, raw, 9)
    assert not v["identical"] and v["not_compared"] is None and v["table_adjusted"] == []
    big.unlink(), grown.unlink(), raw.unlink()


@pytest.mark.root
@pytest.mark.parametrize("kind", ["file", "loop"])
@pytest.mark.parametrize("ss", [512, 4096])
def test_restore_onto_1x_1_5x_3x(tmp_path, repo_path, ss, kind):
    image = tmp_path / "disk.img"
    size = 64 * MiB
    ranges = make_gpt(image, size, ss)
    with as_disk(image, ss) as disk:
        _, parts0 = sfdisk_dump(disk)
    run_cli("snapshot", "-r", repo_path, image)
    for factor in (1, 1.5, 3):
        target_size = int(size * factor)
        if kind == "file":
            target = tmp_path / f"target-{factor}.img"
            with open(target, "wb") as f:
                f.truncate(target_size)  # a pre-sized file keeps its size, as a disk does
            ctx = contextlib.nullcontext(str(target))
        else:
            ctx = loop_device(target_size, ss, tmp_path)
        with ctx as dev:
            res = json.loads(run_cli("restore", "-r", repo_path, "latest", dev, "--force", "--json",
                                     "--no-delta").stdout)
            assert res["target_size"] == target_size and bool(res["table_adjusted"]) == (factor != 1)
            with as_disk(Path(dev), ss) if kind == "file" else contextlib.nullcontext(dev) as disk:
                sgdisk_clean(disk)
                header, parts = sfdisk_dump(disk)
            assert [p.split(":", 1)[-1] for p in parts] == [p.split(":", 1)[-1] for p in parts0]
            assert int(header["last-lba"]) == target_size // ss - 2 - 128 * 128 // ss
            same_partitions(image, Path(dev), ranges)
            assert verify_json(repo_path, dev, 0)["identical"]
        if kind == "file":
            target.unlink()
    image.unlink()


@pytest.mark.root
def test_smaller_disk_only_when_the_partitions_fit(tmp_path, repo_path):
    image = tmp_path / "disk.img"
    ranges = make_gpt(image, 64 * MiB, 512)
    run_cli("snapshot", "-r", repo_path, image)
    end = max(o + n for o, n in ranges)
    with loop_device(end, 512, tmp_path) as dev:
        proc = run_cli("restore", "-r", repo_path, "latest", dev, "--force", check=False)
        assert proc.returncode == 5 and b"needs at least" in proc.stderr, proc.stderr
    with loop_device(end + MiB, 512, tmp_path) as dev:
        run_cli("restore", "-r", repo_path, "latest", dev, "--force")
        sgdisk_clean(dev)
        same_partitions(image, Path(dev), ranges)
        assert verify_json(repo_path, dev, 0)["not_compared"]["length"] == 64 * MiB - end - MiB
    with loop_device(128 * MiB, 4096, tmp_path) as dev:  # a table for 512-byte sectors
        proc = run_cli("restore", "-r", repo_path, "latest", dev, "--force", check=False)
        assert proc.returncode == 5 and b"512-byte sectors" in proc.stderr
    image.unlink()


@pytest.mark.root
def test_grow_partition_on_a_device(tmp_path, repo_path):
    image = tmp_path / "disk.img"
    ranges = make_gpt(image, 64 * MiB, 512)
    run_cli("snapshot", "-r", repo_path, image)
    with loop_device(160 * MiB, 512, tmp_path) as dev:
        res = json.loads(run_cli("restore", "-r", repo_path, "latest", dev, "--force", "--grow-partition", "4",
                                 "--json").stdout)
        assert res["grown"]["partition"] == 4 and "resize2fs" in res["grown"]["grow_hint"]
        sgdisk_clean(dev)
        _, parts = sfdisk_dump(dev)
        assert f"size={res['grown']['new_size'] // 512}" in parts[3].replace(" ", "")
        same_partitions(image, Path(dev), ranges)
        v = verify_json(repo_path, dev, 0)
        assert v["grown_partition"] == 4
    proc = run_cli("restore", "-r", repo_path, "latest", tmp_path / "x.img", "--grow-partition", "2", check=False)
    assert proc.returncode == 5 and b"not the last" in proc.stderr
    image.unlink()


# --- delta restore ----------------------------------------------------------------------
def _changed_copy(img: bytes, path: Path, seed: int) -> list[tuple[int, int]]:
    """Write ``img`` with ~3% of it changed in 16 places to ``path``; the changed ranges."""
    data = bytearray(img)
    rng = random.Random(seed)
    regions = []
    for _ in range(16):
        n = rng.randrange(4096, len(img) * 3 // 100 // 16)
        off = rng.randrange(0, len(img) - n)
        data[off:off + n] = random_bytes(n, seed * 1000 + off)
        regions.append((off, n))
    path.write_bytes(data)
    return regions


def _wchar() -> int:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"])


def test_delta_restore_writes_only_what_differs(tmp_path, repo):
    img = random_bytes(32 * MiB, 4)
    src = tmp_path / "a.img"
    src.write_bytes(img)
    snap = take_snapshot(repo, str(src))
    target = tmp_path / "t.img"
    regions = _changed_copy(img, target, 1)
    before = _wchar()
    res = restore(repo, snap, str(target), force=True, delta=True)
    written = _wchar() - before
    assert target.read_bytes() == img
    changed = sum(n for _, n in regions)
    assert res.mode == "delta" and res.bytes_read_target == len(img)
    assert res.bytes_written <= changed + len(regions) * 2 * repo.params.max_size
    assert written >= res.bytes_written and written - res.bytes_written < 1 * MiB, (written, res.bytes_written)
    assert res.chunks_unchanged > 0
    # chosen by itself: most chunks already match
    _changed_copy(img, target, 2)
    auto = restore(repo, snap, str(target), force=True)
    assert auto.mode == "delta" and target.read_bytes() == img
    # a target holding something else gets a full restore
    target.write_bytes(random_bytes(len(img), 99))
    assert restore(repo, snap, str(target), force=True).mode == "full" and target.read_bytes() == img


def test_delta_dry_run_writes_nothing(tmp_path, repo_path):
    img = random_bytes(8 * MiB, 5)
    src = tmp_path / "a.img"
    src.write_bytes(img)
    run_cli("snapshot", "-r", repo_path, src)
    target = tmp_path / "t.img"
    _changed_copy(img, target, 3)
    before = target.read_bytes()
    res = json.loads(run_cli("restore", "-r", repo_path, "latest", target, "--force", "--dry-run", "--json").stdout)
    assert res["mode"] == "delta-dry-run" and res["bytes_written"] > 0 and target.read_bytes() == before
    proc = run_cli("restore", "-r", repo_path, "latest", tmp_path / "new.img", "--dry-run", check=False)
    assert proc.returncode == 5 and not (tmp_path / "new.img").exists()


def test_sigkill_during_delta_restore(tmp_path, repo_path):
    """Killed at 24 random instants, a second delta restore leaves the target bit-identical."""
    img = random_bytes(48 * MiB, 6)
    src = tmp_path / "a.img"
    src.write_bytes(img)
    run_cli("snapshot", "-r", repo_path, src)
    target = tmp_path / "t.img"
    rng = random.Random(7)
    for attempt in range(24):
        _changed_copy(img, target, 10 + attempt)
        proc = subprocess.Popen([sys.executable, "-m", "diskvault", "restore", "-r", str(repo_path), "latest",
                                 str(target), "--force", "--delta", "--no-progress"],
                                env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        run_cli("restore", "-r", repo_path, "latest", target, "--force", "--delta", "--no-progress")
        assert target.read_bytes() == img, f"attempt {attempt}"
    target.unlink()


@pytest.mark.root
def test_discard_zeroes_a_device_by_discarding(tmp_path, repo_path):
    """--discard: zero extents of a device are discarded (fallocate PUNCH_HOLE on the loop
    device reaches its backing file as holes) and still read as zeros."""
    img = random_bytes(4 * MiB, 8) + bytes(24 * MiB) + random_bytes(4 * MiB, 9)
    src = tmp_path / "a.img"
    src.write_bytes(img)
    run_cli("snapshot", "-r", repo_path, src)
    with loop_device(len(img), 512, tmp_path) as dev:
        with open(dev, "r+b") as f:
            f.write(random_bytes(len(img), 10))  # nothing of the snapshot on it yet
        backing = next(tmp_path.glob("loop-*.img"))
        res = json.loads(run_cli("restore", "-r", repo_path, "latest", dev, "--force", "--discard", "--json").stdout)
        assert res["mode"] == "full"
        subprocess.run(["sync"], check=True)
        assert backing.stat().st_blocks * 512 < 16 * MiB  # the zeros became holes, not written zeros
        assert Path(dev).read_bytes() == img
        with open(dev, "r+b") as f:  # garbage inside the zero extent: delta with --discard clears it
            f.seek(10 * MiB)
            f.write(b"x" * 100_000)
        res = json.loads(run_cli("restore", "-r", repo_path, "latest", dev, "--force", "--delta", "--discard",
                                 "--json").stdout)
        assert res["bytes_written"] == 0 and 100_000 <= res["bytes_zeroed"] <= 2 * 64 << 10 + 100_000
        assert Path(dev).read_bytes() == img


# --- found by a new user -----------------------------------------------------------------
def test_dry_run_never_writes_and_partition_refuses_whole_disk_options(tmp_path, repo_path):
    image = tmp_path / "disk.img"
    make_gpt(image, 64 * MiB, 512)
    run_cli("snapshot", "-r", repo_path, image)
    small = tmp_path / "small.img"
    small.write_bytes(random_bytes(2 * MiB, 3))
    before = small.read_bytes()
    res = json.loads(run_cli("restore", "-r", repo_path, "latest", small, "--force", "--dry-run", "--json").stdout)
    assert res["mode"] == "delta-dry-run" and small.read_bytes() == before  # not even grown
    for opt in (["--dry-run"], ["--delta"], ["--grow-partition", "2"], ["--discard"]):
        proc = run_cli("restore", "-r", repo_path, "latest", small, "--partition", "2", "--force", *opt, check=False)
        assert proc.returncode == 2 and b"not with --partition" in proc.stderr and small.read_bytes() == before
    # after a restore that fitted the table, a dry run has nothing left to write
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(96 * MiB)
    run_cli("restore", "-r", repo_path, "latest", big, "--force", "--no-delta")
    res = json.loads(run_cli("restore", "-r", repo_path, "latest", big, "--force", "--dry-run", "--json").stdout)
    assert res["bytes_written"] == 0 and res["bytes_zeroed"] == 0 and res["table_adjusted"] == []
    for p in (image, small, big):
        p.unlink()


@pytest.mark.root
def test_a_snapshot_without_a_table_verifies_on_a_bigger_device(tmp_path, repo_path):
    fs = tmp_path / "fs.img"
    fs.write_bytes(random_bytes(6 * MiB, 4))
    run_cli("snapshot", "-r", repo_path, fs)
    with loop_device(10 * MiB, 512, tmp_path) as dev:
        run_cli("restore", "-r", repo_path, "latest", dev, "--force")
        v = verify_json(repo_path, dev, 0)
        assert v["not_compared"] == {"offset": 6 * MiB, "length": 4 * MiB}
        with open(dev, "r+b") as f:
            f.seek(5 * MiB)
            f.write(b"\xff" * 10)
        assert verify_json(repo_path, dev, 9)["differing"][0]["offset"] < 6 * MiB


def test_verify_against_an_endless_stream_ends(tmp_path, repo_path):
    img = tmp_path / "a.img"
    img.write_bytes(random_bytes(MiB, 5))
    run_cli("snapshot", "-r", repo_path, img)
    proc = run_cli("verify", "-r", repo_path, "latest", "/dev/zero", "--json", check=False, timeout=120)
    assert proc.returncode == 9 and json.loads(proc.stdout)["source_size"] > MiB


@pytest.mark.parametrize("opt", [["--grow-partition", "2"], ["--delta"], ["--dry-run"], ["--discard"]])
def test_whole_disk_options_need_a_file_or_device(tmp_path, repo_path, opt):
    img = tmp_path / "a.img"
    img.write_bytes(random_bytes(100_000, 2))
    run_cli("snapshot", "-r", repo_path, img)
    for target in ("-", "/dev/null"):
        proc = run_cli("restore", "-r", repo_path, "latest", target, *opt, check=False)
        assert proc.returncode == 2 and b"only for a file or block device" in proc.stderr and not proc.stdout
