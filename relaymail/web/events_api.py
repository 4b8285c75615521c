"""``/api/webhooks`` and ``/api/suppressions``: the webhook endpoints with their backlog and
failures, failed deliveries sent again, and the suppression list searched, added to,
removed from, exported and imported (relaymail.events)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from twisted.web.iweb import IRequest

from relaymail.events.hub import EventHub
from relaymail.events.outbox import DELIVERED, FAILED, PENDING
from relaymail.events.suppression import (
    MAX_REASON,
    SuppressionError,
    SuppressionList,
    normalize,
)
from relaymail.web.http import int_arg, json_body, json_reply, str_arg
from relaymail.web.routing import SubApp, query, route
from relaymail.web.shapes import iso

DELIVERY_STATES = (PENDING, DELIVERED, FAILED)
MAX_PAGE = 500
MAX_OFFSET = 10**9  # SQLite takes 64-bit integers; more is no page anyway
ADD = {"type": "object", "required": ["address"], "properties": {
    "address": {"type": "string"}, "reason": {"type": "string"}}}
IMPORT = {"type": "object", "required": ["csv"], "properties": {"csv": {"type": "string"}}}


def page(request: IRequest) -> tuple[int, int]:
    return (min(int_arg(request, "limit", 100), MAX_PAGE),
            min(int_arg(request, "offset", 0), MAX_OFFSET))


def timestamps(item: dict[str, Any], *names: str) -> dict[str, Any]:
    """ISO 8601 times; null for none (a delivered row has no next attempt)."""
    for name in names:
        item[name] = iso(item[name]) if item.get(name) else None
    return item


class WebhooksAPI(SubApp):
    unavailable = "no webhooks are configured"

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    @route("get", "/api/webhooks", "The webhook endpoints (no secrets): events, filters, "
           "backlog, delivered and failed counts, the last error")
    async def endpoints(self, request: IRequest) -> bytes:
        assert self.hub.outbox is not None
        failed = await self.hub.outbox.failed_counts()  # kept across restarts, unlike ours
        items = [timestamps(e, "last_success", "last_error_at") for e in self.hub.public()]
        for item in items:
            item["failed_kept"] = failed.get(item["name"], 0)
        return json_reply(request, {"endpoints": items, "backlog_full": self.hub.dropped})

    @route("get", "/api/webhooks/deliveries", "Webhook deliveries, newest first, with the "
           "event document sent",
           query=[query("state", "pending, delivered or failed"),
                  query("endpoint", "an endpoint's name"),
                  query("limit", f"at most {MAX_PAGE}", "integer"),
                  query("offset", "paging", "integer")])
    async def deliveries(self, request: IRequest) -> bytes:
        state = str_arg(request, "state")
        if state is not None and state not in DELIVERY_STATES:
            return json_reply(request, {"error": f"unknown state {state}"}, 400)
        assert self.hub.outbox is not None
        found = await self.hub.outbox.list(state, str_arg(request, "endpoint"), *page(request))
        for item in found["items"]:
            timestamps(item, "created", "next_attempt", "updated")
            with contextlib.suppress(ValueError):
                item["body"] = json.loads(item["body"])
        return json_reply(request, found)

    @route("post", "/api/webhooks/deliveries/{delivery_id}/retry",
           "Send one failed delivery again, now")
    async def retry_one(self, request: IRequest, delivery_id: str) -> bytes:
        if not (delivery_id.isascii() and delivery_id.isdigit()) or len(delivery_id) > 18:
            return json_reply(request, {"error": f"no delivery {delivery_id[:40]}",
                                        "code": "webhook_no_delivery"}, 404)
        touched = await self.hub.retry(int(delivery_id))
        if not touched:
            return json_reply(request, {"error": f"no failed delivery {delivery_id}",
                                        "code": "webhook_no_delivery"}, 404)
        return json_reply(request, {"retried": 1, "id": int(delivery_id)})

    @route("post", "/api/webhooks/retry-failed", "Send every failed delivery again, now")
    async def retry_all(self, request: IRequest) -> bytes:
        retried = await self.hub.retry(None)
        return json_reply(request, {"retried": retried})


class SuppressionsAPI(SubApp):
    unavailable = "the suppression list is off (suppression.enabled)"

    def __init__(self, suppression: SuppressionList) -> None:
        self.suppression = suppression

    @route("get", "/api/suppressions", "Search the suppression list, newest first",
           query=[query("q", "address substring"),
                  query("limit", f"at most {MAX_PAGE}", "integer"),
                  query("offset", "paging", "integer")])
    async def search(self, request: IRequest) -> bytes:
        total, entries = await self.suppression.search(str_arg(request, "q") or "",
                                                       *page(request))
        return json_reply(request, {"total": total, "items": [
            timestamps(e.public(), "created") for e in entries]})

    @route("post", "/api/suppressions", "Add an address (refused at RCPT from now on)",
           body=ADD)
    async def add(self, request: IRequest) -> bytes:
        try:
            form = json_body(request)
            if not isinstance(form, dict):
                raise ValueError("expected a JSON object")
            address = form.get("address")
            reason = form.get("reason") or "added by the administrator"
            if not isinstance(address, str) or not isinstance(reason, str):
                raise SuppressionError("address: expected an address")
            new = await self.suppression.add(address, reason[:MAX_REASON], "manual")
        except SuppressionError as e:
            return json_reply(request, {"error": str(e), "code": "suppression_address"}, 400)
        except ValueError as e:
            return json_reply(request, {"error": str(e)}, 400)
        return json_reply(request, {"address": address.strip().strip("<>").lower(),
                                    "added": bool(new)}, 201 if new else 200)

    @route("delete", "/api/suppressions/{address}", "Remove an address from the list")
    async def remove(self, request: IRequest, address: str) -> bytes:
        try:
            removed = await self.suppression.remove(address)
        except SuppressionError as e:
            return json_reply(request, {"error": str(e), "code": "suppression_address"}, 400)
        if not removed:
            return json_reply(request, {"error": f"{address[:320]} is not suppressed",
                                        "code": "suppression_unknown",
                                        "params": {"address": address[:320]}}, 404)
        return json_reply(request, {"address": normalize(address), "removed": True})

    @route("get", "/api/suppressions/export", "The whole list as CSV (address, reason, "
           "source, queue_id, created)")
    async def export(self, request: IRequest) -> bytes:
        text = await self.suppression.export_csv()
        request.setHeader(b"content-type", b"text/csv; charset=utf-8")
        request.setHeader(b"content-disposition", b'attachment; filename="suppressions.csv"')
        request.setHeader(b"cache-control", b"no-store")
        return text.encode("utf-8")

    @route("post", "/api/suppressions/import", "Add the addresses of a CSV export, or of "
           "one address per line", body=IMPORT)
    async def import_csv(self, request: IRequest) -> bytes:
        try:
            form = json_body(request)
            text = form.get("csv") if isinstance(form, dict) else None
            if not isinstance(text, str):
                raise ValueError("csv: expected the CSV text")
            added = await self.suppression.import_csv(text)
        except SuppressionError as e:
            return json_reply(request, {"error": str(e), "code": "suppression_import"}, 400)
        except ValueError as e:
            return json_reply(request, {"error": str(e)}, 400)
        return json_reply(request, {"added": added})
