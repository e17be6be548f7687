"""diskvault snapshot: back up an image file, block device, stdin or a command's output."""

from __future__ import annotations

from typing import Annotated

import typer

from ..rawnames import is_raw, readable
from .common import (
    Bar, JsonOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, human, open_repo, passphrase, print_json, rate,
)


def snapshot(
    repo: RepoOpt,
    source: Annotated[list[str], typer.Argument(
        metavar="SOURCE | -- COMMAND...", show_default=False,
        help="Image file, block device, or - for stdin; with --stdin-from-command, the command and its arguments.")],
    tag: Annotated[list[str], typer.Option("--tag", "-t", help="Tag the snapshot (repeatable).")] = [],  # noqa: B006
    host: Annotated[str | None, typer.Option(help="Host name to record (default: this host).")] = None,
    stdin_filename: Annotated[str | None, typer.Option(
        "--stdin-filename", metavar="NAME",
        help="Source name to record for - or --stdin-from-command (default: stdin); forget groups by it.")] = None,
    stdin_from_command: Annotated[bool, typer.Option(
        "--stdin-from-command",
        help="Run COMMAND (after --) and snapshot its output; saved only if it exits 0.")] = False,
    allow_mounted: Annotated[bool, typer.Option(
        "--allow-mounted", help="Snapshot a device even when it is mounted read-write (the image may be inconsistent).")] = False,
    all_blocks: Annotated[bool, typer.Option(
        "--all-blocks", help="Read every byte, free blocks too (forensics); by default the free blocks of ext2/3/4, "
                             "NTFS, FAT and exFAT filesystems are recorded as zeros without being read.")] = False,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on a terminal.")] = True,
    compression: Annotated[str, typer.Option(
        "--compression", metavar="auto|lz4|zstd",
        help="Codec for new chunks: auto (zstd level 3 while at most 1/8 of the data read is new, else zstd level 1), zstd (level 3: smallest), lz4 (fastest).",
    )] = "auto",
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Take a snapshot: store only the chunks the repository does not have yet."""
    from ..ops.snapshot import take_snapshot

    if compression not in ("auto", "lz4", "zstd"):
        raise typer.BadParameter(f"{compression!r}: choose auto, lz4 or zstd", param_hint="--compression")
    if not stdin_from_command and len(source) != 1:
        raise typer.BadParameter("give one SOURCE (or --stdin-from-command -- COMMAND...)", param_hint="SOURCE")
    if stdin_filename is not None and not stdin_from_command and source != ["-"]:
        raise typer.BadParameter("names a stream: use it with - or --stdin-from-command", param_hint="--stdin-filename")
    if stdin_filename == "" or (stdin_filename and is_raw(stdin_filename)):
        raise typer.BadParameter("give a non-empty UTF-8 name", param_hint="--stdin-filename")
    for name, values in (("--tag", tag), ("--host", [host] if host else []),
                         ("--stdin-filename", [stdin_filename] if stdin_filename else [])):
        if any(not v or is_raw(v) for v in values):
            raise typer.BadParameter("give non-empty UTF-8 text", param_hint=name)
        if any(ord(c) < 32 or c == "\x7f" for v in values for c in v):
            raise typer.BadParameter("control characters (a newline, a tab) are not allowed", param_hint=name)
    if any("," in t for t in tag):  # forget --keep-tag a,b means "a and b": such a tag could never be kept
        raise typer.BadParameter("a tag cannot hold a comma (--keep-tag a,b means tags a and b); give "
                                 "--tag once per tag", param_hint="--tag")
    with open_repo(repo, secret=passphrase(password_file, password_command)) as r, Bar(progress and not json_out) as bar:
        rec = take_snapshot(r, "-" if stdin_from_command else source[0], tags=tag, host=host, progress=bar,
                            compression_mode=compression, stdin_filename=stdin_filename,
                            command=source if stdin_from_command else None, allow_mounted=allow_mounted,
                            all_blocks=all_blocks)
    for w in rec.warnings:
        typer.echo(f"warning: {w}", err=True)
    if json_out:
        print_json(dict(rec.to_json(), warnings=rec.warnings))
        return
    ratio = rec.data_bytes / rec.new_bytes if rec.new_bytes else float("inf")
    typer.echo(f"snapshot {rec.id[:12]} saved: {readable(rec.source)}, {human(rec.size)}", err=True)
    typer.echo(f"  read        {human(rec.data_bytes)} in {rec.duration:.1f} s ({rate(rec.size, rec.duration)}), zeros {human(rec.zero_bytes)} not stored", err=True)
    typer.echo(f"  new chunks  {rec.new_chunks} of {rec.chunks}: {human(rec.new_bytes)} new data, {human(rec.stored_bytes)} stored", err=True)
    typer.echo(f"  dedup       {ratio:.1f}x" if rec.new_bytes else "  dedup       everything was already stored", err=True)
    for fs in rec.filesystems or ():
        where = f"partition {fs['partition']}" if fs["partition"] is not None else "filesystem"
        what = fs["filesystem"] or "unknown"
        used = f"{human(fs['used_bytes'])} used, " if fs["used_bytes"] is not None else ""
        typer.echo(f"  {where:<11} {what}: {used}{human(fs['skipped_bytes'])} free skipped"
                   + "".join(f"; {n}" for n in fs["notes"]), err=True)
    if rec.size_changed:
        typer.echo(f"  CHANGED     size {rec.size_changed['before']} -> {rec.size_changed['after']} bytes while read: "
                   "this snapshot holds the first {} bytes".format(rec.size_changed["before"]), err=True)
    for m in rec.mounted or ():
        typer.echo(f"  mounted     {readable(m['device'])} on {readable(m['mountpoint'])} ({m['mode']})", err=True)
