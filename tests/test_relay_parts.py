"""Relay building blocks: the router, RFC 3464 bounces, the maildir outbox writer."""

from __future__ import annotations

import email
import email.policy
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaymail.config import RouteConfig
from relaymail.relay.bounce import build_bounce, status_of
from relaymail.relay.dotstuff import DotStuffer, unstuff
from relaymail.relay.maildir import deliver_to_maildir
from relaymail.relay.router import Router
from relaymail.spool.envelope import Envelope, Recipient

ROUTES = [
    RouteConfig(domains=("corp.example",), transport="internal"),
    RouteConfig(domains=("*.corp.example",), transport="branch"),
    RouteConfig(domains=("qq.com", "163.com"), transport="china"),
    RouteConfig(domains=("*",), transport="provider"),
]


def test_router_first_match_wins_and_patterns() -> None:
    router = Router(ROUTES)
    cases = {
        "a@corp.example": "internal", "a@CORP.Example.": "internal",
        "a@eu.corp.example": "branch", "a@x.eu.corp.example": "branch",
        "a@notcorp.example": "provider", "a@qq.com": "china", "a@163.com": "china",
        "a@[192.0.2.1]": "provider", "a@gmail.com": "provider",
    }
    for address, transport in cases.items():
        assert router.transport_for(address) == transport, address


def test_router_without_catch_all_and_split() -> None:
    router = Router(ROUTES[:2])
    assert router.transport_for("a@gmail.com") is None
    groups = router.split(["a@corp.example", "b@gmail.com", "c@x.corp.example", "d@corp.example"])
    assert groups == {"internal": ["a@corp.example", "d@corp.example"],
                      "branch": ["c@x.corp.example"], None: ["b@gmail.com"]}


ORIGINAL = (b"Received: from x\r\n\tby relay\r\nFrom: App <app@shop.example>\r\n"
            b"Subject: Your order\r\nMessage-ID: <1@shop.example>\r\n\r\nsecret body text\r\n")


def bounce(original: bytes = ORIGINAL) -> Any:
    env = Envelope(queue_id="QID123", sender="app@shop.example", received_at=1_700_000_000,
                   recipients=[Recipient("ok@dest.example", state="delivered"),
                               Recipient("gone@dest.example", state="failed",
                                         last_reply="550 5.1.1 <gone@dest.example>: "
                                                    "user unknown"),
                               Recipient("old@dest.example", state="failed",
                                         last_reply="expired after 5 days: 451 try later")])
    failed = [r for r in env.recipients if r.state == "failed"]
    raw = build_bounce(env, failed, original, "relay.test", 1_700_000_100)
    return raw, email.message_from_bytes(raw, policy=email.policy.compat32)


def test_bounce_structure_rfc3464() -> None:
    raw, msg = bounce()
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "<app@shop.example>"
    assert msg["From"].endswith("<MAILER-DAEMON@relay.test>")
    assert msg["Auto-Submitted"] == "auto-replied"
    text, status, headers = msg.get_payload()
    assert text.get_content_type() == "text/plain"
    assert "gone@dest.example" in text.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; relay.test"
    per_rcpt = blocks[1:]
    assert [b["Final-Recipient"] for b in per_rcpt] == ["rfc822; gone@dest.example",
                                                        "rfc822; old@dest.example"]
    assert [b["Status"] for b in per_rcpt] == ["5.1.1", "5.0.0"]
    assert all(b["Action"] == "failed" for b in per_rcpt)
    assert per_rcpt[0]["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: Your order" in headers.get_payload()
    assert b"secret body text" not in raw  # headers only, never the body


def test_bounce_with_8bit_original_headers() -> None:
    raw, _ = bounce(ORIGINAL.replace(b"Your order", "您的订单".encode()))
    assert b"Content-Transfer-Encoding: 8bit" in raw
    assert "您的订单".encode() in raw


def test_status_of() -> None:
    assert status_of("550 5.7.1 relay denied") == "5.7.1"
    assert status_of("554 no enhanced code") == "5.0.0"
    assert status_of("451 4.3.0 temporary") == "4.3.0"  # expired: the last temporary status
    assert status_of(None) == "5.0.0"
    # Only a code that opens the text counts, and only with the reply code's class.
    assert status_of("500 Line too long (see RFC5321 4.5.3.1.6)") == "5.0.0"
    assert status_of("550 4.7.1 inconsistent") == "5.0.0"
    assert status_of("550-5.1.1 no such user") == "5.1.1"
    assert status_of("4.4.7 message expired after 5 days; last reply: 451 4.3.0 x") == "4.4.7"
    assert status_of("421 try later") == "4.0.0"
    assert status_of("connection refused") == "5.0.0"


def test_maildir_delivery(tmp_path: Any) -> None:
    path = str(tmp_path / "outbox")
    names = {deliver_to_maildir(path, "a@b.example", ["x@y.example", "z@w.example"],
                                b"Subject: t\r\n\r\nbody\r\n") for _ in range(50)}
    assert len(names) == 50
    assert os.listdir(os.path.join(path, "tmp")) == []
    name = sorted(names)[0]
    with open(os.path.join(path, "new", name), "rb") as f:
        assert f.read() == (b"Return-Path: <a@b.example>\r\nX-Original-To: <x@y.example>\r\n"
                            b"X-Original-To: <z@w.example>\r\nSubject: t\r\n\r\nbody\r\n")


def test_maildir_delivery_from_a_file_in_chunks(tmp_path: Any) -> None:
    """Large bodies are copied from the spool file a chunk at a time, never read whole."""
    import io

    from relaymail.relay import maildir

    body = b"Subject: big\r\n\r\n" + b"x" * (3 * maildir.COPY_CHUNK + 17)
    reads: list[int] = []

    class Counting(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            reads.append(size if size is not None else -1)
            return super().read(size)

    path = str(tmp_path / "outbox")
    name = deliver_to_maildir(path, "a@b.example", ["x@y.example"], Counting(body))
    with open(os.path.join(path, "new", name), "rb") as f:
        assert f.read().endswith(b"\r\n\r\n" + b"x" * (3 * maildir.COPY_CHUNK + 17))
    assert reads and all(0 < size <= maildir.COPY_CHUNK for size in reads)


def stuff_in_chunks(body: bytes, size: int) -> bytes:
    stuffer = DotStuffer()
    out = b"".join(stuffer.stuff(body[i:i + size]) for i in range(0, len(body), size))
    return out + stuffer.end()


def test_dot_lines_on_16k_boundaries() -> None:
    """Regression for the stock client: '.' lines exactly at chunk boundaries."""
    chunk = 16 * 1024
    line = b"x" * (chunk - 2) + b"\r\n"  # every chunk boundary falls at a line start
    body = b"Subject: dots\r\n\r\n" + line + b".\r\n" + line + b".hidden\r\n" + b"end\r\n"
    for size in (chunk, chunk - 1, chunk + 1, 1, 2, 3, 7):
        stuffed = stuff_in_chunks(body, size)
        assert stuffed.endswith(b"\r\n.\r\n")
        content = stuffed[:-3]
        assert b"\r\n.\r\n" not in content, size  # nothing ends DATA early
        assert unstuff(content) == body, size


def test_dot_at_start_and_missing_final_crlf() -> None:
    assert stuff_in_chunks(b".first\r\nsecond", 4) == b"..first\r\nsecond\r\n.\r\n"
    assert stuff_in_chunks(b"", 4) == b".\r\n"
    assert stuff_in_chunks(b"a\r", 1) == b"a\r\r\n.\r\n"
    assert stuff_in_chunks(b"a\r\n.\r\n.\r\n", 1) == b"a\r\n..\r\n..\r\n.\r\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.sampled_from([b"", b".", b"..", b".x", b"x.", b"abc", b"\r", b".\r"]),
                      max_size=30),
       cuts=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=10))
