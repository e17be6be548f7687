"""diskvault serve: every snapshot as a read-only NBD export, until Ctrl-C."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ..errors import Interrupted
from .common import JsonOpt, NoLockOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, open_repo, passphrase, plural


def serve(
    repo: RepoOpt,
    bind: Annotated[str, typer.Option("--bind", help="Address to listen on: HOST:PORT (port 0 picks a free one), "
                                      "or unix:PATH for a Unix socket (mode 0600). An address that is not "
                                      "loopback needs --tls or --insecure.",
                                      metavar="HOST:PORT|unix:PATH")] = "127.0.0.1:10809",
    max_connections: Annotated[int, typer.Option("--max-connections", min=1, metavar="N",
                                                 help="Serve at most N connections at once; more are closed at "
                                                 "once.")] = 64,
    timeout: Annotated[int, typer.Option("--timeout", min=1, metavar="SECONDS",
                                         help="Close a connection that has not chosen its export (TLS "
                                         "handshake included) within SECONDS.")] = 30,
    tls: Annotated[bool, typer.Option("--tls", help="Require TLS (NBD STARTTLS, x509 certificates from "
                                      "--tls-certificates); clients connect with nbds://.")] = False,
    tls_certificates: Annotated[str | None, typer.Option(
        "--tls-certificates", metavar="DIR",
        help="Folder with server-cert.pem, server-key.pem and (for --tls-verify-peer) ca-cert.pem.")] = None,
    tls_verify_peer: Annotated[bool, typer.Option(
        "--tls-verify-peer", help="With --tls: serve only clients with a certificate signed by "
        "DIR/ca-cert.pem.")] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a TCP address that is not loopback "
                                           "without --tls (every snapshot in clear, to anyone who reaches "
                                           "it).")] = False,
    json_out: JsonOpt = False,
    no_lock: NoLockOpt = False,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Serve every snapshot read-only over NBD (exports: id, id prefix, latest, latest:TAG; NAME/pN is partition N)."""
    from ..ops.access.nbd_server import NbdServer, parse_bind, tls_context

    if tls and not tls_certificates:
        raise typer.BadParameter("--tls needs --tls-certificates DIR (server-cert.pem, server-key.pem)",
                                 param_hint="--tls")
    if (tls_certificates or tls_verify_peer) and not tls:
        raise typer.BadParameter("add --tls to serve with TLS", param_hint="--tls-certificates/--tls-verify-peer")
    host, port = parse_bind(bind)
    context = tls_context(tls_certificates, tls_verify_peer) if tls else None
    with open_repo(repo, write=False, no_lock=no_lock, secret=passphrase(password_file, password_command)) as r:
        server = NbdServer(r, host, port, max_connections=max_connections, timeout=timeout, tls=context,
                           insecure=insecure)
        try:
            names = server.export_names()
            if json_out:
                sys.stdout.write(json.dumps({
                    "url": server.url, "host": server.host, "port": server.port, "socket": server.socket_path,
                    "exports": names, "tls": tls, "tls_verify_peer": tls_verify_peer,
                    "max_connections": max_connections, "timeout": timeout}) + "\n")
            else:
                security = ("TLS, client certificates required" if tls_verify_peer else "TLS") if tls else "no TLS"
                typer.echo(f"serving {plural(max(len(names) - 1, 0), 'snapshot')} read-only on {server.url} "
                           f"({security}; at most {max_connections} connections; exports: id, id prefix, "
                           f"latest, latest:TAG, NAME/pN); Ctrl-C stops")
            sys.stdout.flush()
            server.serve_forever()
        except (KeyboardInterrupt, Interrupted):  # Ctrl-C or SIGTERM: the normal way to stop a server
            pass
        finally:
            server.stop()
    if not json_out:
        typer.echo("stopped serving", err=True)
