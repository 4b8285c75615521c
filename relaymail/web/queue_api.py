"""``/api/queue``: list, show, retry, hold, release, bounce, delete and flush queued
messages, pause and resume delivery, and move failed ones back (``/admin/retry-failed``)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.web.iweb import IRequest

from relaymail.relay.manager import QueueError, RelayManager, read_headers
from relaymail.spool.envelope import Envelope
from relaymail.web.access import principal_of
from relaymail.web.http import int_arg, json_reply, str_arg
from relaymail.web.routing import SubApp, query, route
from relaymail.web.shapes import envelope_json

QUEUE_ACTIONS = ("retry", "hold", "release", "bounce")
STATES = ("queue", "hold", "failed")


def matches(envelope: Envelope, sender: str | None, recipient: str | None) -> bool:
    if sender and sender.lower() not in envelope.sender.lower():
        return False
    return not recipient or any(recipient.lower() in r.address.lower()
                                for r in envelope.recipients)


class QueueAPI(SubApp):
    def __init__(self, manager: RelayManager) -> None:
        self.manager = manager

    @route("get", "/api/queue", "List queued, held or failed messages",
           query=[query("state", "queue, hold or failed"), query("sender", "substring"),
                  query("recipient", "substring"), query("offset", "paging", "integer"),
                  query("limit", "paging", "integer")])
    async def list_queue(self, request: IRequest) -> bytes:
        state = str_arg(request, "state") or "queue"
        if state not in (*STATES, "all"):
            return json_reply(request, {"error": f"unknown state {state}"}, 400)
        manager = self.manager
        now = manager.now()
        rows = []
        for name in STATES if state == "all" else (state,):
            # hold/ and failed/ are read from disk: in the thread pool, not the reactor.
            envelopes = (manager.list(name) if name == "queue" else
                         await manager.spool.run_in_thread(manager.list, name))
            for envelope in envelopes:
                if matches(envelope, str_arg(request, "sender"), str_arg(request, "recipient")):
                    rows.append(envelope_json(envelope, name, now,
                                              envelope.queue_id in manager.active))
        offset, limit = int_arg(request, "offset", 0), int_arg(request, "limit", 100)
        return json_reply(request, {"total": len(rows), "offset": offset, "limit": limit,
                                    "paused": manager.paused,
                                    "messages": rows[offset:offset + limit]})

    @route("get", "/api/queue/{qid}", "One message: envelope, recipients' states, headers")
    async def show(self, request: IRequest, qid: str) -> bytes:
        manager = self.manager
        try:
            state, envelope = manager.find(qid)
        except QueueError as e:
            return json_reply(request, {"error": str(e)}, 404)
        body = envelope_json(envelope, state, manager.now(), qid in manager.active)
        path = manager.spool.path("data", qid + ".eml")
        body["headers"] = await manager.spool.run_in_thread(read_headers, path)
        return json_reply(request, body)

    @route("post", "/api/queue/{qid}/{action}", "retry, hold, release or bounce one message")
    async def act(self, request: IRequest, qid: str, action: str) -> bytes:
        if action not in QUEUE_ACTIONS:
            return json_reply(request, {"error": f"unknown action {action}"}, 404)
        return await self._run(request, qid, action, getattr(self.manager, action))

    @route("delete", "/api/queue/{qid}", "Delete one message (no bounce)")
    async def delete(self, request: IRequest, qid: str) -> bytes:
        return await self._run(request, qid, "delete", self.manager.delete)

    async def _run(self, request: IRequest, qid: str, action: str,
                   op: Callable[[str], Coroutine[Any, Any, str]]) -> bytes:
        try:
            state = await op(qid)
        except QueueError as e:
            code = 404 if str(e).startswith("no message") else 409
            return json_reply(request, {"error": str(e)}, code)
        return json_reply(request, {"queue_id": qid, "action": action, "state": state})

    @route("post", "/api/queue/flush", "Retry every deferred message now")
    def flush(self, request: IRequest) -> bytes:
        return json_reply(request, {"flushed": self.manager.flush()})

    @route("post", "/api/queue/pause", "Pause delivery: accept and queue, deliver nothing "
           "until resumed (kept across restarts)")
    async def pause(self, request: IRequest) -> bytes:
        paused = await self.manager.control.pause(principal_of(request).name)
        return json_reply(request, {"paused": paused, "queued": len(self.manager.queued)})

    @route("post", "/api/queue/resume", "Resume delivery, starting with what is due")
    async def resume(self, request: IRequest) -> bytes:
        paused = await self.manager.control.resume(principal_of(request).name)
        return json_reply(request, {"paused": paused, "queued": len(self.manager.queued)})

    @route("post", "/admin/retry-failed", "Move every failed message back to the queue")
    async def retry_failed(self, request: IRequest) -> bytes:
        return json_reply(request, {"requeued": await self.manager.retry_failed()})
