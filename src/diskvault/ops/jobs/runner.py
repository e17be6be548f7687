"""``job run``: a job's steps, one ``diskvault`` process each, recorded in its state.

Steps, in order, stopping at the first that fails: ``snapshot`` of the source (with the
job's tags); ``forget --prune`` with the job's keep rules, limited to this host, the job's
source and tags (skipped when the job has no keep rule); ``check --read-data-subset K/N``,
the next of the job's N fixed slices (N = ceil(100 / check_subset)), so N runs read every
pack once. Each step is ``sys.executable -m diskvault ... --json``: its exit code is the
command's (docs/cli.md), its stderr goes to ours and to the run's log. The passphrase
source is handed to the steps as ``DISKVAULT_PASSWORD_FILE``/``DISKVAULT_PASSWORD_COMMAND``
(replacing any passphrase variable of the caller's environment);
``DISKVAULT_LOCK_WAIT`` defaults to ``LOCK_WAIT`` seconds, so a run waits for a command that
holds the repository instead of failing. Then ``on_success`` or ``on_failure`` runs through
/bin/sh with ``DISKVAULT_JOB*`` variables (``hook_env``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone

from ...errors import Interrupted
from . import state as job_state
from .config import Job, Scope

LOCK_WAIT = "3600"  # seconds a step waits for a repository lock unless DISKVAULT_LOCK_WAIT says otherwise
PASSWORD_VARIABLES = ("DISKVAULT_PASSWORD", "DISKVAULT_PASSWORD_FILE", "DISKVAULT_PASSWORD_COMMAND")
EXIT_SIGNALLED = 128  # a step killed by signal S exits 128 + S, as a shell reports it


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def plan(job: Job, check_next: int) -> list[tuple[str, list[str]]]:
    """``[(step, diskvault arguments)]`` for one run; ``check_next`` is the 0-based slice."""
    repo = ["-r", job.repository]
    tags = [a for t in job.tags for a in ("--tag", t)]
    mounted = ["--allow-mounted"] if job.allow_mounted else []
    steps = [("snapshot", ["snapshot", *repo, "--json", "--no-progress", *tags, *mounted, job.source])]
    if job.keep_args():
        steps.append(("forget", ["forget", *repo, "--prune", "--json", "--no-progress", "--host", socket.gethostname(),
                                 "--source", job.source, *tags, *job.keep_args()]))
    n = job.slices()
    steps.append(("check", ["check", *repo, "--json", "--no-progress", "--read-data-subset", f"{check_next % n + 1}/{n}"]))
    return steps


def step_env(job: Job) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DISKVAULT_LOCK_WAIT", LOCK_WAIT)
    if job.password_file or job.password_command:  # the job's source, not one left in the caller's shell
        for key in PASSWORD_VARIABLES:
            env.pop(key, None)
    if job.password_file:
        env["DISKVAULT_PASSWORD_FILE"] = job.password_file
    if job.password_command:
        env["DISKVAULT_PASSWORD_COMMAND"] = job.password_command
    return env


def run_job(scope: Scope, job: Job, echo: Callable[[str], None], step_done: Callable[[dict], None]) -> dict:
    """Run ``job`` once (RepositoryLocked when it is already running) and return the run as
    recorded in its state: ``{"start", "end", "duration", "result" ("success"|"failure"),
    "exit_code", "failed_step", "error", "snapshot", "bytes_added", "steps": [...], "hook"}``.
    ``echo`` gets the steps' stderr lines (and warnings), ``step_done`` each step's record
    (``_run_step``) when it ends."""
    with job_state.RunLock(scope, job.name):
        state = job_state.load(scope, job.name)
        if state.get("current"):  # the last run never ended: record it as the failure it was
            state["runs"].append(job_state.unfinished(state.pop("current")))
        started = time.monotonic()
        run: dict = {"start": now(), "end": None, "duration": None, "result": None, "exit_code": None,
                     "failed_step": None, "error": None, "snapshot": None, "bytes_added": None, "steps": [], "hook": None}
        log_path = job_state.log_path(scope, job.name)
        env = step_env(job)
        with RunLog(log_path, job.name, echo) as log:
            step = None
            try:
                for step, args in plan(job, int(state.get("check_next", 0))):
                    state["current"] = dict(run, failed_step=step)  # what a killed run leaves behind
                    _save(scope, job, state, lambda line: None)
                    rec = _run_step(step, args, env, log, echo)
                    run["steps"].append(rec)
                    if step == "snapshot" and rec["exit_code"] == 0:
                        run["snapshot"], run["bytes_added"] = rec.get("snapshot"), rec.get("bytes_added")
                    if step == "check" and rec["exit_code"] in (0, 8):  # the slice was read
                        state["check_next"] = (int(state.get("check_next", 0)) + 1) % job.slices()
                    step_done(rec)
                    if rec["exit_code"] != 0:
                        run.update(failed_step=step, exit_code=rec["exit_code"], error=rec["error"])
                        break
            except Interrupted as exc:
                run.update(failed_step=step, exit_code=Interrupted.exit_code, error=str(exc))
                _finish(scope, job, state, run, started, echo)
                raise
        run["exit_code"] = run["exit_code"] or 0
        recorded = _finish(scope, job, state, run, started, echo)
        hook = job.on_success if run["exit_code"] == 0 else job.on_failure
        if hook:
            name = "on_success" if run["exit_code"] == 0 else "on_failure"
            code = subprocess.run(["/bin/sh", "-c", hook], env=hook_env(job, run, log_path), stdout=sys.stderr).returncode
            run["hook"] = {"name": name, "exit_code": code}
            if code != 0:
                echo(f"warning: job {job.name}: the {name.replace('_', '-')} command exited {code}")
            _finish(scope, job, state, run, started, echo if recorded else lambda line: None, again=True)
        return run


def _finish(scope: Scope, job: Job, state: dict, run: dict, started: float, echo: Callable[[str], None],
            again: bool = False) -> bool:
    """Complete ``run`` (unless ``again``) and save the state; a state that cannot be saved
    (a full disk) is a warning (and False): the hook still runs and the exit code stays the steps'."""
    if not again:
        run["end"] = now()
        run["duration"] = round(time.monotonic() - started, 3)
        run["result"] = "success" if run["exit_code"] == 0 else "failure"
        state["runs"].append(run)
        state.pop("current", None)
    return _save(scope, job, state, echo)


