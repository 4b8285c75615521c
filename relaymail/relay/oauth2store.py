"""Where relaymail keeps the OAuth2 refresh tokens it obtains or is rotated to:
``<spool_dir>/oauth2-tokens.json`` (0600, locked, written atomically), keyed by token
endpoint, client and mailbox; secrets are compared by fingerprint, never logged."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from typing import Any

from relaymail.config import OAuth2Config
from relaymail.spool.safeio import open_private, write_json_atomically

STORE_NAME = "oauth2-tokens.json"


def store_key(settings: OAuth2Config, username: str) -> str:
    """Which stored refresh token belongs to these settings."""
    return f"{settings.token_url} {settings.client_id} {username}"


def fingerprint(secret: str | None) -> str:
    """A short one-way tag of a configured refresh token (so the store knows which one a
    stored token was derived from without keeping it twice)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16] if secret else ""


def store_path(spool_dir: str) -> str:
    return os.path.join(spool_dir, STORE_NAME)


# ---------------------------------------------------------------------------- the store


class TokenStore:
    """Refresh tokens by store key in one JSON file (0600).  Blocking: call the methods
    from a thread (the CLI may call them directly)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self, key: str) -> dict[str, Any] | None:
        """The entry for ``key``: {"refresh_token", "seed", "updated"}, or None."""
        return self._read().get(key)

    def save(self, key: str, refresh_token: str, seed: str, updated: float) -> None:
        """Record ``refresh_token`` for ``key``, under a lock against a concurrent CLI."""
        with self._locked():
            tokens = self._read()
            tokens[key] = {"refresh_token": refresh_token, "seed": seed, "updated": updated}
            write_json_atomically(self.path, {"version": 1, "tokens": tokens})

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        tokens = data.get("tokens") if isinstance(data, dict) else None
        return tokens if isinstance(tokens, dict) else {}

    @contextlib.contextmanager
    def _locked(self) -> Any:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = open_private(self.path + ".lock", os.O_WRONLY | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def pick_refresh_token(configured: str | None, entry: dict[str, Any] | None,
                       remembered: str | None = None) -> str | None:
    """The refresh token to use: the stored one unless the config now holds a different
    one than it was derived from (edited by hand), then one rotated in memory, then the
    configured one."""
    entry = entry or {}
    stored = entry.get("refresh_token")
    if isinstance(stored, str) and stored and (
            not configured or entry.get("seed") == fingerprint(configured)):
        return stored
    return remembered or configured


# ---------------------------------------------------------------------------- HTTP
