"""diskvault job add|list|run|status|remove: scheduled snapshot jobs (docs/jobs.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ..policy import parse_duration
from .common import JsonOpt, RepoOpt, human, passphrase, plural, print_json
from .forget_cmd import KeepTagOpt, KeepWithinOpt, check_count, keep_count_option

if TYPE_CHECKING:
    from ..ops.jobs import Scope

job_app = typer.Typer(
    name="job", no_args_is_help=True,
    help="Scheduled jobs: snapshot, forget --prune and a rotating check on a calendar (docs/jobs.md).",
    context_settings={"help_option_names": ["-h", "--help"]},
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", show_default=False, help="The job's name (letters, digits, - and _).")]
UserOpt = Annotated[bool, typer.Option(
    "--user", help="The calling user's jobs and systemd user units, instead of system-wide ones (root).")]


def _scope(user: bool) -> Scope:
    from ..ops.jobs import Scope

    return Scope.of(user)


@job_app.command("add")
def add(
    name: NameArg,
    repo: RepoOpt,
    source: Annotated[str, typer.Option("--source", metavar="PATH", show_default=False,
                                        help="Device or image file to snapshot.")],
    tag: Annotated[list[str], typer.Option("--tag", "-t", metavar="TAG", help="Tag the job's snapshots (repeatable); forget keeps to them.")] = [],  # noqa: B006
    allow_mounted: Annotated[bool, typer.Option(
        "--allow-mounted", help="Snapshot the source even when it is mounted read-write (see docs/jobs.md for consistent images).")] = False,
    on_calendar: Annotated[str, typer.Option("--on-calendar", metavar="SPEC", help="When to run: a systemd calendar expression (daily, hourly, 'Mon..Fri 02:00').")] = "daily",
    randomized_delay: Annotated[str, typer.Option("--randomized-delay", metavar="SPAN", help="Start up to SPAN later at random (RandomizedDelaySec=; 0 for none).")] = "15min",
    keep_last: keep_count_option("--keep-last") = 0,
    keep_hourly: keep_count_option("--keep-hourly") = 0,
    keep_daily: keep_count_option("--keep-daily") = 0,
    keep_weekly: keep_count_option("--keep-weekly") = 0,
    keep_monthly: keep_count_option("--keep-monthly") = 0,
    keep_yearly: keep_count_option("--keep-yearly") = 0,
    keep_within: KeepWithinOpt = None,
    keep_tag: KeepTagOpt = [],  # noqa: B006
    check_subset: Annotated[str, typer.Option("--check-subset", metavar="N%", help="Read N% of the packs each run (a rotating slice: all of them every 100/N runs).")] = "10%",
    password_file: Annotated[str | None, typer.Option("--password-file", metavar="FILE", help="Passphrase source handed to each step (the passphrase is never stored).")] = None,
    password_command: Annotated[str | None, typer.Option("--password-command", metavar="COMMAND", help="Command printing the passphrase, handed to each step.")] = None,
    on_failure: Annotated[str | None, typer.Option("--on-failure", metavar="COMMAND", help="Run through /bin/sh when a run fails (DISKVAULT_JOB_* variables describe it).")] = None,
    on_success: Annotated[str | None, typer.Option("--on-success", metavar="COMMAND", help="Run through /bin/sh when a run succeeds.")] = None,
    user: UserOpt = False,
    print_units: Annotated[bool, typer.Option("--print", help="Save the job but only print its units (install nothing).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a job of that name.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Add a job and schedule it: systemd timer (or, without systemd, a crontab line)."""
    from ..ops.jobs import add as add_op, new_job

    counts = {f"keep_{r}": check_count(v, f"--keep-{r}") for r, v in (
        ("last", keep_last), ("hourly", keep_hourly), ("daily", keep_daily), ("weekly", keep_weekly),
        ("monthly", keep_monthly), ("yearly", keep_yearly))}
    if keep_within is not None:
        try:
            parse_duration(keep_within)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--keep-within") from None
    if any(not t for t in tag):
        raise typer.BadParameter("give non-empty text", param_hint="--tag")
    if any("," in t for t in tag):
        raise typer.BadParameter("a tag cannot hold a comma: give --tag once per tag", param_hint="--tag")
    job = new_job(name=name, repository=repo, source=source, tags=tag, allow_mounted=allow_mounted, on_calendar=on_calendar,
                  randomized_delay=randomized_delay, keep_within=keep_within or "", keep_tag=keep_tag,
                  check_subset=check_subset, password_file=password_file or "", password_command=password_command or "",
                  on_failure=on_failure or "", on_success=on_success or "", **counts)
    res = add_op(_scope(user), job, force=force, print_only=print_units,
                 passphrase=passphrase(job.password_file, job.password_command, env=False))
    if json_out:
        print_json(res.to_json())
        return
    typer.echo(f"job {name} saved in {res.config}", err=True)
    if res.mode == "installed":
        typer.echo(f"timer diskvault-job@{name}.timer enabled (units in {res.unit_dir}); next run {_when(res.next_run)}; "
                   f"logs: journalctl {'--user ' if user else ''}-u diskvault-job@{name}", err=True)
    elif res.mode == "printed":
        for file, text in res.units.items():
            typer.echo(f"# {res.unit_dir}/{file}\n{text}")
        typer.echo(f"units not installed (--print): save them as shown, then systemctl {'--user ' if user else ''}"
                   f"daemon-reload && systemctl {'--user ' if user else ''}enable --now diskvault-job@{name}.timer", err=True)
    elif res.crontab:
        typer.echo(res.crontab)
        typer.echo("systemd is not running here: add the line above to the crontab (crontab -e) to run the job "
                   "on its schedule (cron does not catch up on runs missed while the machine was off)", err=True)
    else:
        typer.echo(f"warning: systemd is not running here and --on-calendar {on_calendar!r} has no crontab form: "
                   f"schedule diskvault job run {'--user ' if user else ''}{name} yourself, or use a simpler "
                   "schedule (daily, 'Mon..Fri 02:00')", err=True)


