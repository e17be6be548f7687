"""diskvault forget: drop snapshots by retention policy (policy.py) or by name.

Runs under the exclusive repository lock (a dry run under a shared one: it changes
nothing). Forgetting removes the catalog rows first, in one transaction, and then the
snapshot record files, so an interruption leaves at worst record files without a row, which
the next prune deletes. The data of forgotten snapshots stays until ``prune``. Raises
SnapshotError for an unknown name, RepositoryLocked when another command holds the lock.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ...repository.catalog import SnapshotRecord
from ...policy import Group, Policy, Snap, apply_policy, parse_time
from ...repository import Repository


@dataclass
class ForgetResult:
    dry_run: bool
    groups: list[dict] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: int = 0
    duration: float = 0.0

    def to_json(self) -> dict:
        return {"dry_run": self.dry_run, "groups": self.groups, "removed": self.removed,
                "kept": self.kept, "duration": self.duration}


def _snap(rec: SnapshotRecord) -> Snap:
    return Snap(rec.id, parse_time(rec.time), rec.host, rec.source, frozenset(rec.tags), rec.seq)


def _remove(repo: Repository, ids: list[str]) -> None:
    if not ids:
        return
    repo.catalog.remove_snapshots(ids)  # invisible from here on
    for sid in ids:
        repo.storage.delete(f"snapshots/{sid}.json")


def _group_json(g: Group, records: dict[str, SnapshotRecord]) -> dict:
    def item(s: Snap) -> dict:
        r = records[s.id]
        return {"id": s.id, "time": r.time, "seq": r.seq, "tags": r.tags}

    return {
        "host": g.host,
        "source": g.source,
        "keep": [dict(item(s), reasons=why) for s, why in g.keep],
        "remove": [item(s) for s in g.remove],
    }


def forget_by_policy(repo: Repository, policy: Policy, tags: list[str] | None = None,
                     host: str | None = None, dry_run: bool = False, source: str | None = None) -> ForgetResult:
    """Apply ``policy`` to the snapshots carrying all ``tags`` (and of ``host``, of
    ``source``: matched as by Repository.resolve)."""
    if policy.empty():
        raise ValueError("no keep rule given: say which snapshots to keep (e.g. --keep-last 7), or name snapshots to forget")
    started = time.monotonic()
    kind, command = ("shared", "forget --dry-run") if dry_run else ("exclusive", "forget")
    with repo.lock(kind, command):
        records = {r.id: r for r in repo.snapshots() if source is None or r.source in (source, os.path.abspath(source))}
        groups = apply_policy((_snap(r) for r in records.values()), policy, tags or (), host)
        res = ForgetResult(dry_run, [_group_json(g, records) for g in groups])
        res.removed = [s.id for g in groups for s in g.remove]
        res.kept = sum(len(g.keep) for g in groups)
        if not dry_run:
            _remove(repo, res.removed)
    res.duration = round(time.monotonic() - started, 3)
    return res


def forget_snapshots(repo: Repository, names: list[str], dry_run: bool = False, host: str | None = None,
                     source: str | None = None, tags: list[str] | None = None) -> ForgetResult:
    """Forget the named snapshots (ids, prefixes, latest, latest:TAG; ``host``, ``source``
    and ``tags`` filter as in Repository.resolve); all names are resolved before anything
    is removed."""
    started = time.monotonic()
    kind, command = ("shared", "forget --dry-run") if dry_run else ("exclusive", "forget")
    with repo.lock(kind, command):
        ids = list(dict.fromkeys(repo.resolve(n, host, source, tags).id for n in names))
        res = ForgetResult(dry_run, removed=ids, kept=len(repo.snapshots()) - len(ids))
        if not dry_run:
            _remove(repo, ids)
    res.duration = round(time.monotonic() - started, 3)
    return res
