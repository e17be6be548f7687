"""diskvault serve: every snapshot as a read-only NBD export, until Ctrl-C."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ..errors import Interrupted
from .common import JsonOpt, NoLockOpt, RepoOpt, open_repo


def serve(
    repo: RepoOpt,
    bind: Annotated[str, typer.Option("--bind", help="Address to listen on: HOST:PORT (port 0 picks a free one), "
                                      "or unix:PATH for a Unix socket.", metavar="HOST:PORT|unix:PATH")] = "127.0.0.1:10809",
    json_out: JsonOpt = False,
    no_lock: NoLockOpt = False,
) -> None:
    """Serve every snapshot read-only over NBD (exports: id, id prefix, latest, latest:TAG; NAME/pN is partition N)."""
    from ..ops.access.nbd_server import NbdServer, parse_bind

    host, port = parse_bind(bind)
    with open_repo(repo, write=False, no_lock=no_lock) as r:
        server = NbdServer(r, host, port)
        try:
            names = server.export_names()
            if json_out:
                sys.stdout.write(json.dumps({"url": server.url, "host": server.host, "port": server.port,
                                             "socket": server.socket_path, "exports": names}) + "\n")
            else:
                typer.echo(f"serving {max(len(names) - 1, 0)} snapshots read-only on {server.url} "
                           f"(exports: id, id prefix, latest, latest:TAG, NAME/pN); Ctrl-C stops")
            sys.stdout.flush()
            server.serve_forever()
        except (KeyboardInterrupt, Interrupted):  # Ctrl-C or SIGTERM: the normal way to stop a server
            pass
        finally:
            server.stop()
    if not json_out:
        typer.echo("stopped serving", err=True)
