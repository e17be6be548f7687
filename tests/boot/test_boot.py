"""Boot proof: a real UEFI disk, snapshotted and restored (same size, 1.5x bigger, grown),
boots in QEMU with OVMF firmware and prints its marker; a damaged restore does not.

The disk is built from Debian packages at test time (tests/boot/bootdisk.py). A restored
disk whose GPT was not fitted to its size still boots, with the kernel warning
``GPT:Alternate GPT header not at the end of the disk``: any ``GPT:`` line fails the check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from bootdisk import MiB, boot, build_boot_disk  # noqa: E402

from helpers import run_cli  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("boot")
    disk = tmp / "disk.img"
    marker = build_boot_disk(disk, 128 * MiB)
    repo = tmp / "repo"
    run_cli("init", "-r", repo)
    run_cli("snapshot", "-r", repo, disk)
    yield tmp, repo, disk, marker
    for p in tmp.glob("*.img"):
        p.unlink()


def restored(tmp: Path, repo: Path, name: str, size: int, *extra: str) -> tuple[Path, dict]:
    target = tmp / name
    with open(target, "wb") as f:
        f.truncate(size)
    res = json.loads(run_cli("restore", "-r", repo, "latest", target, "--force", "--json", *extra).stdout)
    assert run_cli("verify", "-r", repo, "latest", target, check=False).returncode == 0
    return target, res


def test_the_source_disk_boots(booted):
    _, _, disk, marker = booted
    result = boot(disk)
    assert result.ok(marker), result.tail()


@pytest.mark.parametrize("name,factor,extra", [
    ("same.img", 1, ()),
    ("bigger.img", 1.5, ()),
    ("grown.img", 1.5, ("--grow-partition", "2")),
])
def test_restored_disk_boots(booted, name, factor, extra):
    tmp, repo, _, marker = booted
    target, res = restored(tmp, repo, name, int(128 * MiB * factor), *extra)
    assert bool(res["table_adjusted"]) == (factor != 1)
    result = boot(target)
    assert result.ok(marker), f"{result.gpt_warnings()}\n{result.tail()}"
    target.unlink()


def test_an_unfitted_copy_fails_the_check(booted):
    """The same bytes on a bigger disk without the table fitted: boots, but the kernel warns."""
    tmp, _, disk, marker = booted
    raw = tmp / "raw.img"
    raw.write_bytes(disk.read_bytes())
    with open(raw, "r+b") as f:
        f.truncate(192 * MiB)
    result = boot(raw)
    assert f"BOOT-OK {marker}" in result.log and result.gpt_warnings() and not result.ok(marker)
    raw.unlink()


def test_a_damaged_restore_does_not_boot(booted):
    tmp, repo, _, marker = booted
    target, _ = restored(tmp, repo, "damaged.img", 128 * MiB)
    with open(target, "r+b") as f:  # the EFI system partition's first MiB (boot sector, FATs)
        f.seek(1 * MiB)
        f.write(bytes(1 * MiB))
    result = boot(target, timeout=120)
    assert not result.ok(marker) and f"BOOT-OK {marker}" not in result.log
    target.unlink()