def test_dot_stuffing_independent_of_chunking(lines: list[bytes], cuts: list[int]) -> None:
    body = b"\r\n".join(lines) + (b"\r\n" if lines else b"")
    whole = DotStuffer()
    expected = whole.stuff(body) + whole.end()
    stuffer, out, i, k = DotStuffer(), b"", 0, 0
    while i < len(body):
        size = cuts[k % len(cuts)]
        out += stuffer.stuff(body[i:i + size])
        i, k = i + size, k + 1
    out += stuffer.end()
    assert out == expected
    assert b"\r\n.\r\n" not in out[:-3] and not out[:-3].startswith(b".\r\n")
    if body.endswith(b"\r\n") or not body:
        assert unstuff(out[:-3]) == body


def test_bounce_never_quotes_a_line_over_998_octets_nor_a_cut_one() -> None:
    """A bounce quoting the header that made the original undeliverable is refused too,
    and the sender never hears: quoted lines are folded, a cut last line is left out."""
    to = b"To: " + b", ".join(b"p%03d@dest.test" % i for i in range(200))
    blob = b"X-Blob: " + b"A" * 3000
    original = to + b"\r\n" + blob + b"\r\nSubject: cut mid-li"  # read stopped mid-line
    env = Envelope(queue_id="Q1", sender="app@x.test", recipients=[], received_at=0)
    failed = [Recipient("p001@dest.test", last_reply="550 5.1.1 unknown")]
    raw = build_bounce(env, failed, original, "relay.test", 1_700_000_100)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    quoted = raw.split(b"text/rfc822-headers\r\n\r\n")[1]
    assert quoted.replace(b"\r\n ", b" ").startswith(to + b"\r\n")
    assert b"A" * 997 in quoted and b"Subject: cut" not in quoted


def test_hostile_from_headers_neither_crash_nor_grow_past_998_octets() -> None:
    """A From of 600 nested parentheses made parseaddr raise RecursionError (delivery
    crashed on every retry); a 2,000-octet From was rewritten as one line of 1,600+."""
    from relaymail.config import SenderRewrite
    from relaymail.policy.dkim import from_domain
    from relaymail.relay.rewrite import rewrite_from, split_fields

    rewrite = SenderRewrite(address="me@qq.test")
    nested = b"From: a@b.example " + b"(" * 600 + b"\r\n"
    fields, changed = rewrite_from(split_fields(nested + b"Subject: x\r\n\r\n"), rewrite)
    assert changed and fields[0] == b"From: <me@qq.test>\r\n"
    assert from_domain([(b"From", nested[6:])]) is None
    name = " ".join(f"word{i}" for i in range(300))
    long_from = f'From: "{name}" <root@nas.local>'.encode()
    head = b"\r\n".join([long_from[:990], b" " + long_from[990:], b"Subject: x", b""])
    fields, changed = rewrite_from(split_fields(head), rewrite)
    assert changed
    assert all(len(line) <= 998 for f in fields for line in f.split(b"\r\n"))
    assert b"".join(fields).count(b"root@nas.local") == 2  # X-Original-From and Reply-To
