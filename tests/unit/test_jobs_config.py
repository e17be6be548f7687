"""Job pieces without a repository: the TOML file reads back what was written, schedules
become the crontab lines cron needs (or none), and the steps get the passphrase source."""

from __future__ import annotations

import tomllib

import pytest

from diskvault.errors import UsageError
from diskvault.ops.jobs.config import Job, Scope, check_name, load, new_job, save, to_toml
from diskvault.ops.jobs.runner import plan, step_env
from diskvault.ops.jobs.units import calendar, crontab_line


def test_toml_round_trip_of_awkward_text(tmp_path, monkeypatch):
    monkeypatch.setenv("DISKVAULT_JOBS_DIR", str(tmp_path))
    job = new_job(name="j", repository="/r", source='/dev/disk/by-id/usb "x" \\ 100% é', allow_mounted=True,
                  tags=["a b", 'q"'], keep_tag=["x,y"], keep_daily=-1, keep_within="1y2m",
                  on_failure="printf '%s\\n' \"$DISKVAULT_JOB_ERROR\" | mail -s 'fail' me@example.org")
    assert tomllib.loads(to_toml(job)) == job.to_json()
    scope = Scope.of(False)
    save(scope, job, force=False)
    assert load(scope, "j") == job
    with pytest.raises(UsageError, match="exists"):
        save(scope, job, force=False)


@pytest.mark.parametrize("name", ["", "a b", "../x", "x/y", "-x", "x.timer", "é", "a" * 65])
def test_unsafe_names(name):
    with pytest.raises(UsageError, match="not a safe unit name"):
        check_name(name)


def test_control_characters_and_raw_names_are_refused():
    with pytest.raises(UsageError, match="--on-success holds a control character"):
        new_job(name="j", repository="/r", source="/s", on_success="a\nb")
    with pytest.raises(UsageError, match="--tag holds a control character"):
        new_job(name="j", repository="/r", source="/s", tags=["a\tb"])
    with pytest.raises(UsageError, match="UTF-8"):
        new_job(name="j", repository="/r", source="/s\udcff")


@pytest.mark.parametrize(("spec", "line"), [
    ("daily", "0 0 * * *"),
    ("hourly", "0 * * * *"),
    ("weekly", "0 0 * * 1"),
    ("monthly", "0 0 1 * *"),
    ("Mon..Fri 02:30", "30 2 * * 1-5"),
    ("Sat,Sun 23:05", "5 23 * * 6,7"),
    ("*:00/15", "0-59/15 * * * *"),
    ("*-*-1,15 04:00", "0 4 1,15 * *"),
    ("*-03..05-* 01:00", "0 1 * 3-5 *"),
    ("*-*-* 02:00:30", None),       # seconds
    ("2027-*-* 00:00", None),       # a year
    ("Mon *-*-01 00:00", None),     # cron ORs day and weekday, systemd ANDs them
    ("*-*~01 00:00", None),         # the last day of the month
    ("daily Europe/Berlin", None),  # a time zone
])
def test_crontab_lines(spec, line):
    job = Job(name="j", repository="/r", source="/s", on_calendar=spec)
    got = crontab_line(job, Scope(False, "/c", "/s"), calendar(spec))
    assert (" ".join(got.split()[:5]) if got else None) == line, got
    if got:
        assert got.endswith("-m diskvault job run j")


def test_calendar_period_and_bad_specs():
    assert calendar("hourly").period() == 3600
    assert calendar("daily").period() == 86400
    assert calendar("Mon,Fri 02:00").period() == 4 * 86400
    with pytest.raises(UsageError, match="not a systemd calendar expression"):
        calendar("every now and then")


def test_steps_get_the_passphrase_source_and_the_slice(monkeypatch):
    monkeypatch.delenv("DISKVAULT_LOCK_WAIT", raising=False)
    job = Job(name="j", repository="/r", source="/s", password_command="pass show backup", check_subset="30%")
    env = step_env(job)
    assert env["DISKVAULT_PASSWORD_COMMAND"] == "pass show backup" and "DISKVAULT_PASSWORD_FILE" not in env
    assert env["DISKVAULT_LOCK_WAIT"] == "3600"
    assert step_env(Job(name="j", repository="/r", source="/s", password_file="/k"))["DISKVAULT_PASSWORD_FILE"] == "/k"
    steps = plan(job, 5)
    assert [s for s, _ in steps] == ["snapshot", "check"]  # no keep rule: no forget
    assert steps[-1][1][-2:] == ["--read-data-subset", "2/4"]  # 30%: four slices of 25%
    assert "--allow-mounted" not in steps[0][1]
    job.allow_mounted = True
    assert plan(job, 0)[0][1][-2:] == ["--allow-mounted", "/s"]
    job.keep_weekly, job.keep_tag = 4, ["golden"]
    forget = dict(plan(job, 0))["forget"]
    assert forget[-4:] == ["--keep-weekly", "4", "--keep-tag", "golden"] and "--prune" in forget


def test_state_keeps_the_last_50_runs_and_replaces_its_file_whole(tmp_path):
    from diskvault.ops.jobs import state

    scope = Scope(False, str(tmp_path), str(tmp_path / "state"))
    st = state.load(scope, "j")
    assert st == {"job": "j", "check_next": 0, "runs": []}
    for i in range(60):
        st["runs"].append({"start": f"2026-11-30T00:{i:02d}:00+00:00", "end": None, "duration": 1.0, "result": "success",
                           "exit_code": 0, "bytes_added": None, "steps": []})
        state.save(scope, "j", st)
    assert [r["start"][14:16] for r in state.load(scope, "j")["runs"]] == [f"{i:02d}" for i in range(10, 60)]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["j.json"]  # no temporary file left
    (tmp_path / "state" / "j.json").write_text('{"runs": ')  # torn by hand: read as never run
    assert state.load(scope, "j")["runs"] == []
