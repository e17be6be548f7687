"""Trust at recovery time (issue 11, items 1, 2, 13): read-only, full and permission-denied
repositories, a damaged catalog, and operating-system errors reported as what they are.

Everything here is real: read-only bind mounts, small ext4 file systems on loop devices
filled until ENOSPC, the unprivileged user ``nobody`` (setpriv), bytes flipped inside
catalog.sqlite. Needs root; mounts and loop devices are removed in the fixtures' finally
blocks.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from diskvault import errors
from helpers import cli_env, make_ext4, random_bytes, run_cli, secret, tool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts, loop devices and setpriv need root")

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
NOTE = "reading without a lock"


# --- helpers -------------------------------------------------------------------------

def run(*args, user: list[str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``diskvault ARGS`` as root, or as the user ``user`` (a setpriv prefix) selects."""
    return subprocess.run([*(user or []), sys.executable, "-m", "diskvault", *map(str, args)],
                          capture_output=True, env=cli_env(), cwd=cwd, timeout=300)


def lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]


def expect(proc: subprocess.CompletedProcess, code: int, match: str = "", note: bool | None = None) -> str:
    """Exit ``code``; stderr one line (holding ``match``), or with ``note`` the lock note
    (note=False: no note); a command that succeeded may add its summary (stderr is for human
    messages); never a traceback or an internal error."""
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, (proc.args, proc.returncode, err)
    assert "Traceback" not in err and "internal error" not in err, err
    if note is None:
        assert len(lines(proc)) == 1, err
    elif note:
        assert NOTE in err and (code == 0 or len(lines(proc)) == 1), err
    else:
        assert NOTE not in err and (code == 0 or not lines(proc)), err
    assert match in err, err
    return err


def normalise_modes(root: Path, owner: str | None = None) -> None:
    """Directories 0755, files 0644 (readable by everyone, writable by the owner only)."""
    for dirpath, dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)
    if owner:
        subprocess.run(["chown", "-R", f"{owner}:", str(root)], check=True)


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime: proof that nothing changed."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def bind_read_only(src: Path, dst: Path) -> None:
    dst.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
    subprocess.run(["mount", "-o", "remount,ro,bind", str(dst)], check=True)


