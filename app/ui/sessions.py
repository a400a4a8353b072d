"""Console sessions: a signed cookie naming an API key (never the key itself), and CSRF tokens bound to it.

The cookie is `<key id>.<expiry>.<signature>`. The signature is an HMAC keyed by HMAC(server secret, the key's
stored hash): forging one needs both the server's secret and the database, and revoking the key ends every
session made with it (the hash is looked up on each request, as the API looks up the key)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings

COOKIE = "distillery_session"
SIGN_IN_COOKIE = "distillery_sign_in"
SECRET_FILE = "ui-session-secret"


@dataclass(frozen=True, slots=True)
class SessionClaim:
    """What an unverified cookie says: the key id and the expiry, with the signature to check."""

    key_id: str
    expires: int
    signature: str


def server_secret(settings: Settings) -> bytes:
    """The configured secret, else one kept in data_dir (made on first use, readable by this user only), so
    every process of one service on one machine signs alike."""
    if settings.ui_session_secret is not None:
        return settings.ui_session_secret.get_secret_value().encode()
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_hex(32).encode())
    return path.read_bytes()


def _signing_key(secret: bytes, key_hash: str) -> bytes:
    return hmac.new(secret, b"session|" + key_hash.encode(), hashlib.sha256).digest()


def _sign(secret: bytes, key_hash: str, key_id: str, expires: int) -> str:
    message = f"{key_id}.{expires}".encode()
    return hmac.new(_signing_key(secret, key_hash), message, hashlib.sha256).hexdigest()


def make_cookie(secret: bytes, key_hash: str, key_id: str, lifetime_s: float) -> str:
    expires = int(time.time() + lifetime_s)
    return f"{key_id}.{expires}.{_sign(secret, key_hash, key_id, expires)}"


def parse_cookie(value: str | None) -> SessionClaim | None:
    """The claim of a well-formed, unexpired cookie (its signature still to be checked), else None."""
    if not value:
        return None
    parts = value.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[0]) > 32:
        return None
    claim = SessionClaim(key_id=parts[0], expires=int(parts[1]), signature=parts[2])
    return claim if claim.expires > time.time() else None


def verify(secret: bytes, key_hash: str, claim: SessionClaim) -> bool:
    return hmac.compare_digest(_sign(secret, key_hash, claim.key_id, claim.expires), claim.signature)


def csrf_token(secret: bytes, cookie: str) -> str:
    """The token every state-changing form carries: bound to this session's cookie, so another site (which
    cannot read the cookie) cannot make one."""
    return hmac.new(secret, b"csrf|" + cookie.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: bytes, cookie: str, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(csrf_token(secret, cookie), token)


def new_sign_in_token() -> str:
    """A random token for the sign-in form, also set as a cookie (double submit: a cross-site form has the
    field but not the SameSite=Strict cookie)."""
    return secrets.token_urlsafe(24)


def sign_in_token_ok(cookie: str | None, field: str | None) -> bool:
    return bool(cookie) and bool(field) and hmac.compare_digest(cookie or "", field or "")
