"""Every user error: one clear line on stderr, the documented exit code, nothing changed."""

import json
import os
import subprocess
import sys

import pytest

from diskvault import errors
from helpers import cli_env, random_bytes, run_cli


def fails(*args, code, match, **kw):
    proc = run_cli(*args, check=False, **kw)
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err
    assert match in err, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 or code == errors.EXIT_USAGE, err
    return err


def snapshot_files(repo):
    return sorted(p.relative_to(repo) for p in repo.rglob("*") if p.is_file() and "catalog.sqlite" not in p.name)


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "a.img"
    p.write_bytes(random_bytes(200_000, 3))
    return p


def test_missing_source(repo_path, tmp_path):
    before = snapshot_files(repo_path)
    fails("snapshot", "-r", repo_path, tmp_path / "nope.img", code=errors.EXIT_SOURCE_TARGET, match="does not exist")
    assert snapshot_files(repo_path) == before


def test_directory_source(repo_path, tmp_path):
    fails("snapshot", "-r", repo_path, tmp_path, code=errors.EXIT_SOURCE_TARGET, match="is a directory")


def test_unreadable_source(repo_path, image):
    """Root without the capability to bypass file permissions, like an ordinary user."""
    image.chmod(0)
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    proc = subprocess.run([*drop, sys.executable, "-m", "diskvault", "snapshot", "-r", str(repo_path), str(image)],
                          capture_output=True, env=cli_env())
    assert proc.returncode == errors.EXIT_SOURCE_TARGET, proc.stderr
    assert b"permission denied reading" in proc.stderr and b"Traceback" not in proc.stderr


def test_repository_missing(tmp_path, image):
    fails("snapshot", "-r", tmp_path / "none", image, code=errors.EXIT_REPOSITORY, match="does not exist")


def test_repository_not_initialised(tmp_path, image):
    (tmp_path / "plain").mkdir()
    fails("snapshots", "-r", tmp_path / "plain", code=errors.EXIT_REPOSITORY, match="not a diskvault repository")


def test_repository_from_environment(repo_path, image):
    proc = run_cli("snapshots", "--json", env=cli_env(DISKVAULT_REPO=str(repo_path)))
    assert json.loads(proc.stdout) == []


def test_no_repository_given_is_a_usage_error(image):
    fails("snapshots", code=errors.EXIT_USAGE, match="--repo")


def test_init_over_existing_repository(repo_path):
    before = (repo_path / "config.json").read_bytes()
    fails("init", "-r", repo_path, code=errors.EXIT_REPOSITORY, match="already a diskvault repository")
    assert (repo_path / "config.json").read_bytes() == before


def test_init_over_non_empty_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    fails("init", "-r", tmp_path / "d", code=errors.EXIT_REPOSITORY, match="not empty")
    assert os.listdir(tmp_path / "d") == ["keep.txt"]


def test_init_bad_chunk_size(tmp_path):
    fails("init", "-r", tmp_path / "r", "--chunk-size", "100K", code=errors.EXIT_USAGE, match="power of two")
    assert not (tmp_path / "r").exists()


def test_unknown_snapshot(repo_path, image, tmp_path):
    fails("restore", "-r", repo_path, "deadbeef", tmp_path / "o.img", code=errors.EXIT_SNAPSHOT, match="no snapshot deadbeef")
    fails("restore", "-r", repo_path, "latest", tmp_path / "o.img", code=errors.EXIT_SNAPSHOT, match="no snapshot")
    fails("info", "-r", repo_path, "not-an-id", code=errors.EXIT_SNAPSHOT, match="not a snapshot id")
    assert not (tmp_path / "o.img").exists()


def test_ambiguous_snapshot(repo_path, tmp_path):
    ids = set()
    seed = 0
    while True:  # take snapshots until two ids share a first hex digit
        img = tmp_path / "s.img"
        img.write_bytes(random_bytes(1000, seed))
        sid = json.loads(run_cli("snapshot", "-r", repo_path, img, "--json").stdout)["id"]
        if sid[0] in {i[0] for i in ids}:
            break
        ids.add(sid)
        seed += 1
    fails("info", "-r", repo_path, sid[0], code=errors.EXIT_SNAPSHOT, match="ambiguous")


def test_wrong_format_version(repo_path):
    cfg = json.loads((repo_path / "config.json").read_text())
    cfg["version"] = 99
    (repo_path / "config.json").write_text(json.dumps(cfg))
    fails("snapshots", "-r", repo_path, code=errors.EXIT_REPOSITORY, match="format version 99")
    cfg["version"] = 1
    (repo_path / "config.json").write_text(json.dumps(cfg))


def test_restore_refuses_non_empty_file_without_force(repo_path, image, tmp_path):
    run_cli("snapshot", "-r", repo_path, image)
    target = tmp_path / "t.img"
    target.write_bytes(b"precious")
    fails("restore", "-r", repo_path, "latest", target, code=errors.EXIT_SOURCE_TARGET, match="--force")
    assert target.read_bytes() == b"precious"
    run_cli("restore", "-r", repo_path, "latest", target, "--force")
    assert target.read_bytes() == image.read_bytes()


def test_restore_into_missing_directory(repo_path, image, tmp_path):
    run_cli("snapshot", "-r", repo_path, image)
    fails("restore", "-r", repo_path, "latest", tmp_path / "no" / "t.img", code=errors.EXIT_SOURCE_TARGET, match="does not exist")


def test_out_of_space(tmp_path, image):
    """A repository on a tiny tmpfs: the snapshot fails cleanly and leaves no partial pack."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        run_cli("init", "-r", mnt / "repo")
        big = tmp_path / "big.img"
        big.write_bytes(random_bytes(4 << 20, 9))
        fails("snapshot", "-r", mnt / "repo", big, code=errors.EXIT_NO_SPACE, match="no space")
        assert not [p for p in (mnt / "repo").rglob("*") if ".tmp-" in p.name]
        assert json.loads(run_cli("snapshots", "-r", mnt / "repo", "--json").stdout) == []
        run_cli("snapshot", "-r", mnt / "repo", image)  # a smaller snapshot still fits and works
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)
