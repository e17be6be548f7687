"""Every command is documented (docs/cli.md and the README) and has working --help."""

import re
from pathlib import Path

import pytest

from diskvault.cli import app
from helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def test_commands_found():
    assert {"init", "snapshot", "snapshots", "info", "restore"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_is_documented(command):
    assert re.search(rf"^## {command}\b", (ROOT / "docs" / "cli.md").read_text(), re.M), command
    assert f"`{command}" in (ROOT / "README.md").read_text(), command


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    out = run_cli(command, "--help").stdout.decode()
    assert "--repo" in out and "--json" in out