def mounted(path: Path) -> bool:
    """Whether something is mounted on ``path`` (os.path.ismount misses a bind mount of a
    directory of the same file system)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def umount(path: Path) -> None:
    if mounted(path):
        subprocess.run(["umount", str(path)], capture_output=True)
    if mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
    assert not mounted(path), f"{path} is still mounted"


def mount_small_ext4(image: Path, mnt: Path, size_mb: int = 32) -> None:
    """A fresh ext4 file system of ``size_mb`` MiB on a loop device, mounted on ``mnt``
    (the loop device goes away with the unmount: autoclear)."""
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True)
    subprocess.run([tool("mkfs.ext4"), "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    os.chmod(mnt, 0o755)


def fill(mnt: Path) -> None:
    """Write a file until the file system refuses even one more byte (ENOSPC)."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\xff" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
        os.fsync(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as no_space:
        (mnt / "one-more").write_bytes(b"x" * 4096)
    assert no_space.value.errno == errno.ENOSPC


def new_repo(path: Path, image: Path) -> str:
    """A repository at ``path`` holding one snapshot of ``image``; the snapshot id."""
    run_cli("init", "-r", path, "--chunk-size", "16K")
    return json.loads(run_cli("snapshot", "-r", path, image, "--json", "--no-progress").stdout)["id"]


def shared_dir(prefix: str) -> Path:
    """A directory under /tmp that ``nobody`` can traverse (pytest's own are 0700)."""
    top = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(top, 0o755)
    return top


# --- item 1: a read-only repository --------------------------------------------------------

@pytest.fixture
def ro_world():
    """A repository with one snapshot, and a read-only bind mount of it at ``ro``."""
    top = shared_dir("dv-ro-")
    try:
        image = top / "a.img"
        image.write_bytes(random_bytes(600_000, 11))
        repo = top / "repo"
        sid = new_repo(repo, image)
        bind_read_only(repo, top / "ro")
        yield top, top / "ro", image, sid
    finally:
        umount(top / "ro")
        shutil.rmtree(top, ignore_errors=True)


def test_read_only_mount_reading_commands_work_writing_commands_refuse(ro_world):
    """Used to be: every command exits 3 "catalog cannot be read: run repair"."""
    top, ro, image, sid = ro_world
    before = tree_state(top / "repo")
    expect(run("snapshots", "-r", ro, "--json"), 0, note=False)
    expect(run("info", "-r", ro), 0, note=True)
    expect(run("info", "-r", ro, "latest"), 0, note=True)
    out = top / "out.img"
    expect(run("restore", "-r", ro, sid[:8], out, "--no-progress"), 0, note=True)
    assert out.read_bytes() == image.read_bytes()
    expect(run("verify", "-r", ro, "latest", image), 0, note=True)
    expect(run("partitions", "-r", ro, "latest"), 0, note=True)
    expect(run("check", "-r", ro, "--read-data"), 0, note=True)
    check = run("check", "-r", ro, "--read-data-subset", "50%")
    expect(check, 0, note=True)
    assert b"reads this slice again" in check.stderr  # the rotation could not be saved, and it says so
    expect(run("forget", "-r", ro, "--dry-run", "latest"), 0, note=True)
    expect(run("prune", "-r", ro, "--dry-run"), 0, note=True)
    for args in (("snapshot", image), ("forget", "latest"), ("prune",), ("unlock",), ("repair",)):
        expect(run(args[0], "-r", ro, *args[1:]), errors.EXIT_REPOSITORY, match="is read-only")
    assert tree_state(top / "repo") == before


def test_no_lock_flag_skips_the_lock_and_the_note(ro_world):
    top, ro, image, sid = ro_world
    repo = top / "repo"
    expect(run("info", "-r", ro, "--no-lock"), 0, note=False)
    expect(run("check", "-r", ro, "--no-lock"), 0, note=False)
    # on a writable repository: an exclusive lock of a living process blocks a reader, --no-lock does not
    from diskvault.repository import Repository, locking

    with Repository.open(str(repo), write=False, passphrase=secret) as r:  # a (sealed) lock of this living process
        lock = locking.acquire(str(repo), "exclusive", "prune", 0, r.crypto)
    try:
        expect(run("info", "-r", repo), errors.EXIT_LOCKED, match="locked")
        for args in (("info",), ("snapshots",), ("check",), ("verify", "latest", image),
                     ("partitions", "latest"), ("restore", "latest", top / "nl.img")):
            expect(run(args[0], "-r", repo, "--no-lock", *args[1:]), 0, note=False)
    finally:
        lock.release()
    assert (top / "nl.img").read_bytes() == image.read_bytes()


@pytest.mark.parametrize("keep_shm", [True, False], ids=["wal-and-shm", "wal-only"])
def test_read_only_repository_with_committed_wal(keep_shm):
    """A catalog whose last transactions are still in its WAL (a writer was killed), then
    mounted read-only: the reader sees them (immutable=1 alone would not)."""
    top = shared_dir("dv-wal-")
    try:
        first, second = top / "a.img", top / "b.img"
        first.write_bytes(random_bytes(300_000, 1))
        second.write_bytes(random_bytes(300_000, 2))
        repo = top / "repo"
        new_repo(repo, first)
        code = ("import os, sys; sys.path.insert(0, sys.argv[3]);"
                "from diskvault.repository import Repository; from diskvault.ops.snapshot import take_snapshot;"
                "r = Repository.open(sys.argv[1], passphrase=lambda: os.environ['DISKVAULT_PASSWORD']);"
                "take_snapshot(r, sys.argv[2]); os._exit(0)")
        subprocess.run([sys.executable, "-c", code, str(repo), str(second), str(Path(__file__).parents[2] / "src")],
                       check=True, env=cli_env())
        assert (repo / "catalog.sqlite-wal").stat().st_size > 0  # the second snapshot lives in the WAL only
        if not keep_shm:
            (repo / "catalog.sqlite-shm").unlink()
        bind_read_only(repo, top / "ro")
        listing = run("snapshots", "-r", top / "ro", "--json")
        expect(listing, 0, note=False)
        snaps = json.loads(listing.stdout)
        assert len(snaps) == 2
        expect(run("restore", "-r", top / "ro", snaps[-1]["id"], top / "out.img"), 0, note=True)
        assert (top / "out.img").read_bytes() == second.read_bytes()
        assert not list(Path(tempfile.gettempdir()).glob("diskvault-catalog-*/catalog.sqlite"))  # copy removed
    finally:
        umount(top / "ro")
        shutil.rmtree(top, ignore_errors=True)


def test_init_on_a_read_only_path_is_a_repository_error(ro_world):
    """Used to be: internal error (OSError: read-only file system)."""
    top = ro_world[0]
    (top / "empty").mkdir()
    bind_read_only(top / "empty", top / "ro-empty")  # not inside a repository: init refuses that first
    try:
        expect(run("init", "-r", top / "ro-empty" / "new"), errors.EXIT_REPOSITORY, match="read-only file system")
    finally:
        umount(top / "ro-empty")


def test_write_protected_media(tmp_path):
    """A repository on an ext4 image attached as a read-only loop device (as a write-protected
    disk is): readers work, writers exit 3."""
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(400_000, 15))
    content = tmp_path / "content"
    content.mkdir()
    sid = new_repo(content / "repo", image)
    media = make_ext4(tmp_path / "media.img", 16, content)
    mnt = tmp_path / "media"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro,loop", str(media), str(mnt)], check=True)
    try:
        loop = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True, text=True).stdout.strip()
        assert subprocess.run(["blockdev", "--getro", loop], capture_output=True, text=True).stdout.strip() == "1"
        repo = mnt / "repo"
        expect(run("snapshots", "-r", repo), 0, note=False)
        expect(run("restore", "-r", repo, sid, tmp_path / "o.img"), 0, note=True)
        assert (tmp_path / "o.img").read_bytes() == image.read_bytes()
        expect(run("check", "-r", repo, "--read-data"), 0, note=True)
        expect(run("snapshot", "-r", repo, image), errors.EXIT_REPOSITORY, match="is read-only")
        expect(run("repair", "-r", repo), errors.EXIT_REPOSITORY, match="is read-only")
    finally:
        umount(mnt)
        media.unlink()


