"""Console session cookies: bound to the server secret and the key's stored hash; expiry; CSRF tokens."""

from __future__ import annotations

import time
from pathlib import Path

from app.settings import Settings
from app.ui import sessions

SECRET = b"s" * 64
HASH = "a" * 64


def test_a_cookie_verifies_only_with_its_secret_and_its_keys_hash() -> None:
    cookie = sessions.make_cookie(SECRET, HASH, "0123456789ab", 60)
    claim = sessions.parse_cookie(cookie)
    assert claim is not None and claim.key_id == "0123456789ab"
    assert sessions.verify(SECRET, HASH, claim)
    assert not sessions.verify(b"t" * 64, HASH, claim)  # another server's secret
    assert not sessions.verify(SECRET, "b" * 64, claim)  # the key was replaced (another hash)


def test_a_tampered_or_expired_cookie_is_refused() -> None:
    cookie = sessions.make_cookie(SECRET, HASH, "0123456789ab", 60)
    key_id, expires, signature = cookie.split(".")
    later = sessions.parse_cookie(f"{key_id}.{int(expires) + 3600}.{signature}")
    assert later is not None and not sessions.verify(SECRET, HASH, later)
    other = sessions.parse_cookie(f"ba9876543210.{expires}.{signature}")
    assert other is not None and not sessions.verify(SECRET, HASH, other)
    assert sessions.parse_cookie(f"{key_id}.{int(time.time()) - 1}.{signature}") is None
    for garbage in ("", "x", "a.b.c", "a.1", None):
        assert sessions.parse_cookie(garbage) is None


def test_csrf_tokens_are_bound_to_the_session() -> None:
    one, two = (sessions.make_cookie(SECRET, HASH, "0123456789ab", n) for n in (60, 120))
    token = sessions.csrf_token(SECRET, one)
    assert sessions.csrf_ok(SECRET, one, token)
    assert not sessions.csrf_ok(SECRET, two, token)
    assert not sessions.csrf_ok(SECRET, one, None)
    assert not sessions.csrf_ok(SECRET, one, "")


def test_the_secret_file_is_made_once_and_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, teachers=[])
    first = sessions.server_secret(settings)
    assert first == sessions.server_secret(settings) and len(first) == 64
    assert (tmp_path / sessions.SECRET_FILE).stat().st_mode & 0o077 == 0
