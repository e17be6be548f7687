"""The ``diskvault`` program: starts deriving the repository's key ahead (kdf.py), then
loads and runs the command line (cli)."""

from __future__ import annotations

import os
import signal
import sys

from .kdf import derive_ahead


def _interrupted_while_loading(signum: int, frame: object) -> None:
    # nothing is written before the command line runs (which installs its own handlers)
    os.write(2, b"diskvault: error: interrupted while starting; nothing was written\n")
    os._exit(130)


def main() -> None:
    signal.signal(signal.SIGINT, _interrupted_while_loading)
    signal.signal(signal.SIGTERM, _interrupted_while_loading)
    derive_ahead(sys.argv[1:], os.environ)
    from .cli import main as run

    run()
