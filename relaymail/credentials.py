"""SMTP AUTH credentials: a JSON file of bcrypt hashes, and a twisted.cred checker over it.

The file holds no plaintext password; a generated password is shown once, when created or
reset.  The file is re-read when its modification time changes, so ``relaymail credentials``
edits take effect without a restart.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import secrets
import string
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import bcrypt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from relaymail.spool.safeio import write_json_atomically

BCRYPT_ROUNDS = 12
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@+")


OWNER_FIELDS = ("owner", "owner_id", "owner_sender_domains", "owner_hourly_quota",
                "owner_daily_quota")


class CredentialsError(Exception):
    """A credentials file problem or a bad request to change it."""


@dataclass
class Credential:
    """One SMTP AUTH identity with its limits."""

    name: str
    password_hash: str
    enabled: bool = True
    allowed_sender_domains: list[str] = field(default_factory=list)
    hourly_quota: int | None = None
    daily_quota: int | None = None
    check_header_from: bool = False  # the header From must be in the sender's domain
    created: float = 0.0
    description: str = ""
    # A login of an account user (relaymail.accounts): the user's own bounds apply too.
    owner: str | None = None
    owner_id: int | None = None
    owner_sender_domains: list[str] = field(default_factory=list)
    owner_hourly_quota: int | None = None
    owner_daily_quota: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Credential:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def checks_header_from(self) -> bool:
        """An account's login always has its header From checked: its user may not sign
        (DKIM) or send in the name of a domain the account does not have."""
        return self.check_header_from or self.owner is not None

    def public(self) -> dict[str, Any]:
        """The credential without its hash, for listings and API answers."""
        data = self.stored()
        data.pop("password_hash")
        return data

    def stored(self) -> dict[str, Any]:
        """What the credentials file keeps (the owner fields belong to accounts)."""
        return {k: v for k, v in asdict(self).items() if k not in OWNER_FIELDS}


def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


PASSWORD_ALPHABET = string.ascii_letters + string.digits


def generate_password(length: int = 24) -> str:
    """Letters and digits only (about 143 bits): a password that starts with "-" is read as
    an option when pasted into swaks, curl or a shell, so urlsafe tokens are avoided."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def check_name(name: str) -> str:
    if not name or len(name) > 128 or not set(name) <= NAME_CHARS:
        raise CredentialsError(f"invalid credential name {name!r}: use letters, digits, .-_@+")
    return name


class CredentialSource(Protocol):
    """What SMTP AUTH and MAIL read: a login's settings by name."""

    def get(self, name: str) -> Credential | None: ...


