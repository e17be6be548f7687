"""Real S3 servers for the storage tests: each starts once per session (on first use), is
handed to the tests as a ``Server`` (endpoint, credentials) and stopped, by pid, when the
session ends. A server that cannot start fails the tests that need it with its log's tail;
nothing is skipped."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "servers"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import s3servers  # noqa: E402

from diskvault.storage.local import LocalStorage  # noqa: E402
from storage_helpers import BUCKET, s3_storage  # noqa: E402

BACKENDS = ["local", "seaweedfs", "ceph-rgw"]


class _Servers:
    """Started lazily, so a run of local-only tests starts nothing."""

    def __init__(self, root: Path) -> None:
        self.root, self.up, self.failed = root, {}, {}

    def get(self, kind: str) -> s3servers.Server:
        if kind in self.failed:
            pytest.fail(self.failed[kind], pytrace=False)
        if kind not in self.up:
            try:
                srv = s3servers.start(kind, self.root / kind)
                srv.make_bucket(BUCKET)
            except Exception as exc:  # noqa: BLE001
                self.failed[kind] = f"{kind} did not start: {exc}"
                pytest.fail(self.failed[kind], pytrace=False)
            self.up[kind] = srv
        return self.up[kind]

    def stop(self) -> None:
        for srv in self.up.values():
            srv.stop()


@pytest.fixture(scope="session")
def s3_servers(tmp_path_factory):
    servers = _Servers(tmp_path_factory.mktemp("s3servers"))
    yield servers
    servers.stop()


@pytest.fixture(params=BACKENDS)
def backend_kind(request) -> str:
    return request.param


@pytest.fixture
def make_storage(backend_kind, s3_servers, tmp_path):
    """A function giving a new, empty storage of the backend under test (keyword arguments:
    the S3 backend's limits); all share the test's root/prefix when ``same=True``."""
    made = []
    prefix = f"t-{secrets.token_hex(6)}/repo"

    def make(**kw):
        if backend_kind == "local":
            root = tmp_path / "store"
            root.mkdir(exist_ok=True)
            st = LocalStorage(str(root))
        else:
            st = s3_storage(s3_servers.get(backend_kind), prefix, **kw)
        made.append(st)
        return st

    yield make
    for st in made:
        st.close()


@pytest.fixture
def storage(make_storage):
    return make_storage()
