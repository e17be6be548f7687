"""Restore targets (issues 11 and 12): `-` is stdout, human messages on stderr, existing files
overwritten in place, partitions never silently over a partition table, no stale temporary
files, new files 0600, never through a planted symlink, targets that are not files."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compat"))
from gpt_image import make_gpt_disk  # noqa: E402

from helpers import cli_env, pack_entries, random_bytes, run_cli, secret  # noqa: E402

MiB = 1 << 20
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _image(tmp_path: Path) -> Path:
    """40 MiB: data and zero stretches across several restore batches (16 MiB each)."""
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        for i, (kind, mb) in enumerate([("d", 12), ("z", 8), ("d", 12), ("z", 4), ("d", 4)]):
            f.write(random_bytes(mb * MiB, 40 + i) if kind == "d" else bytes(mb * MiB))
    return img


@pytest.fixture
def snapped(tmp_path, repo_path):
    img = _image(tmp_path)
    run_cli("snapshot", "-r", repo_path, img)
    return repo_path, img


def _temps(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.diskvault-*"))  # this and older versions' names


def _fails(*args, code: int, match: str) -> str:
    proc = run_cli(*args, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    assert match in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


# --- `-` is stdout; stdout is for data and --json only ----------------------------------------

def test_restore_dash_streams_image_to_stdout(snapped, tmp_path):
    repo, img = snapped
    proc = subprocess.run([sys.executable, "-m", "diskvault", "restore", "-r", str(repo), "latest", "-"],
                          capture_output=True, env=cli_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == img.read_bytes()
    assert b"restored snapshot" in proc.stderr and b"to stdout" in proc.stderr
    assert not (tmp_path / "-").exists()


def test_restore_dash_json_goes_to_stderr(snapped):
    repo, img = snapped
    proc = run_cli("restore", "-r", repo, "latest", "-", "--json")
    assert hashlib.sha256(proc.stdout).digest() == hashlib.sha256(img.read_bytes()).digest()
    res = json.loads(proc.stderr)
    assert res["kind"] == "stdout" and res["size"] == 40 * MiB and res["in_place"] is False


def test_restore_dash_refuses_a_terminal(snapped):
    repo, _ = snapped
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "diskvault", "restore", "-r", str(repo), "latest", "-"],
                              stdout=slave, stderr=subprocess.PIPE, env=cli_env())
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 5 and b"stdout is a terminal" in proc.stderr


def test_restore_partition_to_stdout(tmp_path, repo_path):
    disk, _, offset, length = make_gpt_disk(tmp_path)
    run_cli("snapshot", "-r", repo_path, disk)
    out = run_cli("restore", "-r", repo_path, "latest", "--partition", "2", "-").stdout
    with open(disk, "rb") as f:
        f.seek(offset)
        assert out == f.read(length)


def test_human_summaries_go_to_stderr(tmp_path):
    """snapshot/restore/check/verify/forget/prune/repair/init/unlock: nothing on stdout without --json."""
    repo = tmp_path / "r"
    img = tmp_path / "small.img"
    img.write_bytes(random_bytes(1 * MiB, 3))
    runs = [("init", "-r", repo), ("snapshot", "-r", repo, img), ("restore", "-r", repo, "latest", tmp_path / "o.img"),
            ("check", "-r", repo), ("verify", "-r", repo, "latest", img),
            ("forget", "-r", repo, "--keep-last", "1"), ("prune", "-r", repo), ("repair", "-r", repo),
            ("unlock", "-r", repo)]
    for args in runs:
        proc = run_cli(*args)
        assert proc.stdout == b"", (args, proc.stdout)
        assert proc.stderr.strip(), args


# --- existing files: overwritten in place ----------------------------------------------------

def test_force_overwrites_bigger_file_in_place(snapped, tmp_path):
    repo, img = snapped
    target = tmp_path / "t.img"
    old = random_bytes(48 * MiB, 9)  # garbage where the image has zeros, and 8 MiB past its end
    target.write_bytes(old)
    os.chmod(target, 0o600)
    os.chown(target, 65534, 65534)
    os.link(target, tmp_path / "t.link")
    before = target.stat()
    res = json.loads(run_cli("restore", "-r", repo, "latest", target, "--force", "--json").stdout)
    assert res["in_place"] is True and res["target_size"] == 48 * MiB and res["kind"] == "file"
    after = target.stat()
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_gid, after.st_nlink, after.st_size) == \
        (before.st_ino, before.st_mode, before.st_uid, before.st_gid, 2, 48 * MiB)
    data = target.read_bytes()
    assert data[: 40 * MiB] == img.read_bytes()
    assert data[40 * MiB:] == old[40 * MiB:]
    proc = run_cli("restore", "-r", repo, "latest", target, "--force")
    assert b"overwritten in place" in proc.stderr and b"keeps its size" in proc.stderr


def test_force_overwrites_smaller_file_in_place(snapped, tmp_path):
    repo, img = snapped
    target = tmp_path / "t.img"
    target.write_bytes(random_bytes(1 * MiB, 10))
    ino = target.stat().st_ino
    run_cli("restore", "-r", repo, "latest", target, "--force")
    assert target.stat().st_ino == ino
    assert target.read_bytes() == img.read_bytes()


def test_existing_empty_file_keeps_mode_and_owner(snapped, tmp_path):
    repo, img = snapped
    target = tmp_path / "t.img"
    target.touch(mode=0o600)
    ino = target.stat().st_ino
    proc = run_cli("restore", "-r", repo, "latest", target)
    st = target.stat()
    assert (st.st_ino, st.st_mode & 0o7777, st.st_uid) == (ino, 0o600, 0)
    assert target.read_bytes() == img.read_bytes()
    assert b"overwritten in place" in proc.stderr


def test_empty_file_of_another_user_needs_force(snapped, tmp_path):
    """An empty file someone else owns (e.g. planted in a shared folder) would let them read the image."""
    repo, img = snapped
    target = tmp_path / "t.img"
    target.touch(mode=0o600)
    os.chown(target, 65534, 65534)
    _fails("restore", "-r", repo, "latest", target, code=5, match="belongs to uid 65534")
    assert target.stat().st_size == 0
    run_cli("restore", "-r", repo, "latest", target, "--force")
    st = target.stat()
    assert (st.st_mode & 0o7777, st.st_uid) == (0o600, 65534)
    assert target.read_bytes() == img.read_bytes()


def test_new_file_is_0600(snapped, tmp_path):
    repo, img = snapped
    target = tmp_path / "new.img"
    res = json.loads(run_cli("restore", "-r", repo, "latest", target, "--json").stdout)
    assert target.stat().st_mode & 0o7777 == 0o600
    assert res["in_place"] is False and res["target_size"] == 40 * MiB
    assert target.read_bytes() == img.read_bytes()


# --- symlinks, the repository, targets that are not files ------------------------------------

@pytest.fixture
def open_dir():
    """A folder every user can reach (pytest's own tmp is root's only); removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="diskvault-restore-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def test_planted_symlink_is_not_followed(snapped, open_dir):
    """`nobody` plants disk.img -> victim in a sticky world-writable folder; root's restore."""
    repo, img = snapped
    shared = open_dir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    victim = open_dir / "victim"
    subprocess.run([*NOBODY, "ln", "-s", str(victim), str(shared / "disk.img")], check=True)
    _fails("restore", "-r", repo, "latest", shared / "disk.img", code=5, match="is a symbolic link to")
    assert not victim.exists()
    # an existing victim file: also untouched
    victim.write_bytes(b"precious")
    _fails("restore", "-r", repo, "latest", shared / "disk.img", code=5, match=str(victim))
    assert victim.read_bytes() == b"precious"
    # --force follows it and names the resolved path
    proc = run_cli("restore", "-r", repo, "latest", shared / "disk.img", "--force")
    assert str(victim).encode() in proc.stderr and b"symbolic link" in proc.stderr
    assert victim.read_bytes() == img.read_bytes()


