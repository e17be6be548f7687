"""Encryption (docs/security.md): passphrases and key files, authentication of every stored
byte, no plaintext on disk, keyed ids and seeded chunk boundaries."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import blake3
import pytest

from helpers import PASSPHRASE, cli_env, one_line_error, random_bytes, run_cli

from diskvault.errors import EXIT_DAMAGED, EXIT_PASSWORD, EXIT_REPOSITORY, EXIT_USAGE
from diskvault.repository.chunking import Chunker, ChunkerParams
from diskvault.repository.crypto import Crypto
from diskvault.repository.pack import ENTRY, FOOTER, HEADER


def run(*args, env=None, input=None):
    return run_cli(*args, check=False, env=env, input=input)


def tree_state(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative name -> blake3 of its bytes): what a command wrote."""
    return {str(p.relative_to(root)): blake3.blake3(p.read_bytes()).digest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, Path]:
    """An encrypted repository holding one snapshot of a small image (random and text data)."""
    img = tmp_path / "disk.img"
    img.write_bytes(random_bytes(600_000, 1) + b"log line: all is well\n" * 20_000 + random_bytes(300_000, 2))
    path = tmp_path / "repo"
    run_cli("init", "-r", path)
    run_cli("snapshot", "-r", path, img)
    return path, img


def packs(repo: Path) -> list[Path]:
    return sorted((repo / "packs").rglob("*.pack"))


# --- passphrases -------------------------------------------------------------------------

def test_wrong_or_missing_passphrase_exits_10_and_writes_nothing(repo, tmp_path):
    path, img = repo
    before = tree_state(path)
    for command in (["snapshot", "-r", path, img], ["snapshots", "-r", path], ["check", "-r", path, "--read-data"],
                    ["restore", "-r", path, "latest", tmp_path / "out.img"], ["prune", "-r", path],
                    ["forget", "-r", path, "--keep-last", "1"], ["repair", "-r", path], ["key", "add", "-r", path],
                    ["unlock", "-r", path]):
        wrong = run(*command, env=cli_env(DISKVAULT_PASSWORD="not the passphrase"))
        one_line_error(wrong, EXIT_PASSWORD, "wrong passphrase")
        env = cli_env()
        del env["DISKVAULT_PASSWORD"]
        missing = run(*command, env=env, input=b"")  # stdin is no terminal: never a prompt
        one_line_error(missing, EXIT_PASSWORD, "no passphrase was given", "DISKVAULT_PASSWORD_FILE")
    assert tree_state(path) == before  # not even a lock file
    assert not (tmp_path / "out.img").exists()


def test_passphrase_sources_follow_restics_precedence(repo, tmp_path):
    path, _ = repo
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(PASSPHRASE + "\n")  # surrounding white space is dropped
    bad.write_text("wrong\n")
    env = cli_env(DISKVAULT_PASSWORD="wrong")
    assert run("snapshots", "-r", path, "--password-file", good, env=env).returncode == 0  # file before env
    env = cli_env(DISKVAULT_PASSWORD="wrong", DISKVAULT_PASSWORD_FILE=str(good))
    assert run("snapshots", "-r", path, env=env).returncode == 0
    env = cli_env(DISKVAULT_PASSWORD_COMMAND=f"cat {good}")
    assert run("snapshots", "-r", path, env=env).returncode == 0
    one_line_error(run("snapshots", "-r", path, "--password-file", bad, "--password-command", f"cat {good}"),
                   EXIT_USAGE, "both given")
    one_line_error(run("snapshots", "-r", path, "--password-command", "false"), EXIT_PASSWORD, "exited 1")
    one_line_error(run("snapshots", "-r", path, "--password-command", "/no/such/tool"), EXIT_PASSWORD, "cannot run")
    one_line_error(run("snapshots", "-r", path, "--password-file", tmp_path / "nope"), EXIT_PASSWORD,
                   "cannot read the password file", "no such file")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    one_line_error(run("snapshots", "-r", path, "--password-file", empty), EXIT_PASSWORD, "empty")


