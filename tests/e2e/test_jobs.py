"""diskvault job end to end (issue 15): units that systemd accepts, runs against real images
that leave the repository as the job's rules say, hooks with their variables, the rotating
check slice, and list/status for jobs that succeeded, failed or never ran."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import PASSPHRASE, cli_env, debugfs, make_ext4, make_tree, random_bytes, run_cli, secret, tool

from diskvault.errors import EXIT_LOCKED, EXIT_SOURCE_TARGET, EXIT_USAGE
from diskvault.ops.integrity.check import parse_subset
from diskvault.repository import Repository

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture
def jobs(tmp_path):
    """An environment whose jobs live in a folder of their own (DISKVAULT_JOBS_DIR), with the
    test repositories' passphrase in a 0600 file that ``job add`` gives every job."""
    pw = tmp_path / "passphrase"
    pw.write_text(PASSPHRASE)
    pw.chmod(0o600)
    return cli_env(DISKVAULT_JOBS_DIR=str(tmp_path / "jobs"), TEST_PASSWORD_FILE=str(pw))


def job(env, *args, check=True):
    if args[0] == "add" and "TEST_PASSWORD_FILE" in env and not {"--password-file", "--password-command"} & set(args):
        args = (*args, "--password-file", env["TEST_PASSWORD_FILE"])
    return run_cli("job", *args, env=env, check=check)


def add(env, *args, check=True):
    """``job add ... --print``: the job is saved, no unit is installed even where systemd runs."""
    return job(env, "add", *args, "--print", check=check)


def one_line_error(proc, code):
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert err.count("\n") == 1 and err.startswith("diskvault: error: "), err
    return err


def state(env, name):
    return json.loads((Path(env["DISKVAULT_JOBS_DIR"]) / "state" / f"{name}.json").read_text())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_units(printed: str, folder: Path) -> list[Path]:
    """Split ``job add --print`` output (``# PATH`` before each unit) into files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for head, body in re.findall(r"^# (\S+)\n(.*?)(?=^# /|\Z)", printed, re.M | re.S):
        path = folder / os.path.basename(head)
        path.write_text(body)
        files.append(path)
    return files


def verify_units(files: list[Path]) -> None:
    proc = subprocess.run([tool("systemd-analyze"), "verify", *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout and not proc.stderr, proc.stderr + proc.stdout


@pytest.mark.parametrize("user", [False, True])
def test_printed_units_pass_systemd_analyze_verify(tmp_path, user):
    """The units of a job with every option, paths holding a space and a %, pass systemd's own check."""
    folder = tmp_path / "jobs 100%"
    env = cli_env(DISKVAULT_JOBS_DIR=str(folder), XDG_CONFIG_HOME=str(tmp_path / "home"))
    out = add(env, "nightly", "-r", tmp_path / "my repo", "--source", tmp_path / "disk 50%.img",
              "--on-calendar", "Mon..Fri 02:30", "--randomized-delay", "1h", "--keep-daily", "7",
              "--keep-weekly", "4", "--keep-monthly", "6", "--check-subset", "5%", "--tag", "system",
              "--on-failure", 'mail -s "backup failed" me@example.org', *(["--user"] if user else [])).stdout.decode()
    files = write_units(out, tmp_path / "units")
    assert sorted(f.name for f in files) == ["diskvault-job@nightly.service", "diskvault-job@nightly.timer"]
    timer = (tmp_path / "units" / "diskvault-job@nightly.timer").read_text()
    for line in ("OnCalendar=Mon..Fri 02:30", "Persistent=true", "RandomizedDelaySec=1h",
                 "Unit=diskvault-job@nightly.service", "WantedBy=timers.target"):
        assert line in timer.splitlines()
    service = (tmp_path / "units" / "diskvault-job@nightly.service").read_text()
    for line in ("Type=oneshot", "Nice=10", "IOSchedulingClass=idle", "Environment='DISKVAULT_JOBS_DIR="
                 f"{str(folder).replace('%', '%%')}'"):
        assert line in service.splitlines(), service
    assert f"job run {'--user ' if user else ''}nightly" in service
    verify_units(files)
    assert out.startswith(f"# {tmp_path / 'home' / 'systemd' / 'user' if user else '/etc/systemd/system'}/")
    assert not (tmp_path / "home" / "systemd").exists()  # --print installs nothing
    config = tomllib.loads((folder / "nightly.toml").read_text())
    assert config["keep_daily"] == 7 and config["check_subset"] == "5%" and config["source"].endswith("disk 50%.img")


