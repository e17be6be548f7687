"""Scheduled jobs (``diskvault job``): a job snapshots one source into one repository on a
calendar, forgets and prunes by its keep rules, checks a rotating slice of the data, records
each run and runs a hook on success or failure.

config.py (the TOML file and its directories), units.py (systemd units, crontab line,
calendar), state.py (last runs, run lock), runner.py (``job run``). This module holds the
use cases the CLI calls: ``add``, ``remove``, ``run``, ``health`` (``job list``/``status``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ...errors import UsageError
from ...repository import Repository, encryption_of
from . import state as job_state
from .config import JOBS_DIR_ENV, Job, Scope, check_name, config_file, load, new_job, save
from .runner import run_job
from .units import (Calendar, calendar, check_installable, check_timespan, crontab_line, install, systemd_running, timer_next,
                    uninstall, unit_dir, units)

__all__ = ["Job", "Scope", "AddResult", "add", "remove", "run", "health", "health_all", "load", "new_job"]


@dataclass
class AddResult:
    """What ``add`` did: ``mode`` is "installed" (units written, timer enabled), "printed"
    (``print_only``: units only returned) or "crontab" (no systemd: ``crontab`` is the line
    to add, None when the schedule has no cron form)."""

    job: Job
    config: str
    mode: str
    units: dict[str, str]
    unit_dir: str
    installed: list[str] = field(default_factory=list)
    crontab: str | None = None
    next_run: str | None = None

    def to_json(self) -> dict:
        return {"name": self.job.name, "config": self.config, "mode": self.mode, "unit_dir": self.unit_dir,
                "installed": self.installed, "units": self.units, "crontab": self.crontab, "next_run": self.next_run,
                "job": self.job.to_json()}


def add(scope: Scope, job: Job, force: bool = False, print_only: bool = False,
        passphrase: Callable[[], str] | None = None) -> AddResult:
    """Check ``job`` (schedule, delay, and for an encrypted repository that is there, that
    ``passphrase()``, read from the job's own source, opens it), save its config and schedule
    it: install and enable its units when systemd runs, else compute its crontab line;
    ``print_only`` saves and returns the units without installing them. UsageError for what
    is wrong (exists without ``force``, a system-wide job without root), PasswordError (exit
    10) for a passphrase source that fails or opens no key, OSError as raised."""
    cal = calendar(job.on_calendar)
    check_timespan(job.randomized_delay)
    if encryption_of(job.repository) not in (None, "none"):
        if not (job.password_file or job.password_command):
            raise UsageError(f"{job.repository} is encrypted and a timer has no terminal to ask on: give the job "
                             "--password-file FILE or --password-command COMMAND (the passphrase itself is never stored)")
        if passphrase is not None:  # now, not at the first run in the night
            Repository.open(job.repository, write=False, lock=False, passphrase=passphrase).close()
    if not scope.user and os.geteuid() != 0 and not os.environ.get(JOBS_DIR_ENV):
        raise UsageError("a system-wide job needs root: run as root, or add --user for a job of your own")
    if not print_only and systemd_running():
        check_installable(job, scope)
    save(scope, job, force)
    result = AddResult(job, scope.config_path(job.name), "printed", units(job, scope), unit_dir(scope),
                       next_run=cal.elapses[0].isoformat() if cal.elapses else None)
    if print_only:
        return result
    if systemd_running():
        result.installed = install(job, scope)
        result.mode = "installed"
    else:
        result.mode = "crontab"
        result.crontab = crontab_line(job, scope, cal)
    return result


def remove(scope: Scope, name: str) -> list[str]:
    """Remove job ``name``: disable and delete its units, its config and its state; returns
    the files deleted. UsageError for an unknown job, RepositoryLocked (exit 7) while it
    runs (its run would record itself again afterwards); a job file that no longer reads as
    a job's (edited by hand) is removed all the same."""
    path = config_file(scope, name)
    with job_state.RunLock(scope, name):
        gone = uninstall(name, scope)
        os.unlink(path)
        job_state.remove(scope, name)
    return [*gone, path]


def run(scope: Scope, name: str, echo: Callable[[str], None], step_done: Callable[[dict], None]) -> dict:
    """Run job ``name`` once (see runner.run_job); UsageError for an unknown job."""
    return run_job(scope, load(scope, name), echo, step_done)


def health(scope: Scope, name: str, now: datetime | None = None) -> dict:
    """Job ``name`` at a glance (docs/jobs.md): ``{"name", "scope", "schedule", "repository",
    "source", "last_run", "result" ("success"|"failure"|"never"), "exit_code",
    "failed_step", "error", "last_success", "last_success_age" (seconds), "next_run",
    "period" (seconds between runs), "running", "warning"}``; times are ISO 8601 UTC.
    ``warning``: the last success (or, never run, the job's creation) is older than twice
    the period. ``runs`` (newest first) and ``job`` (its config) come with it."""
    check_name(name)
    job = load(scope, name)
    now = now or datetime.now(timezone.utc)
    st = job_state.load(scope, name)
    running = job_state.running(scope, name)
    runs = st["runs"] + ([job_state.unfinished(st["current"])] if st.get("current") and not running else [])
    last = runs[-1] if runs else None
    success = next((r for r in reversed(runs) if r.get("result") == "success"), None)
    try:
        cal: Calendar | None = calendar(job.on_calendar)
    except UsageError:  # systemd-analyze missing here: no next run, no period
        cal = None
    next_run = timer_next(name, scope) or (cal.elapses[0] if cal and cal.elapses else None)
    period = cal.period() if cal else None
    age = (now - _time(success["end"])).total_seconds() if success else None
    warning = None
    if period:
        since = age if success else (now - _time(job.created)).total_seconds() if job.created else None
        if since is not None and since > 2 * period:
            what = f"last success {_span(since)} ago" if success else f"never succeeded since it was added {_span(since)} ago"
            warning = f"job {name}: {what}, more than twice its period ({_span(period)}): see diskvault job status {name}"
    return {
        "name": name, "scope": "user" if scope.user else "system", "schedule": job.on_calendar,
        "repository": job.repository, "source": job.source,
        "last_run": last["start"] if last else None, "result": last["result"] if last else "never",
        "exit_code": last["exit_code"] if last else None, "failed_step": last["failed_step"] if last else None,
        "error": last["error"] if last else None,
        "last_success": success["end"] if success else None, "last_success_age": round(age) if age is not None else None,
        "next_run": next_run.isoformat() if next_run else None, "period": period,
        "running": running, "warning": warning,
        "runs": list(reversed(runs)), "job": job.to_json(),
    }


def health_all(scope: Scope) -> list[dict]:
    """``health`` of every job of ``scope``, by name; a job whose file cannot be read is
    listed with ``result`` "invalid", its ``error`` and a ``warning``, the other fields null."""
    rows = []
    for name in scope.names():
        try:
            rows.append(health(scope, name))
        except UsageError as exc:
            row = dict.fromkeys(("schedule", "repository", "source", "last_run", "exit_code", "failed_step",
                                 "last_success", "last_success_age", "next_run", "period"))
            rows.append({"name": name, "scope": "user" if scope.user else "system", **row, "result": "invalid",
                         "error": str(exc), "running": False, "warning": str(exc), "runs": [], "job": None})
    return rows


def _time(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _span(seconds: float) -> str:
    """``3.5 days``, ``5 h``, ``12 min``: a rough human duration."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 60:.0f} min"