def _save(scope: Scope, job: Job, state: dict, echo: Callable[[str], None]) -> bool:
    """Save the state; False (and a warning) when it cannot be saved."""
    try:
        job_state.save(scope, job.name, state)
        return True
    except OSError as exc:
        echo(f"warning: job {job.name}: this run could not be recorded "
             f"({exc.strerror or exc}: {exc.filename or scope.state_dir})")
        return False


class RunLog:
    """The run's log file (``DISKVAULT_JOB_LOG``), written as the run goes. A log that
    cannot be written (a full or read-only state folder) costs one warning, never the run:
    the steps, their record and the hook go on without it."""

    def __init__(self, path: str, name: str, echo: Callable[[str], None]) -> None:
        self.path, self.name, self.echo = path, name, echo
        self.file = None
        try:
            self.file = open(path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as exc:
            self._lost(exc)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass

    def write(self, text: str) -> None:
        if self.file is None:
            return
        try:
            self.file.write(text)
            self.file.flush()
        except OSError as exc:
            self._lost(exc)

    def _lost(self, exc: OSError) -> None:
        self.echo(f"warning: job {self.name}: its log {self.path} cannot be written "
                  f"({(exc.strerror or str(exc)).lower()}): the run goes on without it")
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
        self.file = None


def hook_env(job: Job, run: dict, log_path: str) -> dict[str, str]:
    """The environment of ``on_success``/``on_failure`` (docs/jobs.md): ours plus
    DISKVAULT_JOB (name), DISKVAULT_JOB_RESULT (success|failure), DISKVAULT_JOB_STEP (the
    failed step or empty), DISKVAULT_JOB_EXIT_CODE, DISKVAULT_JOB_ERROR (one line or
    empty), DISKVAULT_JOB_LOG (this run's output), DISKVAULT_JOB_REPOSITORY,
    DISKVAULT_JOB_SOURCE, DISKVAULT_JOB_SNAPSHOT (the new snapshot's id or empty),
    DISKVAULT_JOB_BYTES_ADDED, DISKVAULT_JOB_START, DISKVAULT_JOB_END."""
    env = dict(os.environ)
    values = {
        "": job.name, "RESULT": run["result"], "STEP": run["failed_step"], "EXIT_CODE": run["exit_code"],
        "ERROR": run["error"], "LOG": log_path, "REPOSITORY": job.repository, "SOURCE": job.source,
        "SNAPSHOT": run["snapshot"], "BYTES_ADDED": run["bytes_added"], "START": run["start"], "END": run["end"],
    }
    for key, value in values.items():
        env["DISKVAULT_JOB" + (f"_{key}" if key else "")] = "" if value is None else str(value)
    return env


def _run_step(step: str, args: list[str], env: dict[str, str], log: RunLog, echo: Callable[[str], None]) -> dict:
    """Run one step; its record: ``{"step", "command", "start", "duration", "exit_code",
    "error", ...}`` plus what its JSON says (snapshot: ``snapshot``, ``bytes_added``,
    ``new_bytes``; forget: ``forgot``, ``reclaimed``; check: ``subset``, ``packs_read``,
    ``packs_total``, ``status``)."""
    cmd = [sys.executable, "-m", "diskvault", *args]
    rec: dict = {"step": step, "command": ["diskvault", *args], "start": now()}
    started = time.monotonic()
    last_error = ""
    log.write(f"--- {rec['start']} diskvault {' '.join(args)}\n")
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, env=env, text=True, errors="replace")
        try:
            for line in proc.stderr:
                line = line.rstrip("\n")
                log.write(line + "\n")
                echo(line)
                if line.strip():
                    last_error = line.strip()
            code = proc.wait()
        except Interrupted:  # stopped (systemctl stop, Ctrl-C): let the step clean up first
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            raise
        out.seek(0)
        output = out.read()
    rec["duration"] = round(time.monotonic() - started, 3)
    rec["exit_code"] = code if code >= 0 else EXIT_SIGNALLED - code
    try:
        data = json.loads(output) if output.strip() else None
    except ValueError:
        data = None
    rec.update(_details(step, data))
    if code == 0:
        rec["error"] = None
    elif step == "check" and data and data.get("errors"):
        first = data["errors"][0]
        rec["error"] = f"check found {len(data['errors'])} errors; the first: {first.get('message')}"
    else:
        rec["error"] = last_error.removeprefix("diskvault: error: ") or f"diskvault {step} exited {rec['exit_code']}"
    log.write(f"--- exit {rec['exit_code']} after {rec['duration']} s\n")
    return rec


def _details(step: str, data: dict | None) -> dict:
    if not isinstance(data, dict):
        return {}
    if step == "snapshot":
        return {"snapshot": data.get("id"), "bytes_added": data.get("stored_bytes"), "new_bytes": data.get("new_bytes")}
    if step == "forget":
        prune = data.get("prune") or {}
        return {"forgot": len(data.get("removed") or []), "reclaimed": prune.get("bytes_reclaimed")}
    if step == "check":
        read = data.get("read_data") or {}
        return {"status": data.get("status"), "subset": read.get("subset"), "packs_read": read.get("packs"),
                "packs_total": read.get("packs_total")}
    return {}