def test_crontab_line_runs_the_job_where_systemd_is_not_running(tmp_path, jobs, repo_path):
    """Without systemd (as here) job add prints a crontab line; what cron would run runs the job."""
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs here: job add installs units instead")
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(300_000, 3))
    proc = job(jobs, "add", "hourly", "-r", repo_path, "--source", image, "--on-calendar", "*:00/15")
    line = proc.stdout.decode().strip()
    assert "crontab -e" in proc.stderr.decode()
    fields = line.split(" ", 5)
    assert fields[:5] == ["0-59/15", "*", "*", "*", "*"], line
    subprocess.run(["/bin/sh", "-c", fields[5].replace("\\%", "%")], check=True, capture_output=True,
                   env=jobs)
    assert state(jobs, "hourly")["runs"][0]["result"] == "success"
    assert len(json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout)) == 1


def test_job_run_snapshot_forget_check_on_a_real_image(tmp_path, jobs, repo_path):
    """Three runs on an ext4 image changing between them: each snapshot restores exactly,
    forget --prune keeps the two newest, check reads the slices in turn."""
    image = make_ext4(tmp_path / "disk.img", 16, make_tree(tmp_path / "content", files=20))
    add(jobs, "nightly", "-r", repo_path, "--source", image, "--keep-last", "2", "--check-subset", "50%",
        "--tag", "nightly")
    digests = []
    for i in range(3):
        if i:
            debugfs(image, f"write {tmp_path / 'content' / 'file000.bin'} new{i}.bin")
        digests.append(sha(image))
        run = json.loads(job(jobs, "run", "nightly", "--json").stdout)
        assert run["result"] == "success" and run["exit_code"] == 0 and [s["step"] for s in run["steps"]] == [
            "snapshot", "forget", "check"]
        assert [s["exit_code"] for s in run["steps"]] == [0, 0, 0]
        assert run["steps"][2]["subset"] == f"{i % 2 + 1}/2" and run["steps"][2]["status"] == "sound"
        assert run["bytes_added"] == run["steps"][0]["bytes_added"] > 0
    assert run["steps"][1]["forgot"] == 1
    snaps = json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout)
    assert len(snaps) == 2 and all(s["tags"] == ["nightly"] for s in snaps)
    assert snaps[-1]["id"] == run["snapshot"]
    run_cli("restore", "-r", repo_path, run["snapshot"], tmp_path / "out.img")
    assert sha(tmp_path / "out.img") == digests[-1]
    (tmp_path / "out.img").unlink()
    run_cli("check", "-r", repo_path, "--read-data")
    runs = state(jobs, "nightly")["runs"]
    assert len(runs) == 3 and all(r["start"] <= r["end"] and r["duration"] > 0 for r in runs)
    image.unlink()


