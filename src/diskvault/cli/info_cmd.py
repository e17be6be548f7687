"""diskvault info: repository or snapshot figures."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    HostOpt, JsonOpt, NoLockOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, SourceOpt, TagOpt, human, open_repo,
    passphrase, print_json,
)


def info(
    repo: RepoOpt,
    snapshot: Annotated[str | None, typer.Argument(help="Snapshot id, prefix, latest or latest:TAG.")] = None,
    host: HostOpt = None,
    source_filter: SourceOpt = None,
    tag: TagOpt = [],  # noqa: B006
    json_out: JsonOpt = False,
    no_lock: NoLockOpt = False,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Sizes, deduplication ratio and unique bytes, of the repository or one snapshot."""
    from ..ops.info import repository_info, snapshot_info

    with open_repo(repo, write=False, no_lock=no_lock, secret=passphrase(password_file, password_command)) as r:
        data = snapshot_info(r, r.resolve(snapshot, host, source_filter, tag)) if snapshot else repository_info(r)
    if json_out:
        print_json(data)
        return
    for key, value in data.items():
        if value is None:  # a field that does not apply (not mounted, no size change, a raw image)
            continue
        if key == "filesystems":
            for fs in value:
                _filesystem_line(fs)
            continue
        if isinstance(value, int) and key.endswith("bytes"):
            value = f"{human(value)} ({value})"
        elif isinstance(value, list):
            value = ", ".join(v if isinstance(v, str) else " ".join(f"{k}={x}" for k, x in v.items()) for v in value)
        elif key == "chunker":
            value = "/".join(f"{value[k] // 1024}K" for k in ("min_size", "avg_size", "max_size")) + " min/avg/max"
        elif isinstance(value, dict):
            value = " ".join(f"{k}={x}" for k, x in value.items())
        typer.echo(f"{key.replace('_', ' '):<20} {value}")


def _filesystem_line(fs: dict) -> None:
    """One line per filesystem of a snapshot: where, what, used and skipped as free, notes."""
    where = f"partition {fs['partition']}" if fs["partition"] is not None else "filesystem"
    used = f", used {human(fs['used_bytes'])}" if fs.get("used_bytes") is not None else ""
    notes = "".join(f"; {n}" for n in fs.get("notes", ()))
    typer.echo(f"{where:<20} {fs['filesystem'] or 'unknown'}{used}, skipped as free "
               f"{human(fs['skipped_bytes'])} ({fs['skipped_bytes']}){notes}")
