"""Who is asking, and what they may do.

A principal is the configured admin (``web.admin_user``, or the local control token), an
account user (role ``admin`` or ``user``) by session cookie or bearer token, or an API key
of either.  API keys carry scopes; sessions and tokens have every scope of their role.
"""

from __future__ import annotations

from dataclasses import dataclass

SCOPES = ("send", "read-logs", "manage-credentials", "admin")
ROLES = ("admin", "user")


@dataclass(frozen=True)
class Principal:
    name: str  # for logs: "admin", a username, "key <id> of <username>"
    role: str  # admin | user
    user_id: int | None = None  # None: the configured admin (no account row)
    scopes: frozenset[str] = frozenset(SCOPES)
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin" and "admin" in self.scopes

    @property
    def sees_everyone(self) -> bool:
        """Whose objects: an admin's (the configured admin's or an admin account's, by any
        of its keys) are everyone's; scopes say which routes, the role says whose."""
        return self.role == "admin"

    def may(self, scope: str | None) -> bool:
        """May this principal use a route that needs ``scope`` (None: any)?"""
        if scope is None or self.is_admin:
            return True
        return scope in self.scopes