# --- item 1: readable, not writable, by the user -------------------------------------------

def test_repository_not_writable_by_the_user(ro_world):
    """``nobody`` may read the repository but not write it."""
    top, _ro, image, sid = ro_world
    repo = top / "repo"
    normalise_modes(repo)
    before = tree_state(repo)
    target = top / "mine"
    target.mkdir()
    shutil.chown(target, "nobody")
    expect(run("snapshots", "-r", repo, user=NOBODY), 0, note=False)
    expect(run("info", "-r", repo, "latest", user=NOBODY), 0, note=True)
    expect(run("restore", "-r", repo, "latest", target / "o.img", user=NOBODY), 0, note=True)
    assert (target / "o.img").read_bytes() == image.read_bytes()
    expect(run("verify", "-r", repo, "latest", image, user=NOBODY), 0, note=True)
    expect(run("check", "-r", repo, "--read-data-subset", "1/2", user=NOBODY), 0, note=True)
    for args in (("snapshot", image), ("forget", "latest"), ("prune",), ("unlock",), ("repair",)):
        expect(run(args[0], "-r", repo, *args[1:], user=NOBODY), errors.EXIT_REPOSITORY, match="is read-only")
    expect(run("init", "-r", top / "theirs", user=NOBODY), errors.EXIT_REPOSITORY, match="permission denied")
    assert tree_state(repo) == before


# --- item 2: a full disk -------------------------------------------------------------------

@pytest.fixture
def full_world():
    """A repository with one snapshot on a 32 MiB ext4 file system filled to ENOSPC."""
    top = shared_dir("dv-full-")
    mnt = top / "fs"
    try:
        image = top / "a.img"
        image.write_bytes(random_bytes(600_000, 12))
        mount_small_ext4(top / "fs.img", mnt)
        sid = new_repo(mnt / "repo", image)
        fill(mnt)
        yield top, mnt / "repo", image, sid
    finally:
        umount(mnt)
        shutil.rmtree(top, ignore_errors=True)


