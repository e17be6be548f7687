"""diskvault snapshots: list snapshots."""

from __future__ import annotations

import typer

from ..rawnames import readable
from .common import (
    JsonOpt, NoLockOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, human, open_repo, passphrase, print_json,
)


def snapshots(repo: RepoOpt, json_out: JsonOpt = False, no_lock: NoLockOpt = False, password_file: PasswordFileOpt = None,
              password_command: PasswordCommandOpt = None) -> None:
    """List snapshots, oldest first."""
    with open_repo(repo, write=False, no_lock=no_lock, secret=passphrase(password_file, password_command)) as r:
        snaps = r.snapshots()
    if json_out:
        print_json([s.to_json() for s in snaps])
        return
    if not snaps:
        typer.echo("no snapshots")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("ID", "TIME", "HOST", "SOURCE", "SIZE", "STORED", "TAGS"):
        table.add_column(col, justify="right" if col in ("SIZE", "STORED") else "left")
    for s in snaps:
        table.add_row(s.id[:12], s.time[:19].replace("T", " "), readable(s.host), readable(s.source), human(s.size),
                      human(s.stored_bytes), ",".join(s.tags))
    Console(width=200).print(table)
