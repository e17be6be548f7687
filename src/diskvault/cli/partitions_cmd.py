"""diskvault partitions: the GPT/MBR partition table of a snapshot (or of an image/device)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    HostOpt, JsonOpt, NoLockOpt, PasswordCommandOpt, PasswordFileOpt, TagOpt, human, open_repo, passphrase, print_json,
)


def partitions(
    snapshot: Annotated[str | None, typer.Argument(help="Snapshot id, prefix, latest or latest:TAG.")] = None,
    repo: Annotated[str | None, typer.Option("--repo", "-r", envvar="DISKVAULT_REPO", show_envvar=True,
                                             help="Repository directory.", metavar="PATH")] = None,
    source: Annotated[str | None, typer.Option(
        "--source", metavar="PATH",
        help="With SNAPSHOT: only snapshots of this source. Without: read this image file or block device instead.")] = None,
    host: HostOpt = None,
    tag: TagOpt = [],  # noqa: B006
    json_out: JsonOpt = False,
    no_lock: NoLockOpt = False,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """List a snapshot's partitions: number, start, size, type, name (as sfdisk --dump counts them)."""
    from ..ops.partitions import snapshot_partitions, source_partitions

    if source is not None and snapshot is None:
        if host is not None or tag:
            raise typer.BadParameter("--source without SNAPSHOT reads PATH itself: name the snapshot (e.g. latest) to filter",
                                     param_hint="--host/--tag")
        table = source_partitions(source)
        what = source
    else:
        if repo is None:
            raise typer.BadParameter("give the repository with -r/--repo (or DISKVAULT_REPO), or --source PATH")
        with open_repo(repo, write=False, no_lock=no_lock, secret=passphrase(password_file, password_command)) as r:
            snap = r.resolve(snapshot or "latest", host, source, tag)
            table = snapshot_partitions(r, snap)
        what = f"snapshot {snap.id[:12]}"
    if json_out:
        print_json(table.to_json())
        return
    for w in table.warnings:
        typer.echo(f"warning: {w}", err=True)
    if table.label == "none":
        typer.echo(f"{what}: no partition table (a bare filesystem or an empty disk)")
        return
    typer.echo(f"{what}: {table.label} partition table, id {table.id}, sector size {table.sector_size}")
    if not table.partitions:  # as sfdisk --dump: a FAT or NTFS boot sector is an empty dos table
        typer.echo("no partitions (an empty table, or the boot sector of a bare FAT or NTFS file system)")
        return
    typer.echo(f"{'#':>3} {'start':>12} {'size':>12} {'bytes':>11}  {'type':<28} name")
    for p in table.partitions:
        extra = p.name or ("bootable" if p.bootable else "")
        typer.echo(f"{p.number:>3} {p.start:>12} {p.size:>12} {human(p.length):>11}  "
                   f"{p.type[:28]:<28} {extra}".rstrip())
