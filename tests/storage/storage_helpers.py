"""Helpers of the storage tests (a module of its own: "conftest" names several files)."""

from __future__ import annotations

import secrets

from diskvault.storage.s3 import S3Storage

BUCKET = "contract"  # made on each server when it starts (conftest.py)


def s3_storage(srv, prefix: str | None = None, bucket: str = BUCKET, **kw) -> S3Storage:
    """A storage under a fresh prefix of the test bucket of ``srv`` (a tests/servers Server), fast retries."""
    prefix = prefix if prefix is not None else f"t-{secrets.token_hex(6)}/repo"
    kw = {"retries": 3, "retry_seconds": 10, "backoff_seconds": 0.05, "timeout": 30, **kw}
    return S3Storage(srv.endpoint, bucket, prefix, access_key_id=srv.access_key,
                     secret_access_key=srv.secret_key, region=srv.region, **kw)
