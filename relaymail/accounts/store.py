"""Every read and change of the accounts tables, as blocking functions of an open
connection (run in the database's pool by ``Database.run``, one transaction each).

Each change bumps ``generation``, so that every process's view reloads within a second.
Refusals are AccountError (not found, already exists), raised before anything is written.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from relaymail.accounts.database import bump, current_generation
from relaymail.accounts.fields import AccountError
from relaymail.accounts.model import ApiKey, SmtpLogin, Snapshot, Token, User
from relaymail.accounts.schema import api_keys, invites, smtp_credentials, tokens, users

JSON_COLUMNS = {"allowed_sender_domains", "scopes"}


def _encoded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in values.items()}


# -- the snapshot every process keeps ------------------------------------------------


def snapshot(conn: Connection, now: float) -> Snapshot:
    """All users, logins, live tokens and keys (expired tokens are left out)."""
    out = Snapshot(generation=current_generation(conn))
    out.users = {u.id: u for u in map(User.from_row, conn.execute(select(users)))}
    out.logins = {c.username: c for c in
                  map(SmtpLogin.from_row, conn.execute(select(smtp_credentials)))}
    live = conn.execute(select(tokens).where(tokens.c.expires > now))
    out.tokens = {t.digest: Token(t.digest, t.user_id, t.created, t.expires) for t in live}
    out.keys = {k.id: k for k in map(ApiKey.from_row, conn.execute(select(api_keys)))}
    return out


# -- users ---------------------------------------------------------------------------


def count_users(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(users)).scalar_one())


def create_user(conn: Connection, username: str, email: str, password_hash: str, role: str,
                now: float, **limits: Any) -> User:
    taken = conn.execute(select(users.c.username, users.c.email).where(
        or_(func.lower(users.c.username) == username.lower(),
            func.lower(users.c.email) == email.lower()))).first()
    if taken is not None:
        field = "username" if taken.username.lower() == username.lower() else "email"
        raise AccountError("exists", f"{field}: already registered", field)
    values = {"username": username, "email": email, "password_hash": password_hash,
              "role": role, "enabled": True, "created": now, "last_login": None,
              "hourly_quota": None, "daily_quota": None, "allowed_sender_domains": [],
              **limits}
    try:
        made = conn.execute(insert(users).values(**_encoded(values))).inserted_primary_key
    except IntegrityError:  # the same name made at once elsewhere (the lower() indexes)
        raise AccountError("exists", "username: already registered", "username") from None
    assert made is not None
    bump(conn)
    return get_user(conn, int(made[0]))


def get_user(conn: Connection, user_id: int) -> User:
    row = conn.execute(select(users).where(users.c.id == user_id)).first()
    if row is None:
        raise AccountError("not_found", f"no user {user_id}")
    return User.from_row(row)


def list_users(conn: Connection) -> list[User]:
    return [User.from_row(r) for r in conn.execute(select(users).order_by(users.c.id))]


def update_user(conn: Connection, user_id: int, now: float = 0.0, **changes: Any) -> User:
    """Role, enabled, quotas, allowed sender domains; credentials outside a narrowed
    domain list keep their rows but stop at MAIL (both lists are checked there).  A
    disabled user's tokens are revoked and console sessions end."""
    get_user(conn, user_id)
    if changes:
        if changes.get("enabled") is False:
            conn.execute(delete(tokens).where(tokens.c.user_id == user_id))
            changes["signed_out"] = now
        conn.execute(update(users).where(users.c.id == user_id).values(**_encoded(changes)))
        bump(conn)
    return get_user(conn, user_id)


def set_password(conn: Connection, user_id: int, password_hash: str, now: float = 0.0
                 ) -> None:
    """A new password ends every console session and token of the user (API keys stay:
    they are revoked one by one)."""
    get_user(conn, user_id)
    conn.execute(update(users).where(users.c.id == user_id)
                 .values(password_hash=password_hash, signed_out=now))
    conn.execute(delete(tokens).where(tokens.c.user_id == user_id))
    bump(conn)


def delete_user(conn: Connection, user_id: int) -> None:
    get_user(conn, user_id)
    for table in (tokens, api_keys, smtp_credentials):  # no reliance on ON DELETE CASCADE
        conn.execute(delete(table).where(table.c.user_id == user_id))
    conn.execute(delete(users).where(users.c.id == user_id))
    bump(conn)


def record_login(conn: Connection, user_id: int, now: float) -> None:
    """No bump: nobody's rights changed, and a reload of every process per login would cost
    more than the login (the users page reads the table itself)."""
    conn.execute(update(users).where(users.c.id == user_id).values(last_login=now))


# -- bearer tokens -------------------------------------------------------------------


def add_token(conn: Connection, digest: str, user_id: int, now: float, expires: float
              ) -> None:
    conn.execute(delete(tokens).where(tokens.c.expires <= now))  # pruned as they are made
    conn.execute(insert(tokens).values(digest=digest, user_id=user_id, created=now,
                                       expires=expires))
    record_login(conn, user_id, now)
    bump(conn)


