"""Every command is documented (docs/cli.md and the README) and has working --help."""

import re
from pathlib import Path

import pytest

from diskvault.cli import app
from helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)
GROUPS = sorted(g.name for g in app.registered_groups)  # diskvault job add|list|...
SUBCOMMANDS = [(g.name, c.name) for g in app.registered_groups for c in g.typer_instance.registered_commands]


def test_commands_found():
    assert {"init", "snapshot", "snapshots", "info", "restore"} <= set(COMMANDS)
    assert "key" in GROUPS


@pytest.mark.parametrize("command", COMMANDS + GROUPS)
def test_command_is_documented(command):
    assert re.search(rf"^## {command}\b", (ROOT / "docs" / "cli.md").read_text(), re.M), command
    assert f"`{command}" in (ROOT / "README.md").read_text(), command


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    out = run_cli(command, "--help").stdout.decode()
    assert "--repo" in out and "--json" in out


def _sections() -> dict[str, str]:
    """docs/cli.md split at its ``## `` headings; key "" is the text before the first."""
    parts = re.split(r"^## (\S+).*$", (ROOT / "docs" / "cli.md").read_text(), flags=re.M)
    return {"": parts[0], **dict(zip(parts[1::2], parts[2::2]))}


def _flags(command) -> list[str]:
    return sorted({o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")})


def _documented(flag: str, text: str) -> bool:
    """``flag`` appears inside a `code span` of ``text`` (``-n`` in `-n/--dry-run`, not in `--no-x`)."""
    return bool(re.search(rf"`[^`]*(?<![\w-]){re.escape(flag)}(?![\w-])[^`]*`", text))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_is_documented(command):
    """Every flag `diskvault COMMAND --help` lists is in that command's section of docs/cli.md
    (or, for the flags every command has, in its introduction)."""
    from typer.main import get_command

    cmd = get_command(app).commands[command]
    sections = _sections()
    text = sections.get(command, "") + sections[""]
    missing = [f for f in _flags(cmd) if not _documented(f, text)]
    assert not missing, f"docs/cli.md, section {command}: document {', '.join(missing)}"
    help_text = run_cli(command, "--help", env=None).stdout.decode()
    assert all(f in help_text for f in _flags(cmd) if f != "-h")  # what --help shows is what we checked


def test_global_flags_are_documented():
    from typer.main import get_command

    missing = [f for f in _flags(get_command(app)) if not _documented(f, _sections()[""])]
    assert not missing, missing


@pytest.mark.parametrize(("group", "command"), SUBCOMMANDS)
def test_every_subcommand_flag_is_documented(group, command):
    """``diskvault job add --help`` and the like: every flag is in the group's section of
    docs/cli.md (``## job``, with a ``### job add`` heading for each subcommand)."""
    from typer.main import get_command

    cmd = get_command(app).commands[group].commands[command]
    text = _sections().get(group, "")
    assert re.search(rf"^### {group} {command}\b", text, re.M), f"docs/cli.md: add ### {group} {command}"
    missing = [f for f in _flags(cmd) if not _documented(f, text)]
    assert not missing, f"docs/cli.md, section {group}: document {', '.join(missing)} of {group} {command}"
    help_text = run_cli(group, command, "--help", env=None).stdout.decode()
    assert all(f in help_text for f in _flags(cmd) if f != "-h")