def test_failing_source_runs_on_failure_with_the_variables_and_exits_with_the_snapshots_code(tmp_path, jobs, repo_path):
    out, ok = tmp_path / "failure.env", tmp_path / "success.env"
    add(jobs, "broken", "-r", repo_path, "--source", tmp_path / "missing.img", "--keep-last", "3",
        "--on-failure", f"env > '{out}'", "--on-success", f"env > '{ok}'")
    proc = job(jobs, "run", "broken", check=False)
    assert proc.returncode == EXIT_SOURCE_TARGET
    err = proc.stderr.decode()
    assert "diskvault: error: source" in err and "job broken: snapshot failed" in err
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if line.startswith("DISKVAULT_JOB"))
    log = env.pop("DISKVAULT_JOB_LOG")
    assert env["DISKVAULT_JOB"] == "broken" and env["DISKVAULT_JOB_RESULT"] == "failure"
    assert env["DISKVAULT_JOB_STEP"] == "snapshot" and env["DISKVAULT_JOB_EXIT_CODE"] == "5"
    assert env["DISKVAULT_JOB_ERROR"].startswith(f"source {tmp_path / 'missing.img'} does not exist")
    assert env["DISKVAULT_JOB_SNAPSHOT"] == "" and env["DISKVAULT_JOB_BYTES_ADDED"] == ""
    assert env["DISKVAULT_JOB_REPOSITORY"] == str(repo_path) and env["DISKVAULT_JOB_SOURCE"] == str(tmp_path / "missing.img")
    assert env["DISKVAULT_JOB_START"] <= env["DISKVAULT_JOB_END"]
    assert "diskvault: error: source" in Path(log).read_text()
    assert not ok.exists()
    run = state(jobs, "broken")["runs"][-1]
    assert run["result"] == "failure" and run["failed_step"] == "snapshot" and run["exit_code"] == 5
    assert [s["step"] for s in run["steps"]] == ["snapshot"]  # forget and check do not run after a failure
    assert run["hook"] == {"name": "on_failure", "exit_code": 0}
    assert not os.listdir(repo_path / "snapshots")

    (tmp_path / "missing.img").write_bytes(random_bytes(200_000, 1))  # the source is back: on-success
    out.unlink()
    job(jobs, "run", "broken")
    env = dict(line.split("=", 1) for line in ok.read_text().splitlines() if line.startswith("DISKVAULT_JOB"))
    assert env["DISKVAULT_JOB_RESULT"] == "success" and env["DISKVAULT_JOB_EXIT_CODE"] == "0"
    assert env["DISKVAULT_JOB_STEP"] == "" and env["DISKVAULT_JOB_ERROR"] == ""
    assert len(env["DISKVAULT_JOB_SNAPSHOT"]) == 32 and int(env["DISKVAULT_JOB_BYTES_ADDED"]) > 0
    assert not out.exists()


def test_ten_runs_of_a_10_percent_subset_read_every_pack_once(tmp_path, jobs, repo_path):
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(2 << 20, 9))
    env = dict(jobs, DISKVAULT_PACK_SIZE="65536")
    add(env, "rotate", "-r", repo_path, "--source", image, "--keep-last", "1", "--check-subset", "10%")
    runs = [json.loads(job(env, "run", "rotate", "--json").stdout) for _ in range(10)]
    checks = [r["steps"][-1] for r in runs]
    assert [c["subset"] for c in checks] == [f"{k}/10" for k in range(1, 11)]
    with Repository.open(str(repo_path), write=False, passphrase=secret) as r:
        names = [p["name"] for p in r.catalog.packs()]
    assert len(names) >= 20 and all(c["packs_total"] == len(names) for c in checks)
    assert sum(c["packs_read"] for c in checks) == len(names)
    for name in names:  # each pack in exactly one of the ten slices read
        assert sum(parse_subset(c["subset"]).contains(name) for c in checks) == 1
    eleventh = json.loads(job(env, "run", "rotate", "--json").stdout)
    assert eleventh["steps"][-1]["subset"] == "1/10"


