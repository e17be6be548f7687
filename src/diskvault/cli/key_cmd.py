"""diskvault key list|add|remove|passwd: the passphrases of an encrypted repository."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import JsonOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, open_repo, passphrase, print_json

key_app = typer.Typer(name="key", help="Manage the passphrases (key files) of an encrypted repository.",
                      no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

NewPasswordFileOpt = Annotated[str | None, typer.Option(
    "--new-password-file", metavar="FILE",
    help="Read the new passphrase from FILE (else it is asked twice on the terminal).")]


def _new(new_password_file: str | None):
    """The new passphrase: from --new-password-file, else typed twice on a terminal (never
    DISKVAULT_PASSWORD*, which give the current one)."""
    return passphrase(new_password_file, None, confirm=True, what="new passphrase", env=False)


@key_app.command("list")
def key_list(repo: RepoOpt, json_out: JsonOpt = False, password_file: PasswordFileOpt = None,
             password_command: PasswordCommandOpt = None) -> None:
    """List the key files: id, who added it where, when; * marks the one in use."""
    from ..ops.key import list_keys

    with open_repo(repo, write=False, secret=passphrase(password_file, password_command)) as r:
        found = list_keys(r)
    if json_out:
        print_json([k.to_json() for k in found])
        return
    typer.echo(f" {'ID':<17} {'USER':<12} {'HOST':<20} CREATED")
    for k in found:
        line = f"{'*' if k.current else ' '}{k.id:<17} {k.username:<12} {k.host:<20} {k.created}"
        typer.echo(f"{line}  ({k.problem}: remove it with diskvault key remove {k.id})" if k.problem else line)


@key_app.command("add")
def key_add(repo: RepoOpt, new_password_file: NewPasswordFileOpt = None, json_out: JsonOpt = False,
            password_file: PasswordFileOpt = None, password_command: PasswordCommandOpt = None) -> None:
    """Add a passphrase: a new key file wrapping the same repository key."""
    from ..ops.key import add_key

    with open_repo(repo, secret=passphrase(password_file, password_command)) as r:
        kid = add_key(r, _new(new_password_file))
    if json_out:
        print_json({"added": kid})
    else:
        typer.echo(f"added key {kid}", err=True)


@key_app.command("remove")
def key_remove(repo: RepoOpt, key_id: Annotated[str, typer.Argument(metavar="ID", help="Key id (or a unique prefix).")],
               json_out: JsonOpt = False, password_file: PasswordFileOpt = None,
               password_command: PasswordCommandOpt = None) -> None:
    """Remove a passphrase (not the one in use)."""
    from ..ops.key import remove_key

    with open_repo(repo, secret=passphrase(password_file, password_command)) as r:
        kid = remove_key(r, key_id)
    if json_out:
        print_json({"removed": kid})
    else:
        typer.echo(f"removed key {kid}", err=True)


@key_app.command("passwd")
def key_passwd(repo: RepoOpt, new_password_file: NewPasswordFileOpt = None, json_out: JsonOpt = False,
               password_file: PasswordFileOpt = None, password_command: PasswordCommandOpt = None) -> None:
    """Change the passphrase in use: a new key file, then the old one removed."""
    from ..ops.key import change_passphrase

    with open_repo(repo, secret=passphrase(password_file, password_command)) as r:
        new, old = change_passphrase(r, _new(new_password_file))
    if json_out:
        print_json({"added": new, "removed": old})
    else:
        typer.echo(f"changed the passphrase: key {old} replaced by {new}", err=True)