def test_unencrypted_repository_never_asks(tmp_path):
    env = cli_env()
    del env["DISKVAULT_PASSWORD"]
    run_cli("init", "-r", tmp_path / "plain", "--encryption", "none", env=env)
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["encryption"] == "none"
    assert not (tmp_path / "plain" / "keys").exists()
    (tmp_path / "img").write_bytes(random_bytes(100_000, 3))
    run_cli("snapshot", "-r", tmp_path / "plain", tmp_path / "img", env=env)
    info = json.loads(run_cli("info", "-r", tmp_path / "plain", "--json", env=env).stdout)
    assert (info["encryption"], info["keys"]) == ("none", 0)
    one_line_error(run("key", "list", "-r", tmp_path / "plain", env=env), EXIT_USAGE, "not encrypted")
    one_line_error(run("init", "-r", tmp_path / "x", "--encryption", "rot13"), EXIT_USAGE, "--encryption")
    one_line_error(run("init", "-r", tmp_path / "y", env=env, input=b""), EXIT_PASSWORD, "no new repository passphrase")
    assert not (tmp_path / "y").exists()


def test_keys_add_remove_passwd(repo, tmp_path):
    path, _ = repo
    second = tmp_path / "second"
    second.write_text("a second passphrase")
    added = json.loads(run_cli("key", "add", "-r", path, "--new-password-file", second, "--json").stdout)["added"]
    listed = json.loads(run_cli("key", "list", "-r", path, "--json").stdout)
    assert len(listed) == 2 and [k["id"] for k in listed if not k["current"]] == [added]
    assert json.loads(run_cli("info", "-r", path, "--json").stdout)["keys"] == 2
    first = next(k["id"] for k in listed if k["current"])
    one_line_error(run("key", "remove", "-r", path, first), EXIT_REPOSITORY, "opened with")
    run_cli("key", "remove", "-r", path, first[:6], "--password-file", second)  # a prefix; opened by the other key
    one_line_error(run("snapshots", "-r", path), EXIT_PASSWORD, "wrong passphrase")
    third = tmp_path / "third"
    third.write_text("the third")
    out = json.loads(run_cli("key", "passwd", "-r", path, "--password-file", second, "--new-password-file", third,
                             "--json").stdout)
    assert out["removed"] == added
    one_line_error(run("snapshots", "-r", path, "--password-file", second), EXIT_PASSWORD, "wrong passphrase")
    run_cli("restore", "-r", path, "latest", tmp_path / "out.img", "--password-file", third)
    one_line_error(run("key", "add", "-r", path, "--password-file", third, input=b""), EXIT_PASSWORD,
                   "no new passphrase", "--new-password-file")


@pytest.mark.parametrize("field,value", [("memory_cost", 1024), ("time_cost", 1), ("memory_cost", 65535)])
def test_key_file_with_weakened_argon2_parameters_is_refused(repo, field, value):
    path, _ = repo
    (key,) = (path / "keys").iterdir()
    doc = json.loads(key.read_text())
    doc[field] = value
    key.write_text(json.dumps(doc))
    err = one_line_error(run("snapshots", "-r", path), EXIT_REPOSITORY, "below the minimum", field)
    assert "no usable key file" in err


def test_config_edited_to_unencrypted_is_refused(repo):
    path, img = repo
    config = json.loads((path / "config.json").read_text())
    config["encryption"] = "none"
    (path / "config.json").write_text(json.dumps(config))
    one_line_error(run("snapshot", "-r", path, img), EXIT_REPOSITORY, "key files", "config.json was changed")