def test_full_disk_reading_commands_work_writing_commands_exit_6(full_world):
    """Used to be: every command exits 3 "cannot be read: rebuild it with repair", and
    repair an internal error (ENOSPC)."""
    top, repo, image, sid = full_world
    expect(run("snapshots", "-r", repo), 0, note=False)
    expect(run("info", "-r", repo, "latest"), 0, note=True)
    expect(run("restore", "-r", repo, sid, top / "out.img"), 0, note=True)
    assert (top / "out.img").read_bytes() == image.read_bytes()
    expect(run("verify", "-r", repo, "latest", image), 0, note=True)
    expect(run("partitions", "-r", repo, "latest"), 0, note=True)
    expect(run("check", "-r", repo, "--read-data-subset", "50%"), 0, note=True)
    for args in (("snapshot", image), ("forget", "latest"), ("prune",), ("unlock",), ("repair",),
                 ("repair", "--rebuild-catalog")):
        expect(run(args[0], "-r", repo, *args[1:]), errors.EXIT_NO_SPACE, match="no space left")
    expect(run("init", "-r", repo.parent / "new"), errors.EXIT_NO_SPACE, match="no space left")
    assert not [p for p in repo.rglob("*") if ".tmp-" in p.name]  # nothing half-written left behind
    assert json.loads(run_cli("snapshots", "-r", repo, "--json").stdout)[0]["id"] == sid


# --- item 13: a damaged catalog ----------------------------------------------------------------

def damage_pages(catalog: Path, table: str) -> None:
    """Flip the first bytes (the b-tree page header) of every page of ``table``."""
    conn = sqlite3.connect(catalog)
    pages = [p for (p,) in conn.execute("SELECT pageno FROM dbstat WHERE name=?", (table,))]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    assert pages and 1 not in pages
    with open(catalog, "r+b") as f:
        for page in pages:
            f.seek((page - 1) * size)
            head = f.read(12)
            f.seek((page - 1) * size)
            f.write(bytes(b ^ 0xA5 for b in head))


@pytest.mark.parametrize("table", ["blobs", "snapshots"])
def test_damaged_catalog_page_is_exit_3_with_the_repair_hint(tmp_path, table):
    """Used to be: exit 1 "database disk image is malformed" from check and restore."""
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(2_000_000, 13))
    repo = tmp_path / "repo"
    sid = new_repo(repo, image)
    assert not (repo / "catalog.sqlite-wal").exists()  # closed: everything is in the file itself
    damage_pages(repo / "catalog.sqlite", table)
    hint = f"diskvault repair -r {repo}"
    commands = [("info",), ("info", "latest"), ("restore", sid, tmp_path / "o.img"), ("verify", "latest", image),
                ("partitions", "latest"), ("check",), ("check", "--read-data"), ("prune", "--dry-run"),
                ("snapshot", image)]
    if table == "snapshots":
        commands += [("snapshots",), ("forget", "latest"), ("prune",)]
    for args in commands:
        err = expect(run(args[0], "-r", repo, *args[1:]), errors.EXIT_REPOSITORY, match="is damaged")
        assert hint in err, err
    assert not (tmp_path / "o.img").exists()
    run_cli("repair", "-r", repo)
    run_cli("restore", "-r", repo, sid, tmp_path / "o.img")
    assert (tmp_path / "o.img").read_bytes() == image.read_bytes()


def test_catalog_that_is_not_a_database_is_exit_3_everywhere(repo_path, tmp_path):
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(300_000, 14))
    run_cli("snapshot", "-r", repo_path, image)
    with open(repo_path / "catalog.sqlite", "r+b") as f:
        f.write(b"definitely not SQLite")
    for args in (("snapshots",), ("info",), ("restore", "latest", tmp_path / "o.img"), ("verify", "latest", image),
                 ("partitions", "latest"), ("check",), ("forget", "latest"), ("prune",), ("snapshot", image)):
        err = expect(run(args[0], "-r", repo_path, *args[1:]), errors.EXIT_REPOSITORY, match="is damaged")
        assert f"diskvault repair -r {repo_path}" in err
    run_cli("repair", "-r", repo_path)
    run_cli("restore", "-r", repo_path, "latest", tmp_path / "o.img")
    assert (tmp_path / "o.img").read_bytes() == image.read_bytes()


# --- the table: every command against every kind of refusal ----------------------------------

