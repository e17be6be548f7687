"""diskvault restore: write a snapshot to a file or block device.

With ``--skip-damaged`` damaged chunks are written as zeros, the restore finishes, the
ranges not restored are listed (and written as a ddrescue mapfile with ``--map``), and
the exit code is 8 if there were any.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from ..errors import EXIT_DAMAGED
from .common import Bar, HostOpt, JsonOpt, RepoOpt, SourceOpt, TagOpt, human, open_repo, print_json, rate


def ddrescue_map(size: int, lost: list[dict]) -> str:
    """A GNU ddrescue mapfile: ``+`` restored, ``-`` not restored."""
    from ..ops.damage import merge

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
    target: Annotated[str, typer.Argument(help="Image file to create, or block device to overwrite.")],
    host: HostOpt = None,
    source_filter: SourceOpt = None,
    tag: TagOpt = [],  # noqa: B006
    force: Annotated[bool, typer.Option("--force", help="Overwrite a block device or a non-empty file.")] = False,
    skip_damaged: Annotated[bool, typer.Option(
        "--skip-damaged", help="Write zeros for damaged or missing chunks, go on, and list what was not restored.")] = False,
    map_file: Annotated[str | None, typer.Option(
        "--map", metavar="FILE", help="With --skip-damaged: write a ddrescue mapfile of restored (+) and lost (-) ranges.")] = None,
    partition: Annotated[int | None, typer.Option("--partition", min=1, metavar="N",
                                                  help="Restore only partition N (see diskvault partitions).")] = None,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on a terminal.")] = True,
) -> None:
    """Restore a snapshot, verifying every chunk's blake3 on the way."""
    from ..ops.restore import restore as restore_op

    if partition is not None:
        _restore_partition(repo, snapshot, target, partition, force, json_out, progress, (host, source_filter, tag))
        return
    with open_repo(repo) as r, Bar(progress and not json_out) as bar:
        res = restore_op(r, r.resolve(snapshot, host, source_filter, tag), target, force=force, progress=bar, skip_damaged=skip_damaged)
    if map_file:
        with open(map_file, "w") as f:
            f.write(ddrescue_map(res.size, res.unrestored))
    if json_out:
        print_json(asdict(res))
    else:
        typer.echo(
            f"restored snapshot {res.snapshot[:12]} to {res.target} ({res.kind}): {human(res.size)} in "
            f"{res.duration:.1f} s ({rate(res.size, res.duration)}), {human(res.zero_bytes)} of zeros left as holes"
            if res.kind == "file" else
            f"restored snapshot {res.snapshot[:12]} to {res.target} ({res.kind}): {human(res.size)} in "
            f"{res.duration:.1f} s ({rate(res.size, res.duration)})"
        )
        if res.unrestored:
            typer.echo(f"NOT restored (written as zeros): {human(res.unrestored_bytes)} in {len(res.unrestored)} ranges")
            typer.echo("#      pos        size  status  reason")
            for u in res.unrestored:
                typer.echo(f"0x{u['offset']:08X}  0x{u['length']:08X}  -       {u['reason']}")
    if res.unrestored:
        raise typer.Exit(EXIT_DAMAGED)


def _restore_partition(repo: str, snapshot: str, target: str, number: int, force: bool, json_out: bool,
                       progress: bool, filters: tuple) -> None:
    from ..ops.restore_partition import restore_partition

    with open_repo(repo) as r, Bar(progress and not json_out) as bar:
        res = restore_partition(r, r.resolve(snapshot, *filters), number, target, force=force, progress=bar)
    if json_out:
        print_json(asdict(res))
        return
    holes = f", {human(res.zero_bytes)} of zeros left as holes" if res.kind == "file" else ""
    typer.echo(
        f"restored partition {res.partition} (at byte {res.offset}) of snapshot {res.snapshot[:12]} to {res.target} "
        f"({res.kind}): {human(res.size)} in {res.duration:.1f} s ({rate(res.size, res.duration)}){holes}"
    )
