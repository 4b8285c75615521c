"""Unit tests of relaymail.events: the signature, the event documents, endpoint filters,
the suppression list's rules and store, and the outbox's durability promise."""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import tempfile

import pytest
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web._newclient import ResponseNeverReceived

from relaymail.config.events import WebhookConfig
from relaymail.events import model
from relaymail.events.hub import wanted
from relaymail.events.outbox import Outbox
from relaymail.events.sender import HTTPError, describe
from relaymail.events.signature import sign, verify
from relaymail.events.suppression import (
    Entry,
    SuppressionError,
    SuppressionList,
    SuppressionStore,
    from_csv,
    is_hard_bounce,
    normalize,
    to_csv,
)
from relaymail.spool.envelope import Envelope, Recipient

SECRET = "0123456789abcdef0123"


# ---------------------------------------------------------------------------- signature


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    header = sign(SECRET, 1700000000, b'{"a":1}')
    expected = hmac.new(SECRET.encode(), b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify(SECRET, header, b'{"a":1}', 1700000100)


@pytest.mark.parametrize(("header_of", "body", "now"), [
    (lambda h: h, b'{"a":2}', 1700000000),  # body changed
    (lambda h: h.replace("t=1700000000", "t=1700000001"), b'{"a":1}', 1700000000),
    (lambda h: h, b'{"a":1}', 1700000000 + 301),  # too old
    (lambda h: h, b'{"a":1}', 1700000000 - 301),  # from the future
    (lambda h: "v1=" + h.split("v1=")[1], b'{"a":1}', 1700000000),  # no timestamp
    (lambda h: "t=x," + h.split(",")[1], b'{"a":1}', 1700000000),
    (lambda h: "", b'{"a":1}', 1700000000),
])
def test_signature_refuses(header_of: object, body: bytes, now: float) -> None:
    header = header_of(sign(SECRET, 1700000000, b'{"a":1}'))  # type: ignore[operator]
    assert not verify(SECRET, header, body, now)


def test_signature_with_a_second_v1_for_key_rotation() -> None:
    header = sign(SECRET, 1700000000, b"x") + ",v1=" + "0" * 64
    assert verify(SECRET, header, b"x", 1700000000)
    assert not verify("another-secret-0000", header, b"x", 1700000000)


# ---------------------------------------------------------------------------- documents


def envelope() -> Envelope:
    return Envelope(queue_id="Q1", sender="app@shop.test",
                    recipients=[Recipient("a@x.test"), Recipient("b@y.test")],
                    received_at=1700000000.5, credential="app",
                    extra={"message_id": "<m1@shop.test>"})


def test_accepted_is_one_document_per_recipient() -> None:
    docs = model.accepted(envelope())
    assert [d["recipient"] for d in docs] == ["a@x.test", "b@y.test"]
    assert len({d["id"] for d in docs}) == 2
    doc = docs[0]
    assert (doc["event"], doc["status"], doc["queue_id"], doc["message_id"], doc["credential"],
            doc["code"], doc["enhanced_code"]) == \
        ("accepted", "accepted", "Q1", "<m1@shop.test>", "app", 250, "2.0.0")
    assert doc["timestamp"] == "2023-11-14T22:13:20.500Z"


@pytest.mark.parametrize(("name", "webhook"), [("sent", "delivered"), ("deferred", "deferred"),
                                               ("bounced", "bounced"), ("failed", "failed")])
def test_manager_events_map_to_webhook_events(name: str, webhook: str) -> None:
    docs = model.from_manager({"event": name, "queue_id": "Q1", "sender": "s@x.test",
                               "recipients": ["a@x.test"], "time": 1700000001.0,
                               "reply": "451 4.7.1 try later", "code": 451, "relay": "up:587",
                               "transport": "provider", "attempt": 2,
                               "received_at": 1700000000.0})
    [doc] = docs
    assert (doc["event"], doc["upstream"], doc["transport"], doc["attempt"],
            doc["enhanced_code"], doc["received_at"]) == \
        (webhook, "up:587", "provider", 2, "4.7.1", "2023-11-14T22:13:20.000Z")


def test_unknown_manager_events_make_no_documents() -> None:
    assert model.from_manager({"event": "expired-or-new", "recipients": ["a@x"]}) == []


@pytest.mark.parametrize(("reply", "code"), [("550 5.1.1 no user", "5.1.1"),
                                             ("5.7.1 relay denied", "5.7.1"),
                                             ("550-5.2.1 disabled", "5.2.1"),
                                             ("550 no such user", None), (None, None),
                                             ("250 2.0.0 Ok", "2.0.0")])
def test_enhanced_code(reply: str | None, code: str | None) -> None:
    assert model.enhanced_code(reply) == code


def hook(**kw: object) -> WebhookConfig:
    base: dict[str, object] = dict(name="h", url="http://x/", events=("delivered",),
                                   secret=SECRET, sender_domains=(), credentials=(),
                                   timeout=10.0, retry_for=86400.0, max_backlog=10,
                                   concurrency=1, batch_size=1)
    base.update(kw)
    return WebhookConfig(**base)  # type: ignore[arg-type]


def test_endpoint_filters() -> None:
    doc = {"event": "delivered", "sender": "app@Mail.Shop.test", "credential": "app"}
    assert wanted(hook(), doc)
    assert not wanted(hook(events=("bounced",)), doc)
    assert wanted(hook(sender_domains=("*.shop.test",)), doc)
    assert not wanted(hook(sender_domains=("shop.test",)), doc)
    assert wanted(hook(sender_domains=("mail.shop.test",)), doc)
    assert not wanted(hook(sender_domains=("*.hop.test",)), {**doc, "sender": "a@shop.test"})
    assert wanted(hook(credentials=("app",)), doc)
    assert not wanted(hook(credentials=("other",)), doc)
    assert not wanted(hook(credentials=("other",)), {**doc, "credential": None})


def test_describe_failures_briefly_and_safely() -> None:
    assert describe(Failure(TimeoutError()), 10) == "no answer within 10 s"
    never = ResponseNeverReceived([Failure(CancelledError())])
    assert describe(Failure(never), 2.5) == "no answer within 2.5 s"
    assert describe(Failure(HTTPError("HTTP 503 Busy")), 1) == "HTTP 503 Busy"
    hostile = describe(Failure(ValueError("a\r\nInjected: 1" + "x" * 500)), 1)
    assert "\r" not in hostile and "\n" not in hostile and len(hostile) <= 200


# ---------------------------------------------------------------------------- suppression


@pytest.mark.parametrize(("doc", "hard"), [
    ({"event": "bounced", "sender": "a@x", "enhanced_code": "5.1.1"}, True),
    ({"event": "bounced", "sender": "a@x", "enhanced_code": "5.1.10"}, True),
    ({"event": "bounced", "sender": "a@x", "enhanced_code": "5.2.1"}, True),
    ({"event": "bounced", "sender": "a@x", "enhanced_code": "5.7.1"}, False),  # policy
    ({"event": "bounced", "sender": "a@x", "enhanced_code": "5.2.2"}, False),  # mailbox full
    ({"event": "bounced", "sender": "a@x", "enhanced_code": None}, False),
    ({"event": "bounced", "sender": "", "enhanced_code": None}, True),  # bounce of a bounce
    ({"event": "bounced", "sender": "", "enhanced_code": "5.1.1"}, True),
    ({"event": "bounced", "sender": "", "enhanced_code": "5.7.1"}, False),  # refuses bounces
    ({"event": "deferred", "sender": "", "enhanced_code": "4.1.1"}, False),
    ({"event": "failed", "sender": "a@x", "enhanced_code": "4.4.7"}, False),
])
def test_hard_bounce_rule(doc: dict[str, object], hard: bool) -> None:
    assert is_hard_bounce(doc) is hard


@pytest.mark.parametrize("bad", ["", "nobody", "a b@x.test", "a@x\r\n.test", "x" * 321 + "@x"])
def test_normalize_refuses(bad: str) -> None:
    with pytest.raises(SuppressionError):
        normalize(bad)


def test_normalize() -> None:
    assert normalize(" <Bob@Example.TEST> ") == "bob@example.test"


def test_store_add_remove_search_and_csv(tmp_path: object) -> None:
    store = SuppressionStore(os.path.join(str(tmp_path), "sub", "suppression.db"))
    entries = [Entry("a%b@x.test", "r1", "manual", None, 10.0),
               Entry("a_c@x.test", "r2", "bounce", "Q1", 20.0),
               Entry("abc@x.test", "r3", "import", None, 30.0)]
    assert store.add(entries) == 3
    assert store.add(entries[:1]) == 0  # kept as first added
    total, found = store.search("a%", 10, 0)  # % and _ are literal, not wildcards
    assert (total, [e.address for e in found]) == (1, ["a%b@x.test"])
    total, found = store.search("a_", 10, 0)
    assert [e.address for e in found] == ["a_c@x.test"]
    total, found = store.search("", 2, 0)
    assert total == 3 and [e.address for e in found] == ["abc@x.test", "a_c@x.test"]
    assert store.remove("abc@x.test") and not store.remove("abc@x.test")
    text = to_csv(store.entries())
    again = from_csv(text, 99.0)
    # an export moved elsewhere keeps why and since when
    assert [(e.address, e.reason, e.source, e.queue_id, e.created) for e in again] == \
        [("a%b@x.test", "r1", "manual", None, 10.0), ("a_c@x.test", "r2", "bounce", "Q1", 20.0)]
    assert os.stat(store.path).st_mode & 0o777 == 0o600


def test_csv_import_names_the_bad_line() -> None:
    with pytest.raises(SuppressionError, match="line 3"):
        from_csv("address\na@x.test\nnope\n", 0.0)
    assert [e.address for e in from_csv("a@x.test,\n\n,\nB@x.test,why\n", 0)] == \
        ["a@x.test", "b@x.test"]


class SuppressionListTests(TestCase):
    def setUp(self) -> None:
        self.path = os.path.join(tempfile.mkdtemp(), "suppression.db")

    def make(self) -> SuppressionList:
        from relaymail.smtp.build import thread_runner
        return SuppressionList(SuppressionStore(self.path), thread_runner(reactor), reactor,
                               clock=lambda: 1764633600.0)

    async def test_changes_by_another_process_are_seen_on_refresh(self) -> None:
        mine, theirs = self.make(), self.make()
        await theirs.refresh()
        self.assertIsNone(theirs.refusal("x@y.test"))
        await mine.add("X@y.test", "bounced", "bounce")
        self.assertIn("x@Y.test", mine)  # at once where it was added
        await theirs.refresh()
        reply = theirs.refusal("X@Y.TEST")
        assert reply is not None
        self.assertEqual((reply.code, reply.enhanced), (550, "5.1.1"))
        self.assertEqual(reply.text, "<X@Y.TEST>: Recipient address suppressed after a hard "
                                     "bounce on 2025-12-02")
        await mine.remove("x@y.test")
        await theirs.refresh()
        self.assertNotIn("x@y.test", theirs)

    async def test_disabled_refuses_nothing(self) -> None:
        one = self.make()
        await one.add("x@y.test", "r")
        one.enabled = False
        self.assertIsNone(one.refusal("x@y.test"))


# ---------------------------------------------------------------------------- outbox


class OutboxTests(TestCase):
    async def test_durable_fires_once_rows_are_on_disk(self) -> None:
        path = os.path.join(tempfile.mkdtemp(), "webhooks.db")
        outbox = Outbox(path, reactor, reactor.seconds)
        await outbox.start()
        self.addCleanup(outbox.stop)
        for i in range(5):
            outbox.add("hook", f"evt_{i}", "accepted", f"Q{i}", b"{}")
        await outbox.durable()
        with sqlite3.connect(path) as db:  # another connection: what a crash would leave
            self.assertEqual(db.execute("SELECT count(*) FROM deliveries").fetchone()[0], 5)
        self.assertEqual(await outbox.missing_accepted(["Q1", "Q9"]), {"Q9"})
        self.assertEqual(await outbox.backlog(), {"hook": 5})
        due = await outbox.due("hook", reactor.seconds() + 1, 3, set())
        self.assertEqual([d.event_id for d in due], ["evt_0", "evt_1", "evt_2"])
        due = await outbox.due("hook", reactor.seconds() + 1, 10, {due[0].id})
        self.assertEqual(len(due), 4)
        self.assertTrue(outbox.durable().called)  # nothing buffered: at once


def test_a_reload_that_overlaps_a_local_write_is_not_used(tmp_path: object) -> None:
    """The watcher's load may read the file before our write lands; it must not wipe the
    address just added in memory (seen as a flaky RCPT accepted after a hard bounce)."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    calls: list[tuple[Deferred, object, tuple[object, ...]]] = []

    def run_later(f: object, *args: object) -> Deferred:
        d: Deferred = Deferred()
        calls.append((d, f, args))
        return d

    def run(index: int) -> None:
        d, f, args = calls[index]
        d.callback(f(*args))  # type: ignore[operator]

    store = SuppressionStore(os.path.join(str(tmp_path), "suppression.db"))
    one = SuppressionList(store, run_later, Clock())
    one.add("x@y.test", "bounced", "bounce")  # calls[0]: the write, not yet done
    one.refresh()  # calls[1]: a load
    run(1)  # the load reads the file without x@y.test
    assert "x@y.test" in one
    run(0)  # the write lands
    one.refresh()  # the next look reads it again (the stale load was not kept)
    run(2)
    assert "x@y.test" in one and one._stamp is not None


class OutboxBarrierTests(TestCase):
    async def test_durable_asked_during_a_flush_fires_when_it_ends(self) -> None:
        """Asked while a batch is being written and nothing is buffered, the barrier is
        kept by that batch (it waited for an unrelated later event: a stalled sender and
        a shutdown that never ended)."""
        outbox = Outbox(os.path.join(tempfile.mkdtemp(), "webhooks.db"), reactor,
                        reactor.seconds)
        await outbox.start()
        self.addCleanup(outbox.stop)
        outbox.add("hook", "evt_1", "delivered", "Q1", b"{}")
        writing = outbox.flush()
        barrier = outbox.durable()
        self.assertFalse(barrier.called)
        await writing
        self.assertTrue(barrier.called)
        due = outbox.due("hook", reactor.seconds() + 1, 10, set())  # waits on durable()
        self.assertEqual(len(await due), 1)


@pytest.mark.parametrize(("cell", "back"), [("=1+2@evil.test", "=1+2@evil.test"),
                                            ("-x@y.test", "-x@y.test"), ("a@b.test", "a@b.test")])
def test_export_cells_never_start_a_formula(cell: str, back: str) -> None:
    text = to_csv([Entry(cell, "+cmd|' /c calc'!A0", "manual", None, 0.0)])
    row = text.splitlines()[1]
    assert not row.startswith(("=", "+", "-", "@")) and ",+" not in row
    [entry] = from_csv(text, 0.0)
    assert (entry.address, entry.reason) == (back, "+cmd|' /c calc'!A0")


def test_quoted_local_part_is_the_same_address() -> None:
    assert normalize('"gone"@Dest.test') == "gone@dest.test"
    assert normalize('"a..b"@dest.test') == '"a..b"@dest.test'  # needs its quotes


def test_reasons_are_stored_printable(tmp_path: object) -> None:
    store = SuppressionStore(os.path.join(str(tmp_path), "s.db"))
    store.add([Entry("a@x.test", "550 5.1.1 \x1b[31mred\r\nX: y", "bounce", None, 0.0)])
    [entry] = store.entries()
    assert "\x1b" not in entry.reason and "\r" not in entry.reason


def test_signature_verify_never_raises_on_junk() -> None:
    assert not verify(SECRET, "t=1700000000,v1=ü", b"x", 1700000000)
    assert not verify(SECRET, "t=1700000000,v1", b"x", 1700000000)


def test_acceptor_reports_are_rebuilt() -> None:
    import json

    from relaymail.workers.remote import rebuilt
    good = model.suppressed(1.0, "s@x.test", "r@y.test", None, "550 5.1.1 x", "Q1")
    doc = rebuilt(json.dumps({**good, "event": "suppressed", "id": "evt_forged",
                              "extra": "x" * 10}))
    assert doc is not None and doc["id"] != "evt_forged" and "extra" not in doc
    assert rebuilt(json.dumps({**good, "event": "delivered"})) is None
    assert rebuilt(json.dumps({**good, "sender": 5})) is None
    assert rebuilt("[]") is None and rebuilt("not json") is None
    long = rebuilt(json.dumps({**good, "recipient": "r" * 5000}))
    assert long is not None and len(long["recipient"]) == 320


def test_suppressed_events_are_limited_per_submitter_and_minute(tmp_path: object) -> None:
    from relaymail.events.hub import SUPPRESSED_PER_MINUTE, EventHub

    outbox = Outbox(os.path.join(str(tmp_path), "w.db"), reactor, lambda: 0.0)
    hub = EventHub([hook(events=("suppressed",))], outbox, None, reactor, http=object())

    def refused(credential: str, when: float) -> None:
        hub.suppressed(model.suppressed(when, "s@x.test", "r@y.test", credential, "550", "Q"))

    for _ in range(SUPPRESSED_PER_MINUTE + 10):
        refused("app", 120.0)
    refused("other", 130.0)
    assert (len(outbox.buffer), hub.suppressed_dropped) == (SUPPRESSED_PER_MINUTE + 1, 10)
    refused("app", 185.0)  # the next minute
    assert len(outbox.buffer) == SUPPRESSED_PER_MINUTE + 2
