"""The diskvault command line: parsing, progress and formatting only; one module a command.

``main`` turns DiskvaultError into one line on stderr and its documented exit code
(docs/cli.md); an unexpected exception prints one line too (DISKVAULT_DEBUG=1 shows the
traceback) and exits 1.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

import typer

from ..errors import EXIT_INTERNAL, DiskvaultError, Interrupted
from .check_cmd import check
from .forget_cmd import forget
from .info_cmd import info
from .init_cmd import init
from .mount_cmd import mount
from .partitions_cmd import partitions
from .prune_cmd import prune
from .repair_cmd import repair
from .restore_cmd import restore
from .serve_cmd import serve
from .snapshot_cmd import snapshot
from .snapshots_cmd import snapshots
from .unlock_cmd import unlock
from .verify_cmd import verify

app = typer.Typer(
    name="diskvault",
    help="Deduplicating system-image backup: snapshot disks and images often, restore them exactly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for command in (init, snapshot, snapshots, info, restore, forget, prune, unlock, check, verify, repair,
                partitions, serve, mount):
    app.command()(command)


def _interrupt(signum: int, frame: object) -> None:
    # Raised instead of KeyboardInterrupt so that click does not swallow it: operations
    # clean up (abort the open pack, remove a half-written target) and main exits 130.
    raise Interrupted("interrupted; the repository holds everything up to the last completed step")


def main() -> None:
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    for stream in (sys.stdout, sys.stderr):  # a name that is not UTF-8 prints as its bytes, as ls shows it
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    try:
        app()  # click handles usage errors itself (exit 2) and exits through SystemExit
    except DiskvaultError as exc:
        print(f"diskvault: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:  # a bug: still one line unless asked for more
        if os.environ.get("DISKVAULT_DEBUG"):
            traceback.print_exc()
        print(f"diskvault: internal error: {type(exc).__name__}: {exc} (set DISKVAULT_DEBUG=1 for a traceback)",
              file=sys.stderr)
        sys.exit(EXIT_INTERNAL)
