"""diskvault unlock: remove stale repository locks."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import JsonOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, open_repo, passphrase, print_json


def unlock(
    repo: RepoOpt,
    remove_all: Annotated[bool, typer.Option("--all", "--force", help="Remove every lock, also of commands that may still run.")] = False,
    json_out: JsonOpt = False,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Remove stale locks (process gone, or not refreshed for 30 minutes)."""
    from ..ops.unlock import unlock as unlock_op

    with open_repo(repo, secret=passphrase(password_file, password_command)) as r:
        res = unlock_op(r, remove_all)
    if json_out:
        print_json(res)
        return
    for lock in res["removed"]:
        typer.echo(f"removed {lock['kind']} lock of '{lock['command']}' (pid {lock['pid']} on {lock['host']}): {lock['reason']}", err=True)
    for lock in res["kept"]:
        typer.echo(f"kept {lock['kind']} lock of '{lock['command']}' (pid {lock['pid']} on {lock['host']}): still running; --all removes it", err=True)
    if not res["removed"] and not res["kept"]:
        typer.echo("no locks", err=True)