READ_ONLY, FULL, DENIED, SOURCE, TARGET, TARGET_RO, TARGET_FULL = (
    "read-only", "full", "denied", "unreadable-source", "unwritable-target", "read-only-target", "full-target")
OK, REPO, SPACE, FILE = 0, errors.EXIT_REPOSITORY, errors.EXIT_NO_SPACE, errors.EXIT_SOURCE_TARGET
READERS = {READ_ONLY: OK, FULL: OK, DENIED: OK}
WRITERS = {READ_ONLY: REPO, FULL: SPACE, DENIED: REPO}

# command -> (arguments after the command, given the world, the condition and the cell's own scratch
# name), expected exit code in each condition (a condition missing from a row does not apply to it:
# the command has no source or target)
TABLE = {
    "init": (lambda w, c, n: ["-r", w.place(c) / "new"], WRITERS),
    "snapshot": (lambda w, c, n: ["-r", w.repo(c), w.source(c)], {**WRITERS, SOURCE: FILE}),
    "snapshots": (lambda w, c, n: ["-r", w.repo(c)], READERS),
    "info": (lambda w, c, n: ["-r", w.repo(c), "latest"], READERS),
    "restore": (lambda w, c, n: ["-r", w.repo(c), "latest", w.target(c, n)],
                {**READERS, TARGET: FILE, TARGET_RO: FILE, TARGET_FULL: SPACE}),
    "forget": (lambda w, c, n: ["-r", w.repo(c), "latest"], WRITERS),
    "prune": (lambda w, c, n: ["-r", w.repo(c)], WRITERS),
    "unlock": (lambda w, c, n: ["-r", w.repo(c)], WRITERS),
    "check": (lambda w, c, n: ["-r", w.repo(c), "--read-data"], READERS),
    "verify": (lambda w, c, n: ["-r", w.repo(c), "latest", w.source(c)], {**READERS, SOURCE: FILE}),
    "repair": (lambda w, c, n: ["-r", w.repo(c)], WRITERS),
    "partitions": (lambda w, c, n: ["--source", w.source(c)] if c == SOURCE else ["-r", w.repo(c), "latest"],
                   {**READERS, SOURCE: FILE}),
    "serve": (lambda w, c, n: ["-r", w.repo(c), "--json", "--bind", f"unix:{w.target(c, n)}"],
              {**READERS, TARGET: FILE, TARGET_RO: FILE}),
    # nobody cannot open /dev/fuse here (root only, 0600), so mount as nobody stops there: exit 5, one line
    "mount": (lambda w, c, n: ["-r", w.repo(c), "--json", w.mountpoint(n)], {READ_ONLY: OK, FULL: OK, DENIED: FILE}),
}
CELLS = [(cmd, cond) for cmd, (_, codes) in TABLE.items() for cond in codes]


class World:
    """The repositories and files the table runs against, built once (module fixture):

    - ``repo``: a repository with one snapshot, readable by everyone, writable by root only
      (``denied``: used by nobody), also bind-mounted read-only at ``ro`` (``read-only``);
    - ``fs/repo``: the same on a 32 MiB ext4 file system filled to ENOSPC (``full``);
    - ``own``: a copy owned by nobody, for nobody's unreadable source (``secret``, root's
      0600) and unwritable target (``closed``, root's 0755 directory); root's read-only
      target is under ``ro``, its full target under ``fs``.
    """

    def __init__(self, top: Path) -> None:
        self.top = top
        self.image = top / "a.img"
        self.secret = top / "secret.img"
        self.mine = top / "mine"  # nobody's own scratch directory
        self.closed = top / "closed"

    def user(self, cond: str) -> list[str]:
        return NOBODY if cond in (DENIED, SOURCE, TARGET) else []

    def repo(self, cond: str) -> Path:
        return {READ_ONLY: self.top / "ro", FULL: self.top / "fs" / "repo", DENIED: self.top / "repo",
                SOURCE: self.top / "own", TARGET: self.top / "own"}.get(cond, self.top / "repo")

    def place(self, cond: str) -> Path:
        """A directory to create a repository in."""
        return {READ_ONLY: self.top / "ro", FULL: self.top / "fs", DENIED: self.closed}[cond]

    def source(self, cond: str) -> Path:
        return self.secret if cond == SOURCE else self.image

    def target(self, cond: str, name: str) -> Path:
        return {TARGET: self.closed, TARGET_RO: self.top / "ro", TARGET_FULL: self.top / "fs"}.get(
            cond, self.mine) / name

    def mountpoint(self, name: str) -> Path:
        path = self.mine / name
        path.mkdir(exist_ok=True)
        shutil.chown(path, "nobody")
        return path


