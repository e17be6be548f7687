"""Rescue media, end to end in QEMU (TCG, OVMF): the rescue image boots to its menu, runs
diskvault with no Python installed, restores a snapshot unattended onto a blank disk 1.5x
the source (which then boots), refuses a damaged snapshot loudly, and takes a snapshot of a
disk holding NTFS and the boot disk's partitions (whose restore boots).

The repository disk is an ext4 image made with ``mke2fs -d`` (no mounts); what the guest
wrote to it is read back with ``debugfs rdump``. Debian packages for the rescue image are
cached in ~/.cache/diskvault-tests/rescue, the boot disk's kernel in .../boot. Every
image is deleted when the module ends. Timings: docs/benchmarks.md ("Rescue media").
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "boot"))

from bootdisk import CACHE as BOOT_CACHE  # noqa: E402
from bootdisk import MiB, boot, build_boot_disk  # noqa: E402
from vm import VM  # noqa: E402

from helpers import cli_env, run_cli, tool  # noqa: E402

pytestmark = pytest.mark.slow
RESCUE_CACHE = BOOT_CACHE.parent / "rescue"
FIGURES = Path(__file__).parents[2] / "benchmarks" / "rescue.json"
BOOT = 240  # seconds: OVMF + GRUB + kernel + a 30 MiB initramfs under TCG on a busy machine
JOB = 600   # seconds for an unattended restore or snapshot of a 128-192 MiB disk under TCG


def _env() -> dict[str, str]:
    return {**cli_env(), "DISKVAULT_RESCUE_CACHE": str(RESCUE_CACHE)}


def _rescue(out: Path, *args: str) -> dict:
    res = run_cli("rescue", "build", out, "--json", *args, env=_env(), timeout=900)
    return json.loads(res.stdout)


def _ext4(path: Path, content: Path, size: int, label: str = "BACKUP") -> None:
    """An ext4 disk image (no partition table) of ``size`` bytes holding ``content``'s tree."""
    subprocess.run([tool("mke2fs"), "-q", "-F", "-t", "ext4", "-L", label, "-d", content, path, f"{size // 1024}k"],
                   check=True, capture_output=True)


