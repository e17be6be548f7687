"""diskvault prune: delete unreferenced data, repack partly used packs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from ..policy import DEFAULT_MAX_UNUSED, parse_max_unused
from .common import Bar, JsonOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, human, open_repo, passphrase, plural, print_json

if TYPE_CHECKING:
    from ..ops.retention.prune import PruneResult

MaxUnusedOpt = Annotated[
    str,
    typer.Option("--max-unused", metavar="LIMIT",
                 help="Unused space to tolerate instead of repacking: a percentage of the pack bytes (2%), a size (200M), 0 or unlimited."),
]
RepackSmallOpt = Annotated[bool, typer.Option("--repack-small", help="Also merge packs smaller than 80% of the target pack size.")]


def check_max_unused(value: str) -> None:
    """Prune's inputs, checked before anything runs: ``--max-unused`` (BadParameter) and
    ``DISKVAULT_PACK_SIZE`` (UsageError)."""
    from ..repository import pack_target_size

    pack_target_size()
    try:
        parse_max_unused(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-unused") from None


def run_prune(path: str, max_unused: str, repack_small: bool, dry_run: bool, progress: bool,
              secret: Callable[[], str]) -> PruneResult:
    from ..ops.retention.prune import prune as prune_op

    with open_repo(path, write=not dry_run, secret=secret) as r, Bar(progress) as bar:
        return prune_op(r, max_unused=max_unused, repack_small=repack_small, dry_run=dry_run, progress=bar)


def print_prune(res: PruneResult) -> None:
    would = "would " if res.dry_run else ""
    typer.echo(f"prune{' (dry run)' if res.dry_run else ''}: {plural(res.snapshots, 'snapshot')} kept, {plural(res.live_blobs, 'blob')} in use", err=True)
    typer.echo(f"  {would}remove {plural(res.chunks_removed, 'chunk')} and {plural(res.tree_nodes_removed, 'tree node')} nobody references", err=True)
    typer.echo(f"  {would}delete {plural(res.packs_deleted, 'pack')} ({res.packs_repacked} after repacking "
               f"{human(res.bytes_repacked)} of live data), {plural(res.orphan_packs_removed, 'unknown pack')}, "
               f"{plural(res.orphan_records_removed, 'orphan snapshot record')}", err=True)
    typer.echo(f"  {would}reclaim {human(res.bytes_reclaimed)}: {human(res.bytes_before)} -> {human(res.bytes_after)} in packs, "
               f"unused {human(res.unused_before)} -> {human(res.unused_after)}", err=True)
    typer.echo(f"  time {res.duration:.1f} s", err=True)


def prune(
    repo: RepoOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Only show what would be removed and repacked.")] = False,
    max_unused: MaxUnusedOpt = DEFAULT_MAX_UNUSED,
    repack_small: RepackSmallOpt = False,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on a terminal.")] = True,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Remove data no snapshot references and repack packs that are mostly unused (exclusive lock)."""
    check_max_unused(max_unused)
    res = run_prune(repo, max_unused, repack_small, dry_run, progress and not json_out,
                    passphrase(password_file, password_command))
    if json_out:
        print_json(res.to_json())
    else:
        print_prune(res)
