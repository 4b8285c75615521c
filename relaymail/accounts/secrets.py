"""The secrets accounts hand out, and how they are kept.

* Bearer tokens (``rmt_`` + 43 URL-safe characters, 256 bits) and API keys
  (``rmk_<id>_<secret>``) are random enough that one SHA-256 digest is a safe way to store
  them (bcrypt exists for guessable passwords, and would cost 0.2 s per API request); the
  database holds only digests, so a stolen backup opens nothing.
* SMTP logins are generated as ``relay_<8 hex>_<4 hex>``, with letters-and-digits passwords
  (relaymail.credentials.generate_password) stored as bcrypt hashes like the credentials
  file's.
"""

from __future__ import annotations

import hashlib
import re
import secrets

TOKEN_PREFIX = "rmt_"
KEY_PREFIX = "rmk_"
KEY_RE = re.compile(r"rmk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
TOKEN_RE = re.compile(r"rmt_[A-Za-z0-9_-]{43}")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_invite() -> str:
    return "rmi_" + secrets.token_urlsafe(32)


def new_api_key() -> tuple[str, str]:
    """(key id, the whole key to show once)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def split_api_key(key: str) -> tuple[str, str] | None:
    """(key id, digest of the whole key) of a well-formed key; None otherwise."""
    match = KEY_RE.fullmatch(key)
    return (match.group(1), digest(key)) if match else None


def new_login() -> str:
    """An SMTP login in the shape users of smtp2go-like services know."""
    return f"relay_{secrets.token_hex(4)}_{secrets.token_hex(2)}"
