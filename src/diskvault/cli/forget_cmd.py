"""diskvault forget: drop snapshots by retention policy or by name (optionally prune)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ..policy import Policy, parse_duration, parse_tag_sets
from ..rawnames import readable
from .common import (
    HostOpt, JsonOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, SourceOpt, TagOpt, open_repo, passphrase, plural,
    print_json,
)
from .prune_cmd import DEFAULT_MAX_UNUSED, MaxUnusedOpt, RepackSmallOpt, check_max_unused, print_prune, run_prune

if TYPE_CHECKING:
    from ..ops.retention.forget import ForgetResult

_HELP = {
    "last": "Keep the N newest snapshots.",
    "hourly": "Keep the newest snapshot of each of the last N hours that have one.",
    "daily": "Keep the newest snapshot of each of the last N days that have one.",
    "weekly": "Keep the newest snapshot of each of the last N ISO weeks that have one.",
    "monthly": "Keep the newest snapshot of each of the last N months that have one.",
    "yearly": "Keep the newest snapshot of each of the last N years that have one.",
}


def keep_count_option(name: str):
    """The option type of one ``--keep-*`` count rule (shared with ``job add``)."""
    rule = name.removeprefix("--keep-")
    return Annotated[int, typer.Option(name, metavar="N", help=f"{_HELP[rule]} -1: unlimited.", show_default=False)]


KeepWithinOpt = Annotated[str | None, typer.Option(
    "--keep-within", metavar="DURATION", help="Keep snapshots within DURATION (1y2m3d4h, 2w) of the newest.")]
KeepTagOpt = Annotated[list[str], typer.Option(
    "--keep-tag", metavar="TAG[,TAG]", help="Keep snapshots with these tags (repeatable).")]


def check_count(value: int, name: str) -> int:
    if value < -1:
        raise typer.BadParameter("give a count >= 0, or -1 for unlimited", param_hint=name)
    return value


def forget(
    repo: RepoOpt,
    snapshots: Annotated[list[str] | None, typer.Argument(metavar="SNAPSHOT", show_default=False, help="Snapshots to forget (id, prefix, latest, latest:TAG); or give keep rules.")] = None,
    keep_last: keep_count_option("--keep-last") = 0,
    keep_hourly: keep_count_option("--keep-hourly") = 0,
    keep_daily: keep_count_option("--keep-daily") = 0,
    keep_weekly: keep_count_option("--keep-weekly") = 0,
    keep_monthly: keep_count_option("--keep-monthly") = 0,
    keep_yearly: keep_count_option("--keep-yearly") = 0,
    keep_within: KeepWithinOpt = None,
    keep_tag: KeepTagOpt = [],  # noqa: B006
    host: HostOpt = None,
    source: SourceOpt = None,
    tag: TagOpt = [],  # noqa: B006
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Show what would be kept and removed; change nothing.")] = False,
    prune: Annotated[bool, typer.Option("--prune", help="Run prune afterwards.")] = False,
    max_unused: MaxUnusedOpt = DEFAULT_MAX_UNUSED,
    repack_small: RepackSmallOpt = False,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on a terminal (prune).")] = True,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Forget snapshots by retention policy (restic semantics) or by name; data goes with prune."""
    from ..ops.retention.forget import forget_by_policy, forget_snapshots

    counts = {name: check_count(v, name) for name, v in (
        ("--keep-last", keep_last), ("--keep-hourly", keep_hourly), ("--keep-daily", keep_daily),
        ("--keep-weekly", keep_weekly), ("--keep-monthly", keep_monthly), ("--keep-yearly", keep_yearly))}
    try:
        within = parse_duration(keep_within) if keep_within is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--keep-within") from None
    check_max_unused(max_unused)
    policy = Policy(*counts.values(), within=within, tags=parse_tag_sets(keep_tag))
    secret = passphrase(password_file, password_command)  # asked once for forget and prune
    with open_repo(repo, write=not dry_run, secret=secret) as r:
        if snapshots:
            if not policy.empty():
                raise typer.BadParameter("give snapshots or keep rules, not both", param_hint="SNAPSHOT")
            res = forget_snapshots(r, snapshots, dry_run, host, source, tag)
        else:
            if policy.empty():
                raise typer.BadParameter(
                    "no keep rule given: say what to keep (e.g. --keep-last 7) or name the snapshots to forget",
                    param_hint="--keep-*")
            res = forget_by_policy(r, policy, tag, host, dry_run, source)
    if not json_out:
        _print(res, prune_follows=prune)
    pruned = None
    if prune and not dry_run:
        pruned = run_prune(repo, max_unused, repack_small, False, progress and not json_out, secret)
    elif prune and not json_out:
        typer.echo("prune skipped: this is a dry run (run diskvault prune --dry-run to see what it would do)", err=True)
    if json_out:
        out = res.to_json()
        out["prune"] = pruned.to_json() if pruned else None
        print_json(out)
    elif pruned:
        print_prune(pruned)


def _print(res: ForgetResult, prune_follows: bool) -> None:
    would = "would " if res.dry_run else ""
    for g in res.groups:
        typer.echo(f"host {g['host']}, source {readable(g['source'])}: keep {len(g['keep'])}, {would}remove {len(g['remove'])}", err=True)
        for s in g["keep"]:
            typer.echo(f"  keep    {s['id'][:12]}  {s['time'][:19].replace('T', ' ')}  {', '.join(s['reasons'])}", err=True)
        for s in g["remove"]:
            typer.echo(f"  remove  {s['id'][:12]}  {s['time'][:19].replace('T', ' ')}", err=True)
    if not res.groups:
        for sid in res.removed:
            typer.echo(f"  remove  {sid[:12]}", err=True)
    typer.echo(f"{'would forget' if res.dry_run else 'forgot'} {plural(len(res.removed), 'snapshot')}, {res.kept} kept"
               + ("" if res.dry_run or not res.removed or prune_follows else "; run diskvault prune to reclaim their space"), err=True)