def test_list_and_status_after_success_failure_and_never(tmp_path, jobs, repo_path):
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(200_000, 2))
    for name, source in (("good", image), ("bad", tmp_path / "gone.img"), ("fresh", image)):
        add(jobs, name, "-r", repo_path, "--source", source, "--on-calendar", "hourly")
    job(jobs, "run", "good")
    assert job(jobs, "run", "bad", check=False).returncode == EXIT_SOURCE_TARGET
    rows = {r["name"]: r for r in json.loads(job(jobs, "list", "--json").stdout)}
    assert list(rows) == ["bad", "fresh", "good"]
    good, bad, fresh = rows["good"], rows["bad"], rows["fresh"]
    assert (good["result"], good["exit_code"], good["failed_step"]) == ("success", 0, None)
    assert good["last_success"] == state(jobs, "good")["runs"][0]["end"] and 0 <= good["last_success_age"] < 600
    assert (bad["result"], bad["exit_code"], bad["failed_step"]) == ("failure", 5, "snapshot")
    assert bad["last_success"] is None and bad["last_success_age"] is None and "does not exist" in bad["error"]
    assert (fresh["result"], fresh["last_run"], fresh["exit_code"], fresh["last_success"]) == ("never", None, None, None)
    for r in rows.values():
        assert r["schedule"] == "hourly" and r["period"] == 3600 and r["warning"] is None and r["running"] is False
        assert r["scope"] == "system" and datetime.fromisoformat(r["next_run"]) > datetime.now(timezone.utc)
    table = job(jobs, "list")
    lines = {line.split()[0]: line for line in table.stdout.decode().splitlines()[1:]}
    assert "success" in lines["good"] and "failure (exit 5, snapshot)" in lines["bad"] and "never" in lines["fresh"]
    assert not table.stderr

    status = json.loads(job(jobs, "status", "good", "--json").stdout)
    assert status["runs"][0]["steps"][0]["bytes_added"] > 0 and status["job"]["source"] == str(image)
    assert "success" in job(jobs, "status", "good").stdout.decode()

    # two hours and more without a success: warned (the state and config say when, as a run would have)
    folder = Path(jobs["DISKVAULT_JOBS_DIR"])
    st = state(jobs, "good")
    st["runs"][0]["end"] = (datetime.now(timezone.utc) - timedelta(hours=3)).isoformat(timespec="seconds")
    (folder / "state" / "good.json").write_text(json.dumps(st))
    config = (folder / "fresh.toml").read_text()
    old = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat(timespec="seconds")
    (folder / "fresh.toml").write_text(re.sub(r'created = ".*"', f'created = "{old}"', config))
    rows = {r["name"]: r for r in json.loads(job(jobs, "list", "--json").stdout)}
    assert "last success 3 h ago, more than twice its period (60 min)" in rows["good"]["warning"]
    assert "never succeeded since it was added 24 h ago" in rows["fresh"]["warning"]
    assert rows["bad"]["warning"] is None  # added just now: not yet two periods
    err = job(jobs, "list").stderr.decode()
    assert err.count("warning: job good: last success 3 h ago") == 1 and "warning: job fresh" in err


