"""diskvault verify: compare a snapshot with a device, image file or stdin.

Exit codes: 0 identical, 9 the contents differ (ranges listed), 8 parts of the snapshot
are unreadable (damaged), 3/4/5 repository, snapshot or source problems.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import EXIT_DAMAGED, EXIT_DIFFERS
from .common import (
    Bar, HostOpt, JsonOpt, NoLockOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, SourceOpt, TagOpt, human, open_repo,
    passphrase, plural, print_json, rate,
)

SHOW = 50


def verify(
    repo: RepoOpt,
    snapshot: Annotated[str, typer.Argument(help="Snapshot id, prefix, latest or latest:TAG.")],
    source: Annotated[str, typer.Argument(help="Device, image file, or - for stdin, to compare with.")],
    host: HostOpt = None,
    source_filter: SourceOpt = None,
    tag: TagOpt = [],  # noqa: B006
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on a terminal.")] = True,
    no_lock: NoLockOpt = False,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Compare a snapshot with a device or image and report the byte ranges that differ."""
    from ..ops.integrity.verify import verify as verify_op

    with open_repo(repo, write=False, no_lock=no_lock, secret=passphrase(password_file, password_command)) as r, Bar(progress and not json_out) as bar:
        res = verify_op(r, r.resolve(snapshot, host, source_filter, tag), source, progress=bar)
    if json_out:
        print_json(res.to_json())
    else:
        head = f"snapshot {res.snapshot[:12]} vs {res.source}"
        if res.identical:
            typer.echo(f"{head}: identical ({human(res.compared_bytes)} compared in {res.duration:.1f} s, "
                       f"{rate(res.compared_bytes, res.duration)})", err=True)
            if res.table_adjusted:
                grown = f", partition {res.grown_partition} grown" if res.grown_partition else ""
                typer.echo(f"  partition table fitted to the target's size ({plural(len(res.table_adjusted), 'range')}"
                           f"{grown})", err=True)
            if res.not_compared:
                o, n = res.not_compared
                typer.echo(f"  not compared: {human(n)} from byte {o} (beyond the "
                           f"{'snapshot' if res.source_size > res.snapshot_size else 'target'})", err=True)
        else:
            if res.source_size != res.snapshot_size:
                typer.echo(f"{head}: sizes differ: snapshot {plural(res.snapshot_size, 'byte')}, source {plural(res.source_size, 'byte')}", err=True)
            if res.differing:
                typer.echo(f"{head}: {human(res.differing_bytes)} differ in {plural(len(res.differing), 'range')}:", err=True)
                for o, n in res.differing[:SHOW]:
                    typer.echo(f"  bytes {o}..{o + n - 1} ({plural(n, 'byte')})", err=True)
                if len(res.differing) > SHOW:
                    typer.echo(f"  … and {len(res.differing) - SHOW} more (see --json)", err=True)
            for u in res.unreadable[:SHOW]:
                typer.echo(f"  not compared: bytes {u['offset']}..{u['offset'] + u['length'] - 1}: {u['reason']}", err=True)
        if res.skipped_bytes:
            typer.echo(f"  not compared: {human(res.skipped_bytes)} of free blocks the snapshot skipped "
                       "(zeros in the snapshot)", err=True)
    if res.unreadable:
        raise typer.Exit(EXIT_DAMAGED)
    if not res.identical:
        raise typer.Exit(EXIT_DIFFERS)
