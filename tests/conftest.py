"""Fixtures: a fresh repository per test, checked for consistency when the test ends."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from consistency import assert_consistent  # noqa: E402

from diskvault.repository.chunking import ChunkerParams  # noqa: E402
from diskvault.repository import Repository  # noqa: E402
from helpers import secret  # noqa: E402

settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("dev", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def repo_path(tmp_path: Path):
    """Path of a new repository (16 KiB average chunks: small tests, many chunks);
    checked for consistency after the test."""
    path = tmp_path / "repo"
    Repository.init(str(path), ChunkerParams.for_average(16 << 10), passphrase=secret).close()
    yield path
    if (path / "config.json").exists():
        assert_consistent(path)


@pytest.fixture
def plain_repo_path(tmp_path: Path):
    """Path of a new unencrypted repository (``init --encryption none``), for tests that read or
    edit its files' plaintext; checked for consistency after the test."""
    path = tmp_path / "plain"
    Repository.init(str(path), ChunkerParams.for_average(16 << 10), encryption="none").close()
    yield path
    if (path / "config.json").exists():
        assert_consistent(path)


@pytest.fixture
def repo(repo_path: Path):
    with Repository.open(str(repo_path), passphrase=secret) as r:
        yield r
