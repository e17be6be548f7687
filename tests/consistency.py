"""The consistency check run after every test that changes a repository: the structural
``check`` (catalog <-> packs <-> snapshot trees and records) must find no error."""

from __future__ import annotations

from pathlib import Path

from diskvault.ops.integrity.check import check
from diskvault.repository import Repository
from helpers import secret


def assert_consistent(path: Path) -> None:
    with Repository.open(str(path), passphrase=secret) as r:
        report = check(r)
    assert report.sound, "repository is not consistent:\n" + "\n".join(f.message for f in report.errors)
