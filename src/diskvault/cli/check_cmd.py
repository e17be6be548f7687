"""diskvault check: structure check, optionally reading and re-hashing the data.

Exit codes: 0 sound, 8 damaged (errors listed), 3 the repository cannot be opened
(e.g. its catalog is unreadable: run ``repair``), 1 internal error.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import EXIT_DAMAGED
from .common import (
    Bar, JsonOpt, NoLockOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, human, open_repo, passphrase, plural,
    print_json,
)

SHOW = 20  # findings printed per kind before "... and N more"


def _ranges(ranges: list[list[int]], limit: int = 4) -> str:
    parts = [f"{o}+{n}" for o, n in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"… {len(ranges) - limit} more")
    return ", ".join(parts)


def check(
    repo: RepoOpt,
    read_data: Annotated[bool, typer.Option("--read-data", help="Also read, decompress and re-hash every chunk.")] = False,
    subset: Annotated[str | None, typer.Option(
        "--read-data-subset", metavar="N%|n/N",
        help="Read only a slice of the packs: N% (rotates on each run) or the n-th of N fixed slices.")] = None,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on a terminal.")] = True,
    no_lock: NoLockOpt = False,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Check the repository: catalog, packs and snapshots agree; with --read-data, every chunk re-hashes."""
    from ..ops.integrity.check import check as check_op

    with open_repo(repo, write=False, no_lock=no_lock, secret=passphrase(password_file, password_command)) as r, Bar(progress and not json_out) as bar:
        try:
            report = check_op(r, read_data=read_data, subset=subset, progress=bar)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--read-data-subset") from None
    if json_out:
        print_json(report.to_json())
    else:
        typer.echo(f"checked {plural(report.packs, 'pack')}, {plural(report.blobs, 'blob')}, {plural(report.snapshots, 'snapshot')} "
                   f"({plural(report.referenced_chunks, 'distinct chunk')} referenced) in {report.duration:.1f} s", err=True)
        if report.read_data:
            d = report.read_data
            typer.echo(f"read data ({d['subset']}): {d['packs']} of {plural(d['packs_total'], 'pack')}, {plural(d['blobs'], 'blob')}, "
                       f"{human(d['bytes'])} in {d['seconds']:.1f} s ({d['mb_per_s'] or '-'} MB/s)", err=True)
        for w in report.warnings:
            typer.echo(f"warning: {w.message}", err=True)
        shown: dict[str, int] = {}
        for f in report.errors:
            shown[f.kind] = shown.get(f.kind, 0) + 1
            if shown[f.kind] > SHOW:
                continue
            typer.echo(f"error: {f.message}", err=True)
            for sid, ranges in f.snapshots.items():
                typer.echo(f"  affects snapshot {sid[:12]}: bytes {_ranges(ranges)}", err=True)
        for kind, n in shown.items():
            if n > SHOW:
                typer.echo(f"error: … and {plural(n - SHOW, f'more {kind} error')} (see --json)", err=True)
        if report.sound:
            typer.echo("repository is sound", err=True)
        else:
            typer.echo(f"repository is DAMAGED: {plural(len(report.errors), 'error')}; {plural(len(report.affected), 'snapshot')} affected:", err=True)
            for sid, ranges in report.affected.items():
                typer.echo(f"  {sid[:12]}  {human(sum(n for _, n in ranges))} in {plural(len(ranges), 'range')}", err=True)
    if not report.sound:
        raise typer.Exit(EXIT_DAMAGED)
