"""diskvault init: create a repository (encrypted unless --encryption none)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..repository.chunking import DEFAULT_AVG, parse_size
from ..repository.config import ENCRYPTIONS
from .common import JsonOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, passphrase, print_json


def init(
    repo: RepoOpt,
    chunk_size: Annotated[
        str, typer.Option("--chunk-size", help="Average chunk size (power of two, 4K..4M), fixed for the repository.")
    ] = f"{DEFAULT_AVG // 1024}K",
    encryption: Annotated[str, typer.Option(
        "--encryption", metavar="MODE",
        help="aes-256-gcm (default: every stored byte sealed, a passphrase asked twice) or none (plaintext).")
    ] = "aes-256-gcm",
    json_out: JsonOpt = False,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Create a new, empty repository (encrypted by default)."""
    from ..ops.init import init_repository

    if encryption not in ENCRYPTIONS:
        raise typer.BadParameter(f"{encryption!r} is not one of {', '.join(ENCRYPTIONS)}", param_hint="--encryption")
    try:
        avg = parse_size(chunk_size)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--chunk-size") from None
    secret = passphrase(password_file, password_command, confirm=True, what="new repository passphrase")
    try:
        r = init_repository(repo, avg, encryption, secret)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--chunk-size") from None
    with r:
        if json_out:
            print_json({"repository": r.path, "id": r.config["id"], "chunker": r.params.to_dict(),
                        "encryption": r.crypto.mode, "key": r.key_id})
        else:
            p = r.params
            how = "encrypted (aes-256-gcm); keep the passphrase safe: without it nothing can be restored" \
                if r.crypto.encrypted else "NOT encrypted"
            typer.echo(f"created repository {r.path} (chunks {p.min_size // 1024}K/{p.avg_size // 1024}K/"
                       f"{p.max_size // 1024}K min/avg/max), {how}", err=True)
