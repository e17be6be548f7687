"""Local security (docs/security.md): a repository is private to its owner whatever the umask,
never follows a link or a stranger's folder out of itself, touches only files it named, and
never nests in another repository. The unprivileged side runs as the user nobody
(setpriv --reuid=nobody --regid=nogroup --clear-groups) against root's repositories."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import site
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import SRC, cli_env, random_bytes, run_cli, secret

from diskvault.errors import EXIT_REPOSITORY
from diskvault.repository import Repository
from diskvault.repository.record import record_checksum
from diskvault.repository.pack import PackWriter

SECRET = b"TOP-SECRET-PASSWORD=correct-horse-battery-staple"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to the user nobody needs root")


@functools.cache
def _nobody_python() -> tuple[str, str]:
    """An interpreter nobody may run with diskvault's dependencies, and the PYTHONPATH it
    needs: this one if nobody can execute it, else the system python of the same version
    given this one's site-packages (a venv under /root is out of nobody's reach)."""
    paths = [str(SRC)]
    for exe in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        env = dict(cli_env(), PYTHONPATH=os.pathsep.join(paths))
        if subprocess.run([*NOBODY, exe, "-c", "import blake3, lz4, typer"], env=env, capture_output=True,
                          cwd="/").returncode == 0:
            return exe, env["PYTHONPATH"]
        paths = [str(SRC), *site.getsitepackages()]
    raise AssertionError("no Python interpreter the user nobody can run with diskvault's dependencies")


def as_nobody(*argv: str | os.PathLike) -> subprocess.CompletedProcess:
    """Run a command as nobody; ``diskvault`` as first word runs this diskvault."""
    exe, path = _nobody_python()
    args = [exe, "-m", "diskvault", *argv[1:]] if argv[0] == "diskvault" else list(argv)
    return subprocess.run([*NOBODY, *map(str, args)], env=dict(cli_env(), PYTHONPATH=path), capture_output=True,
                          cwd="/", timeout=300)


@pytest.fixture
def shared_dir():
    """A folder under /tmp that nobody may enter (tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="dv-security-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)  # the CLI's subprocesses inherit it
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Mode bits of the root ("") and of everything under it."""
    out = {"": stat.S_IMODE(root.lstat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def secret_image(folder: Path) -> Path:
    """A 0600 image holding SECRET between incompressible bytes (so it is stored verbatim)."""
    image = folder / "secret.img"
    image.write_bytes(random_bytes(40_000, 1) + SECRET + random_bytes(40_000, 2))
    image.chmod(0o600)
    return image


# --- 1. nobody reads nothing of root's repository ----------------------------------------


def test_nobody_cannot_read_the_backed_up_data(shared_dir):
    repo = shared_dir / "repo"
    image = secret_image(shared_dir)
    assert as_nobody("cat", image).returncode != 0  # the source itself is private
    with umask(0o022):
        run_cli("init", "-r", repo, "--encryption", "none")  # what the modes alone must protect
        run_cli("snapshot", "-r", repo, image)
    found = subprocess.run(["grep", "-rlF", SECRET, repo], capture_output=True)
    assert found.returncode == 0 and b"/packs/" in found.stdout  # root sees it: the test means something
    leak = as_nobody("grep", "-rlF", SECRET.decode(), repo)
    assert leak.returncode != 0 and leak.stdout == b"", leak.stdout
    assert as_nobody("sh", "-c", f"cat {repo}/packs/*/*.pack").returncode != 0
    listing = as_nobody("diskvault", "snapshots", "-r", repo)
    assert listing.returncode == EXIT_REPOSITORY and b"Traceback" not in listing.stderr


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_every_file_is_0600_and_every_folder_0700_whatever_the_umask(tmp_path, mask):
    repo = tmp_path / "repo"
    image = secret_image(tmp_path)
    with umask(mask):
        run_cli("init", "-r", repo)
        run_cli("snapshot", "-r", repo, image)
        run_cli("repair", "-r", repo)  # a new catalog, written beside the old one
        run_cli("snapshot", "-r", repo, image, "--tag", "again")
        with Repository.open(str(repo), passphrase=secret) as r, r.lock("shared", "test"):
            r.catalog.set_meta("test", "1")  # a write: the catalog's -wal and -shm exist now
            writer = PackWriter(r.storage, r.crypto)  # a pack being written: its temporary file
            writer.add(b"\1" * 32, 1, 0, b"data", 4)
            writer.flush()
            seen = modes(repo)
            writer.abort()
    names = set(seen)
    assert {"config.json", "catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"} <= names
    assert any(n.startswith("packs/") and n.endswith(".pack") for n in names)
    assert any(".pack.tmp-" in n for n in names)
    assert any(n.startswith("snapshots/") for n in names) and any(n.startswith("locks/") for n in names)
    wrong = {n: f"{m:04o}" for n, m in seen.items()
             if m != (0o700 if n == "" or (repo / n).is_dir() else 0o600)}
    assert not wrong, wrong
    report = json.loads(run_cli("check", "-r", repo, "--json").stdout)
    assert report["warnings"] == []


def test_check_warns_about_modes_wider_than_0600_and_0700(repo_path, tmp_path):
    run_cli("snapshot", "-r", repo_path, secret_image(tmp_path))
    pack = next((repo_path / "packs").rglob("*.pack"))
    pack.chmod(0o644)
    (repo_path / "snapshots").chmod(0o755)
    proc = run_cli("check", "-r", repo_path, "--json")
    report = json.loads(proc.stdout)
    assert report["status"] == "sound"
    warnings = [w for w in report["warnings"] if w["kind"] == "modes"]
    assert len(warnings) == 1, report["warnings"]
    message = warnings[0]["message"]
    assert "and 1 more" in message and f"chmod -R go= {repo_path}" in message
    assert str(pack) in message or str(repo_path / "snapshots") in message
    human = run_cli("check", "-r", repo_path).stderr.decode()
    assert "warning: other users may read or change files of this repository" in human
    assert oct(pack.stat().st_mode & 0o777) == oct(0o644)  # a warning only: nothing is changed
    subprocess.run(["chmod", "-R", "go=", str(repo_path)], check=True)  # the advice works
    assert json.loads(run_cli("check", "-r", repo_path, "--json").stdout)["warnings"] == []


def test_root_writing_into_nobodys_repository_leaves_it_usable_by_nobody(shared_dir):
    """Files root adds to another user's repository are given to that user (as SQLite does
    for its -wal and -shm): 0600 must not lock the owner out."""
    home = shared_dir / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    repo = home / "repo"
    image = shared_dir / "disk.img"
    image.write_bytes(random_bytes(300_000, 3))
    image.chmod(0o644)
    assert as_nobody("diskvault", "init", "-r", repo).returncode == 0
    run_cli("snapshot", "-r", repo, image)  # root: new packs, a record, a lock, catalog rows
    strangers = {str(p) for p in [repo, *repo.rglob("*")] if p.lstat().st_uid != 65534}
    assert not strangers, strangers
    proc = as_nobody("diskvault", "check", "-r", repo, "--read-data")
    assert proc.returncode == 0, proc.stderr.decode()
    assert as_nobody("diskvault", "snapshot", "-r", repo, image).returncode == 0


def test_a_repository_made_by_root_in_another_users_folder_stays_roots(shared_dir):
    home = shared_dir / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    run_cli("init", "-r", home / "repo")
    st = (home / "repo").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
    assert as_nobody("ls", home / "repo").returncode != 0


# --- 5. links and strangers' folders inside a repository ----------------------------------


def test_root_prune_refuses_a_snapshots_folder_that_nobody_made_a_link(shared_dir):
    """nobody owns a repository and turns its snapshots/ into a link to a folder of root's;
    root's prune must not delete root's file there."""
    home = shared_dir / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    repo = home / "repo"
    victims = shared_dir / "roots-files"
    victims.mkdir()
    victim = victims / "settings.json"
    victim.write_text('{"precious": true}\n')
    assert as_nobody("diskvault", "init", "-r", repo).returncode == 0
    assert as_nobody("sh", "-c", f"rmdir {repo}/snapshots && ln -s {victims} {repo}/snapshots").returncode == 0
    for command in (["prune"], ["check"], ["snapshots"]):
        proc = run_cli(*command, "-r", repo, check=False)
        one_line_error(proc, EXIT_REPOSITORY, f"{repo}/snapshots is a symbolic link")
    assert victim.read_text() == '{"precious": true}\n'


@pytest.mark.parametrize("folder", ["packs", "snapshots", "locks"])
def test_commands_refuse_an_internal_folder_that_is_a_link(repo_path, tmp_path, folder):
    image = tmp_path / "disk.img"
    image.write_bytes(random_bytes(200_000, 4))
    run_cli("snapshot", "-r", repo_path, image)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(repo_path / folder, elsewhere)  # the repository's own files, moved out
    (repo_path / folder).symlink_to(elsewhere)
    victim = elsewhere / {"packs": f"ab/ab{'0' * 30}.pack", "snapshots": f"{'0' * 32}.json",
                          "locks": f"{'0' * 16}.json"}[folder]
    victim.parent.mkdir(exist_ok=True)
    victim.write_bytes(b"not the repository's\n")
    for command in (["prune"], ["repair"], ["unlock", "--all"], ["snapshot", image]):
        proc = run_cli(command[0], "-r", repo_path, *command[1:], check=False)
        one_line_error(proc, EXIT_REPOSITORY, f"{repo_path}/{folder} is a symbolic link")
    assert victim.read_bytes() == b"not the repository's\n"
    (repo_path / folder).unlink()
    shutil.move(elsewhere, repo_path / folder)
    (repo_path / folder / victim.relative_to(elsewhere)).unlink()


def test_an_internal_folder_of_another_user_is_refused(repo_path):
    os.chown(repo_path / "packs", 65534, 65534)
    proc = run_cli("check", "-r", repo_path, check=False)
    one_line_error(proc, EXIT_REPOSITORY, f"{repo_path}/packs is owned by uid 65534", "by uid 0", "chown")
    os.chown(repo_path / "packs", 0, 0)
    run_cli("check", "-r", repo_path)


def test_prune_deletes_only_names_of_its_own(plain_repo_path, tmp_path):
    """Files the repository did not name survive prune, even where its own would be
    garbage (an unknown record, a pack not in the catalog, a temporary file). Unencrypted: the
    test writes a readable record by hand."""
    repo_path = plain_repo_path
    image = tmp_path / "disk.img"
    image.write_bytes(random_bytes(200_000, 5))
    run_cli("snapshot", "-r", repo_path, image)
    strangers = [repo_path / "snapshots" / "notes.json", repo_path / "packs" / "ab" / "readme.pack",
                 repo_path / "packs" / "zz" / ("zz" + "0" * 30 + ".pack"), repo_path / "packs" / "notes.tmp-12345678",
                 repo_path / "report.json.tmp-deadbeef"]
    garbage = [repo_path / "snapshots" / ("f" * 32 + ".json"), repo_path / "packs" / "ab" / ("ab" + "1" * 30 + ".pack"),
               repo_path / "packs" / "ab" / ("ab" + "2" * 30 + ".pack.tmp-0123abcd"),
               repo_path / "catalog.sqlite.tmp-0123abcd-wal"]
    record = json.loads(next((repo_path / "snapshots").glob("*.json")).read_text())
    for p in strangers + garbage:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    record["id"] = "f" * 32  # a readable record without a catalog row (an unreadable one stops prune)
    record["checksum"] = record_checksum(record)
    garbage[0].write_text(json.dumps(record))
    res = json.loads(run_cli("prune", "-r", repo_path, "--json").stdout)
    assert (res["orphan_records_removed"], res["orphan_packs_removed"], res["tmp_files_removed"]) == (1, 1, 2)
    assert [p for p in strangers if not p.exists()] == []
    assert [p for p in garbage if p.exists()] == []
    for p in strangers:
        p.unlink()
    shutil.rmtree(repo_path / "packs" / "zz")


def test_storage_refuses_to_delete_a_name_it_does_not_hold(repo):
    with pytest.raises(ValueError):
        repo.storage.delete("snapshots/notes.json")
    with pytest.raises(ValueError):
        repo.storage.delete("../outside.pack")


# --- 6. nested repositories ---------------------------------------------------------------


def test_init_refuses_a_path_inside_a_repository(repo_path, tmp_path):
    for inner in (repo_path / "B", repo_path / "packs" / "B", repo_path / "snapshots" / "x" / "B"):
        inner.parent.mkdir(exist_ok=True)
        proc = run_cli("init", "-r", inner, check=False)
        one_line_error(proc, EXIT_REPOSITORY, f"inside the diskvault repository {repo_path}")
        assert not inner.exists()
    (repo_path / "snapshots" / "x").rmdir()
    link = tmp_path / "link"
    link.symlink_to(repo_path)
    one_line_error(run_cli("init", "-r", link / "B", check=False), EXIT_REPOSITORY, str(repo_path))
    containing = run_cli("init", "-r", tmp_path, check=False)  # holds a repository: not empty
    one_line_error(containing, EXIT_REPOSITORY, "not empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"an": "application config"}\n')
    run_cli("init", "-r", tmp_path / "other" / "repo")  # a config.json of something else is no repository


def test_outer_prune_leaves_a_nested_repository_alone(repo_path, tmp_path):
    """A repository nested by an older diskvault (or moved in): the outer prune deletes no
    file of it, not even the temporary pack of a snapshot it is taking."""
    image = tmp_path / "disk.img"
    image.write_bytes(random_bytes(200_000, 6))
    run_cli("snapshot", "-r", repo_path, image)
    inner = tmp_path / "inner"
    run_cli("init", "-r", inner)
    run_cli("snapshot", "-r", inner, image)
    shutil.move(inner, repo_path / "inner")
    inner = repo_path / "inner"
    before = {p for p in inner.rglob("*") if p.is_file()}
    with Repository.open(str(inner), passphrase=secret) as r:
        writer = PackWriter(r.storage, r.crypto)  # the inner repository's snapshot in progress
        writer.add(b"\2" * 32, 1, 0, b"data", 4)
        writer.flush()
        temp = next(p for p in inner.rglob("*.tmp-*"))
        res = json.loads(run_cli("prune", "-r", repo_path, "--json").stdout)
        assert res["tmp_files_removed"] == 0 and res["orphan_packs_removed"] == 0
        assert temp.exists()
        writer.abort()
    assert {p for p in inner.rglob("*") if p.is_file()} == before
    run_cli("check", "-r", inner, "--read-data")
    shutil.rmtree(inner)


def test_a_linked_catalog_is_refused(tmp_path):
    """The owner of a repository links its catalog to root's other repository: root's snapshot
    and forget there must not write root's catalog (SQLite follows links)."""
    victim, own = tmp_path / "victim", tmp_path / "own"
    image = tmp_path / "disk.img"
    image.write_bytes(random_bytes(200_000, 6))
    for repo in (victim, own):
        run_cli("init", "-r", repo)
        run_cli("snapshot", "-r", repo, image)
    before = (victim / "catalog.sqlite").read_bytes()
    (own / "catalog.sqlite").unlink()
    (own / "catalog.sqlite").symlink_to(victim / "catalog.sqlite")
    for args in (["snapshot", "-r", own, image], ["snapshots", "-r", own], ["repair", "-r", own],
                 ["forget", "-r", own, "latest"]):
        proc = run_cli(*args, check=False)
        one_line_error(proc, EXIT_REPOSITORY, "catalog.sqlite is a symbolic link")
    assert (victim / "catalog.sqlite").read_bytes() == before
    (own / "catalog.sqlite").unlink()
    run_cli("repair", "-r", own)  # the real catalog put back: repair rebuilds it
    assert len(json.loads(run_cli("snapshots", "-r", own, "--json").stdout)) == 1
