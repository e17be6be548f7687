"""The ``diskvault`` program: starts deriving the repository's key ahead (kdf.py), then
loads and runs the command line (cli)."""

from __future__ import annotations

import os
import sys

from .kdf import derive_ahead


def main() -> None:
    derive_ahead(sys.argv[1:], os.environ)
    from .cli import main as run

    run()
