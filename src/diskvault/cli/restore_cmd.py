"""diskvault restore: write a snapshot to a file or block device."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from ..ops.restore import restore as restore_op
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
    with open_repo(repo) as r, Bar(progress and not json_out) as bar:
        res = restore_op(r, r.resolve(snapshot), target, force=force, progress=bar, partition=partition)
    if json_out:
        print_json(asdict(res))
        return
    typer.echo(
        f"restored {'partition %d of ' % res.partition if res.partition else ''}snapshot {res.snapshot[:12]} to {res.target} ({res.kind}): {human(res.size)} in "
        f"{res.duration:.1f} s ({rate(res.size, res.duration)}), {human(res.zero_bytes)} of zeros left as holes"
        if res.kind == "file" else
        f"restored {'partition %d of ' % res.partition if res.partition else ''}snapshot {res.snapshot[:12]} to {res.target} ({res.kind}): {human(res.size)} in "
        f"{res.duration:.1f} s ({rate(res.size, res.duration)})"
    )