@pytest.fixture(scope="module")
def world():
    top = shared_dir("dv-table-")
    w = World(top)
    try:
        w.image.write_bytes(random_bytes(600_000, 21))
        os.chmod(w.image, 0o644)
        w.secret.write_bytes(random_bytes(100_000, 22))
        os.chmod(w.secret, 0o600)
        for d in (w.mine, w.closed):
            d.mkdir()
        shutil.chown(w.mine, "nobody")
        new_repo(top / "repo", w.image)
        normalise_modes(top / "repo")
        shutil.copytree(top / "repo", top / "own")
        normalise_modes(top / "own", owner="nobody")
        bind_read_only(top / "repo", top / "ro")
        mount_small_ext4(top / "fs.img", top / "fs")
        new_repo(top / "fs" / "repo", w.image)
        fill(top / "fs")
        yield w
    finally:
        for mnt in sorted(top.glob("mine/mnt-*")):
            if mounted(mnt):
                subprocess.run([tool("fusermount3"), "-u", str(mnt)], capture_output=True)
            umount(mnt)
        umount(top / "ro")
        umount(top / "fs")
        shutil.rmtree(top, ignore_errors=True)


def run_until_ready(args: list, user: list[str], cwd: Path, mountpoint: Path | None) -> subprocess.CompletedProcess:
    """Start a long-running command (serve, mount); once it is ready (its first --json
    line; serve greets a client, mount appears in the mount table) stop it with Ctrl-C
    (SIGINT). An early exit is returned as it is."""
    import select

    proc = subprocess.Popen([*user, sys.executable, "-m", "diskvault", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env(), cwd=cwd)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, f"{args[0]} neither started nor failed within 60 s"
        first = proc.stdout.readline()
        if first:
            info = json.loads(first)
            if info.get("socket"):  # serving: a client's greeting proves it took (or skipped) the lock
                with socket.socket(socket.AF_UNIX) as client:
                    client.settimeout(60)
                    client.connect(info["socket"])
                    assert client.recv(8) == b"NBDMAGIC"
            deadline = time.monotonic() + 20
            while mountpoint is not None and not mounted(mountpoint) and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if mountpoint is not None and mounted(mountpoint):
            subprocess.run([tool("fusermount3"), "-u", str(mountpoint)], capture_output=True)
    return subprocess.CompletedProcess(proc.args, proc.returncode, first + out, err)


@pytest.mark.parametrize("command,condition", CELLS, ids=[f"{c}-{k}" for c, k in CELLS])
def test_every_command_against_every_refusal(world, command, condition):
    """One table, every command (``TABLE``) against a read-only, a full and a
    permission-denied repository, an unreadable source and an unwritable target (where the
    command has one): the documented exit code, and stderr is one line (a reading command
    that succeeds says only that it read without a lock; ``snapshots`` takes no lock and
    says nothing). ``serve`` and ``mount`` are started and stopped with Ctrl-C once ready;
    mount as nobody is refused by the system before it reaches the repository (no access to
    /dev/fuse here), which the table records as what it is: exit 5, one line."""
    args, codes = TABLE[command]
    name = f"{command}-{condition}"
    argv = [command, *args(world, condition, name if command != "mount" else f"mnt-{name}")]
    user = world.user(condition)
    if command in ("serve", "mount"):
        mountpoint = world.mine / f"mnt-{name}" if command == "mount" else None
        proc = run_until_ready(argv, user, world.top, mountpoint)
    else:
        proc = run(*argv, user=user, cwd=world.top)
    code = codes[condition]
    if code == OK:
        expect(proc, OK, note=command != "snapshots")
    else:
        expect(proc, code)
    if command == "restore" and code == OK:
        target = world.target(condition, name)
        assert target.read_bytes() == world.image.read_bytes()
        target.unlink()