@job_app.command("list")
def list_jobs(user: UserOpt = False, json_out: JsonOpt = False) -> None:
    """List the jobs: schedule, last run and its result, next run, last success."""
    from ..ops.jobs import health_all

    scope = _scope(user)
    rows = health_all(scope)
    if json_out:
        print_json([{k: v for k, v in r.items() if k not in ("runs", "job")} for r in rows])
        return
    if not rows:
        typer.echo(f"no jobs in {scope.config_dir}: add one with diskvault job add{' --user' if user else ''}", err=True)
        return
    table = [("NAME", "SCHEDULE", "LAST RUN", "RESULT", "NEXT RUN", "LAST SUCCESS")]
    for r in rows:
        table.append((r["name"], r["schedule"] or "-", _when(r["last_run"]), _result(r), _when(r["next_run"]), _age(r)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for r in rows:
        if r["warning"]:
            typer.echo(f"warning: {r['warning']}", err=True)


@job_app.command("status")
def status(name: NameArg, user: UserOpt = False, json_out: JsonOpt = False) -> None:
    """Show a job's health and its last runs (durations, bytes added, exit codes)."""
    from ..ops.jobs import health

    r = health(_scope(user), name)
    if json_out:
        print_json(r)
        return
    job = r["job"]
    typer.echo(f"job {name} ({r['scope']}): {job['source']} -> {job['repository']}")
    typer.echo(f"  schedule      {r['schedule']}, next run {_when(r['next_run'])}")
    typer.echo(f"  last run      {_when(r['last_run'])}: {_result(r)}{' (running now)' if r['running'] else ''}")
    typer.echo(f"  last success  {_age(r)}")
    if r["error"]:
        typer.echo(f"  error         {r['failed_step']}: {r['error']}")
    for run in r["runs"][:10]:
        added = human(run["bytes_added"]) if run.get("bytes_added") is not None else "-"
        steps = ", ".join(f"{s['step']} {s['exit_code']}" for s in run["steps"])
        code = "-" if run["exit_code"] is None else run["exit_code"]
        typer.echo(f"  {_when(run['start'])}  {run['result']:<7}  exit {code:<3}  {run['duration'] or 0:7.1f} s  "
                   f"{added:>10} added  ({steps})")
    if r["warning"]:
        typer.echo(f"warning: {r['warning']}", err=True)


@job_app.command("run")
def run(name: NameArg, user: UserOpt = False, json_out: JsonOpt = False) -> None:
    """Run a job now (what its timer runs): snapshot, forget --prune, check a slice; exit code of the failed step."""
    from ..ops.jobs import run as run_op

    rec = run_op(_scope(user), name, echo=lambda line: typer.echo(line, err=True),
                 step_done=lambda step: typer.echo(_step_line(name, step), err=True))
    if json_out:
        print_json(rec)
    if rec["exit_code"]:
        raise typer.Exit(rec["exit_code"])


@job_app.command("remove")
def remove(name: NameArg, user: UserOpt = False) -> None:
    """Remove a job: stop and delete its units, its config and its run history."""
    from ..ops.jobs import remove as remove_op

    for path in remove_op(_scope(user), name):
        typer.echo(f"removed {path}", err=True)


def _step_line(name: str, rec: dict) -> str:
    """``job nightly: snapshot 1a2b3c4d5e6f, 12.50 MiB added in 3.1 s`` and the like."""
    size = lambda key: human(rec[key]) if rec.get(key) is not None else "?"  # noqa: E731
    step = rec["step"]
    if step == "snapshot":
        what = f"snapshot {(rec.get('snapshot') or '?')[:12]}, {size('bytes_added')} added"
    elif step == "forget":
        what = f"forget: {plural(rec.get('forgot') or 0, 'snapshot')} forgotten, {size('reclaimed')} reclaimed"
    else:
        what = (f"check {rec.get('subset')}: {rec.get('packs_read')} of {plural(rec.get('packs_total') or 0, 'pack')} read, "
                f"{rec.get('status')}")
    if rec["exit_code"] and not (step == "check" and rec.get("status")):
        what = f"{step} failed"
    tail = f" (exit {rec['exit_code']}: {rec['error']})" if rec["exit_code"] else ""
    return f"job {name}: {what} in {rec['duration']:.1f} s{tail}"


def _when(iso: str | None) -> str:
    return iso[:16].replace("T", " ") + " UTC" if iso else "-"


def _result(r: dict) -> str:
    if r["result"] == "failure":
        return f"failure ({'killed' if r['exit_code'] is None else 'exit %s' % r['exit_code']}, {r['failed_step']})"
    return r["result"]


def _age(r: dict) -> str:
    age = r["last_success_age"]
    if age is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if age >= size:
            return f"{age // size} {unit} ago"
    return f"{age} s ago"
