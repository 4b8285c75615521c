"""RelayClient against relaymail.testing.ScriptedPeer, in memory (twisted.test.iosim and
StringTransport): pipelining, per-recipient outcomes, dot-stuffing across the 16 KiB chunks
the body is streamed in, a connection lost mid-DATA, RSET between jobs."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from relaymail.relay.client import Job, RelayClient
from relaymail.relay.outcome import DELIVERED, PERMANENT, TEMPORARY, Outcome
from relaymail.testing import DROP, ScriptedPeer, connect_client, relay_client

BODY = b"From: a@x.test\r\nSubject: s\r\n\r\nhello\r\n"


def body_file(data: bytes = BODY) -> str:
    fd, path = tempfile.mkstemp(suffix=".eml")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def job(recipients: list[str], data: bytes = BODY, **kw: Any) -> Job:
    return Job(queue_id="Q1", sender="a@x.test", recipients=recipients,
               body_path=body_file(data), size=len(data), **kw)


class Session:
    """A client joined to a scripted peer; ``run`` sends a job and pumps to its result."""

    def __init__(self, replies: dict[str, Any] | None = None) -> None:
        self.clock = Clock()
        self.peer = ScriptedPeer(replies)
        self.client = relay_client()
        self.idle: list[RelayClient] = []
        self.client.on_idle = self.idle.append
        self.pump = connect_client(self.client, self.peer, self.clock)

    def run(self, j: Job) -> dict[str, Outcome]:
        results: list[dict[str, Outcome]] = []
        self.client.send(j).addCallback(results.append)
        self.pump.flush()
        assert results, "the job did not finish"
        return results[0]


def test_handshake_over_memory_reads_the_extensions() -> None:
    s = Session()
    assert s.client.ready.called
    assert s.client.pipelining and s.client.max_size == 10_000_000
    assert s.peer.commands == ["EHLO relay.test"]


def test_pipelined_mail_rcpt_data_go_in_one_write() -> None:
    """Over a StringTransport: with PIPELINING, MAIL, every RCPT and DATA leave before any
    reply arrives; each reply is then routed to its command."""
    client = relay_client()
    transport = StringTransport()
    client.callLater = Clock().callLater  # type: ignore[assignment]
    client.makeConnection(transport)
    peer = ScriptedPeer({"RCPT c@y.test": "550 5.1.1 no such user"})
    peer_transport = StringTransport()
    peer.makeConnection(peer_transport)

    def exchange() -> None:
        while transport.value() or peer_transport.value():
            out, back = transport.value(), peer_transport.value()
            transport.clear()
            peer_transport.clear()
            if back:
                client.dataReceived(back)
            if out:
                peer.dataReceived(out)

    exchange()
    assert client.ready.called
    results: list[dict[str, Outcome]] = []
    client.send(job(["b@y.test", "c@y.test"])).addCallback(results.append)
    assert transport.value() == (b"MAIL FROM:<a@x.test> SIZE=%d\r\nRCPT TO:<b@y.test>\r\n"
                                 b"RCPT TO:<c@y.test>\r\nDATA\r\n" % len(BODY))
    peer.dataReceived(transport.value())
    transport.clear()
    client.dataReceived(peer_transport.value())  # 250, 250, 550, 354 at once
    peer_transport.clear()
    producer: Any = transport.producer
    while transport.producer is not None:  # FileSender is a pull producer
        producer.resumeProducing()
    exchange()
    assert results[0]["b@y.test"].kind == DELIVERED
    assert results[0]["c@y.test"].reply == "550 5.1.1 no such user"
    assert peer.messages[0].recipients == ["b@y.test"]
    assert peer.messages[0].content == BODY


def test_without_pipelining_commands_wait_for_replies() -> None:
    s = Session({"EHLO": "250-peer.test\n250 SIZE 1000"})
    assert not s.client.pipelining
    out = s.run(job(["b@y.test"]))
    assert out["b@y.test"].kind == DELIVERED
    assert s.peer.commands[1:] == [f"MAIL FROM:<a@x.test> SIZE={len(BODY)}",
                                   "RCPT TO:<b@y.test>", "DATA"]


def test_per_recipient_outcomes_250_451_550() -> None:
    s = Session({"RCPT later@y.test": "451 4.7.1 greylisted",
                 "RCPT gone@y.test": "550 5.1.1 no such user"})
    out = s.run(job(["ok@y.test", "later@y.test", "gone@y.test"]))
    assert {a: o.kind for a, o in out.items()} == {
        "ok@y.test": DELIVERED, "later@y.test": TEMPORARY, "gone@y.test": PERMANENT}
    assert out["ok@y.test"].reply == "250 2.0.0 Ok: queued"
    assert out["later@y.test"].upstream == "peer.test:25"
    assert s.peer.messages[0].recipients == ["ok@y.test"]


def test_final_reply_settles_only_the_accepted_recipients() -> None:
    s = Session({"RCPT gone@y.test": "550 5.1.1 no such user", ".": "452 4.3.1 disk full"})
    out = s.run(job(["ok@y.test", "gone@y.test"]))
    assert out["ok@y.test"].reply == "452 4.3.1 disk full"
    assert out["gone@y.test"].reply == "550 5.1.1 no such user"


def test_every_recipient_refused_sends_no_body() -> None:
    s = Session({"RCPT": "550 5.1.1 no such user"})
    out = s.run(job(["a@y.test", "b@y.test"]))
    assert all(o.kind == PERMANENT for o in out.values())
    assert s.peer.messages == []
    assert "RSET" in s.peer.commands, "the aborted transaction is reset"
    assert s.idle == [s.client]


def test_mail_refused_is_every_recipients_outcome() -> None:
    s = Session({"MAIL": "553 5.7.1 sender rejected"})
    out = s.run(job(["a@y.test", "b@y.test"]))
    assert {o.reply for o in out.values()} == {"553 5.7.1 sender rejected"}


def test_dot_stuffing_across_chunk_boundaries() -> None:
    """FileSender streams 16 KiB chunks: a line starting with a dot right at a boundary,
    and a CRLF split by one, are stuffed exactly once."""
    chunk = 16384
    head = b"Subject: dots\r\n\r\n"
    first = head + b"x" * (chunk - len(head) - 2) + b"\r\n"  # the boundary is just after CRLF
    assert len(first) == chunk
    second = b".dot at the boundary\r\n" + b"y" * (chunk - 23) + b"\r"  # CR | LF split
    assert len(second) == chunk
    third = b"\n..two dots\r\n.\r\nlast\r\n"
    data = first + second + third
    s = Session()
    out = s.run(job(["b@y.test"], data))
    assert out["b@y.test"].kind == DELIVERED
    [message] = s.peer.messages
    assert message.content == data
    assert b"\r\n..dot at the boundary\r\n" in message.wire
    assert b"\r\n...two dots\r\n..\r\nlast\r\n" in message.wire


def test_lost_connection_mid_data_is_temporary_for_all() -> None:
    s = Session({"body": DROP, "RCPT gone@y.test": "550 5.1.1 no such user"})
    lost: list[Any] = []
    s.client.lost.addCallback(lost.append)
    out = s.run(job(["a@y.test", "b@y.test", "gone@y.test"], b"Subject: x\r\n\r\n" * 5000))
    assert out["a@y.test"].kind == TEMPORARY and out["b@y.test"].kind == TEMPORARY
    assert out["a@y.test"].session_error == "connection"
    assert out["gone@y.test"].kind == PERMANENT, "a refused RCPT stays refused"
    assert lost == [s.client] and s.idle == []
    assert s.peer.messages == []


def test_rset_between_jobs_only_after_an_aborted_transaction() -> None:
    s = Session({"RCPT bad@y.test": ["550 5.1.1 no such user", "250 2.1.5 Ok"]})
    first = s.run(job(["bad@y.test"]))
    assert first["bad@y.test"].kind == PERMANENT
    assert s.peer.commands[-1] == "RSET"
    second = s.run(job(["good@y.test"]))
    third = s.run(job(["bad@y.test"]))
    assert second["good@y.test"].kind == DELIVERED and third["bad@y.test"].kind == DELIVERED
    assert s.peer.commands.count("RSET") == 1, "a finished transaction needs no RSET"
    assert [m.recipients for m in s.peer.messages] == [["good@y.test"], ["bad@y.test"]]
    assert s.idle == [s.client] * 3


def test_size_over_the_upstream_limit_is_refused_without_sending() -> None:
    s = Session({"EHLO": "250-peer.test\n250-PIPELINING\n250 SIZE 10"})
    out = s.run(job(["b@y.test"]))
    assert out["b@y.test"].code == 552
    assert not [c for c in s.peer.commands if c.startswith(("MAIL", "RCPT", "DATA"))]


def test_quit_closes_politely() -> None:
    s = Session()
    lost: list[Any] = []
    s.client.lost.addCallback(lost.append)
    s.client.quit()
    s.pump.flush()
    assert s.peer.commands[-1] == "QUIT" and lost == [s.client]


def test_banner_refusal_fails_ready() -> None:
    clock = Clock()
    peer = ScriptedPeer({"banner": "554 5.7.1 go away"})
    client = relay_client()
    errors: list[Any] = []
    client.ready.addErrback(errors.append)
    connect_client(client, peer, clock)
    assert errors and errors[0].value.kind == "banner"
    assert "554" in errors[0].value.text