class CredentialStore:
    """The credentials file, loaded lazily and again whenever it changes on disk."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._items: dict[str, Credential] = {}

    def get(self, name: str) -> Credential | None:
        self._refresh()
        return self._items.get(name)

    def all(self) -> list[Credential]:
        self._refresh()
        return sorted(self._items.values(), key=lambda c: c.name)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._items, self._stamp = {}, None
            return
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._stamp:
            self._items = self._read()
            self._stamp = stamp

    def _read(self) -> dict[str, Credential]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            items = [Credential.from_dict(x) for x in data.get("credentials", [])]
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise CredentialsError(f"{self.path}: cannot read credentials: {e}") from None
        return {c.name: c for c in items}

    # -- changes (used by the command line and the console) --

    def add(self, name: str, password: str | None = None, **limits: Any) -> str:
        """Create a credential; returns its password (generated unless given)."""
        check_name(name)
        if self.get(name) is not None:
            raise CredentialsError(f"credential {name!r} already exists")
        password = password or generate_password()
        if not limits.get("allowed_sender_domains") and "@" in name:
            limits["allowed_sender_domains"] = [name.rpartition("@")[2].lower()]
        items = dict(self._items)
        items[name] = Credential(name=name, password_hash=hash_password(password),
                                 created=time.time(), **limits)
        self._write(items)
        return password

    def unrestricted_warning(self, name: str) -> str | None:
        """Said when a login may send as anyone: it is allowed, but rarely meant."""
        credential = self.get(name)
        if credential is None or credential.allowed_sender_domains:
            return None
        return (f"{name} may send as any address: give allowed sender domains "
                "(--sender-domain, or allowed_sender_domains) to restrict it")

    def reset(self, name: str, password: str | None = None) -> str:
        credential = self._require(name)
        password = password or generate_password()
        credential.password_hash = hash_password(password)
        self._write(dict(self._items))
        return password

    def update(self, name: str, **changes: Any) -> Credential:
        """Change limits or flags (never the password: that is ``reset``)."""
        credential = self._require(name)
        allowed = {f.name for f in fields(Credential)} - {"name", "password_hash", "created"}
        unknown = set(changes) - allowed
        if unknown:
            raise CredentialsError(f"cannot change {', '.join(sorted(unknown))}")
        for key, value in changes.items():
            setattr(credential, key, value)
        self._write(dict(self._items))
        return credential

    def remove(self, name: str) -> None:
        self._require(name)
        items = dict(self._items)
        del items[name]
        self._write(items)

    def _require(self, name: str) -> Credential:
        credential = self.get(name)
        if credential is None:
            raise CredentialsError(f"no credential named {name!r}")
        return credential

    def _write(self, items: dict[str, Credential]) -> None:
        data = {"credentials": [c.stored() for c in sorted(items.values(), key=lambda c: c.name)]}
        write_json_atomically(self.path, data)
        self._items, self._stamp = items, None


@functools.cache
def dummy_hash() -> bytes:
    """A hash to check unknown or disabled logins against, at the cost real ones have, so
    that the time of a refusal does not tell whether the login exists (it was made with
    cost 4: 1.5 ms against 200 ms).  Made once, on first use, in the thread pool."""
    return bcrypt.hashpw(b"relaymail-dummy", bcrypt.gensalt(BCRYPT_ROUNDS))


@implementer(ICredentialsChecker)
class CredentialChecker:
    """Checks IUsernamePassword against the store; bcrypt runs in ``run_in_thread``.

    Successful checks are remembered for ``cache_seconds`` under a keyed digest of the
    name, password and hash (so a changed hash invalidates them), because applications
    often authenticate on every connection and bcrypt is deliberately slow.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, store: CredentialSource, run_in_thread: Callable[..., Deferred],
                 clock: Callable[[], float] = time.monotonic, cache_seconds: float = 300,
                 cache_size: int = 1024) -> None:
        self.store = store
        self.run_in_thread = run_in_thread
        self.clock = clock
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._key = secrets.token_bytes(32)

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred:
        raw_name: bytes | str = credentials.username
        name = raw_name.decode("utf-8", "replace") if isinstance(raw_name, bytes) else raw_name
        raw_password: bytes | str = credentials.password
        password = raw_password if isinstance(raw_password, bytes) else raw_password.encode()
        try:
            credential = self.store.get(name)
        except CredentialsError as e:
            return fail(e)
        usable = credential is not None and credential.enabled
        stored = credential.password_hash.encode() if credential is not None and usable \
            else None
        digest = hmac.new(self._key, b"\0".join([name.encode(), password, stored or b""]),
                          hashlib.sha256).digest()
        if usable and self._cached(digest):
            return succeed(name)
        d = self.run_in_thread(_bcrypt_matches, password, stored)
        d.addCallback(self._verdict, name, usable, digest)
        return d

    def _verdict(self, matches: bool, name: str, usable: bool, digest: bytes) -> str:
        if not (matches and usable):
            raise UnauthorizedLogin("bad credentials")
        self._cache[digest] = self.clock() + self.cache_seconds
        self._cache.move_to_end(digest)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return name

    def _cached(self, digest: bytes) -> bool:
        expiry = self._cache.get(digest)
        if expiry is None:
            return False
        if expiry < self.clock():
            del self._cache[digest]
            return False
        return True


def _bcrypt_matches(password: bytes, stored: bytes | None) -> bool:
    try:
        return bcrypt.checkpw(password, stored or dummy_hash()) and stored is not None
    except ValueError:
        return False
