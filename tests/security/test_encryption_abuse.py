"""Encryption used the wrong way (docs/security.md, docs/cli.md "key"): races between key
changes, edited catalog rows, passphrases given with white space or from endless files.
Each test here failed on the first cut of encryption."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from helpers import PASSPHRASE, cli_env, one_line_error, random_bytes, run_cli

from diskvault.errors import EXIT_DAMAGED, EXIT_PASSWORD, EXIT_REPOSITORY


def run(*args, env=None, input=None, timeout=600):
    return run_cli(*args, check=False, env=env, input=input, timeout=timeout)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, Path]:
    img = tmp_path / "disk.img"
    img.write_bytes(random_bytes(400_000, 7))
    path = tmp_path / "repo"
    run_cli("init", "-r", path)
    run_cli("snapshot", "-r", path, img)
    return path, img


def current_key(path: Path, env: dict | None = None) -> str:
    listed = json.loads(run_cli("key", "list", "-r", path, "--json", env=env).stdout)
    return next(k["id"] for k in listed if k["current"])


def test_two_key_removals_that_cross_never_remove_every_key(repo, tmp_path):
    """A opened with passphrase 1 removes key 2 while B, opened with passphrase 2 before
    that, removes key 1: B must find its own key gone and refuse, not leave no key at all."""
    from diskvault.ops.key import change_passphrase, remove_key
    from diskvault.repository import Repository

    path, img = repo
    second = tmp_path / "second"
    second.write_text("the second passphrase\n")
    run_cli("key", "add", "-r", path, "--new-password-file", second)
    first_id = current_key(path)
    with Repository.open(str(path), passphrase=lambda: "the second passphrase") as b:  # B has opened
        run_cli("key", "remove", "-r", path, b.key_id)  # A removes B's key
        with pytest.raises(Exception) as refused:
            remove_key(b, first_id)
        assert refused.value.exit_code == EXIT_PASSWORD and "was removed" in str(refused.value)
        with pytest.raises(Exception) as refused:
            change_passphrase(b, lambda: "a third")
        assert refused.value.exit_code == EXIT_PASSWORD
    assert [p.name for p in (path / "keys").iterdir()] == [f"{first_id}.json"]
    run_cli("restore", "-r", path, "latest", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img.read_bytes()


def test_key_remove_and_passwd_take_the_exclusive_lock(repo, tmp_path):
    """A key change waits for nothing and races nothing: remove and passwd refuse while
    another command holds the repository (exit 7), like prune."""
    from diskvault.repository import Repository

    path, _ = repo
    second = tmp_path / "second"
    second.write_text("the second passphrase")
    added = json.loads(run_cli("key", "add", "-r", path, "--new-password-file", second, "--json").stdout)["added"]
    with Repository.open(str(path), passphrase=lambda: PASSPHRASE) as r, r.lock("shared", "snapshot"):
        env = cli_env(DISKVAULT_LOCK_WAIT="0")
        assert run("key", "remove", "-r", path, added, env=env).returncode == 7
        assert run("key", "passwd", "-r", path, "--new-password-file", second, env=env).returncode == 7
    assert len(list((path / "keys").iterdir())) == 2


def test_a_catalog_row_failing_authentication_is_repaired_by_plain_repair(repo, tmp_path):
    """The error says "rebuild the catalog with diskvault repair": plain repair must do it
    (the record file is authentic), not fail with the same error."""
    path, img = repo
    con = sqlite3.connect(path / "catalog.sqlite")
    sealed = bytearray(con.execute("SELECT sealed FROM snapshots").fetchone()[0])
    sealed[20] ^= 1
    con.execute("UPDATE snapshots SET sealed=?", (bytes(sealed),))
    con.commit()
    con.close()
    one_line_error(run("snapshots", "-r", path), EXIT_DAMAGED, "fails authentication", "diskvault repair")
    run_cli("repair", "-r", path)
    run_cli("check", "-r", path, "--read-data")
    run_cli("restore", "-r", path, "latest", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img.read_bytes()


def test_a_catalog_row_edited_into_text_is_damage_not_an_internal_error(repo, tmp_path):
    """sqlite3's shell turns an edited blob into TEXT (``||``): reading it is exit 8, never 1."""
    path, img = repo
    con = sqlite3.connect(path / "catalog.sqlite")
    con.execute("UPDATE snapshots SET sealed = CAST(substr(sealed, 1, 20) || x'ff' || substr(sealed, 22) AS TEXT)")
    con.commit()
    con.close()
    for command in (["snapshots"], ["check"], ["restore", "latest", tmp_path / "out.img"]):
        one_line_error(run(command[0], "-r", path, *command[1:]), EXIT_DAMAGED, "fails authentication")
    run_cli("repair", "-r", path)
    run_cli("restore", "-r", path, "latest", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img.read_bytes()


@pytest.mark.parametrize("how", ["DISKVAULT_PASSWORD", "--password-command"])
def test_surrounding_white_space_is_dropped_from_every_source(tmp_path, how):
    """docs/cli.md: surrounding white space is dropped, so the passphrase given at init in a
    file opens the repository from the variable and a command too, spaces or not."""
    path = tmp_path / "repo"
    pw = tmp_path / "pw"
    pw.write_text("  spaced passphrase \n")
    env = cli_env()
    del env["DISKVAULT_PASSWORD"]
    run_cli("init", "-r", path, "--password-file", pw, env=env)
    if how == "DISKVAULT_PASSWORD":
        got = run("snapshots", "-r", path, env=cli_env(DISKVAULT_PASSWORD=" spaced passphrase  "))
    else:
        got = run("snapshots", "-r", path, "--password-command", "printf ' spaced passphrase\\t'", env=env)
    assert got.returncode == 0, got.stderr.decode()


def test_an_endless_password_file_is_refused_not_read_forever(repo):
    path, _ = repo
    one_line_error(run("snapshots", "-r", path, "--password-file", "/dev/zero"), EXIT_PASSWORD,
                   "/dev/zero", "too long")


def test_key_files_that_cannot_open_are_listed_with_why_and_can_be_removed(repo, tmp_path):
    """A damaged key file (not JSON), a weakened one and another repository's are listed
    with their problem (hiding them would leave the user no way to find them), and key
    remove deletes them."""
    path, _ = repo
    (path / "keys" / "0123456789abcdef.json").write_text("garbage")
    (own,) = [f for f in (path / "keys").iterdir() if f.name != "0123456789abcdef.json"]
    weak = json.loads(own.read_text())
    weak["memory_cost"] = 1024
    (path / "keys" / "1111111111111111.json").write_text(json.dumps(weak))
    other = tmp_path / "other"
    run_cli("init", "-r", other)
    (foreign,) = (other / "keys").iterdir()
    (path / "keys" / "2222222222222222.json").write_bytes(foreign.read_bytes())
    listed = {k["id"]: k for k in json.loads(run_cli("key", "list", "-r", path, "--json").stdout)}
    assert listed[own.stem]["current"] and listed[own.stem]["problem"] is None
    assert listed["0123456789abcdef"]["problem"] == "damaged: it is not JSON"
    assert "below the minimum" in listed["1111111111111111"]["problem"]
    assert "belongs to repository" in listed["2222222222222222"]["problem"]
    text = run_cli("key", "list", "-r", path).stdout.decode()
    assert "diskvault key remove 1111111111111111" in text and f"key remove {own.stem}" not in text
    run_cli("key", "remove", "-r", path, "0123456789abcdef")
    assert not (path / "keys" / "0123456789abcdef.json").exists()
    one_line_error(run("key", "remove", "-r", path, "ffff"), EXIT_REPOSITORY, "no key")


def test_an_endless_password_command_is_refused(repo):
    path, _ = repo
    one_line_error(run("snapshots", "-r", path, "--password-command", "cat /dev/zero"), EXIT_PASSWORD,
                   "over 65536 bytes")


def test_a_key_file_from_another_repository_is_refused(repo, tmp_path):
    """Same passphrase, two repositories: the other's key file copied into keys/ (beside the
    own one, or instead of it) must never open this one with the wrong key (every row would
    then "fail authentication" and repair would advise rebuilding from nothing)."""
    path, img = repo
    other = tmp_path / "other"
    run_cli("init", "-r", other)
    (foreign,) = (other / "keys").iterdir()
    own = sorted((path / "keys").iterdir())
    (path / "keys" / foreign.name).write_bytes(foreign.read_bytes())  # its id is in its AD: same name
    run_cli("restore", "-r", path, "latest", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img.read_bytes()
    for f in own:
        f.unlink()
    one_line_error(run("snapshots", "-r", path), EXIT_REPOSITORY, "no usable key file", "belongs to repository")
    doc = json.loads(foreign.read_text())
    doc["repository"] = json.loads((path / "config.json").read_text())["id"]  # edited to claim this one
    (path / "keys" / foreign.name).write_text(json.dumps(doc))
    one_line_error(run("snapshots", "-r", path), EXIT_PASSWORD, "wrong passphrase")


def test_config_edited_to_unencrypted_with_keys_moved_away_changes_nothing(repo, tmp_path):
    """config.json says "none" and keys/ is gone (moved away, or lost): every command, repair
    included, refuses with exit 3 and writes nothing, so putting both back restores all."""
    path, img = repo
    config = path / "config.json"
    original = config.read_text()
    config.write_text(original.replace('"aes-256-gcm"', '"none"'))
    (path / "keys").rename(tmp_path / "keys.away")
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file() and p.parent.name != "locks"}
    for command in (["repair"], ["snapshots"], ["prune"], ["check"]):
        got = run(command[0], "-r", path, *command[1:])
        assert got.returncode == EXIT_REPOSITORY, (command, got.returncode, got.stderr.decode())
        assert "config.json" in got.stderr.decode()
    after = {p: p.read_bytes() for p in path.rglob("*") if p.is_file() and p.parent.name != "locks"}
    assert after == before
    # --rebuild-catalog ignores the catalog: it finds only packs and records it cannot read,
    # reports them, deletes nothing, and prune then refuses to run
    assert run("repair", "-r", path, "--rebuild-catalog").returncode == EXIT_DAMAGED
    assert run("prune", "-r", path).returncode == EXIT_DAMAGED
    data = [p for p in before if p.suffix == ".pack" or p.parent.name == "snapshots"]
    assert data and all(p.read_bytes() == before[p] for p in data)
    (tmp_path / "keys.away").rename(path / "keys")
    config.write_text(original)
    run_cli("repair", "-r", path)
    run_cli("restore", "-r", path, "latest", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img.read_bytes()


def test_a_key_file_edited_to_absurd_costs_is_refused_before_any_work(repo):
    """64 passes over 4 GiB would make every command run for minutes before failing."""
    path, _ = repo
    (key,) = (path / "keys").iterdir()
    doc = json.loads(key.read_text())
    doc.update(time_cost=64, memory_cost=4 * 1024 * 1024)
    key.write_text(json.dumps(doc))
    one_line_error(run("snapshots", "-r", path, timeout=120), EXIT_REPOSITORY, "above the maximum")


def test_an_unreadable_lock_file_never_blocks_and_unlock_says_why_it_goes(repo):
    path, img = repo
    (path / "locks" / "0123456789abcdef.json").write_bytes(b"garbage, or a lock sealed elsewhere")
    run_cli("snapshot", "-r", path, img)
    out = run_cli("unlock", "-r", path).stderr.decode()
    assert "cannot be read" in out and "not refreshed" not in out, out
    assert not (path / "locks" / "0123456789abcdef.json").exists()


@pytest.mark.parametrize("command", ["passwd", "add", "remove"])
def test_sigkill_at_every_step_of_a_key_change_leaves_a_passphrase_that_opens(repo, tmp_path, command):
    """Killed at each write, flush, commit or deletion of ``key passwd|add|remove``: the old
    passphrase or the new one still opens the repository, and the snapshot restores as it was."""
    import shutil
    import signal
    import subprocess
    import sys

    hook = Path(__file__).resolve().parents[1] / "kill_at_step.py"
    path, img = repo
    new = tmp_path / "new"
    new.write_text("the new passphrase")
    if command == "remove":
        run_cli("key", "add", "-r", path, "--new-password-file", new)
        listed = json.loads(run_cli("key", "list", "-r", path, "--json").stdout)
        args = ["key", "remove", next(k["id"] for k in listed if not k["current"])]
    else:
        args = ["key", command, "--new-password-file", str(new)]
    env = cli_env()

    def killed(target: Path, k: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(hook), *args, "-r", str(target)],
                              env=dict(env, KILL_AT_STEP=str(k)), capture_output=True, stdin=subprocess.DEVNULL)

    probe = tmp_path / "probe"
    shutil.copytree(path, probe)
    total = int(killed(probe, -1).stderr.decode().rsplit("STEPS ", 1)[1])
    assert total >= 2
    for k in range(total):
        target = tmp_path / f"k{k}"
        shutil.copytree(path, target)
        assert killed(target, k).returncode == -signal.SIGKILL
        opened = [pw for pw in (PASSPHRASE, "the new passphrase")
                  if run("snapshots", "-r", target, env=cli_env(DISKVAULT_PASSWORD=pw)).returncode == 0]
        assert opened, f"killed at step {k} of {total}: no passphrase opens the repository"
        out = tmp_path / f"k{k}.img"
        run_cli("restore", "-r", target, "latest", out, env=cli_env(DISKVAULT_PASSWORD=opened[0]))
        assert out.read_bytes() == img.read_bytes()
        run_cli("check", "-r", target, env=cli_env(DISKVAULT_PASSWORD=opened[0]))
        out.unlink()
        shutil.rmtree(target)