def test_old_unencrypted_repository_still_reads(tmp_path):
    """A format 1 repository (before encryption: no `encryption` in config.json) opens."""
    (tmp_path / "img").write_bytes(random_bytes(200_000, 4))
    run_cli("init", "-r", tmp_path / "old", "--encryption", "none")
    run_cli("snapshot", "-r", tmp_path / "old", tmp_path / "img")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["encryption"]
    config["version"] = 1
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    run_cli("restore", "-r", tmp_path / "old", "latest", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == (tmp_path / "img").read_bytes()
    run_cli("check", "-r", tmp_path / "old", "--read-data")


# --- authentication of every stored byte ------------------------------------------------

def table_offset(pack: Path) -> int:
    """Where a pack's (sealed) table starts, from its footer's entry count."""
    data = pack.read_bytes()
    count = FOOTER.unpack(data[-FOOTER.size:])[0]
    return len(data) - FOOTER.size - (count * ENTRY.size + 16)


def test_a_flipped_byte_anywhere_in_a_pack_is_found_and_attributed(repo, tmp_path):
    path, img = repo
    pack = packs(path)[0]
    data = bytearray(pack.read_bytes())
    table = table_offset(pack)
    for at, what in ((HEADER.size + 100, "chunk"), (table + 5, "trailer"), (len(data) - 10, "trailer")):
        changed = bytearray(data)
        changed[at] ^= 0x01
        pack.write_bytes(bytes(changed))
        checked = run("check", "-r", path, "--read-data", "--json")
        assert checked.returncode == EXIT_DAMAGED, checked.stderr
        report = json.dumps(json.loads(checked.stdout))
        assert pack.stem[:12] in report, report  # attributed to its pack
        if what == "chunk":
            assert "authentication failed" in report and "snapshot" in report
            restored = run("restore", "-r", path, "latest", tmp_path / f"out{at}")
            one_line_error(restored, EXIT_DAMAGED, "authentication failed", pack.stem[:12])
            assert not (tmp_path / f"out{at}").exists()
        pack.write_bytes(bytes(data))
    run_cli("check", "-r", path, "--read-data")


def test_two_swapped_blobs_of_a_pack_are_found(tmp_path):
    """Constant runs cut at the maximum chunk size compress to payloads of equal length:
    swapping two of them in place keeps every size, and is still found."""
    img = tmp_path / "runs.img"
    img.write_bytes(b"".join(bytes([b]) * (256 << 10) for b in (1, 2, 3, 4)))
    run_cli("init", "-r", tmp_path / "repo")
    run_cli("snapshot", "-r", tmp_path / "repo", img, "--compression", "lz4")
    (pack,) = packs(tmp_path / "repo")
    data = bytearray(pack.read_bytes())
    con = sqlite3.connect(tmp_path / "repo" / "catalog.sqlite")
    rows = con.execute("SELECT offset, stored_len FROM blobs WHERE type=1 ORDER BY offset").fetchall()
    con.close()
    (a, n), (b, m) = rows[0], rows[1]
    assert n == m and a + n == b
    data[a:a + n], data[b:b + n] = data[b:b + n], data[a:a + n]
    pack.write_bytes(bytes(data))
    checked = run("check", "-r", tmp_path / "repo", "--read-data", "--json")
    assert checked.returncode == EXIT_DAMAGED
    assert json.dumps(json.loads(checked.stdout)).count("authentication failed") >= 2


def test_a_changed_snapshot_record_or_catalog_row_is_found(repo, tmp_path):
    path, _ = repo
    (record,) = (path / "snapshots").iterdir()
    original = record.read_bytes()
    assert b'"tree"' not in original  # sealed
    data = bytearray(original)
    data[len(data) // 2] ^= 0x40
    record.write_bytes(bytes(data))
    checked = run("check", "-r", path, "--json")
    assert checked.returncode == EXIT_DAMAGED
    assert record.name in checked.stdout.decode() and "authentication" in checked.stdout.decode()
    one_line_error(run("prune", "-r", path), EXIT_DAMAGED, record.name)
    repaired = json.loads(run_cli("repair", "-r", path, "--json").stdout)  # rewritten from the catalog row
    assert [r["from"] for r in repaired["recovered_records"]] == ["catalog"]
    assert record.read_bytes() != original  # sealed anew (a new random nonce)
    run_cli("check", "-r", path)
    con = sqlite3.connect(path / "catalog.sqlite")
    sealed = bytearray(con.execute("SELECT sealed FROM snapshots").fetchone()[0])
    sealed[-1] ^= 1
    con.execute("UPDATE snapshots SET sealed=?", (bytes(sealed),))
    con.commit()
    con.close()
    one_line_error(run("snapshots", "-r", path), EXIT_DAMAGED, "fails authentication", "diskvault repair")
    run_cli("repair", "-r", path, "--rebuild-catalog")  # rebuilt from the (authentic) record
    run_cli("restore", "-r", path, "latest", tmp_path / "out.img")


def test_repair_rebuilds_an_encrypted_catalog_from_packs_and_records(repo, tmp_path):
    path, img = repo
    (path / "catalog.sqlite").unlink()
    one_line_error(run("repair", "-r", path, env=cli_env(DISKVAULT_PASSWORD="wrong")), EXIT_PASSWORD, "wrong")
    run_cli("repair", "-r", path)
    run_cli("restore", "-r", path, "latest", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img.read_bytes()


# --- what the repository shows without the key -------------------------------------------

def contains_any_window(data: bytes, marker: bytes, window: int = 64) -> bool:
    """Whether ``data`` holds ``window`` consecutive bytes of ``marker`` (random bytes): any such
    run covers one of the marker's 32-byte pieces at a multiple of 32, so each offset of
    ``data`` is looked up once in the set of those pieces."""
    assert window >= 64
    pieces = {marker[i:i + 32] for i in range(0, len(marker) - 31, 32)}
    view = memoryview(data)
    return any(view[i:i + 32] in pieces for i in range(len(data) - 31))


@pytest.mark.parametrize("encryption", ["aes-256-gcm", "none"])
def test_no_plaintext_on_disk(tmp_path, encryption):
    """A 1 MiB marker at several offsets: with encryption no file of the repository holds 64
    consecutive bytes of it; without, the same check finds it (the check can fail)."""
    marker = random_bytes(1 << 20, 77)
    image = bytearray(random_bytes(6 << 20, 78))
    for at in (0, (1 << 20) + 12345, 3 << 20, (5 << 20) - 7):
        image[at:at + len(marker)] = marker
    (tmp_path / "img").write_bytes(bytes(image))
    repo = tmp_path / "repo"
    run_cli("init", "-r", repo, "--encryption", encryption)
    run_cli("snapshot", "-r", repo, tmp_path / "img", "--tag", "marker-test")
    found = [str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and contains_any_window(p.read_bytes(), marker)]
    if encryption == "none":
        assert found
        return
    assert found == []
    leaked = [p for p in repo.rglob("*") if p.is_file() and (b"marker-test" in p.read_bytes() or str(tmp_path).encode() in p.read_bytes())]
    assert leaked == []  # tags and source paths are sealed too (records, catalog rows)


def test_same_data_has_other_ids_and_boundaries_in_another_repository(tmp_path):
    (tmp_path / "img").write_bytes(random_bytes(3 << 20, 5))
    ids = []
    for name in ("a", "b"):
        run_cli("init", "-r", tmp_path / name)
        run_cli("snapshot", "-r", tmp_path / name, tmp_path / "img")
        con = sqlite3.connect(tmp_path / name / "catalog.sqlite")
        ids.append({(i, n) for i, n in con.execute("SELECT id, raw_len FROM blobs WHERE type=1")})
        con.close()
    assert not {i for i, _ in ids[0]} & {i for i, _ in ids[1]}
    assert sorted(n for _, n in ids[0]) != sorted(n for _, n in ids[1])  # cut elsewhere


def test_chunk_boundaries_of_1_gib_under_two_keys_share_under_5_percent():
    """The issue's bound, on 1 GiB (1 MiB random blocks) streamed through each repository's
    seeded chunker."""
    params = ChunkerParams.for_average(64 << 10)
    block, total = 1 << 20, 1 << 30
    cuts = []
    for master in (random_bytes(32, 1), random_bytes(32, 2)):
        chunker = Chunker(params, Crypto(master).chunker_seed)
        done = [0]

        def fill(view: memoryview) -> int:
            n = min(len(view), total - done[0])
            at = 0
            while at < n:
                k, skip = divmod(done[0] + at, block)
                piece = random_bytes(block, 1000 + k)[skip : skip + n - at]
                view[at : at + len(piece)] = piece
                at += len(piece)
            done[0] += n
            return n

        ends, pos = set(), 0
        for buf, found in chunker.stream(fill, 32 << 20):
            ends.update(pos + off + length for off, length in found)
            pos += len(buf)
        assert pos == total
        cuts.append(ends)
    shared = len(cuts[0] & cuts[1]) / len(cuts[0])
    assert shared < 0.05, shared


def on_a_terminal(argv: list, answers: list[bytes], env: dict) -> tuple[int, bytes]:
    """Run ``diskvault ARGV`` with a pseudo-terminal as its controlling terminal (pty.fork),
    typing each of ``answers`` after the prompt that asks for it; returns (exit code, what
    the terminal showed)."""
    import pty
    import select
    import sys

    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout, stderr and /dev/tty are the terminal
        os.execve(sys.executable, [sys.executable, "-m", "diskvault", *map(str, argv)], env)
    shown = b""
    pending = list(answers)
    asked = 0  # where the output since the last answer starts
    while True:
        ready, _, _ = select.select([fd], [], [], 60)
        if not ready:
            os.kill(pid, 9)
            raise AssertionError(f"no answer from the terminal: {shown!r}")
        try:
            got = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not got:
            break
        shown += got
        if pending and shown[asked:].rstrip().endswith(b":"):  # a new prompt
            os.write(fd, pending.pop(0) + b"\n")
            asked = len(shown)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown


def test_a_terminal_is_asked_twice_at_init_and_once_after(tmp_path):
    env = cli_env()
    del env["DISKVAULT_PASSWORD"]
    repo = tmp_path / "repo"
    code, shown = on_a_terminal(["init", "-r", repo], [b"typed secret", b"typed secrte"], env)
    assert code == EXIT_PASSWORD and b"differ" in shown and not repo.exists()
    code, shown = on_a_terminal(["init", "-r", repo], [b"typed secret", b"typed secret"], env)
    assert code == 0 and shown.count(b"passphrase") >= 2 and b"typed secret" not in shown  # not echoed
    code, shown = on_a_terminal(["snapshots", "-r", repo, "--json"], [b"typed secret"], env)
    assert code == 0 and shown.count(b"enter repository passphrase") == 1
    code, shown = on_a_terminal(["snapshots", "-r", repo], [b"wrong"], env)
    assert code == EXIT_PASSWORD and b"wrong passphrase" in shown


def test_an_unencrypted_repository_ignores_passphrase_sources_it_never_needs(tmp_path):
    """Both a file and a command set (a usage error where a passphrase is needed) do not stop
    a command on an unencrypted repository, which never asks."""
    run_cli("init", "-r", tmp_path / "plain", "--encryption", "none")
    env = cli_env(DISKVAULT_PASSWORD_FILE=str(tmp_path / "nope"), DISKVAULT_PASSWORD_COMMAND="false")
    assert run("snapshots", "-r", tmp_path / "plain", env=env).returncode == 0
    run_cli("init", "-r", tmp_path / "enc")
    one_line_error(run("snapshots", "-r", tmp_path / "enc", env=env), EXIT_USAGE, "both given")