def test_target_inside_repository_refused(snapped, tmp_path):
    repo, _ = snapped
    _fails("restore", "-r", repo, "latest", repo / "x.img", "--force", code=5, match="inside the repository")
    _fails("restore", "-r", repo, "latest", repo / "config.json", "--force", code=5, match="inside the repository")
    assert not (repo / "x.img").exists()


def test_targets_that_are_not_files(snapped, tmp_path):
    repo, _ = snapped
    _fails("restore", "-r", repo, "latest", "", code=5, match="empty name")
    _fails("restore", "-r", repo, "latest", tmp_path, "--force", code=5, match="is a directory")
    _fails("restore", "-r", repo, "latest", f"{tmp_path}/nothere/", code=5, match="names a directory")
    imm = tmp_path / "immutable.img"
    imm.touch()
    if subprocess.run(["chattr", "+i", str(imm)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        _fails("restore", "-r", repo, "latest", imm, "--force", code=5, match="Operation not permitted")
    finally:
        subprocess.run(["chattr", "-i", str(imm)], check=True)


# --- a partition over a whole disk ------------------------------------------------------------

def test_partition_onto_disk_with_table_refused(tmp_path, repo_path):
    disk, _, offset, length = make_gpt_disk(tmp_path)
    run_cli("snapshot", "-r", repo_path, disk)
    copy = tmp_path / "other.img"
    copy.write_bytes(disk.read_bytes())
    _fails("restore", "-r", repo_path, "latest", "--partition", "2", copy, code=5, match="holds a gpt partition table")
    assert copy.read_bytes() == disk.read_bytes()
    dev = subprocess.run(["losetup", "--find", "--show", str(copy)], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        _fails("restore", "-r", repo_path, "latest", "--partition", "2", dev, code=5, match=f"({dev}p2)")
        assert copy.read_bytes() == disk.read_bytes()
        proc = run_cli("restore", "-r", repo_path, "latest", "--partition", "2", dev, "--force")
        assert b"warning:" in proc.stderr and b"partition table" in proc.stderr
    finally:
        subprocess.run(["losetup", "-d", dev])
    with open(disk, "rb") as f:
        f.seek(offset)
        assert copy.read_bytes()[:length] == f.read(length)


# --- temporary files --------------------------------------------------------------------------

def test_stale_temp_files_removed_live_ones_kept(snapped, tmp_path):
    repo, img = snapped
    stale = tmp_path / ".t.img.diskvault-restore-deadbeef"
    stale.write_bytes(b"x" * 4096)
    live = tmp_path / ".t.img.diskvault-restore-cafe0000"
    live.write_bytes(b"y")
    legacy = tmp_path / ".t.img.diskvault-1a2b3c4d"  # an older version's name
    legacy.write_bytes(b"w" * 4096)
    unrelated = tmp_path / ".t.img.diskvault-notes"
    unrelated.write_bytes(b"v")
    foreign = tmp_path / ".t.img.diskvault-restore-0000f00d"
    foreign.write_bytes(b"z")
    os.chown(foreign, 65534, 65534)
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running restore holds its temporary file
        run_cli("restore", "-r", repo, "latest", tmp_path / "t.img")
    assert _temps(tmp_path, "t.img") == sorted([live, foreign, unrelated])
    assert (tmp_path / "t.img").read_bytes() == img.read_bytes()


def test_sigkill_restore_leaves_no_temp_and_never_a_partial_target(snapped, tmp_path):
    """SIGKILL at random points (25 kills): the target is absent or complete, at most one
    temporary file exists, and the next restore removes it."""
    repo, img = snapped
    want = hashlib.sha256(img.read_bytes()).digest()
    target = tmp_path / "out" / "t.img"
    target.parent.mkdir()
    args = [sys.executable, "-m", "diskvault", "restore", "-r", str(repo), "latest", str(target), "--no-progress"]
    t0 = time.monotonic()
    subprocess.run(args, check=True, env=cli_env(), capture_output=True)
    full = time.monotonic() - t0
    target.unlink()
    rnd = random.Random(11)
    for _ in range(25):
        proc = subprocess.Popen(args, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0, full * 1.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():
            assert hashlib.sha256(target.read_bytes()).digest() == want
            target.unlink()
        assert len(_temps(target.parent, "t.img")) <= 1
    run_cli("restore", "-r", repo, "latest", target)
    assert _temps(target.parent, "t.img") == []
    assert hashlib.sha256(target.read_bytes()).digest() == want


def test_mounted_loop_image_and_mounted_stdout_refused(tmp_path, repo_path):
    from helpers import make_ext4, make_tree

    fs = make_ext4(tmp_path / "fs.img", 16, make_tree(tmp_path / "c", files=3))
    run_cli("snapshot", "-r", repo_path, fs)
    dev = subprocess.run(["losetup", "--find", "--show", str(fs)], capture_output=True, text=True,
                         check=True).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-o", "ro", dev, str(mnt)], check=True)
        before = fs.read_bytes()
        _fails("restore", "-r", repo_path, "latest", fs, "--force", code=5, match=f"backs {dev}, which is mounted on")
        with open(dev, "wb") as out:  # `restore latest - > /dev/loopN`
            proc = subprocess.run([sys.executable, "-m", "diskvault", "restore", "-r", str(repo_path), "latest", "-"],
                                  stdout=out, stderr=subprocess.PIPE, env=cli_env())
        assert proc.returncode == 5 and b"stdout is a block device in use" in proc.stderr, proc.stderr
        assert fs.read_bytes() == before
    finally:
        subprocess.run(["umount", str(mnt)])
        subprocess.run(["losetup", "-d", dev])


def test_skip_damaged_to_stdout_and_in_place(tmp_path, repo_path):
    """A damaged chunk: zeros at its place on stdout (in order) and over old bytes in place."""
    from diskvault.repository import Repository
    from diskvault.repository.pack import TYPE_CHUNK

    img = tmp_path / "d.img"
    img.write_bytes(random_bytes(600_000, 1) + bytes(200_000) + random_bytes(300_000, 2))
    run_cli("snapshot", "-r", repo_path, img)
    with Repository.open(str(repo_path), passphrase=secret) as r:
        pack = repo_path / r.catalog.packs()[0]["name"]
        snap = r.resolve("latest")
        leaves = list(r.tree().leaves(bytes.fromhex(snap.tree)))
    e = next(e for e in pack_entries(repo_path, pack) if e.type == TYPE_CHUNK)
    data = bytearray(pack.read_bytes())
    data[e.offset + e.stored_len // 2] ^= 0x40
    pack.write_bytes(bytes(data))
    want = bytearray(img.read_bytes())
    for lf in leaves:
        if lf.id == e.id:
            want[lf.offset : lf.offset + lf.length] = bytes(lf.length)
    proc = run_cli("restore", "-r", repo_path, "latest", "-", "--skip-damaged", check=False)
    assert proc.returncode == 8 and proc.stdout == bytes(want)
    assert b"NOT restored" in proc.stderr
    target = tmp_path / "old.img"
    target.write_bytes(random_bytes(len(want), 7))
    proc = run_cli("restore", "-r", repo_path, "latest", target, "--force", "--skip-damaged", check=False)
    assert proc.returncode == 8 and target.read_bytes() == bytes(want)
    run_cli("snapshot", "-r", repo_path, img)  # the intact source heals the damaged chunk (the fixture checks)


def test_map_file_has_the_targets_guards(tmp_path, repo_path):
    """--map is checked before the restore: never inside the repository, never through a
    link, an existing file only with --force; the image is untouched by it."""
    img = tmp_path / "d.img"
    img.write_bytes(random_bytes(300_000, 3))
    run_cli("snapshot", "-r", repo_path, img)
    config = (repo_path / "config.json").read_bytes()
    out = tmp_path / "out.img"
    for where, words in ((repo_path / "config.json", b"inside the repository"),
                         (repo_path / "m.map", b"inside the repository"),
                         (img, b"exists: add --force")):
        proc = run_cli("restore", "-r", repo_path, "latest", out, "--skip-damaged", "--map", where, check=False)
        assert proc.returncode == 5 and words in proc.stderr and not out.exists(), proc.stderr
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "link.map").symlink_to(victim)
    proc = run_cli("restore", "-r", repo_path, "latest", out, "--map", tmp_path / "link.map", "--force", check=False)
    assert proc.returncode == 5 and b"symbolic link" in proc.stderr and victim.read_bytes() == b"keep"
    run_cli("restore", "-r", repo_path, "latest", out, "--skip-damaged", "--map", tmp_path / "ok.map")
    assert (tmp_path / "ok.map").read_text().startswith("# Mapfile") and out.read_bytes() == img.read_bytes()
    assert (repo_path / "config.json").read_bytes() == config


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_repository_reached_through_a_bind_mount_is_still_inside(tmp_path, repo_path):
    img = tmp_path / "d.img"
    img.write_bytes(random_bytes(300_000, 4))
    run_cli("snapshot", "-r", repo_path, img)
    alias = tmp_path / "alias"
    alias.mkdir()
    subprocess.run(["mount", "--bind", str(repo_path), str(alias)], check=True)
    try:
        pack = next((alias / "packs").rglob("*.pack"))
        proc = run_cli("restore", "-r", repo_path, "latest", pack, "--force", check=False)
        assert proc.returncode == 5 and b"inside the repository" in proc.stderr
        proc = run_cli("export", "-r", repo_path, "latest", alias / "x.qcow2", check=False)
        assert proc.returncode == 5 and b"inside the repository" in proc.stderr
    finally:
        subprocess.run(["umount", str(alias)], check=True)


def test_map_file_must_be_a_file_of_its_own(tmp_path, repo_path):
    img = tmp_path / "d.img"
    img.write_bytes(random_bytes(300_000, 5))
    run_cli("snapshot", "-r", repo_path, img)
    target = tmp_path / "t.img"
    target.write_bytes(img.read_bytes())
    for args in (["--skip-damaged", "--map", str(target), "--force"], ["--skip-damaged", "--map", "-"],
                 ["--partition", "1", "--map", str(tmp_path / "m.map")]):
        proc = run_cli("restore", "-r", repo_path, "latest", target, *args, check=False)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert target.read_bytes() == img.read_bytes()
