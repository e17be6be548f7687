"""diskvault rescue build: write a bootable UEFI rescue image (docs/rescue.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .common import JsonOpt, PasswordCommandOpt, PasswordFileOpt, human, passphrase, print_json

rescue = typer.Typer(help="Bootable rescue media: restore or image a disk offline.", no_args_is_help=True)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(text: str) -> int:
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in UNITS else ""
    try:
        size = int(float(t[: len(t) - len(unit)]) * UNITS[unit])
    except (ValueError, OverflowError):  # OverflowError: inf, 1e400
        size = -1
    if size < 0:
        raise UsageError(f"--size {text!r} is not a size: give e.g. 256M or 1G")
    return size


def _password(password_file: str | None, password_command: str | None) -> bytes | None:
    """The passphrase from the usual sources (restic's order: a command, a file, then
    DISKVAULT_PASSWORD), or None when none is given: the menu then asks on the console."""
    if not (password_file or password_command or os.environ.get("DISKVAULT_PASSWORD")):
        return None
    return passphrase(password_file, password_command)().encode("utf-8", "surrogateescape")


@rescue.command("build")
def build(
    out: Annotated[str, typer.Argument(metavar="OUT", help="Image file to write (then: dd if=OUT of=/dev/sdX bs=4M).")],
    size: Annotated[str | None, typer.Option("--size", help="Image size (e.g. 256M); default the smallest that fits.")] = None,
    repo_hint: Annotated[list[str], typer.Option("--repo-hint", help="LABEL=..., UUID=... or a device where the menu looks for repositories first; repeatable.")] = [],  # noqa: B006
    unattended: Annotated[str | None, typer.Option("--unattended", help="REPO_DEVICE:PATH:SNAPSHOT:TARGET: boot straight into this restore, verify, power off.")] = None,
    unattended_snapshot: Annotated[str | None, typer.Option("--unattended-snapshot", help="SOURCE:REPO_DEVICE:PATH: boot, snapshot SOURCE into the repository, verify, power off.")] = None,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT when it exists and is not empty.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a bootable UEFI rescue image: a menu to restore or snapshot disks, or an unattended job."""
    from ..ops.rescue import build as build_op

    password = _password(password_file, password_command) if (unattended or unattended_snapshot) else None
    res = build_op(Path(out), _size(size) if size else None, repo_hint, unattended, unattended_snapshot,
                   password, force, step=lambda s: None if json_out else typer.echo(f"  {s}", err=True))
    if (unattended or unattended_snapshot) and password is None:
        typer.echo("note: no passphrase was given: the unattended job fails (exit 10) if the repository is encrypted; "
                   "then build again with --password-file FILE or --password-command COMMAND", err=True)
    if res.password_stored:
        typer.echo("warning: the image holds the repository's passphrase (/etc/diskvault/password): "
                   "keep it, and every stick written from it, as secret as the passphrase", err=True)
    if json_out:
        print_json(res.to_json())
        return
    job = (f", unattended restore {res.unattended}" if res.unattended else
           f", unattended snapshot {res.unattended_snapshot}" if res.unattended_snapshot else "")
    typer.echo(f"wrote rescue image {res.image}: {human(res.size)} (kernel {res.kernel}, initramfs "
               f"{human(res.initramfs_bytes)}, diskvault {human(res.executable_bytes)} with Python {res.python})"
               f"{job} in {res.seconds:.0f} s", err=True)
    typer.echo(f"  write it to a stick: dd if={res.image} of=/dev/sdX bs=4M conv=fsync", err=True)
