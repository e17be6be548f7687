"""diskvault restore: write a snapshot to a file or block device."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from ..ops.restore import restore as restore_op
from ..ops.restore_partition import restore_partition
from .common import Bar, JsonOpt, RepoOpt, human, open_repo, print_json, rate


def restore(
    repo: RepoOpt,
    snapshot: Annotated[str, typer.Argument(help="Snapshot id, prefix, latest or latest:TAG.")],
    target: Annotated[str, typer.Argument(help="Image file to create, or block device to overwrite.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite a block device or a non-empty file.")] = False,
    partition: Annotated[int | None, typer.Option("--partition", min=1, metavar="N",
                                                  help="Restore only partition N (see diskvault partitions).")] = None,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on a terminal.")] = True,
) -> None:
    """Restore a snapshot, verifying every chunk's blake3 on the way."""
    if partition is not None:
        _restore_partition(repo, snapshot, target, partition, force, json_out, progress)
        return
    with open_repo(repo) as r, Bar(progress and not json_out) as bar:
        res = restore_op(r, r.resolve(snapshot), target, force=force, progress=bar)
    if json_out:
        print_json(asdict(res))
        return
    typer.echo(
        f"restored snapshot {res.snapshot[:12]} to {res.target} ({res.kind}): {human(res.size)} in "
        f"{res.duration:.1f} s ({rate(res.size, res.duration)}), {human(res.zero_bytes)} of zeros left as holes"
        if res.kind == "file" else
        f"restored snapshot {res.snapshot[:12]} to {res.target} ({res.kind}): {human(res.size)} in "
        f"{res.duration:.1f} s ({rate(res.size, res.duration)})"
    )


def _restore_partition(repo: str, snapshot: str, target: str, number: int, force: bool, json_out: bool,
                       progress: bool) -> None:
    with open_repo(repo) as r, Bar(progress and not json_out) as bar:
        res = restore_partition(r, r.resolve(snapshot), number, target, force=force, progress=bar)
    if json_out:
        print_json(asdict(res))
        return
    holes = f", {human(res.zero_bytes)} of zeros left as holes" if res.kind == "file" else ""
    typer.echo(
        f"restored partition {res.partition} (at byte {res.offset}) of snapshot {res.snapshot[:12]} to {res.target} "
        f"({res.kind}): {human(res.size)} in {res.duration:.1f} s ({rate(res.size, res.duration)}){holes}"
    )