def test_add_remove_and_usage_errors(tmp_path, jobs, repo_path):
    base = ["-r", repo_path, "--source", tmp_path / "a.img"]
    one_line_error(add(jobs, "bad name", *base, check=False), EXIT_USAGE)
    one_line_error(add(jobs, "../etc", *base, check=False), EXIT_USAGE)
    one_line_error(add(jobs, "x", *base, "--on-calendar", "sometimes", check=False), EXIT_USAGE)
    one_line_error(add(jobs, "x", *base, "--randomized-delay", "soon", check=False), EXIT_USAGE)
    for subset in ("0%", "101%", "3/10", "ten"):
        one_line_error(add(jobs, "x", *base, "--check-subset", subset, check=False), EXIT_USAGE)
    one_line_error(add(jobs, "x", *base, "--keep-last", "-2", check=False), EXIT_USAGE)
    one_line_error(add(jobs, "x", *base, "--keep-within", "3q", check=False), EXIT_USAGE)
    for bad_tag in ("", "a,b", "a\tb"):  # what snapshot would refuse at every run
        one_line_error(add(jobs, "x", *base, "--tag", bad_tag, check=False), EXIT_USAGE)
    one_line_error(add(jobs, "x", *base, "--password-file", "/p", "--password-command", "pass x",
                       check=False), EXIT_USAGE)
    # found by the hostile pass: '' was the current folder, - a file named "-" there
    for repo, source in (("", tmp_path / "a.img"), (repo_path, ""), (repo_path, "-")):
        one_line_error(add(jobs, "x", "-r", repo, "--source", source, check=False), EXIT_USAGE)
    assert not (Path(jobs["DISKVAULT_JOBS_DIR"]) / "x.toml").exists()

    relative = os.path.relpath(jobs["TEST_PASSWORD_FILE"])
    add(jobs, "x", *base, "--password-file", relative, "--keep-last", "3")
    config = tomllib.loads((Path(jobs["DISKVAULT_JOBS_DIR"]) / "x.toml").read_text())
    assert config["password_file"] == os.path.abspath(relative) and config["password_command"] == ""
    err = one_line_error(add(jobs, "x", *base, check=False), EXIT_USAGE)
    assert "exists" in err and "--force" in err
    add(jobs, "x", *base, "--keep-last", "5", "--force")
    assert tomllib.loads((Path(jobs["DISKVAULT_JOBS_DIR"]) / "x.toml").read_text())["keep_last"] == 5

    for command in ("run", "status", "remove"):
        err = one_line_error(job(jobs, command, "nope", check=False), EXIT_USAGE)
        assert "no job 'nope'" in err
        one_line_error(job(jobs, command, "no/pe", check=False), EXIT_USAGE)
    (Path(jobs["DISKVAULT_JOBS_DIR"]) / "broken.toml").write_text("name = [unclosed\n")
    assert "not valid TOML" in one_line_error(job(jobs, "status", "broken", check=False), EXIT_USAGE)

    job(jobs, "remove", "x")
    assert not (Path(jobs["DISKVAULT_JOBS_DIR"]) / "x.toml").exists()
    assert "no job 'x'" in one_line_error(job(jobs, "run", "x", check=False), EXIT_USAGE)


def test_a_job_that_is_running_is_not_run_twice(tmp_path, jobs, repo_path):
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(100_000, 4))
    add(jobs, "once", "-r", repo_path, "--source", image)
    lock = Path(jobs["DISKVAULT_JOBS_DIR"]) / "state" / "once.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as f:
        f.write("4242")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_EX)
        err = one_line_error(job(jobs, "run", "once", check=False), EXIT_LOCKED)
        assert "job once is already running (pid 4242)" in err
        assert json.loads(job(jobs, "status", "once", "--json").stdout)["running"] is True
    job(jobs, "run", "once")
    assert json.loads(job(jobs, "status", "once", "--json").stdout)["running"] is False


def test_user_jobs_live_in_the_users_directories(tmp_path, repo_path):
    """--user without DISKVAULT_JOBS_DIR: config and state under XDG_CONFIG_HOME/XDG_STATE_HOME
    (platformdirs), units for systemd --user."""
    env = cli_env(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"))
    env.pop("DISKVAULT_JOBS_DIR", None)
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(100_000, 5))
    (tmp_path / "pw").write_text(PASSPHRASE)
    out = add(env, "mine", "--user", "-r", repo_path, "--source", image, "--password-file", tmp_path / "pw").stdout.decode()
    assert out.startswith(f"# {tmp_path / 'config' / 'systemd' / 'user'}/diskvault-job@mine.service")
    assert "job run --user mine" in out and "After=local-fs.target" not in out
    assert (tmp_path / "config" / "diskvault" / "jobs" / "mine.toml").exists()
    job(env, "run", "--user", "mine")
    assert (tmp_path / "state" / "diskvault" / "jobs" / "mine.json").exists()
    assert [r["name"] for r in json.loads(job(env, "list", "--user", "--json").stdout)] == ["mine"]
    job(env, "remove", "--user", "mine")
    assert not (tmp_path / "state" / "diskvault" / "jobs" / "mine.json").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the user nobody needs root")
def test_a_system_wide_job_needs_root(tmp_path):
    env = cli_env()
    env.pop("DISKVAULT_JOBS_DIR", None)
    argv = [*NOBODY, sys.executable, "-m", "diskvault", "job", "add", "x", "-r", "/tmp/r", "--source", "/tmp/s"]
    if subprocess.run([*NOBODY, sys.executable, "-c", "import typer, platformdirs"], env=env, cwd="/",
                      capture_output=True).returncode != 0:
        pytest.skip("the user nobody cannot run this interpreter")
    proc = subprocess.run(argv, env=env, cwd="/", capture_output=True)
    err = one_line_error(proc, EXIT_USAGE)
    assert "needs root" in err and "--user" in err
    assert not os.path.exists("/etc/diskvault/jobs/x.toml")


