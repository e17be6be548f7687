"""diskvault snapshot: back up an image file, block device or stdin."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import Bar, JsonOpt, RepoOpt, human, open_repo, print_json, rate


def snapshot(
    repo: RepoOpt,
    source: Annotated[str, typer.Argument(help="Image file, block device, or - for stdin.")],
    tag: Annotated[list[str], typer.Option("--tag", "-t", help="Tag the snapshot (repeatable).")] = [],  # noqa: B006
    host: Annotated[str | None, typer.Option(help="Host name to record (default: this host).")] = None,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on a terminal.")] = True,
    compression: Annotated[str, typer.Option(
        "--compression", metavar="auto|lz4|zstd",
        help="Codec for new chunks: lz4 (fastest), zstd (smallest), auto (zstd while at most 1/8 of the data read is new, else lz4).",
    )] = "auto",
) -> None:
    """Take a snapshot: store only the chunks the repository does not have yet."""
    from ..ops.snapshot import take_snapshot

    if compression not in ("auto", "lz4", "zstd"):
        raise typer.BadParameter(f"{compression!r}: choose auto, lz4 or zstd", param_hint="--compression")
    with open_repo(repo) as r, Bar(progress and not json_out) as bar:
        rec = take_snapshot(r, source, tags=tag, host=host, progress=bar, compression_mode=compression)
    if json_out:
        print_json(rec.to_json())
        return
    ratio = rec.data_bytes / rec.new_bytes if rec.new_bytes else float("inf")
    typer.echo(f"snapshot {rec.id[:12]} saved: {rec.source}, {human(rec.size)}", err=True)
    typer.echo(f"  read        {human(rec.data_bytes)} in {rec.duration:.1f} s ({rate(rec.size, rec.duration)}), zeros {human(rec.zero_bytes)} not stored", err=True)
    typer.echo(f"  new chunks  {rec.new_chunks} of {rec.chunks}: {human(rec.new_bytes)} new data, {human(rec.stored_bytes)} stored", err=True)
    typer.echo(f"  dedup       {ratio:.1f}x" if rec.new_bytes else "  dedup       everything was already stored", err=True)
