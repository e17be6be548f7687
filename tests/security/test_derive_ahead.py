"""Deriving the key ahead (kdf.py): the command line's entry point starts Argon2id for the
repository and passphrase it can read without side effects; opening then uses that result
only for exactly its inputs, and a wrong guess changes nothing but the work it cost."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from helpers import PASSPHRASE, cli_env, run_cli

from diskvault import kdf
from diskvault.errors import EXIT_PASSWORD
from diskvault.repository import Repository, storage_at
from diskvault.repository import keys
from diskvault.repository.chunking import ChunkerParams


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    Repository.init(str(path), ChunkerParams.for_average(16 << 10), passphrase=lambda: PASSPHRASE).close()
    keys._opened.clear()  # what init opened would answer before any derivation
    kdf._ahead.clear()
    yield path
    kdf._ahead.clear()


def _key_doc(repo: Path) -> dict:
    (name,) = (repo / "keys").iterdir()
    return json.loads(name.read_text())


def _unlock(repo: Path, passphrase: str) -> bytes:
    keys._opened.clear()
    config = json.loads((repo / "config.json").read_text())
    return keys.unlock(storage_at(str(repo)), passphrase, str(repo), config["id"])[0]


def test_a_derivation_started_ahead_is_the_one_unlock_uses(repo, monkeypatch):
    master = _unlock(repo, PASSPHRASE)
    assert kdf.derive_ahead(["snapshot", "-r", str(repo), "disk.img"], {"DISKVAULT_PASSWORD": f" {PASSPHRASE}\n"})
    assert len(kdf._ahead) == 1
    calls = []
    real = kdf._argon2id
    monkeypatch.setattr(kdf, "_argon2id", lambda *a: calls.append(a) or real(*a))
    assert _unlock(repo, PASSPHRASE) == master
    assert calls == [] and kdf._ahead == {}  # waited for, not derived again


@pytest.mark.parametrize("argv, env", [
    (["check", "--repo", "{repo}"], {"DISKVAULT_PASSWORD": PASSPHRASE}),
    (["check", "--repo={repo}"], {"DISKVAULT_PASSWORD": PASSPHRASE}),
    (["check", "-r{repo}"], {"DISKVAULT_PASSWORD": PASSPHRASE}),
    (["check"], {"DISKVAULT_REPO": "{repo}", "DISKVAULT_PASSWORD": PASSPHRASE}),
    (["check", "-r", "{repo}", "--password-file", "{pwfile}"], {"DISKVAULT_PASSWORD": "another"}),
    (["check", "-r", "{repo}"], {"DISKVAULT_PASSWORD_FILE": "{pwfile}", "DISKVAULT_PASSWORD": "another"}),
])
def test_the_repository_and_passphrase_are_read_as_the_command_line_reads_them(repo, tmp_path, argv, env):
    pwfile = tmp_path / "pw"
    pwfile.write_text(PASSPHRASE + "\n")
    fill = {"repo": str(repo), "pwfile": str(pwfile)}
    assert kdf.derive_ahead([a.format(**fill) for a in argv], {k: v.format(**fill) for k, v in env.items()})
    ((secret, salt, *_params),) = kdf._ahead
    assert secret == PASSPHRASE.encode() and salt == base64.b64decode(_key_doc(repo)["salt"])
    assert _unlock(repo, PASSPHRASE)


@pytest.mark.parametrize("argv, env", [
    (["check", "-r", "{repo}"], {"DISKVAULT_PASSWORD": PASSPHRASE, "DISKVAULT_PASSWORD_COMMAND": "echo x"}),
    (["check", "-r", "{repo}", "--password-command", "echo x"], {"DISKVAULT_PASSWORD": PASSPHRASE}),
    (["check", "-r", "{repo}"], {}),  # no passphrase: the command line would prompt
    (["check", "-r", "s3:http://127.0.0.1:1/bucket"], {"DISKVAULT_PASSWORD": PASSPHRASE}),
    (["check", "-r", "{repo}/missing"], {"DISKVAULT_PASSWORD": PASSPHRASE}),
    (["init", "-r"], {"DISKVAULT_PASSWORD": PASSPHRASE}),
    (["check", "-r", "{repo}", "--password-file", "{repo}/none"], {"DISKVAULT_PASSWORD": PASSPHRASE}),
])
def test_no_guess_without_a_side_effect_free_source(repo, argv, env):
    fill = {"repo": str(repo)}
    assert not kdf.derive_ahead([a.format(**fill) for a in argv], {k: v.format(**fill) for k, v in env.items()})
    assert kdf._ahead == {}


def test_no_guess_for_a_key_file_outside_the_parameter_bounds(repo):
    (name,) = (repo / "keys").iterdir()
    doc = json.loads(name.read_text())
    name.write_text(json.dumps({**doc, "memory_cost": kdf.MAX_PARAMS["memory_cost"] * 2}))
    assert not kdf.derive_ahead(["check", "-r", str(repo)], {"DISKVAULT_PASSWORD": PASSPHRASE})


def test_no_guess_for_an_unencrypted_repository(tmp_path):
    path = tmp_path / "plain"
    Repository.init(str(path), ChunkerParams.for_average(16 << 10), encryption="none").close()
    assert not kdf.derive_ahead(["check", "-r", str(path)], {"DISKVAULT_PASSWORD": PASSPHRASE})


def test_a_wrong_guess_is_not_used(repo):
    master = _unlock(repo, PASSPHRASE)
    assert kdf.derive_ahead(["check", "-r", str(repo)], {"DISKVAULT_PASSWORD": "not the passphrase"})
    assert _unlock(repo, PASSPHRASE) == master
    assert len(kdf._ahead) == 1  # the other passphrase's derivation is left unused
    with pytest.raises(Exception) as info:
        _unlock(repo, "not the passphrase")
    assert getattr(info.value, "exit_code", None) == EXIT_PASSWORD


def test_the_command_line_opens_with_the_guess_and_refuses_a_wrong_passphrase(repo, tmp_path):
    img = tmp_path / "disk.img"
    img.write_bytes(b"data" * 100_000)
    run_cli("snapshot", "-r", repo, img)
    assert run_cli("restore", "-r", repo, "latest", tmp_path / "out.img").returncode == 0
    assert (tmp_path / "out.img").read_bytes() == img.read_bytes()
    env = {**cli_env(), "DISKVAULT_PASSWORD": "wrong"}
    assert run_cli("snapshots", "-r", repo, env=env, check=False).returncode == EXIT_PASSWORD


def test_the_entry_point_derives_once_ahead_of_the_command(repo, monkeypatch, capsys):
    import threading

    from diskvault import entry

    threads = []
    real = kdf._argon2id
    monkeypatch.setattr(kdf, "_argon2id", lambda *a: threads.append(threading.current_thread().name) or real(*a))
    monkeypatch.setattr("sys.argv", ["diskvault", "snapshots", "-r", str(repo), "--json"])
    monkeypatch.setenv("DISKVAULT_PASSWORD", PASSPHRASE)
    for name in ("DISKVAULT_PASSWORD_FILE", "DISKVAULT_PASSWORD_COMMAND", "DISKVAULT_REPO"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as done:
        entry.main()
    assert done.value.code in (0, None)
    assert json.loads(capsys.readouterr().out) == []
    assert threads == ["derive-ahead"]


def test_a_password_file_that_is_a_pipe_is_left_for_the_command(repo, tmp_path):
    """``--password-file <(pass show backup)`` or /dev/stdin: a pipe can be read once, so the
    guess leaves it alone and the command reads the passphrase."""
    import os

    r, w = os.pipe()
    os.write(w, PASSPHRASE.encode() + b"\n")
    assert not kdf.derive_ahead(["check", "-r", str(repo), "--password-file", f"/dev/fd/{r}"], {})
    assert os.read(r, 100) == PASSPHRASE.encode() + b"\n"
    os.close(r), os.close(w)
    env = {k: v for k, v in cli_env().items() if k != "DISKVAULT_PASSWORD"}
    proc = run_cli("snapshots", "-r", repo, "--password-file", "/dev/stdin", "--json", env=env,
                   input=PASSPHRASE.encode() + b"\n")
    assert json.loads(proc.stdout) == []


def test_a_fifo_with_a_writer_waiting_is_never_opened(repo, tmp_path):
    """Opening a FIFO wakes a writer that waits on it and loses what it writes: the guess
    does not open it, and the passphrase is still there for the command."""
    import os
    import threading

    fifo = tmp_path / "pw.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(PASSPHRASE.encode() + b"\n"), daemon=True)
    writer.start()
    assert not kdf.derive_ahead(["snapshots", "-r", str(repo), "--password-file", str(fifo)], {})
    writer.join(0.3)
    assert writer.is_alive()  # still waiting for a reader
    assert fifo.read_bytes() == PASSPHRASE.encode() + b"\n"
    writer.join(5)


def test_a_refused_key_file_is_not_derived_and_the_next_one_is(repo):
    """The guess checks key files as opening does: one that opening refuses (damaged, for
    another repository, dear parameters with a broken nonce) is skipped, never derived."""
    (real,) = (repo / "keys").iterdir()
    doc = json.loads(real.read_text())
    bad = [{**doc, "salt": ""},
           {**doc, "repository": "another", "time_cost": kdf.MAX_PARAMS["time_cost"]},
           {**doc, "nonce": "AAAA", "memory_cost": kdf.MAX_PARAMS["memory_cost"]}]
    for i, d in enumerate(bad):
        (repo / "keys" / f"{i:016x}.json").write_text(json.dumps(d))
    assert kdf.derive_ahead(["snapshots", "-r", str(repo)], {"DISKVAULT_PASSWORD": PASSPHRASE})
    ((_secret, salt, *params),) = kdf._ahead
    assert salt == base64.b64decode(doc["salt"]) and params == [doc["time_cost"], doc["memory_cost"], doc["parallelism"]]
    assert _unlock(repo, PASSPHRASE)


def test_the_guess_reads_no_repository_file_through_a_symbolic_link(repo, tmp_path):
    config = repo / "config.json"
    outside = tmp_path / "config-elsewhere.json"
    outside.write_bytes(config.read_bytes())
    config.unlink()
    config.symlink_to(outside)
    assert not kdf.derive_ahead(["snapshots", "-r", str(repo)], {"DISKVAULT_PASSWORD": PASSPHRASE})


def test_an_interrupt_or_no_memory_while_deriving_is_not_a_wrong_passphrase(repo, monkeypatch):
    from argon2.exceptions import HashingError

    from diskvault.errors import Interrupted, RepositoryError

    def interrupted(*_a):
        raise Interrupted("interrupted")

    monkeypatch.setattr(keys, "derive", interrupted)
    with pytest.raises(Interrupted):
        _unlock(repo, PASSPHRASE)

    def no_memory(*_a):
        raise HashingError("Memory allocation error")

    monkeypatch.setattr(keys, "derive", no_memory)
    with pytest.raises(RepositoryError, match="cannot derive the key .*Memory allocation error"):
        _unlock(repo, PASSPHRASE)


def _as_nobody(fn) -> str:
    """Run ``fn`` in a forked child as user nobody; returns what it returned or raised (str)."""
    import os
    import pwd

    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run, report, exit without cleanup
        try:
            os.setgroups([])
            os.setresgid(nobody.pw_gid, nobody.pw_gid, nobody.pw_gid)
            os.setresuid(nobody.pw_uid, nobody.pw_uid, nobody.pw_uid)
            out = f"ok {fn()}"
        except BaseException as exc:  # noqa: BLE001
            out = f"{type(exc).__name__} exit {getattr(exc, 'exit_code', None)}: {exc}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read().decode()
    os.waitpid(pid, 0)
    return got


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="drops from root to nobody")
def test_keys_another_user_may_not_read_are_reported_as_permission_denied():
    """A user who may read the repository but not its keys/ folder, or not its key files
    (0600, as init makes them), is told so, not that the repository has no key file."""
    import os
    import shutil
    import tempfile

    root = tempfile.mkdtemp(dir="/var/tmp")
    try:
        path = os.path.join(root, "repo")
        Repository.init(path, ChunkerParams.for_average(16 << 10), passphrase=lambda: PASSPHRASE).close()
        for d, _dirs, files in os.walk(root):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        keys_dir = os.path.join(path, "keys")

        def open_repo():
            keys._opened.clear()
            Repository.open(path, write=False, passphrase=lambda: PASSPHRASE).close()

        os.chmod(keys_dir, 0o700)
        got = _as_nobody(open_repo)
        assert got.startswith("RepositoryError exit 3: permission denied reading") and keys_dir in got, got
        os.chmod(keys_dir, 0o755)
        for name in os.listdir(keys_dir):
            os.chmod(os.path.join(keys_dir, name), 0o600)
        got = _as_nobody(open_repo)
        assert got.startswith("RepositoryError exit 3: permission denied reading") and "restore" not in got, got
    finally:
        shutil.rmtree(root)


def test_an_interrupt_while_starting_exits_130_with_one_line(repo):
    """SIGINT or SIGTERM before the command line has loaded (its handlers not yet set)."""
    import signal
    import subprocess
    import sys
    import time

    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "diskvault", "snapshots", "-r", str(repo)],
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=cli_env())
        while b"diskvault.kdf" not in proc.stderr.readline():  # the entry point is running
            pass
        time.sleep(0.01)
        proc.send_signal(sig)
        err = proc.stderr.read().decode()
        assert proc.wait() == 130, err
        lines = [line for line in err.splitlines() if not line.startswith("import time:")]
        assert len(lines) == 1 and "interrupted" in lines[0], err