def test_remove_takes_only_its_own_units_and_list_shows_a_broken_job(tmp_path, jobs, repo_path):
    """Units of a job of another jobs folder (the real one, DISKVAULT_JOBS_DIR unset) stay;
    the job's own units go; a job file that does not parse is listed as invalid."""
    env = dict(jobs, XDG_CONFIG_HOME=str(tmp_path / "config"))
    units = tmp_path / "config" / "systemd" / "user"
    base = ["--user", "-r", repo_path, "--source", tmp_path / "a.img"]
    for name in ("mine", "theirs"):
        write_units(add(env, name, *base).stdout.decode(), units)
    theirs = units / "diskvault-job@theirs.service"
    theirs.write_text(re.sub(r"^Environment=.*\n", "", theirs.read_text(), flags=re.M))  # as a real job's
    for name in ("mine", "theirs"):
        gone = job(env, "remove", "--user", name).stderr.decode()
        assert (str(units / f"diskvault-job@{name}.timer") in gone) == (name == "mine")
    assert sorted(os.listdir(units)) == ["diskvault-job@theirs.service", "diskvault-job@theirs.timer"]

    add(jobs, "good", "-r", repo_path, "--source", tmp_path / "a.img")
    (Path(jobs["DISKVAULT_JOBS_DIR"]) / "broken.toml").write_text("check_subset = 7\n")
    rows = {r["name"]: r for r in json.loads(job(jobs, "list", "--json").stdout)}
    assert rows["good"]["result"] == "never" and rows["broken"]["result"] == "invalid"
    assert "is not a job's" in rows["broken"]["error"] and rows["broken"]["warning"] == rows["broken"]["error"]
    proc = job(jobs, "list")
    assert "broken" in proc.stdout.decode() and "warning: job file" in proc.stderr.decode()


def test_a_job_of_an_encrypted_repository_needs_a_passphrase_source(tmp_path, repo_path):
    """A timer has no terminal: without --password-file/--password-command the job is refused
    at once (exit 2), not at its first run; the passphrase itself is never stored."""
    env = cli_env(DISKVAULT_JOBS_DIR=str(tmp_path / "jobs"))
    err = one_line_error(add(env, "x", "-r", repo_path, "--source", tmp_path / "a.img", check=False), EXIT_USAGE)
    assert "--password-file" in err and not (tmp_path / "jobs" / "x.toml").exists()
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE)
    add(env, "x", "-r", repo_path, "--source", tmp_path / "a.img", "--password-command", f"cat '{pw}'")
    config = (tmp_path / "jobs" / "x.toml").read_text()
    assert f"cat '{pw}'" in config and PASSPHRASE not in config


