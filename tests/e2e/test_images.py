"""End to end on real images: ext4 made with mke2fs -d and changed with debugfs, sparse
files, stdin, and the catalog-cost bound for an unchanged image."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import debugfs, e2fsck_clean, make_ext4, make_tree, random_bytes, run_cli, secret

from diskvault.ops.snapshot import take_snapshot
from diskvault.repository import Repository


def snap(repo, source, *extra):
    return json.loads(run_cli("snapshot", "-r", repo, source, "--json", *extra).stdout)


def repo_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())


def test_ext4_changed_in_place(tmp_path, repo_path):
    img = make_ext4(tmp_path / "fs.img", 64, make_tree(tmp_path / "content", files=60))
    first_copy = tmp_path / "first.img"
    first_copy.write_bytes(img.read_bytes())
    s1 = snap(repo_path, img, "--tag", "nightly")
    (tmp_path / "new.bin").write_bytes(random_bytes(300_000, 77))
    debugfs(img, f"write {tmp_path / 'new.bin'} new.bin", "rm file003.bin", "rm file010.bin",
            f"write {tmp_path / 'new.bin'} file020.bin.new", "mkdir etc2")
    s2 = snap(repo_path, img, "--tag", "nightly")
    assert s2["new_bytes"] < s1["new_bytes"] / 4
    for sid, original in ((s1["id"], first_copy), (s2["id"], img)):
        out = tmp_path / f"{sid}.img"
        run_cli("restore", "-r", repo_path, sid[:8], out)
        assert out.read_bytes() == original.read_bytes()
        assert e2fsck_clean(out)
    listing = json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout)
    assert [s["id"] for s in listing] == [s1["id"], s2["id"]]
    for s in listing:
        assert {"id", "time", "source", "size", "tags"} <= set(s)
        assert s["tags"] == ["nightly"] and s["size"] == 64 << 20 and s["time"].endswith("Z")
    latest = json.loads(run_cli("info", "-r", repo_path, "latest:nightly", "--json").stdout)
    assert latest["id"] == s2["id"]


@pytest.mark.slow
def test_ext4_one_gib_with_real_files(tmp_path, repo_path):
    """Acceptance: >= 1 GiB ext4 image with >= 500 MiB of real files from this machine."""
    content = tmp_path / "content"
    content.mkdir()
    total = 0
    for top in ("/usr/lib", "/usr/share", "/usr/bin"):
        for root, _dirs, files in os.walk(top):
            for f in files:
                p = Path(root) / f
                if p.is_symlink() or not p.is_file():
                    continue
                size = p.stat().st_size
                dest = content / str(p).lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(p, dest) if p.stat().st_dev == content.stat().st_dev else dest.write_bytes(p.read_bytes())
                total += size
                if total >= 520 << 20:
                    break
            if total >= 520 << 20:
                break
        if total >= 520 << 20:
            break
    assert total >= 500 << 20
    img = make_ext4(tmp_path / "fs.img", 1024, content)
    first = tmp_path / "first.img"
    subprocess.run(["cp", "--sparse=always", str(img), str(first)], check=True)
    s1 = snap(repo_path, img)
    (tmp_path / "new.bin").write_bytes(random_bytes(5 << 20, 5))
    debugfs(img, f"write {tmp_path / 'new.bin'} new.bin", "mkdir changed",
            f"write {tmp_path / 'new.bin'} changed/again.bin")
    s2 = snap(repo_path, img)
    assert s2["new_bytes"] < 40 << 20
    for sid, original in ((s1["id"], first), (s2["id"], img)):
        out = tmp_path / "out.img"
        run_cli("restore", "-r", repo_path, sid, out, "--force")
        subprocess.run(["cmp", str(out), str(original)], check=True)
        assert e2fsck_clean(out)


@pytest.mark.slow
def test_unchanged_two_gib_image_costs_at_most_64_kib(tmp_path):
    """Acceptance: second snapshot of an unchanged 2 GiB random image, 64 KiB chunks."""
    repo = tmp_path / "repo"
    run_cli("init", "-r", repo, "--chunk-size", "64K")
    img = tmp_path / "random.img"
    with open(img, "wb") as f:
        for i in range(32):
            f.write(random_bytes(64 << 20, i))
    snap(repo, img)
    before = repo_bytes(repo)
    second = snap(repo, img)
    grown = repo_bytes(repo) - before
    assert second["new_chunks"] == 0
    assert grown <= 64 << 10, grown


@pytest.mark.slow
def test_sparse_32_gib_image(tmp_path, repo_path):
    """Acceptance: a 32 GiB sparse file with 200 MiB of data is read like 200 MiB, stored as
    ~200 MiB and restored sparse and identical."""
    img = tmp_path / "vm.img"
    with open(img, "wb") as f:
        f.truncate(32 << 30)
        for i in range(20):  # 20 x 10 MiB spread over the disk
            f.seek(i * (32 << 30) // 20 + (i * 4096))
            f.write(random_bytes(10 << 20, 100 + i))
    with Repository.open(str(repo_path), passphrase=secret) as repo:  # in-process: /proc/self/io counts what it reads
        before = _bytes_read()
        s = take_snapshot(repo, str(img)).to_json()
        read = _bytes_read() - before
    assert read <= 230 << 20, read  # the 200 MiB of data, never the 32 GiB of holes
    assert s["data_bytes"] <= 210 << 20 and s["size"] == 32 << 30
    assert s["stored_bytes"] <= 205 << 20
    out = tmp_path / "out.img"
    run_cli("restore", "-r", repo_path, "latest", out)
    assert out.stat().st_size == 32 << 30
    assert out.stat().st_blocks * 512 <= 230 << 20  # du ~ 200 MiB: holes stayed holes
    assert _same_sparse_content(img, out)


def _bytes_read() -> int:
    """Bytes this process has read through read-like system calls (/proc/self/io rchar)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def _data_extents(path: Path) -> list[tuple[int, int]]:
    out, pos = [], 0
    with open(path, "rb") as f:
        fd, size = f.fileno(), os.fstat(f.fileno()).st_size
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    return out


