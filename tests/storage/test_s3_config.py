"""The S3 URL form (restic's) and the credentials taken from the boto conventions."""

from __future__ import annotations

import pytest

from diskvault.errors import RemoteAuthError, UsageError
from diskvault.storage import is_remote, open_storage
from diskvault.storage.s3 import S3Storage, credentials, parse_url


@pytest.mark.parametrize("url, want", [
    ("s3:http://127.0.0.1:8333/backups/laptops", ("http://127.0.0.1:8333", "backups", "laptops")),
    ("s3:https://s3.example.net/backups/laptops/", ("https://s3.example.net", "backups", "laptops")),
    ("s3:https://s3.example.net/backups", ("https://s3.example.net", "backups", "")),
    ("s3:s3.amazonaws.com/my.bucket/a/b", ("https://s3.amazonaws.com", "my.bucket", "a/b")),
])
def test_url_form(url, want):
    assert parse_url(url) == want
    assert is_remote(url)


@pytest.mark.parametrize("url", ["s3:", "s3:http://host", "s3:http://host/", "s3:ftp://host/b",
                                 "s3:http://host:99999/b", "s3:http://host/B_ad", "s3:http://host/b/../x",
                                 "s3:http://host/b/p?x=1", "/backup/local"])
def test_bad_urls_are_usage_errors(url):
    with pytest.raises(UsageError) as e:
        parse_url(url)
    assert "s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]" in str(e.value) or "choose another" in str(e.value)


def test_credentials_from_environment():
    got = credentials({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t",
                       "AWS_DEFAULT_REGION": "eu-west-3", "HOME": "/nonexistent"})
    assert got == {"access_key_id": "k", "secret_access_key": "s", "token": "t", "region": "eu-west-3"}


def test_credentials_from_profile(tmp_path):
    (tmp_path / "credentials").write_text("[default]\naws_access_key_id = d\naws_secret_access_key = ds\n"
                                          "[backup]\naws_access_key_id = b\naws_secret_access_key = bs\n")
    (tmp_path / "config").write_text("[profile backup]\nregion = eu-central-1\n")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"), "AWS_CONFIG_FILE": str(tmp_path / "config")}
    assert credentials({**env, "AWS_PROFILE": "backup"}) == {
        "access_key_id": "b", "secret_access_key": "bs", "region": "eu-central-1"}
    assert credentials(env) == {"access_key_id": "d", "secret_access_key": "ds", "region": "us-east-1"}


def test_no_credentials_is_a_clear_error(tmp_path):
    with pytest.raises(RemoteAuthError) as e:
        credentials({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")})
    assert "AWS_ACCESS_KEY_ID" in str(e.value)
    with pytest.raises(RemoteAuthError) as e:
        credentials({"AWS_PROFILE": "gone", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")})
    assert "profile 'gone'" in str(e.value)


def test_open_storage(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    st = open_storage("s3:http://127.0.0.1:1/bucket/pre/fix")
    assert isinstance(st, S3Storage) and (st.bucket, st.prefix) == ("bucket", "pre/fix")
    assert open_storage(str(tmp_path)).root == str(tmp_path)
