"""Queue control: what an operator does to queued messages (the API and ``relaymail queue``).

Find, list, retry, release, hold, delete, bounce and flush act on the manager's memory
(``queued``, the schedule) and on the spool's files together, after any attempt for the
message has finished, so that an operator's change never races a delivery.
"""

from __future__ import annotations

import builtins
import re
from typing import TYPE_CHECKING

from relaymail.logs import Logger
from relaymail.relay.pause import remove_marker, write_marker
from relaymail.spool.envelope import FAILED, PENDING, Envelope
from relaymail.spool.record import open_body

if TYPE_CHECKING:
    from relaymail.relay.manager import RelayManager
    from relaymail.spool import Spool

log = Logger(namespace="relaymail.relay")

HEADER_BYTES = 256 * 1024
STATES = ("queue", "hold", "failed")
QUEUE_ID = re.compile(r"[0-9A-Za-z]{1,40}")


class QueueError(Exception):
    """An operator's request that cannot be done (unknown ID, wrong state)."""


def read_head(path: str) -> bytes:
    with open_body(path) as f:
        return f.read(HEADER_BYTES)


def read_headers(path: str) -> str:
    """The header section of a stored message, as text (empty when unreadable)."""
    try:
        head = read_head(path)
    except OSError:
        return ""
    end = head.find(b"\r\n\r\n")
    return head[:end if end >= 0 else len(head)].decode("utf-8", "replace")


class QueueControl:
    """The queue's control surface over one manager (running, or offline for the CLI)."""

    def __init__(self, manager: RelayManager) -> None:
        self.manager = manager

    @property
    def spool(self) -> Spool:
        return self.manager.spool

    def find(self, qid: str) -> tuple[str, Envelope]:
        """Where a message is and its envelope (from memory when queued)."""
        if not QUEUE_ID.fullmatch(qid):
            raise QueueError(f"no message {qid!r}")
        if qid in self.manager.queued:
            return "queue", self.manager.queued[qid]
        state = self.spool.find_state(qid)
        if state is None:
            raise QueueError(f"no message {qid}")
        try:
            return state, Envelope.from_json(
                self.spool.ops.read_envelope(self.spool.path(state, qid + ".json")))
        except (ValueError, TypeError) as e:
            self.spool.quarantine(state, qid + ".json", str(e))
            raise QueueError(f"{qid}: malformed envelope, moved to quarantine/") from None

    def list(self, state: str = "queue") -> builtins.list[Envelope]:
        if state == "queue":
            return sorted(self.manager.queued.values(), key=lambda e: e.queue_id)
        if state not in STATES:
            raise QueueError(f"unknown state {state}")
        return builtins.list(self.spool.load_state(state))

    async def retry(self, qid: str) -> str:
        manager = self.manager
        await manager.wait_idle(qid)
        state, envelope = self.find(qid)
        if state == "queue":
            envelope.next_attempt = manager.now()
            await self.spool.save_envelope(envelope, "queue")
            if manager.running:
                manager.submit(envelope)
        else:
            if state == "failed":
                for recipient in envelope.recipients:
                    if recipient.state == FAILED:
                        recipient.state = PENDING
                envelope.reason = None
            envelope.extra["requeued_at"] = manager.now()
            await self._requeue(envelope, state)
        if manager.running and manager.paused:  # asked for by name: sent while others wait
            manager.start_now(envelope)
        return "queue"

    async def release(self, qid: str) -> str:
        state, envelope = self.find(qid)
        if state != "hold":
            raise QueueError(f"{qid} is not on hold (it is in {state})")
        return await self._requeue(envelope, state)

    async def _requeue(self, envelope: Envelope, state: str) -> str:
        envelope.next_attempt = self.manager.now()
        await self.spool.save_envelope(envelope, state)
        await self.spool.move(envelope.queue_id, state, "queue")
        if self.manager.running:
            self.manager.submit(envelope)
        return "queue"

    async def hold(self, qid: str) -> str:
        await self.manager.wait_idle(qid)
        state, _ = self.find(qid)
        if state != "queue":
            raise QueueError(f"{qid} is not in the queue (it is in {state})")
        self.manager.queued.pop(qid, None)
        await self.spool.move(qid, "queue", "hold")
        return "hold"

    async def delete(self, qid: str) -> str:
        await self.manager.wait_idle(qid)
        state, _ = self.find(qid)
        self.manager.queued.pop(qid, None)
        await self.spool.remove(qid, state)
        log.info("{queue_id}: deleted by the operator", queue_id=qid)
        return "deleted"

    async def bounce(self, qid: str) -> str:
        """Return the message to its sender now, for every recipient still pending."""
        await self.manager.wait_idle(qid)
        state, envelope = self.find(qid)
        if state == "failed":
            raise QueueError(f"{qid} has already failed")
        pending = [r for r in envelope.recipients if r.state == PENDING]
        for recipient in pending:
            recipient.state = FAILED
            recipient.last_reply = "5.0.0 returned to the sender by the mail administrator"
        if pending:
            self.manager.report_failed(envelope, pending, pending[0].last_reply or "")
            await self.manager.send_bounce(envelope, pending)
            await self.manager.events_durable()
        if state == "hold":
            await self.spool.move(qid, "hold", "queue")
        await self.manager.finish(envelope)
        return "failed"

    async def flush_offline(self) -> int:
        """``flush`` for a stopped instance: the envelopes on disk become due now."""
        envelopes = builtins.list(self.spool.load_state("queue"))
        for envelope in envelopes:
            envelope.next_attempt = self.manager.now()
            await self.spool.save_envelope(envelope, "queue")
        return len(envelopes)

    async def pause(self, by: str) -> bool:
        """Accept and queue, deliver nothing until :meth:`resume`; kept across restarts
        (relaymail.relay.pause).  Returns the new state (paused)."""
        manager = self.manager
        await self.spool.run_in_thread(write_marker, self.spool.root, manager.now(), by)
        manager.set_paused(True, by)
        return True

    async def resume(self, by: str) -> bool:
        """Deliver again, starting with what fell due meanwhile.  Returns the new state."""
        await self.spool.run_in_thread(remove_marker, self.spool.root)
        self.manager.set_paused(False, by)
        return False

    def flush(self) -> int:
        """Every queued message is due now; returns how many."""
        manager = self.manager
        now = manager.now()
        for envelope in manager.queued.values():
            if envelope.queue_id not in manager.active:
                manager.schedule(envelope, now)
        return len(manager.queued)

    async def retry_failed(self) -> int:
        ids = [e.queue_id for e in self.spool.load_state("failed")]
        for qid in ids:
            await self.retry(qid)
        return len(ids)