def _same_sparse_content(a: Path, b: Path) -> bool:
    """Byte-identical, reading only where either file has data (elsewhere both are holes)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in sorted(set(_data_extents(a)) | set(_data_extents(b))):
            if os.pread(fa.fileno(), end - start, start) != os.pread(fb.fileno(), end - start, start):
                return False
    return True


def test_stdin_source(tmp_path, repo_path):
    data = random_bytes(700_000, 8) + bytes(300_000)
    s = json.loads(run_cli("snapshot", "-r", repo_path, "-", "--json", input=data).stdout)
    assert s["source"] == "stdin" and s["size"] == len(data)
    run_cli("restore", "-r", repo_path, s["id"], tmp_path / "o.img")
    assert (tmp_path / "o.img").read_bytes() == data


def test_block_device_round_trip(tmp_path, repo_path):
    """A loop device as source (size from the device) and as restore target."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    img = tmp_path / "disk.img"
    img.write_bytes(random_bytes(3 << 20, 1) + bytes(2 << 20) + random_bytes(3 << 20, 2))
    src = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True, text=True, check=True).stdout.strip()
    target_img = tmp_path / "target.img"
    target_img.write_bytes(random_bytes(9 << 20, 3))  # garbage to be overwritten, zeros included
    dst = subprocess.run(["losetup", "--find", "--show", str(target_img)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        s = snap(repo_path, src)
        assert s["size"] == 8 << 20 and s["zero_bytes"] >= 3 << 19  # zeros found inside a device
        proc = run_cli("restore", "-r", repo_path, "latest", dst, check=False)
        assert proc.returncode == 5 and b"--force" in proc.stderr
        run_cli("restore", "-r", repo_path, "latest", dst, "--force")
        with open(dst, "rb") as f:
            assert f.read(8 << 20) == img.read_bytes()
    finally:
        subprocess.run(["losetup", "-d", src])
        subprocess.run(["losetup", "-d", dst])


def test_restore_refuses_mounted_device_and_small_device(tmp_path, repo_path):
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    fs = make_ext4(tmp_path / "fs.img", 16, make_tree(tmp_path / "c", files=3))
    run_cli("snapshot", "-r", repo_path, fs)
    small = tmp_path / "small.img"
    small.write_bytes(bytes(4 << 20))
    dev = subprocess.run(["losetup", "--find", "--show", str(small)], capture_output=True, text=True, check=True).stdout.strip()
    mdev = subprocess.run(["losetup", "--find", "--show", str(fs)], capture_output=True, text=True, check=True).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        proc = run_cli("restore", "-r", repo_path, "latest", dev, "--force", check=False)
        assert proc.returncode == 5 and b"larger device" in proc.stderr
        subprocess.run(["mount", "-o", "ro", mdev, str(mnt)], check=True)
        before = fs.read_bytes()
        proc = run_cli("restore", "-r", repo_path, "latest", mdev, "--force", check=False)
        assert proc.returncode == 5 and b"mounted" in proc.stderr, proc.stderr
        assert fs.read_bytes() == before
    finally:
        subprocess.run(["umount", str(mnt)])
        subprocess.run(["losetup", "-d", dev])
        subprocess.run(["losetup", "-d", mdev])

