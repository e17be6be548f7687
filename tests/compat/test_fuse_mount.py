"""`diskvault mount` (FUSE): disk.img and p<N>.img read back exactly; a partition loop-mounts."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from access_fixtures import fuse_mount
from gpt_image import make_gpt_disk

from helpers import cli_env, random_bytes, run_cli

MiB = 1 << 20


@pytest.fixture
def gpt(tmp_path, repo_path):
    disk, content, offset, length = make_gpt_disk(tmp_path)
    run_cli("snapshot", "-r", repo_path, disk)
    return disk, content, offset, length


def test_mounted_images_compare_identical(tmp_path, repo_path, gpt):
    disk, _, offset, length = gpt
    other = tmp_path / "other.img"
    other.write_bytes(random_bytes(MiB, 4) + bytes(MiB))
    run_cli("snapshot", "-r", repo_path, other)
    mnt = tmp_path / "mnt"
    with fuse_mount(repo_path, mnt):
        snaps = sorted(p for p in os.listdir(mnt) if p != "latest")
        assert len(snaps) == 2 and os.path.islink(mnt / "latest")
        first = next(s for s in snaps if (mnt / s / "p2.img").exists())
        assert sorted(os.listdir(mnt / first)) == ["disk.img", "p1.img", "p2.img", "p3.img"]
        assert subprocess.run(["cmp", str(mnt / first / "disk.img"), str(disk)]).returncode == 0
        assert subprocess.run(["cmp", str(mnt / "latest" / "disk.img"), str(other)]).returncode == 0
        with open(disk, "rb") as f:
            f.seek(offset)
            assert (mnt / first / "p2.img").read_bytes() == f.read(length)
        with pytest.raises(OSError):
            (mnt / first / "disk.img").write_bytes(b"x")
        with pytest.raises(OSError):
            (mnt / "new").mkdir()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="loop-mounting needs root")
def test_partition_file_loop_mounts(tmp_path, repo_path, gpt):
    _, content, _, _ = gpt
    mnt, fs = tmp_path / "mnt", tmp_path / "fs"
    fs.mkdir()
    with fuse_mount(repo_path, mnt):
        out = subprocess.run(["mount", "-o", "ro,loop", str(mnt / "latest" / "p2.img"), str(fs)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        try:
            assert (fs / "hello.txt").read_text() == "diskvault mount test\n"
            cmp = filecmp.dircmp(content, fs, ignore=["lost+found"])
            assert not cmp.left_only and not cmp.diff_files
            names = [p.name for p in content.iterdir()]
            match, mismatch, errors = filecmp.cmpfiles(content, fs, names, shallow=False)
            assert sorted(match) == sorted(names) and not mismatch and not errors
        finally:
            subprocess.run(["umount", str(fs)], check=True)


def test_mount_refuses_a_missing_mountpoint(tmp_path, repo_path):
    out = run_cli("mount", "-r", repo_path, tmp_path / "nope", check=False, timeout=30)
    assert out.returncode == 5
    assert "not a directory" in out.stderr.decode() and out.stderr.decode().count("\n") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_non_root_without_permission_is_one_clear_line(tmp_path, repo_path):
    mnt = Path(tempfile.mkdtemp(prefix="dv-nonroot-", dir="/tmp"))  # reachable by nobody, owned by root
    env = cli_env()
    out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m",
                          "diskvault", "mount", "-r", str(repo_path), str(mnt)], capture_output=True, env=env, timeout=30)
    mnt.rmdir()
    err = out.stderr.decode()
    assert out.returncode == 5, err
    assert err.count("\n") == 1 and ("/dev/fuse" in err or "directory you own" in err or "fusermount3" in err), err


def test_ctrl_c_unmounts_and_exits_zero(tmp_path, repo_path, gpt):
    import signal

    mnt = tmp_path / "mnt"
    with fuse_mount(repo_path, mnt) as proc:
        assert (mnt / "latest" / "disk.img").stat().st_size == 40 << 20
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert not os.path.ismount(mnt)
        err = proc.stderr.read().decode()
        assert "Traceback" not in err and "unmounted" in err