def test_a_passphrase_source_that_does_not_open_the_repository_is_refused_at_add(tmp_path, repo_path):
    """Found by the hostile pass: a wrong passphrase file, a missing one or a failing command
    was saved without a word and failed at the first run, in the night. ``job add`` reads
    the source now (exit 10, nothing saved); a repository that is not there (an unplugged
    disk) is not checked."""
    env = cli_env(DISKVAULT_JOBS_DIR=str(tmp_path / "jobs"))
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase")
    base = ["-r", repo_path, "--source", tmp_path / "a.img"]
    for source in (["--password-file", wrong], ["--password-file", tmp_path / "missing"],
                   ["--password-command", "false"], ["--password-command", f"cat {wrong}"]):
        one_line_error(add(env, "x", *base, *source, check=False), 10)
        assert not (tmp_path / "jobs" / "x.toml").exists()
    add(env, "x", "-r", tmp_path / "unplugged" / "repo", "--source", tmp_path / "a.img", "--password-file", wrong)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs (root only) at tmp_path/tiny, unmounted when the test ends."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def fill(folder: Path) -> None:
    """Fill ``folder``'s file system until it has no byte left."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_full_state_folder_costs_warnings_not_the_backup(tmp_path, jobs, tiny_fs, repo_path):
    """Found by the hostile pass: with /var full, the first line written to the run's log
    stopped the whole run (exit 6, no snapshot, no hook). The run goes on: its snapshot is
    taken, the hook runs, the exit code is the steps', and the log and the record that
    cannot be written are warnings."""
    jobs_dir = tiny_fs / "jobs"
    env = dict(jobs, DISKVAULT_JOBS_DIR=str(jobs_dir))
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(300_000, 5))
    hooked = tmp_path / "hook ran"
    job(env, "add", "full", "-r", repo_path, "--source", image, "--keep-last", "2", "--print",
        "--on-success", f"touch '{hooked}'")
    (jobs_dir / "state").mkdir()
    fill(tiny_fs)
    proc = job(env, "run", "full", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "its log" in err and "cannot be written (no space left on device)" in err
    assert "this run could not be recorded" in err and "Traceback" not in err
    assert hooked.exists()
    with Repository.open(str(repo_path), write=False, passphrase=secret) as r:
        assert len(r.snapshots()) == 1
    (tiny_fs / "filler").unlink()  # space again: the next run is recorded as usual
    job(env, "run", "full")
    assert [r["result"] for r in state(env, "full")["runs"]] == ["success"]
    image.unlink()


@pytest.mark.parametrize("edit", [
    ("check_subset", "5"), ("keep_daily", '"seven"'), ("keep_daily", "true"), ("tags", '"abc"'), ("tags", "[1]"),
    ("on_calendar", "5"), ("repository", "7"), ("created", '"yesterday"'), ("name", '"other"'),
])
def test_a_hand_edited_job_file_is_checked_and_can_be_removed(tmp_path, jobs, repo_path, edit):
    """Found by the hostile pass: a job file edited by hand with a value of the wrong type
    was an internal error (exit 1) in status and run, or silently wrong (``tags = "abc"``
    tagged the snapshots a, b and c); a broken job could not be removed at all. Each is one
    line naming the file and the value (exit 2), and ``job remove`` removes it."""
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(100_000, 6))
    add(jobs, "hand", "-r", repo_path, "--source", image, "--keep-daily", "7", "--tag", "t")
    path = Path(jobs["DISKVAULT_JOBS_DIR"]) / "hand.toml"
    key, value = edit
    path.write_text(re.sub(rf"^{key} = .*$", f"{key} = {value}", path.read_text(), flags=re.M))
    for command in ("status", "run"):
        err = one_line_error(job(jobs, command, "hand", check=False), EXIT_USAGE)
        assert f"job file {path} is not a job's" in err, err
    assert not (Path(jobs["DISKVAULT_JOBS_DIR"]) / "state" / "hand.json").exists()
    assert not os.listdir(repo_path / "snapshots")
    assert f"removed {path}" in job(jobs, "remove", "hand").stderr.decode()
    assert not path.exists()


def test_a_run_killed_outright_is_recorded_as_a_failure(tmp_path, jobs, repo_path):
    """Found by the hostile pass: ``job run`` killed with SIGKILL (with its step: the OOM
    killer, a power cut) left no trace, and ``job status`` said "never" run. The run is
    recorded as a failure of the step it was in (exit_code null, "killed" in the table),
    the repository stays consistent (the fixture checks it) and the next run succeeds."""
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(8 << 20, 7))
    add(jobs, "doomed", "-r", repo_path, "--source", image, "--keep-last", "2")
    argv = [sys.executable, "-m", "diskvault", "job", "run", "doomed"]
    proc = subprocess.Popen(argv, env=jobs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    state_file = Path(jobs["DISKVAULT_JOBS_DIR"]) / "state" / "doomed.json"
    while not (state_file.exists() and "current" in json.loads(state_file.read_text())):
        assert proc.poll() is None, "the run ended before its first step was recorded"
        time.sleep(0.01)
    os.killpg(proc.pid, 9)
    proc.wait()
    row = json.loads(job(jobs, "status", "doomed", "--json").stdout)
    assert row["result"] == "failure" and row["exit_code"] is None and row["failed_step"] == "snapshot"
    assert "without ending" in row["error"] and row["running"] is False and row["last_run"]
    assert "failure (killed, snapshot)" in job(jobs, "list").stdout.decode()
    assert "exit -" in job(jobs, "status", "doomed").stdout.decode()
    job(jobs, "run", "doomed")
    runs = state(jobs, "doomed")["runs"]
    assert [(r["result"], r["exit_code"]) for r in runs] == [("failure", None), ("success", 0)]
    assert "current" not in state(jobs, "doomed")
    image.unlink()


@pytest.mark.parametrize("source", ["--password-file", "--password-command"])
def test_the_jobs_passphrase_source_wins_over_the_callers_variables(tmp_path, jobs, repo_path, source):
    """Found by the hostile pass: ``job run`` by hand from a shell that exports the other
    passphrase variable failed (exit 2, "both given"), while the timer's clean environment
    worked. The job's own source is the one its steps get, whatever the caller exports."""
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(100_000, 8))
    right = jobs["TEST_PASSWORD_FILE"]
    add(jobs, "mine", "-r", repo_path, "--source", image, source, right if source == "--password-file" else f"cat {right}")
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase")
    env = dict(jobs, DISKVAULT_PASSWORD_COMMAND=f"cat {wrong}", DISKVAULT_PASSWORD_FILE=str(wrong),
               DISKVAULT_PASSWORD="not the passphrase")
    run = json.loads(job(env, "run", "mine", "--json").stdout)
    assert run["result"] == "success" and len(run["snapshot"]) == 32