def _rdump(image: Path, path: str, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run([tool("debugfs"), "-R", f"rdump {path} {dest}", image], check=True, capture_output=True)
    return dest / Path(path).name


def _blank(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The boot disk, a repository holding its snapshot (on an ext4 disk image), and a
    rescue image whose default entry restores that snapshot onto /dev/vdc."""
    tmp = tmp_path_factory.mktemp("rescue")
    disk = tmp / "disk.img"
    marker = build_boot_disk(disk, 128 * MiB)
    (tmp / "fs").mkdir()
    repo = tmp / "fs/repo"
    run_cli("init", "-r", repo)
    run_cli("snapshot", "-r", repo, disk)
    _ext4(tmp / "repo.img", tmp / "fs", 64 * MiB)
    built = _rescue(tmp / "restore.img", "--unattended", "LABEL=BACKUP:/repo:latest:/dev/vdc")
    yield tmp, disk, marker, built
    for p in tmp.rglob("*.img"):
        p.unlink()


def _figure(key: str, value) -> None:
    """Record a measurement for docs/benchmarks.md (only with DISKVAULT_RECORD_FIGURES=1)."""
    if os.environ.get("DISKVAULT_RECORD_FIGURES") != "1":
        return
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[key] = value
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def test_rescue_build_refuses_bad_specs_and_existing_files(tmp_path):
    out = tmp_path / "r.img"
    out.write_bytes(b"x")
    for args in (("--unattended", "LABEL=BACKUP:/repo:/dev/vdc"), ("--unattended-snapshot", "vdb:LABEL=B"),
                 ("--unattended", "LABEL=B:/r:latest:vdc", "--unattended-snapshot", "vdb:LABEL=B:/r"),
                 ("--size", "lots")):
        res = run_cli("rescue", "build", tmp_path / "new.img", *args, check=False, env=_env())
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.decode().strip().splitlines()) == 1
    res = run_cli("rescue", "build", out, check=False, env=_env())
    assert res.returncode == 5 and b"pass --force" in res.stderr and out.read_bytes() == b"x"
    assert not (tmp_path / "new.img").exists()


def test_rescue_build_names_a_missing_tool(tmp_path):
    """Without mcopy (mtools) the build stops at once with one line naming the package."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("apt-get", "dpkg-deb", "ldd", "mkfs.vfat"):
        os.symlink(tool(name), bindir / name)
    res = run_cli("rescue", "build", tmp_path / "r.img", check=False, env={**_env(), "PATH": str(bindir)})
    assert res.returncode == 5
    assert res.stderr.decode() == "diskvault: error: rescue build needs mcopy (package mtools): install it\n"
    assert not (tmp_path / "r.img").exists()


def test_menu_lists_disks_and_repositories_and_runs_without_python(world, tmp_path):
    tmp, _, _, _ = world
    built = _rescue(tmp / "menu.img", "--repo-hint", "LABEL=BACKUP")
    _figure("image_bytes", built["size"])
    _figure("initramfs_bytes", built["initramfs_bytes"])
    _figure("executable_bytes", built["executable_bytes"])
    with VM(tmp / "menu.img", tmp / "repo.img") as vm:
        menu = vm.expect(r"^Choice: ", BOOT)
        _figure("boot_to_menu_seconds", round(vm.seconds, 1))
        screen = vm.log[vm.log.rindex("==== diskvault rescue"):menu.end()]
        (tmp_path / "menu.txt").write_text(screen)
        assert "/dev/vda" in screen and "/dev/vdb" in screen and "label BACKUP" in screen and "ext4" in screen
        assert "table: gpt" in screen and "r) restore a snapshot onto a disk" in screen and "x) shell" in screen
        n = len(vm.log)
        vm.send("l\n")
        listing = vm.expect(r"^Choice: ", 300, n)
        assert f"== /dev/vdb:/repo" in vm.log[n:listing.start()]
        assert "128.00 MiB" in vm.log[n:listing.start()], vm.log[n:]
        n = len(vm.log)
        vm.send("x\n")
        vm.expect("exit to return", 60, n)
        vm.send("command -v python3 python python3.11 || ls -d /usr/lib/python3* /usr/bin/python* || echo NO-PYTHON; "
                "diskvault --version; echo RC=$?\n")
        done = vm.expect(r"^RC=\d+", 120, n)
        assert "NO-PYTHON" in vm.log[n:] and "diskvault 0.1.0" in vm.log[n:] and done.group(0) == "RC=0"
        vm.send("exit\n")
        vm.expect(r"^Choice: ", 60, done.end())
        vm.send("p\n")
        vm.wait_off(60)
    (tmp / "menu.img").unlink()


def test_unattended_restore_onto_a_bigger_blank_disk_boots(world):
    tmp, _, marker, built = world
    target = _blank(tmp / "target.img", 192 * MiB)
    repo_disk = tmp / "repo-copy.img"
    shutil.copy(tmp / "repo.img", repo_disk)
    with VM(tmp / "restore.img", repo_disk, target) as vm:
        log = vm.wait_off(BOOT + JOB)
    _figure("unattended_restore_seconds", round(vm.seconds, 1))
    assert "DISKVAULT-RESCUE-OK restored snapshot latest onto /dev/vdc and verified it" in log, log[-3000:]
    assert "DISKVAULT-RESCUE-FAILED" not in log
    assert repo_disk.read_bytes() == (tmp / "repo.img").read_bytes()  # mounted read-only
    result = boot(target)
    assert result.ok(marker), result.tail()
    target.unlink()
    repo_disk.unlink()


def test_a_damaged_newest_snapshot_is_reported_and_not_restored(world):
    tmp, disk, _, _ = world
    (tmp / "fs2").mkdir()
    repo = tmp / "fs2/repo"
    run_cli("init", "-r", repo)
    changed = tmp / "work.img"
    shutil.copy(disk, changed)
    run_cli("snapshot", "-r", repo, changed)
    with open(changed, "r+b") as f:  # new data in the root's free space: a new pack for the newest snapshot
        f.seek(100 * MiB)
        f.write(random.Random(7).randbytes(2 * MiB))
    newest = json.loads(run_cli("snapshot", "-r", repo, changed, "--json").stdout)["id"]
    changed.unlink()
    pack = max((p for p in (repo / "packs").rglob("*.pack")), key=lambda p: p.stat().st_mtime_ns)
    with open(pack, "r+b") as f:
        f.seek(pack.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))
    _ext4(tmp / "damaged-repo.img", tmp / "fs2", 64 * MiB)
    shutil.rmtree(tmp / "fs2")
    target = _blank(tmp / "target2.img", 192 * MiB)
    with VM(tmp / "restore.img", tmp / "damaged-repo.img", target) as vm:
        log = vm.wait_off(BOOT + JOB)
    assert "DISKVAULT-RESCUE-OK" not in log
    assert f"restore of snapshot {newest[:12]}" in log and "damaged" in log, log[-3000:]
    assert "not compared: bytes " in log  # the damaged byte range
    assert "DISKVAULT-RESCUE-FAILED restore of latest onto /dev/vdc exited 8; /dev/vdc is not restored" in log
    target.unlink()
    (tmp / "damaged-repo.img").unlink()


def _ntfs_disk(tmp: Path, disk: Path) -> tuple[Path, dict[str, bytes]]:
    """The boot disk's partitions on a 192 MiB disk, with a 56 MiB NTFS partition 3 holding files."""
    src = tmp / "windows.img"
    shutil.copy(disk, src)
    with open(src, "r+b") as f:
        f.truncate(192 * MiB)
    subprocess.run([tool("sgdisk"), "-e", "-n", "3:0:-1M", "-t", "3:0700", "-c", "3:data", src],
                   check=True, capture_output=True)
    start = int(subprocess.run([tool("sgdisk"), "-i", "3", src], check=True, capture_output=True, text=True)
                .stdout.split("First sector: ")[1].split()[0])
    end = int(subprocess.run([tool("sgdisk"), "-i", "3", src], check=True, capture_output=True, text=True)
              .stdout.split("Last sector: ")[1].split()[0])
    part = tmp / "ntfs.part"
    _blank(part, (end - start + 1) * 512)
    subprocess.run([tool("mkntfs"), "-F", "-Q", "-q", "-L", "Windows", "-p", str(start), "-H", "255", "-S", "63",
                    part], check=True, capture_output=True)
    files = {f"file{i}.bin": random.Random(i).randbytes(300_000 + i * 7) for i in range(4)}
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        subprocess.run([tool("ntfscp"), "-f", part, tmp / name, name], check=True, capture_output=True)
        (tmp / name).unlink()
    with open(part, "rb") as p, open(src, "r+b") as f:
        f.seek(start * 512)
        shutil.copyfileobj(p, f)
    part.unlink()
    return src, files


def test_unattended_snapshot_of_a_disk_with_ntfs_restores_and_boots(world):
    tmp, disk, marker, _ = world
    src, files = _ntfs_disk(tmp, disk)
    (tmp / "fs3").mkdir()
    run_cli("init", "-r", tmp / "fs3/repo")
    _ext4(tmp / "snap-repo.img", tmp / "fs3", 160 * MiB)
    shutil.rmtree(tmp / "fs3")
    _rescue(tmp / "snapshot.img", "--unattended-snapshot", "/dev/vdb:LABEL=BACKUP:/repo")
    with VM(tmp / "snapshot.img", src, tmp / "snap-repo.img") as vm:
        log = vm.wait_off(BOOT + JOB)
    (tmp / "snapshot.img").unlink()
    assert "DISKVAULT-RESCUE-OK snapshot " in log and "of /dev/vdb taken and verified" in log, log[-3000:]
    repo = _rdump(tmp / "snap-repo.img", "/repo", tmp / "dump")
    (tmp / "snap-repo.img").unlink()
    restored = _blank(tmp / "restored.img", 288 * MiB)
    run_cli("restore", "-r", repo, "latest", restored, "--force")
    run_cli("verify", "-r", repo, "latest", src)
    src.unlink()
    result = boot(restored)
    assert result.ok(marker), result.tail()
    start = int(subprocess.run([tool("sgdisk"), "-i", "3", restored], check=True, capture_output=True, text=True)
                .stdout.split("First sector: ")[1].split()[0])
    with open(restored, "rb") as f:
        f.seek(start * 512)
        part = tmp / "restored-ntfs.part"
        with open(part, "wb") as p:
            shutil.copyfileobj(f, p)
    for name, data in files.items():
        got = subprocess.run([tool("ntfscat"), part, name], check=True, capture_output=True).stdout
        assert got == data, name
    part.unlink()
    restored.unlink()
    shutil.rmtree(tmp / "dump")
