"""diskvault restore: write a snapshot to a file, a block device or stdout (``-``).

stdout carries only the image (``-``) or, otherwise, ``--json``; the human summary goes to
stderr, and with ``-`` so does the ``--json`` document (never mixed into the image). With
``--skip-damaged`` damaged chunks are written as zeros, the restore finishes, the ranges not
restored are listed (and written as a ddrescue mapfile with ``--map``), and the exit code
is 8 if there were any.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from collections.abc import Callable
from typing import Annotated

import typer

from ..errors import EXIT_DAMAGED
from ..images.target import side_file
from .common import (
    Bar, HostOpt, JsonOpt, NoLockOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, SourceOpt, TagOpt, human, open_repo,
    passphrase, plural, print_json, rate,
)


def _report(res, json_out: bool, what: str) -> None:
    """The --json document (stdout; stderr when the image went to stdout) or the human
    summary line (stderr): WHAT restored to where, how (new file, in place), how fast."""
    if json_out:
        print_json(asdict(res), err=res.kind == "stdout")
        return
    where = "stdout" if res.kind == "stdout" else res.target
    if res.symlink:
        where += f" (through the symbolic link {res.symlink})"
    how = {"file": "new file", "device": "device", "stdout": "streamed in order", "null": "nothing kept"}[res.kind]
    mode = getattr(res, "mode", "full")
    if res.in_place:
        how = f"{res.kind}, overwritten in place" if mode != "delta-dry-run" else f"{res.kind}, nothing written"
        if res.kind == "file" and res.target_size > res.size and not getattr(res, "table_adjusted", None):
            how += f"; it keeps its size of {human(res.target_size)}, the bytes past {human(res.size)} unchanged"
    holes = f", {human(res.zero_bytes)} of zeros left as holes" if res.kind == "file" and not res.in_place else ""
    verb = "compared (dry run, nothing written)" if mode == "delta-dry-run" else "restored"
    typer.echo(f"{verb} {what} to {where} ({how}): {human(res.size)} in {res.duration:.1f} s "
               f"({rate(res.size, res.duration)}){holes}", err=True)
    if mode != "full":
        would = "would write" if mode == "delta-dry-run" else "wrote"
        typer.echo(f"  delta: read {human(res.bytes_read_target)} of the target, {plural(res.chunks_unchanged, 'chunk')} "
                   f"already right, {would} {human(res.bytes_written)}"
                   + (f", zero {human(res.bytes_zeroed)}" if res.bytes_zeroed else ""), err=True)
    if getattr(res, "table_adjusted", None):
        typer.echo(f"  partition table fitted to the target's {human(res.target_size)} "
                   f"({plural(len(res.table_adjusted), 'range')} rewritten)", err=True)
    if getattr(res, "grown", None):
        g = res.grown
        typer.echo(f"  partition {g['partition']} grown from {human(g['old_size'])} to {human(g['new_size'])}; its file "
                   f"system is unchanged: grow it with {g['grow_hint']}", err=True)


def ddrescue_map(size: int, lost: list[dict]) -> str:
    """A GNU ddrescue mapfile: ``+`` restored, ``-`` not restored."""
    from ..ops.integrity.damage import merge

    lines = ["# Mapfile. Created by diskvault restore --skip-damaged", "# current_pos  current_status  current_pass",
             "0x00000000     +               1", "#      pos        size  status"]
    pos = 0
    for off, n in merge((u["offset"], u["length"]) for u in lost):
        if off > pos:
            lines.append(f"0x{pos:08X}  0x{off - pos:08X}  +")
        lines.append(f"0x{off:08X}  0x{n:08X}  -")
        pos = off + n
    if pos < size:
        lines.append(f"0x{pos:08X}  0x{size - pos:08X}  +")
    return "\n".join(lines) + "\n"


def restore(
    repo: RepoOpt,
    snapshot: Annotated[str, typer.Argument(help="Snapshot id, prefix, latest or latest:TAG.")],
    target: Annotated[str, typer.Argument(
        help="Image file to create, existing file or block device to overwrite in place, or - for stdout.")],
    host: HostOpt = None,
    source_filter: SourceOpt = None,
    tag: TagOpt = [],  # noqa: B006
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite a block device or a non-empty file in place; follow a symbolic link.")] = False,
    skip_damaged: Annotated[bool, typer.Option(
        "--skip-damaged", help="Write zeros for damaged or missing chunks, go on, and list what was not restored.")] = False,
    map_file: Annotated[str | None, typer.Option(
        "--map", metavar="FILE", help="With --skip-damaged: write a ddrescue mapfile of restored (+) and lost (-) ranges.")] = None,
    partition: Annotated[int | None, typer.Option("--partition", min=1, metavar="N",
                                                  help="Restore only partition N (see diskvault partitions).")] = None,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on a terminal.")] = True,
    grow_partition: Annotated[int | None, typer.Option(
        "--grow-partition", min=1, metavar="N",
        help="Extend partition N (the last one) to the end of a bigger target; its file system is left as it is.")] = None,
    delta: Annotated[bool | None, typer.Option(
        "--delta/--no-delta", help="Read the target and write only the chunks that differ (default: when at least "
        "half of a sample of chunks already match).", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", "-n", help="With an existing target: compare and report what a delta restore would write.")] = False,
    discard: Annotated[bool, typer.Option(
        "--discard", help="Discard (unmap) zero ranges of a block device instead of writing zeros.")] = False,
    no_lock: NoLockOpt = False,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Restore a snapshot, verifying every chunk's blake3 on the way."""
    from ..ops.restore import restore as restore_op

    secret = passphrase(password_file, password_command)
    if partition is not None:
        given = [name for name, on in (("--grow-partition", grow_partition is not None), ("--delta", delta),
                                       ("--dry-run", dry_run), ("--discard", discard),
                                       ("--skip-damaged", skip_damaged), ("--map", map_file)) if on]
        if given:
            raise typer.BadParameter(f"{', '.join(given)}: only for a whole-disk restore, not with --partition N",
                                     param_hint="--partition")
        _restore_partition(repo, snapshot, target, partition, force, json_out, progress, no_lock,
                           (host, source_filter, tag), secret)
        return
    if map_file is not None and (map_file in ("", "-") or os.path.realpath(map_file) == os.path.realpath(target)):
        raise typer.BadParameter("give a file name of its own (not -, not TARGET)", param_hint="--map")
    with open_repo(repo, write=False, no_lock=no_lock, secret=secret) as r, Bar(progress and not json_out) as bar:
        write_map = side_file(map_file, force, protect=r.path) if map_file else None  # refused before, not after
        res = restore_op(r, r.resolve(snapshot, host, source_filter, tag), target, force=force, progress=bar,
                         skip_damaged=skip_damaged, grow=grow_partition, delta=delta, dry_run=dry_run, discard=discard)
    if write_map:
        write_map(ddrescue_map(res.size, res.unrestored).encode())
    _report(res, json_out, f"snapshot {res.snapshot[:12]}")
    if res.unrestored and not json_out:
        typer.echo(f"NOT restored (written as zeros): {human(res.unrestored_bytes)} in {plural(len(res.unrestored), 'range')}", err=True)
        typer.echo("#      pos        size  status  reason", err=True)
        for u in res.unrestored:
            typer.echo(f"0x{u['offset']:08X}  0x{u['length']:08X}  -       {u['reason']}", err=True)
    if res.unrestored:
        raise typer.Exit(EXIT_DAMAGED)


def _restore_partition(repo: str, snapshot: str, target: str, number: int, force: bool, json_out: bool,
                       progress: bool, no_lock: bool, filters: tuple, secret: Callable[[], str]) -> None:
    from ..ops.restore.partition import restore_partition

    with open_repo(repo, write=False, no_lock=no_lock, secret=secret) as r, Bar(progress and not json_out) as bar:
        res = restore_partition(r, r.resolve(snapshot, *filters), number, target, force=force, progress=bar)
    for line in res.warnings:
        typer.echo(line, err=True)
    _report(res, json_out, f"partition {res.partition} (at byte {res.offset}) of snapshot {res.snapshot[:12]}")
