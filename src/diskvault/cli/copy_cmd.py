"""diskvault copy: snapshots from one repository to another (restic's copy), e.g. offsite."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from .common import (
    Bar, HostOpt, JsonOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, SourceOpt, TagOpt, human, open_repo,
    passphrase, plural, print_json,
)


def copy(
    repo: RepoOpt,
    to: Annotated[str, typer.Option(
        "--to", envvar="DISKVAULT_TO_REPO", show_envvar=True, metavar="PATH",
        help="The destination repository (initialised first with diskvault init).")],
    snapshots: Annotated[list[str] | None, typer.Argument(
        metavar="[SNAPSHOT]...", show_default=False,
        help="Snapshots to copy (id, prefix, latest, latest:TAG); default: every snapshot the filters let through.")] = None,
    host: HostOpt = None,
    source: SourceOpt = None,
    tag: TagOpt = [],  # noqa: B006
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Show what would be copied; change nothing.")] = False,
    to_password_file: Annotated[str | None, typer.Option(
        "--to-password-file", envvar="DISKVAULT_TO_PASSWORD_FILE", show_envvar=True, metavar="FILE",
        help="Read the destination's passphrase from FILE (default: the source's passphrase).")] = None,
    to_password_command: Annotated[str | None, typer.Option(
        "--to-password-command", envvar="DISKVAULT_TO_PASSWORD_COMMAND", show_envvar=True, metavar="COMMAND",
        help="Run COMMAND and read the destination's passphrase from its output.")] = None,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on a terminal.")] = True,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Copy snapshots to another repository, storing only the chunks it lacks; snapshots it has already are skipped."""
    from ..errors import PasswordError
    from ..ops.copy import copy as copy_op

    secret = passphrase(password_file, password_command)
    own = to_password_file or to_password_command or os.environ.get("DISKVAULT_TO_PASSWORD")
    to_secret = passphrase(to_password_file, to_password_command, what="destination repository passphrase",
                           variable="DISKVAULT_TO_PASSWORD") if own else secret
    with open_repo(repo, write=False, secret=secret) as src:
        try:
            dst = open_repo(to, write=not dry_run, secret=to_secret)
        except PasswordError as exc:
            what = exc.what  # without its advice, which names the source's options
            if own:
                raise PasswordError(f"{what}: check --to-password-file, --to-password-command, "
                                    "DISKVAULT_TO_PASSWORD_FILE, DISKVAULT_TO_PASSWORD_COMMAND or "
                                    "DISKVAULT_TO_PASSWORD") from None
            raise PasswordError(f"{what} (the destination was tried with the source's passphrase): give its own with "
                                "--to-password-file, --to-password-command or DISKVAULT_TO_PASSWORD") from None
        with dst, Bar(progress and not json_out) as bar:
            res = copy_op(src, dst, snapshots, host, source, tag, dry_run, progress=bar)
    for w in res.warnings:
        typer.echo(f"warning: {w}", err=True)
    if json_out:
        print_json(res.to_json())
        return
    would = "would copy" if dry_run else "copied"
    for c in res.copied:
        into = f" as {c['id'][:12]}" if c["id"] else ""
        added = f": {human(c['new_bytes'])} new in {plural(c['new_chunks'], 'chunk')}" if not dry_run else ""
        typer.echo(f"{would} snapshot {c['source_id'][:12]} ({c['host']}, {c['time'][:19]}){into}{added}", err=True)
    for s in res.skipped:
        typer.echo(f"skipped snapshot {s['source_id'][:12]}: the destination has it ({s['id'][:12]})", err=True)
    typer.echo(f"{would} {plural(len(res.copied), 'snapshot')}, skipped {len(res.skipped)} in {res.duration:.1f} s",
               err=True)
