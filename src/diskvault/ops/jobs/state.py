"""A job's state: its last runs and the next check slice, in ``STATE_DIR/NAME.json``.

``{"job": NAME, "check_next": K, "runs": [RUN, ...], "current": RUN}``, oldest run first, at
most ``KEEP_RUNS`` of them; ``current`` is the run going on (saved as each step starts: a
run killed outright leaves it, and it counts as a failure, ``unfinished``); replaced whole
on every change (``write_file``: a crash leaves the old or the new file). ``STATE_DIR/NAME.lock`` is held (flock) while a run goes on, so two runs of one job
never overlap; ``STATE_DIR/NAME.log`` holds the last run's output (``DISKVAULT_JOB_LOG``).
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime

from ...errors import RepositoryLocked
from .config import Scope
from .files import write_file

KEEP_RUNS = 50


def _path(scope: Scope, name: str, ext: str) -> str:
    return os.path.join(scope.state_dir, f"{name}.{ext}")


def log_path(scope: Scope, name: str) -> str:
    return _path(scope, name, "log")


def load(scope: Scope, name: str) -> dict:
    """The job's state; an empty one when it never ran (or its file is unreadable). What a
    damaged or hand-edited file holds that is not a run record is left out (and gone at the
    next save), so it never stops a run nor ``job list``."""
    state: dict = {}
    try:
        with open(_path(scope, name, "json"), "rb") as f:
            state = json.load(f)
    except (OSError, ValueError):
        pass
    if not isinstance(state, dict):
        state = {}
    runs = state.get("runs")
    state["runs"] = [r for r in runs if _is_run(r, finished=True)] if isinstance(runs, list) else []
    if not _is_run(state.get("current"), finished=False):
        state.pop("current", None)
    check_next = state.get("check_next")
    state["check_next"] = check_next if isinstance(check_next, int) and check_next >= 0 else 0
    state["job"] = name
    return state


def _is_run(run: object, finished: bool) -> bool:
    """True when ``run`` has the shape of a run record (runner.run_job) that list and status show."""
    if not isinstance(run, dict) or not isinstance(run.get("steps"), list):
        return False
    if run.get("result") not in (("success", "failure") if finished else (None,)):
        return False
    number = (int, float, type(None))
    if not all(isinstance(run.get(k), t) for k, t in (("exit_code", (int, type(None))), ("duration", number),
                                                       ("bytes_added", (int, type(None))))):
        return False
    if not all(isinstance(s, dict) and isinstance(s.get("step"), str) for s in run["steps"]):
        return False
    try:
        datetime.fromisoformat(run["start"])
        if run.get("end") is not None:
            datetime.fromisoformat(run["end"])
    except (KeyError, TypeError, ValueError):
        return False
    return True


def save(scope: Scope, name: str, state: dict) -> None:
    """Write the state (the newest ``KEEP_RUNS`` runs) crash-safely; OSError as raised."""
    state["runs"] = state["runs"][-KEEP_RUNS:]
    write_file(_path(scope, name, "json"), json.dumps(state, indent=2).encode() + b"\n", mode=0o600)


def unfinished(current: dict) -> dict:
    """The record of a run that never ended (``current`` in the state: the run as it was
    when its last step started, killed with it: kill -9, out of memory, a power cut): a
    failure of that step with no exit code."""
    return dict(current, result="failure", exit_code=None,
                error=f"the run stopped during its {current.get('failed_step')} step without ending "
                      "(killed, out of memory or a power cut): see the system log")


def remove(scope: Scope, name: str) -> None:
    for ext in ("json", "log", "lock"):
        try:
            os.unlink(_path(scope, name, ext))
        except FileNotFoundError:
            pass


class RunLock:
    """Held while job ``name`` runs; RepositoryLocked (exit 7) when another run holds it."""

    def __init__(self, scope: Scope, name: str) -> None:
        self.path = _path(scope, name, "lock")
        self.name = name
        self.fd = -1

    def __enter__(self) -> RunLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise RepositoryLocked(f"job {self.name} is already running (pid {holder}): wait for it to finish "
                                   f"(diskvault job status {self.name})") from None
        try:  # the pid only helps the message above: a full state folder must not stop the run
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        except OSError:
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def running(scope: Scope, name: str) -> bool:
    """True while a run of job ``name`` holds its lock."""
    try:
        fd = os.open(_path(scope, name, "lock"), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
