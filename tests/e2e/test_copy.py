"""diskvault copy (docs/cli.md "copy"): snapshots into another repository, only the chunks it
lacks, idempotent, filtered like forget; killed at random points it leaves the destination
consistent and the next run finishes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consistency import assert_consistent
from helpers import cli_env, one_line_error, random_bytes, run_cli, secret

from diskvault.errors import EXIT_DAMAGED, EXIT_PASSWORD, EXIT_USAGE


def snapshots(repo: Path) -> list[dict]:
    return json.loads(run_cli("snapshots", "-r", repo, "--json").stdout)


def copy(*args, check=True, env=None) -> dict:
    proc = run_cli("copy", *args, "--json", check=check, env=env)
    return json.loads(proc.stdout) if proc.returncode == 0 else proc


@pytest.fixture
def series(tmp_path: Path, repo_path: Path) -> list[tuple[str, bytes]]:
    """Three snapshots of one image, each changing 64 KiB of it; (id, bytes) oldest first."""
    img = tmp_path / "disk.img"
    data = bytearray(random_bytes(3 << 20, 1) + bytes(1 << 20))
    out = []
    for i in range(3):
        if i:
            data[i << 20 : (i << 20) + (64 << 10)] = random_bytes(64 << 10, 10 + i)
        img.write_bytes(data)
        tags = ["first"] if i == 0 else []
        run_cli("snapshot", "-r", repo_path, img, *[a for t in tags for a in ("--tag", t)])
        out.append((snapshots(repo_path)[-1]["id"], bytes(data)))
    img.unlink()
    return out


def test_copy_stores_only_what_the_destination_lacks_and_restores_identically(tmp_path, repo_path, series):
    dst = tmp_path / "offsite"
    run_cli("init", "-r", dst)
    res = copy("-r", repo_path, "--to", dst, series[0][0])
    (first,) = res["copied"]
    assert first["new_bytes"] >= 3 << 20 and res["bytes_read"] >= 3 << 20  # every data chunk
    res = copy("-r", repo_path, "--to", dst)
    assert [c["source_id"] for c in res["copied"]] == [sid for sid, _ in series[1:]]
    assert [c["source_id"] for c in res["skipped"]] == [series[0][0]]
    for c in res["copied"]:  # an incremental copy sends only the changed region's chunks (16 KiB average)
        assert 0 < c["new_bytes"] <= 3 * (64 << 10), c
    assert res["bytes_read"] <= 2 * 3 * (64 << 10)  # and reads only those: the rest maps through the earlier copy
    copies = {c["source_id"]: c["id"] for c in res["copied"]}
    copies[series[0][0]] = first["id"]
    for sid, want in series:
        out = tmp_path / f"{sid}.img"
        run_cli("restore", "-r", dst, copies[sid], out)
        assert out.read_bytes() == want
        out.unlink()
    src_meta = {s["id"]: s for s in snapshots(repo_path)}
    for s in snapshots(dst):  # the record keeps time, host, source, tags and size
        orig = next(o for o in src_meta.values() if o["time"] == s["time"])
        assert (s["host"], s["source"], s["tags"], s["size"]) == (orig["host"], orig["source"], orig["tags"], orig["size"])
    check = json.loads(run_cli("check", "-r", dst, "--read-data", "--json").stdout)
    assert check["status"] == "sound"

    again = copy("-r", repo_path, "--to", dst)  # idempotent
    assert not again["copied"] and {s["source_id"] for s in again["skipped"]} == set(copies)
    assert len(snapshots(dst)) == 3


def test_copy_filters_names_and_dry_run(tmp_path, repo_path, series):
    dst = tmp_path / "plain"
    run_cli("init", "-r", dst, "--encryption", "none")
    dry = copy("-r", repo_path, "--to", dst, "--dry-run")
    assert dry["dry_run"] and len(dry["copied"]) == 3 and snapshots(dst) == []
    assert "not encrypted" in dry["warnings"][0]
    res = copy("-r", repo_path, "--to", dst, "--tag", "first")
    assert [c["source_id"] for c in res["copied"]] == [series[0][0]]
    res = copy("-r", repo_path, "--to", dst, "latest", series[0][0][:10])
    assert [c["source_id"] for c in res["copied"]] == [series[2][0]]
    assert [s["source_id"] for s in res["skipped"]] == [series[0][0]]
    assert copy("-r", repo_path, "--to", dst, "--host", "elsewhere")["copied"] == []


def test_copy_errors(tmp_path, repo_path, series):
    one_line_error(run_cli("copy", "-r", repo_path, "--to", repo_path, check=False), EXIT_USAGE, "itself")
    other = tmp_path / "other"
    pw = tmp_path / "other.pw"
    pw.write_text("another passphrase\n")
    run_cli("init", "-r", other, "--password-file", pw)
    one_line_error(run_cli("copy", "-r", repo_path, "--to", other, check=False), EXIT_PASSWORD,
                   "wrong passphrase", "--to-password-file")
    assert copy("-r", repo_path, "--to", other, "--to-password-file", pw, "latest")["copied"]
    env = cli_env(DISKVAULT_TO_PASSWORD="another passphrase")
    assert copy("-r", repo_path, "--to", other, env=env)["copied"]
    one_line_error(run_cli("copy", "-r", repo_path, "--to", other, "nosuchsnapshot", "--to-password-file", pw,
                           check=False), 4, "nosuchsnapshot")


def test_a_wrong_destination_passphrase_names_the_destination_options(tmp_path, repo_path):
    other = tmp_path / "other"
    pw, wrong = tmp_path / "other.pw", tmp_path / "wrong.pw"
    pw.write_text("another passphrase\n")
    wrong.write_text("not it\n")
    run_cli("init", "-r", other, "--password-file", pw)
    for args, env in ((["--to-password-file", wrong], None), ([], cli_env(DISKVAULT_TO_PASSWORD="not it"))):
        res = run_cli("copy", "-r", repo_path, "--to", other, *args, check=False, env=env)
        one_line_error(res, EXIT_PASSWORD, "wrong passphrase", "--to-password-file", "DISKVAULT_TO_PASSWORD")
        assert b"--password-file/" not in res.stderr  # the source's options are not the ones to check
    both = run_cli("copy", "-r", repo_path, "--to", other, "--to-password-file", pw, "--to-password-command",
                   "echo x", check=False)
    one_line_error(both, EXIT_USAGE, "--to-password-file and --to-password-command", "choose one")


def test_a_damaged_source_chunk_stops_the_copy_of_that_snapshot(tmp_path, plain_repo_path):
    img = tmp_path / "disk.img"
    img.write_bytes(random_bytes(1 << 20, 3))
    run_cli("snapshot", "-r", plain_repo_path, img)
    (pack,) = (plain_repo_path / "packs").glob("*/*.pack")
    good = pack.read_bytes()
    raw = bytearray(good)
    raw[len(raw) // 3] ^= 0xFF
    pack.write_bytes(raw)
    dst = tmp_path / "dst"
    run_cli("init", "-r", dst)
    one_line_error(run_cli("copy", "-r", plain_repo_path, "--to", dst, check=False), EXIT_DAMAGED, "damaged")
    assert snapshots(dst) == []
    assert_consistent(dst)
    pack.write_bytes(good)  # the source as it was: a full read clears the damage the copy recorded
    run_cli("check", "-r", plain_repo_path, "--read-data")


def test_sigkill_during_copy_leaves_the_destination_consistent_and_the_next_run_finishes(tmp_path, repo_path):
    img = tmp_path / "big.img"
    img.write_bytes(random_bytes(24 << 20, 5))
    run_cli("snapshot", "-r", repo_path, img)
    img.write_bytes(random_bytes(24 << 20, 6))
    run_cli("snapshot", "-r", repo_path, img)
    img.unlink()
    dst = tmp_path / "dst"
    run_cli("init", "-r", dst)
    t0 = time.monotonic()
    trial = tmp_path / "trial"
    run_cli("init", "-r", trial)
    copy("-r", repo_path, "--to", trial)
    full = time.monotonic() - t0
    rng = random.Random(99)
    done: list[str] = []
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-m", "diskvault", "copy", "-r", str(repo_path), "--to", str(dst)],
                                env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_consistent(dst)
        now = [s["id"] for s in snapshots(dst)]
        assert now[: len(done)] == done  # nothing copied earlier is lost
        done = now
    res = copy("-r", repo_path, "--to", dst)
    assert len(res["copied"]) + len(res["skipped"]) == 2 and len(snapshots(dst)) == 2
    for sid, seed in zip([s["id"] for s in snapshots(dst)], (5, 6)):
        out = tmp_path / "out.img"
        run_cli("restore", "-r", dst, sid, out, "--force")
        assert out.read_bytes() == random_bytes(24 << 20, seed)


def test_a_chunk_known_damaged_in_the_destination_is_stored_again_not_mapped(tmp_path, repo_path, series):
    """The earlier copy's ids are used only where the destination holds them intact: a chunk
    check found damaged there is read from the source and stored anew, which heals the
    earlier copy too (docs/integrity.md)."""
    dst = tmp_path / "plain"
    run_cli("init", "-r", dst, "--encryption", "none")
    copy("-r", repo_path, "--to", dst, series[0][0])
    (pack,) = (dst / "packs").glob("*/*.pack")
    raw = bytearray(pack.read_bytes())
    raw[(3 << 20) // 2] ^= 0xFF  # inside the data area, half-way through the first 3 MiB
    pack.write_bytes(raw)
    assert run_cli("check", "-r", dst, "--read-data", check=False).returncode == EXIT_DAMAGED
    copy("-r", repo_path, "--to", dst)  # 1.5 MiB is unchanged in the later snapshots: the guide knows it
    assert json.loads(run_cli("check", "-r", dst, "--read-data", "--json").stdout)["status"] == "sound"
    for c, (sid, want) in zip(snapshots(dst), series):
        out = tmp_path / "out.img"
        run_cli("restore", "-r", dst, c["id"], out, "--force")
        assert out.read_bytes() == want


def test_copies_keep_their_order_whatever_order_they_are_copied_in(tmp_path, repo_path, series):
    """latest and forget in the destination follow the source's order: the newest snapshot
    copied first, the older ones after, is still latest there, and --keep-last 1 keeps it."""
    dst = tmp_path / "dst"
    run_cli("init", "-r", dst)
    copy("-r", repo_path, "--to", dst, "latest")
    copy("-r", repo_path, "--to", dst)
    out = tmp_path / "out.img"
    run_cli("restore", "-r", dst, "latest", out)
    assert out.read_bytes() == series[-1][1]
    run_cli("forget", "-r", dst, "--keep-last", "1")
    (kept,) = snapshots(dst)
    run_cli("restore", "-r", dst, kept["id"], out, "--force")
    assert out.read_bytes() == series[-1][1]


def test_two_copies_into_one_destination_at_once_record_each_snapshot_once(tmp_path, repo_path, series):
    """A second copy runs to its end while the first is half way through the same snapshot
    (started from the first's progress: deterministic); the first then finds the snapshot
    recorded and skips it instead of recording it twice."""
    from diskvault.ops.copy import copy as copy_op
    from diskvault.ops.progress import NoProgress
    from diskvault.repository import Repository

    dst = tmp_path / "offsite"
    run_cli("init", "-r", dst)
    latest = series[-1][0]

    class OtherCopyMidway(NoProgress):
        other = None

        def advance(self, n: int) -> None:
            if self.other is None:
                self.other = copy("-r", repo_path, "--to", dst, latest)

    with Repository.open(str(repo_path), write=False, passphrase=secret) as src, \
            Repository.open(str(dst), passphrase=secret) as to:
        progress = OtherCopyMidway()
        res = copy_op(src, to, [latest], progress=progress)
    assert [c["source_id"] for c in progress.other["copied"]] == [latest]
    assert res.copied == [] and res.skipped == [{"source_id": latest, "id": progress.other["copied"][0]["id"]}]
    assert [s["id"] for s in snapshots(dst)] == [progress.other["copied"][0]["id"]]
    run_cli("check", "-r", dst)
    out = tmp_path / "restored.img"
    run_cli("restore", "-r", dst, "latest", out)
    assert out.read_bytes() == series[-1][1]


def test_a_full_destination_says_what_to_do_and_stays_sound(tmp_path, repo_path, series):
    """Copying into a repository on a full disk (a real 2 MiB tmpfs; the snapshots need
    3 MiB) exits 6 with one line "WHAT IS WRONG: WHAT TO DO"; the destination stays sound,
    holds no part of the snapshot and no temporary file."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        dst = mnt / "repo"
        run_cli("init", "-r", dst)
        proc = run_cli("copy", "-r", repo_path, "--to", dst, check=False)
        err = one_line_error(proc, 6, "no space left")
        assert "free some space" in err, err
        assert snapshots(dst) == []
        run_cli("check", "-r", dst)
        assert not [p for p in dst.rglob("*") if ".tmp" in p.name]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_an_empty_location_is_a_usage_error_not_the_current_directory(tmp_path, repo_path):
    """``--to "$DEST"`` or ``-r "$REPO"`` with the variable unset: exit 2 naming the empty
    location, never "create one with diskvault init -r $PWD" (nor, for init, a repository
    made in the current directory)."""
    for args in (["copy", "-r", repo_path, "--to", ""], ["copy", "-r", " ", "--to", repo_path],
                 ["init", "-r", ""]):
        proc = subprocess.run([sys.executable, "-m", "diskvault", *map(str, args)], cwd=tmp_path,
                              capture_output=True, env=cli_env())
        one_line_error(proc, EXIT_USAGE, "location is empty")
    assert not (tmp_path / "config.json").exists()