def test_a_running_job_is_not_removed(tmp_path, jobs, repo_path):
    """Found by the hostile pass: ``job remove`` during a run deleted the job, then the run
    wrote its state back: a later job of that name inherited the old runs. A running job
    is refused (exit 7) and stays whole; once it ends, remove takes everything."""
    add(jobs, "busy", "-r", repo_path, "--source", tmp_path / "a.img")
    folder = Path(jobs["DISKVAULT_JOBS_DIR"])
    lock = folder / "state" / "busy.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as f:
        f.write("4242")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_EX)
        assert "job busy is already running (pid 4242)" in one_line_error(job(jobs, "remove", "busy", check=False),
                                                                         EXIT_LOCKED)
        assert (folder / "busy.toml").exists()
    job(jobs, "remove", "busy")
    assert not (folder / "busy.toml").exists() and not os.listdir(folder / "state")


@pytest.mark.parametrize("damaged", ['{"runs": [1], "check_next": "x"}', '{"runs": [{"start": 5}]}',
                                     '{"runs": [{"start": "2026-11-30T00:00:00+00:00", "end": "soon", '
                                     '"result": "success", "steps": [], "exit_code": 0, "duration": 1}]}'])
def test_a_damaged_state_file_never_stops_a_run_nor_list(tmp_path, jobs, repo_path, damaged):
    """Found by the hostile pass: a state file holding something else than run records
    (a disk error, an edit) made ``job status``, ``job list`` and even ``job run`` an
    internal error (exit 1): no backup. What is not a run record is left out."""
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(100_000, 9))
    add(jobs, "dented", "-r", repo_path, "--source", image)
    path = Path(jobs["DISKVAULT_JOBS_DIR"]) / "state" / "dented.json"
    path.parent.mkdir(parents=True)
    path.write_text(damaged)
    assert json.loads(job(jobs, "status", "dented", "--json").stdout)["result"] == "never"
    assert "never" in job(jobs, "list").stdout.decode()
    run = json.loads(job(jobs, "run", "dented", "--json").stdout)
    assert run["result"] == "success"
    assert [r["result"] for r in state(jobs, "dented")["runs"]] == ["success"]
