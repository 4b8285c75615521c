"""``/api/mail-logs``: the delivery history (relaymail.history), searched and counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.iweb import IRequest

from relaymail.history import History
from relaymail.web.access import principal_of
from relaymail.web.http import int_arg, json_reply, str_arg, time_arg
from relaymail.web.routing import Access, SubApp, query, route
from relaymail.web.shapes import iso

STATUSES = ("received", "sent", "deferred", "bounced")
NOBODY = "-"  # an account scope that matches no row (an unknown ?user=)


class MailLogsAPI(SubApp):
    unavailable = "the delivery history is not kept here"

    def __init__(self, history: History, clock: Callable[[], float],
                 accounts: Any = None) -> None:
        self.history = history
        self.clock = clock
        self.accounts = accounts  # relaymail.accounts.view.AccountsView, or None

    def account_scope(self, request: IRequest) -> str | None:
        """Whose messages the caller sees, as the history keys them (the account's id): an
        account user only their own; an admin everyone's (None), or one account's with
        ``?user=<username>``."""
        principal = principal_of(request)
        if not principal.sees_everyone:
            return str(principal.user_id)
        name = str_arg(request, "user")
        if name is None:
            return None
        user = self.accounts.current.user_named(name) if self.accounts is not None else None
        return str(user.id) if user is not None else NOBODY

    def username(self, account: str | None) -> str | None:
        """The account's name for the answer (a deleted one's id)."""
        if account is None or account == NOBODY:
            return None
        user = self.accounts.user(int(account)) if self.accounts is not None else None
        return user.username if user is not None else f"#{account}"

    @route("get", "/api/mail-logs", "Search the delivery history, newest first",
           query=[query("sender", "substring"), query("recipient", "substring"),
                  query("queue_id", "exact"),
                  query("status", "received, sent, deferred or bounced"),
                  query("since", "ISO 8601 or Unix seconds"),
                  query("until", "ISO 8601 or Unix seconds"),
                  query("limit", "at most 1000", "integer"),
                  query("offset", "paging", "integer"),
                  query("user", "admin: one account's messages")],
           access=Access.USER, scope="read-logs")
    async def mail_logs(self, request: IRequest) -> bytes:
        """Search: sender, recipient (substrings), queue_id, status, since/until (ISO 8601
        or Unix seconds), limit (max 1000), offset; newest first."""
        try:
            filters: dict[str, Any] = {name: str_arg(request, name)
                                       for name in ("sender", "recipient", "queue_id",
                                                    "status")}
            filters["since"] = time_arg(request, "since")
            filters["until"] = time_arg(request, "until")
            filters["account"] = self.account_scope(request)
        except ValueError as e:
            return json_reply(request, {"error": str(e)}, 400)
        total, rows = await self.history.search(filters, int_arg(request, "limit", 100),
                                                int_arg(request, "offset", 0))
        for row in rows:
            row["time"] = iso(row["time"])
            row["user"] = self.username(row["account"])
        return json_reply(request, {"total": total, "items": rows})

    @route("get", "/api/mail-logs/stats", "Totals (recipients by status, messages received), "
           "success rate, per hour (with average latency), per upstream, per credential, top "
           "senders, queue depth over time (queue_depth: the highest sampled depth per "
           "queue_depth_step_s, oldest first)",
           query=[query("hours", "window, default 24", "integer"),
                  query("user", "admin: one account's messages")],
           access=Access.USER, scope="read-logs")
    async def mail_log_stats(self, request: IRequest) -> bytes:
        """Counts by status for the last ``hours`` (default 24) and per hour, and the queue
        depth sampled over them (at most 288 points: the peak of each step), for the
        dashboard's charts."""
        hours = max(1, min(int_arg(request, "hours", 24), 24 * 31))
        now = self.clock()
        start = (int(now) // 3600 - hours + 1) * 3600
        account = self.account_scope(request)
        raw = await self.history.stats(start, account=account)
        step = max(60, hours * 3600 // 288)
        # the queue is everyone's: its depth is for admins
        depth = [] if account is not None else await self.history.queue_depth(start, step)
        per_hour = [{"hour": iso(h), **{s: raw["buckets"].get(h, {}).get(s, 0)
                                        for s in STATUSES}}
                    for h in range(start, int(now) + 1, 3600)]
        for row, h in zip(per_hour, range(start, int(now) + 1, 3600), strict=True):
            average = raw["latency"].get(h)
            row["latency_s"] = None if average is None else round(average, 3)
        totals = {s: raw["totals"].get(s, 0) for s in STATUSES}
        final = totals["sent"] + totals["bounced"]
        relays: dict[str, dict[str, int]] = {}
        for relay, status, n in raw["relays"]:
            relays.setdefault(relay, dict.fromkeys(STATUSES[1:], 0))[status] = n
        return json_reply(request, {
            "hours": hours, "user": self.username(account), "totals": totals,
            "messages_received": raw["messages"],
            "success_rate": round(100 * totals["sent"] / final, 2) if final else 100.0,
            "per_hour": per_hour,
            "per_upstream": [{"upstream": r, **counts} for r, counts in sorted(relays.items())],
            "per_credential": [{"credential": c, "messages": n}
                               for c, n in raw["credentials"]],
            "top_senders": [{"sender": s, "messages": n} for s, n in raw["top_senders"]],
            "queue_depth_step_s": step,
            "queue_depth": [{"t": iso(t), "messages": n} for t, n in depth]})

    @route("get", "/api/mail-logs/usage", "Messages accepted per SMTP credential this hour "
           "and today (UTC), what the quotas count, from the history (an account user: "
           "their own logins)", access=Access.USER, scope="read-logs")
    async def usage(self, request: IRequest) -> bytes:
        now = self.clock()
        starts = {"hour": now // 3600 * 3600, "day": now // 86400 * 86400}
        used = await self.history.usage(starts)
        if not principal_of(request).sees_everyone:
            mine = self.accounts.current.logins if self.accounts is not None else {}
            user_id = principal_of(request).user_id
            used = {name: n for name, n in used.items()
                    if name in mine and mine[name].user_id == user_id}
        return json_reply(request, {"since": {k: iso(v) for k, v in starts.items()},
                                    "credentials": used})
