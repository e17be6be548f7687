"""Scheduling a job: systemd units (or a crontab line) and its calendar.

Each job gets a service and a timer named ``diskvault-job@NAME`` (so ``journalctl -u
diskvault-job@NAME`` shows its runs): the service runs ``diskvault job run NAME`` at low
priority (``Nice=10``, ``IOSchedulingClass=idle``), the timer starts it on ``OnCalendar=``
with ``Persistent=true`` (a run missed while the machine was off or asleep happens at the
next boot or wake) and ``RandomizedDelaySec=``. System-wide units go to /etc/systemd/system,
``--user`` ones to ~/.config/systemd/user. ``systemd-analyze calendar`` checks schedules and
computes the next runs; where systemd is not running the job is scheduled by cron instead
(``crontab_line``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone

from ...errors import UsageError
from .config import JOBS_DIR_ENV, Job, Scope
from .files import write_file

PREFIX = "diskvault-job@"
SYSTEM_UNIT_DIR = "/etc/systemd/system"
_ELAPSE = re.compile(r"^\s*(Next elapse|Iter\. #\d+|\(in UTC\)): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\S+)$")


def unit_names(name: str) -> tuple[str, str]:
    """``(service, timer)`` unit names of job ``name``."""
    return f"{PREFIX}{name}.service", f"{PREFIX}{name}.timer"


def unit_dir(scope: Scope) -> str:
    if not scope.user:
        return SYSTEM_UNIT_DIR
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "systemd", "user")


def systemd_running() -> bool:
    """True when systemd is the init system (sd_booted(): /run/systemd/system exists)."""
    return os.path.isdir("/run/systemd/system")


def _command(job: Job, scope: Scope) -> list[str]:
    """The command the timer or cron runs: this interpreter, ``-m diskvault job run``."""
    return [sys.executable, "-m", "diskvault", "job", "run", *(["--user"] if scope.user else []), job.name]


def _environment() -> dict[str, str]:
    override = os.environ.get(JOBS_DIR_ENV)
    return {JOBS_DIR_ENV: os.path.abspath(override)} if override else {}


def units(job: Job, scope: Scope) -> dict[str, str]:
    """``{unit file name: text}`` for ``job``: its service and its timer."""
    service, timer = unit_names(job.name)
    env = "".join(line + "\n" for line in _environment_lines())
    exec_start = " ".join(_systemd_quote(a) for a in _command(job, scope))
    return {
        service: (
            "[Unit]\n"
            f"Description=diskvault job {job.name}: snapshot {_percent(job.source)} into {_percent(job.repository)}\n"
            "Documentation=man:systemd.timer(5)\n"
            + ("" if scope.user else "After=local-fs.target\n")
            + "\n[Service]\n"
            "Type=oneshot\n"
            f"ExecStart={exec_start}\n"
            + env
            + "Nice=10\n"
            "IOSchedulingClass=idle\n"
        ),
        timer: (
            "[Unit]\n"
            f"Description=diskvault job {job.name} ({_percent(job.on_calendar)})\n"
            "\n[Timer]\n"
            f"OnCalendar={job.on_calendar}\n"
            "Persistent=true\n"
            f"RandomizedDelaySec={job.randomized_delay}\n"
            f"Unit={service}\n"
            "\n[Install]\n"
            "WantedBy=timers.target\n"
        ),
    }


def _percent(text: str) -> str:
    """``text`` with systemd's specifier character escaped (``%`` -> ``%%``)."""
    return text.replace("%", "%%")


def _systemd_quote(arg: str) -> str:
    """An ExecStart= word: double-quoted (with \\ and \" escaped, % doubled) when needed."""
    arg = _percent(arg)
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_installable(job: Job, scope: Scope) -> None:
    """UsageError when the job's service unit exists and belongs to another jobs folder
    (``DISKVAULT_JOBS_DIR``): installing would take over that job's timer."""
    path = os.path.join(unit_dir(scope), unit_names(job.name)[0])
    if os.path.exists(path) and not _ours(path):
        raise UsageError(f"{path} runs a job {job.name} of another jobs folder ({JOBS_DIR_ENV}): choose another name, "
                         "or remove that job first")


def install(job: Job, scope: Scope) -> list[str]:
    """Write the units into the unit folder, reload systemd and enable and start the timer;
    returns the paths written. OSError and UsageError (systemctl failed) as raised."""
    folder = unit_dir(scope)
    written = []
    for file, text in units(job, scope).items():
        path = os.path.join(folder, file)
        write_file(path, text.encode())
        written.append(path)
    _systemctl(scope, "daemon-reload")
    _systemctl(scope, "enable", "--now", unit_names(job.name)[1])
    return written


def uninstall(name: str, scope: Scope) -> list[str]:
    """Stop and disable the job's timer (when systemd runs) and delete its unit files;
    returns the paths deleted."""
    service, timer = unit_names(name)
    folder = unit_dir(scope)
    if not _ours(os.path.join(folder, service)):
        return []
    present = [os.path.join(folder, f) for f in (timer, service) if os.path.exists(os.path.join(folder, f))]
    if present and systemd_running():
        _systemctl(scope, "disable", "--now", timer, check=False)
    for path in present:
        os.unlink(path)
    if present and systemd_running():
        _systemctl(scope, "daemon-reload", check=False)
    return present


