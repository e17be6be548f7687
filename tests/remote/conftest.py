"""A real SeaweedFS server for the remote-repository tests (started once per session, on first
use, stopped by pid at the end), and per test a fresh repository URL under its own prefix with
its own cache directory."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "servers"))

import s3servers  # noqa: E402

BUCKET = "remote"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    try:
        srv = s3servers.start("seaweedfs", tmp_path_factory.mktemp("seaweed"))
        srv.make_bucket(BUCKET)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"seaweedfs did not start: {exc}", pytrace=False)
    yield srv
    srv.stop()


@pytest.fixture
def remote(seaweed, tmp_path, monkeypatch):
    """``(url, env)``: a new prefix of the test bucket and the environment of a CLI run
    against it (credentials, a cache directory of this test); the same credentials and cache
    are set in this process (in-process code)."""
    from helpers import cli_env

    url = seaweed.url(BUCKET, f"t-{secrets.token_hex(6)}/repo")
    extra = {**seaweed.env(), "DISKVAULT_CACHE_DIR": str(tmp_path / "cache")}
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    return url, cli_env(**extra)