def revoke_token(conn: Connection, digest: str) -> None:
    if conn.execute(delete(tokens).where(tokens.c.digest == digest)).rowcount:
        bump(conn)


# -- API keys ------------------------------------------------------------------------


def add_api_key(conn: Connection, key_id: str, user_id: int | None, name: str, digest: str,
                scopes: list[str], now: float) -> ApiKey:
    conn.execute(insert(api_keys).values(id=key_id, user_id=user_id, name=name, digest=digest,
                                         scopes=json.dumps(scopes), created=now))
    bump(conn)
    return ApiKey(key_id, user_id, name, digest, scopes, now, None)


def list_api_keys(conn: Connection, user_id: int | None, everyone: bool = False
                  ) -> list[ApiKey]:
    query = select(api_keys).order_by(api_keys.c.created)
    if not everyone:
        query = query.where(api_keys.c.user_id.is_(None) if user_id is None
                            else api_keys.c.user_id == user_id)
    return [ApiKey.from_row(r) for r in conn.execute(query)]


def delete_api_key(conn: Connection, key_id: str, user_id: int | None, everyone: bool) -> None:
    """Revoke a key of ``user_id`` (any key when ``everyone``: an admin)."""
    query = delete(api_keys).where(api_keys.c.id == key_id)
    if not everyone:
        query = query.where(api_keys.c.user_id.is_(None) if user_id is None
                            else api_keys.c.user_id == user_id)
    if not conn.execute(query).rowcount:
        raise AccountError("not_found", f"no API key {key_id}")
    bump(conn)


def touch_api_keys(conn: Connection, used: dict[str, float]) -> None:
    """Last-used times, written behind (no bump: nobody's rights changed)."""
    for key_id, when in used.items():
        conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used=when))


# -- SMTP credentials of users -------------------------------------------------------


def add_login(conn: Connection, login: SmtpLogin) -> SmtpLogin:
    values = {c.name: getattr(login, c.name) for c in smtp_credentials.columns}
    conn.execute(insert(smtp_credentials).values(**_encoded(values)))
    bump(conn)
    return login


def logins_of(conn: Connection, user_id: int | None) -> list[SmtpLogin]:
    """One user's logins, or everyone's (None)."""
    query = select(smtp_credentials).order_by(smtp_credentials.c.created)
    if user_id is not None:
        query = query.where(smtp_credentials.c.user_id == user_id)
    return [SmtpLogin.from_row(r) for r in conn.execute(query)]


def get_login(conn: Connection, username: str, user_id: int | None) -> SmtpLogin:
    """A login of ``user_id`` (any owner when None); another user's is "not found", so
    that its existence is not told either."""
    query = select(smtp_credentials).where(smtp_credentials.c.username == username)
    if user_id is not None:
        query = query.where(smtp_credentials.c.user_id == user_id)
    row = conn.execute(query).first()
    if row is None:
        raise AccountError("not_found", f"no SMTP credential {username}")
    return SmtpLogin.from_row(row)


def update_login(conn: Connection, username: str, user_id: int | None, **changes: Any
                 ) -> SmtpLogin:
    get_login(conn, username, user_id)
    if changes:
        conn.execute(update(smtp_credentials).where(smtp_credentials.c.username == username)
                     .values(**_encoded(changes)))
        bump(conn)
    return get_login(conn, username, user_id)


def delete_login(conn: Connection, username: str, user_id: int | None) -> None:
    get_login(conn, username, user_id)
    conn.execute(delete(smtp_credentials).where(smtp_credentials.c.username == username))
    bump(conn)


# -- invitations ---------------------------------------------------------------------


def add_invite(conn: Connection, digest: str, email: str, role: str, now: float,
               expires: float, created_by: str) -> None:
    conn.execute(delete(invites).where(invites.c.expires <= now))
    conn.execute(insert(invites).values(digest=digest, email=email, role=role, created=now,
                                        expires=expires, created_by=created_by))


def list_invites(conn: Connection, now: float) -> list[dict[str, Any]]:
    """Live invitations; ``id`` is the start of the code's digest (the code is not kept)."""
    rows = conn.execute(select(invites).where(invites.c.expires > now)
                        .order_by(invites.c.created))
    return [{"id": r.digest[:16], "email": r.email, "role": r.role, "created": r.created,
             "expires": r.expires, "created_by": r.created_by} for r in rows]


def delete_invite(conn: Connection, invite_id: str) -> None:
    if len(invite_id) != 16 or not conn.execute(
            delete(invites).where(invites.c.digest.startswith(invite_id))).rowcount:
        raise AccountError("not_found", f"no invitation {invite_id[:16]}")


def take_invite(conn: Connection, digest: str, now: float) -> tuple[str, str]:
    """(email, role) of a live invitation, used up; AccountError when there is none."""
    row = conn.execute(select(invites).where(invites.c.digest == digest,
                                             invites.c.expires > now)).first()
    if row is None:
        raise AccountError("forbidden", "invite: unknown or expired invitation", "invite")
    conn.execute(delete(invites).where(invites.c.digest == digest))
    return row.email, row.role