def _ours(path: str) -> bool:
    """True when the service unit at ``path`` runs a job of this jobs folder: written with
    the same ``DISKVAULT_JOBS_DIR`` (or none), so a job removed from a test's folder never
    takes the real job of that name with it."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return False
    env = [line for line in text.splitlines() if line.startswith("Environment=") and JOBS_DIR_ENV in line]
    return env == _environment_lines()


def _environment_lines() -> list[str]:
    return [f"Environment={_percent(shlex.quote(f'{k}={v}'))}" for k, v in _environment().items()]


def _systemctl(scope: Scope, *args: str, check: bool = True) -> str:
    cmd = ["systemctl", *(["--user"] if scope.user else []), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UsageError("systemctl is not installed: install systemd, or schedule the job with cron "
                         "(diskvault job add --print shows the crontab line)") from None
    if check and proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise UsageError(f"{' '.join(cmd)} failed ({last}): see journalctl -xe, then run diskvault job add --force again")
    return proc.stdout


def timer_next(name: str, scope: Scope) -> datetime | None:
    """The installed timer's next start as systemd plans it (random delay included), or
    None when systemd is not running or the timer is not installed."""
    if not systemd_running() or not shutil.which("systemctl"):
        return None
    out = _systemctl(scope, "show", "-P", "NextElapseUSecRealtime", "--timestamp=unix", unit_names(name)[1],
                     check=False).strip()
    m = re.fullmatch(r"@(\d+)", out)
    return datetime.fromtimestamp(int(m.group(1)), timezone.utc) if m else None


# --- calendar --------------------------------------------------------------------------


@dataclass(frozen=True)
class Calendar:
    """A checked ``OnCalendar=`` expression: its normalized form and next elapses (UTC)."""

    spec: str
    normalized: str
    elapses: list[datetime]

    def period(self) -> float | None:
        """Seconds between runs: the longest gap between the next elapses (None: one or none)."""
        gaps = [(b - a).total_seconds() for a, b in zip(self.elapses, self.elapses[1:])]
        return max(gaps) if gaps else None


def calendar(spec: str, iterations: int = 6) -> Calendar:
    """Check ``spec`` with ``systemd-analyze calendar`` and compute its next ``iterations``
    elapses; raises UsageError for a spec systemd rejects, or when systemd-analyze is missing."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        raise UsageError("systemd-analyze is not installed, so --on-calendar cannot be checked: install systemd "
                         "(Debian: apt-get install systemd)")
    proc = subprocess.run([tool, "calendar", f"--iterations={iterations}", spec], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UsageError(f"--on-calendar {spec!r} is not a systemd calendar expression: "
                         "use e.g. daily, hourly, 'Mon..Fri 02:00' (man systemd.time)")
    normalized = ""
    found: list[tuple[str, str]] = []
    for line in proc.stdout.splitlines():
        if line.strip().startswith("Normalized form:"):
            normalized = line.split(":", 1)[1].strip()
        m = _ELAPSE.match(line)
        if m:
            if m.group(1) == "(in UTC)":
                found[-1] = (m.group(2), m.group(3))
            else:
                found.append((m.group(2), m.group(3)))
    elapses = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc) for t, zone in found
               if zone == "UTC"]
    return Calendar(spec, normalized, elapses)


_DAYS = {"Mon": 1, "Tue": 2, "Wed": 3, "Thu": 4, "Fri": 5, "Sat": 6, "Sun": 7}


def crontab_line(job: Job, scope: Scope, cal: Calendar) -> str | None:
    """The crontab line (``crontab -e``) that runs ``job`` on its schedule, or None when the
    schedule has no cron equivalent (seconds, years, a time zone, ``~`` last days, both a
    weekday and a day of the month)."""
    parts = cal.normalized.split()
    dow = "*"
    if parts and not parts[0][0].isdigit() and parts[0][0] != "*":
        dow = parts.pop(0)
    if len(parts) != 2:
        return None
    date, clock = parts[0].split("-"), parts[1].split(":")
    if len(date) != 3 or len(clock) != 3 or date[0] != "*" or clock[2] != "00" or "~" in parts[0]:
        return None
    fields = [_cron_field(clock[1], 59), _cron_field(clock[0], 23), _cron_field(date[2], 31),
              _cron_field(date[1], 12), _cron_days(dow)]
    if None in fields or (fields[2] != "*" and fields[4] != "*"):  # cron ORs them, systemd ANDs
        return None
    env = "".join(f"{k}={shlex.quote(v)} " for k, v in _environment().items())
    command = env + shlex.join(_command(job, scope))
    return " ".join(fields) + " " + command.replace("%", "\\%")


def _cron_field(text: str, top: int) -> str | None:
    if text == "*":
        return "*"
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:\.\.(\d+))?(?:/(\d+))?", part)
        if not m:
            return None
        a, b, step = m.groups()
        if step:
            out.append(f"{int(a)}-{int(b) if b else top}/{int(step)}")
        else:
            out.append(f"{int(a)}-{int(b)}" if b else str(int(a)))
    return ",".join(out)


def _cron_days(text: str) -> str | None:
    if text == "*":
        return "*"
    out = []
    for part in text.split(","):
        ends = part.split("..")
        if len(ends) > 2 or any(e not in _DAYS for e in ends):
            return None
        out.append("-".join(str(_DAYS[e]) for e in ends))
    return ",".join(out)


def check_timespan(text: str) -> str:
    """``text`` when systemd reads it as a time span (``RandomizedDelaySec=``); raises
    UsageError (systemd-analyze missing counts as unchecked: the calendar check names it)."""
    tool = shutil.which("systemd-analyze")
    if tool and subprocess.run([tool, "timespan", text], capture_output=True).returncode != 0:
        raise UsageError(f"--randomized-delay {text!r} is not a time span: use e.g. 0, 30s, 15min, 1h")
    return text
