"""diskvault init: create a repository."""

from __future__ import annotations

from typing import Annotated

import typer

from ..repository.chunking import DEFAULT_AVG, parse_size
from .common import JsonOpt, RepoOpt, print_json


def init(
    repo: RepoOpt,
    chunk_size: Annotated[
        str, typer.Option("--chunk-size", help="Average chunk size (power of two, 4K..4M), fixed for the repository.")
    ] = f"{DEFAULT_AVG // 1024}K",
    json_out: JsonOpt = False,
) -> None:
    """Create a new, empty repository."""
    from ..ops.init import init_repository

    try:
        avg = parse_size(chunk_size)
        r = init_repository(repo, avg)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--chunk-size") from None
    with r:
        if json_out:
            print_json({"repository": r.path, "id": r.config["id"], "chunker": r.params.to_dict()})
        else:
            p = r.params
            typer.echo(f"created repository {r.path} (chunks {p.min_size // 1024}K/{p.avg_size // 1024}K/{p.max_size // 1024}K min/avg/max)", err=True)
