"""diskvault repair: rebuild the catalog's index from pack trailers and snapshot records.

Exit codes: 0 the repository is sound afterwards, 8 damage remains (unrecoverable
snapshots, unreadable snapshot records and known damaged blobs are listed), 3 not a
repository.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import EXIT_DAMAGED
from .common import JsonOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, human, passphrase, plural, print_json


def repair(
    repo: RepoOpt,
    rebuild_catalog: Annotated[bool, typer.Option(
        "--rebuild-catalog", help="Ignore the old catalog entirely and build a new one from the packs and records.")] = False,
    json_out: JsonOpt = False,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Rebuild the pack/chunk index from the packs themselves (after a lost or damaged catalog)."""
    from ..ops.integrity.repair import repair as repair_op

    res = repair_op(repo, rebuild=rebuild_catalog, passphrase=passphrase(password_file, password_command))
    if json_out:
        print_json(res.to_json())
    else:
        typer.echo(f"old catalog: {res.old_catalog}", err=True)
        typer.echo(f"indexed {plural(res.packs, 'pack')}, {plural(res.blobs, 'blob')}, {plural(res.snapshots, 'snapshot')} in {res.duration:.1f} s", err=True)
        for d in res.damaged_packs:
            typer.echo(f"  damaged pack {d['pack']}: {d['reason']}", err=True)
        if res.salvaged_blobs:
            typer.echo(f"  salvaged {plural(res.salvaged_blobs, 'intact blob')} from damaged packs into new pack(s) "
                       f"{', '.join(res.salvage_packs)}", err=True)
        if res.lost_blobs:
            typer.echo(f"  {plural(res.lost_blobs, 'catalogued blob')} could not be recovered", err=True)
        if res.changed_rows:
            typer.echo(f"  {plural(res.changed_rows, 'catalog row')} corrected or dropped", err=True)
        if res.records_written:
            typer.echo(f"  rewrote {plural(res.records_written, 'missing snapshot record')}", err=True)
        for r in res.recovered_records:
            stood = f"; stood in for its {', '.join(r['stood_in'])}" if r["stood_in"] else ""
            typer.echo(f"  recovered snapshot {r['id'][:12]} from its unreadable record ({r['reason']}) "
                       f"using its {'catalog row' if r['from'] == 'catalog' else 'intact tree'}{stood}", err=True)
        for r in res.unreadable_records:
            typer.echo(f"  snapshot record {r['record']} cannot be read ({r['reason']}) and no intact tree root "
                       "can be read from it: kept, not indexed; prune refuses to run until it is repaired or removed",
                       err=True)
        if res.damaged_blobs:
            typer.echo(f"  {plural(res.damaged_blobs, 'blob')} known to be damaged: the next snapshot of a source "
                       "that holds their bytes stores them again", err=True)
        for u in res.unrecoverable:
            typer.echo(f"  snapshot {u['id'][:12]} cannot be fully recovered: {human(u['bytes'])} lost in "
                       f"{plural(len(u['ranges']), 'range')} ({u['reason']}); restore --skip-damaged saves the rest", err=True)
        typer.echo(f"structure is {res.status_after} after repair" +
                   (" (check --read-data verifies the data itself)" if res.status_after == "sound" else ": see diskvault check"), err=True)
    if res.status_after != "sound":
        raise typer.Exit(EXIT_DAMAGED)
