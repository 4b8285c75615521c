"""A real, strict Postfix as relaymail's upstream: message boundaries and long lines.

The chain: a client (smtplib, or a raw socket writing LF-only lines) -> relaymail (its whole
service in this reactor, port 0, signing with RSA-2048 and Ed25519 keys for example.com as
the corpus harness makes them) -> a private Postfix 3.7 smtpd (``postfix -c DIR``, a free
loopback port) -> an aiosmtpd sink that records the bytes exactly as Postfix relayed them.

That Postfix is configured strictly:

- ``smtpd_forbid_bare_newline = reject``.  In Postfix 3.7.10+ (and 3.8.5+) ``yes`` is only a
  compatibility alias for ``normalize``, which accepts bare LF and treats it as CRLF; only
  ``reject`` refuses it ("550 5.5.2 <myhostname> Error: bare <LF> received", at the end of
  DATA).  ``smtpd_forbid_bare_newline_exclusions`` is emptied: its default, $mynetworks,
  would exempt every loopback client, relaymail included;
- ``smtpd_forbid_unauth_pipelining = yes`` (RFC 2920 violations disconnect);
- line handling as shipped (``line_length_limit = 2048``; its smtp client folds lines over
  ``smtp_line_length_limit = 998``, which would break a DKIM signature if relaymail left any).

Four messages go through: LF-only lines with a dot-stuffed line (raw socket), a one-line
20,000-octet HTML body, a 3,000-octet one-line To header and a 5,000-octet body line without
spaces (the last three with headers from Python's email package).  Postfix must accept each
at the first attempt, the sink must get each with every line within 998 octets and only CRLF
line ends, the content intact up to relaymail's folding, and both of relaymail's signatures
valid below Postfix's own Received field (dkimpy: both; Mail::DKIM: RSA, Ed25519 reported
unsupported).  The negative control: the same LF-only bytes sent straight to that Postfix
are refused, and the same message with CRLF line ends is taken, so the refusal is the
bare-LF rule and nothing else."""

from __future__ import annotations

import base64
import email.utils
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from tests.corpus.harness import (
    DkimCorpusCase,
    dkimpy_verdicts,
    have_mail_dkim,
    mail_dkim_verdicts,
    signatures,
)
from tests.helpers import send_mail
from tests.interop.postfix_client import available, private_main_cf, private_postfix
from tests.peers import require
from tests.upstreams import RecordingHandler, wait_until

POSTFIX_HOSTNAME = "upstream.interop.test"
STRICT_CF = """\
smtpd_forbid_bare_newline = reject
smtpd_forbid_bare_newline_exclusions =
smtpd_forbid_unauth_pipelining = yes
"""
BARE_LF_REFUSAL = f"550 5.5.2 {POSTFIX_HOSTNAME} Error: bare <LF> received".encode()
SENDER = "shop@example.com"

# ------------------------------------------------------------------------- the messages

# Dot-stuffed as an LF-writing client does it; only the final CRLF.CRLF ends the data.
LF_DATA = b"Subject: lf\nFrom: a@example.com\n\nfirst\n..stuffed\nlast\r\n.\r\n"
LF_STORED = b"Subject: lf\r\nFrom: a@example.com\r\n\r\nfirst\r\n.stuffed\r\nlast\r\n"


def headers(subject: str, to: str = "reader@dest.test", **extra: str) -> bytes:
    """A header block written by Python's email package, never wrapped (an application
    that writes each field on one line, however long)."""
    msg = EmailMessage(policy=SMTP.clone(max_line_length=None))
    msg["From"] = f"Shop <{SENDER}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain="example.com")
    msg["MIME-Version"] = "1.0"
    for name, value in extra.items():
        msg[name.replace("_", "-")] = value
    return bytes(msg).partition(b"\r\n\r\n")[0] + b"\r\n\r\n"


def html_line() -> bytes:
    """One line of exactly 20,000 octets of table cells, as HTML mailers write them."""
    start, end = b"<html><body><table><tr>", b"</tr></table></body></html>"
    cells = bytearray()
    while len(start) + len(cells) + len(end) < 20_000 - 40:
        cells += b'<td class="cell">item %d</td>' % (len(cells) // 30)
    pad = 20_000 - len(start) - len(cells) - len(end) - len(b"<!--  -->")
    line = start + bytes(cells) + b"<!-- " + b"x" * pad + b" -->" + end
    assert len(line) == 20_000
    return line


LONG_TO = ", ".join(f"Person {i:03d} <person{i:03d}@dest.test>" for i in range(90))
NO_SPACES = base64.b64encode(bytes(range(256)) * 15)[:5000]


@dataclass(frozen=True)
class Case:
    data: bytes  # as handed to smtplib
    long_line: bytes  # the line over 998 octets, as sent
    inserted_space: bool  # no white space to fold before: relaymail inserts CRLF SP


def cases() -> dict[str, Case]:
    html = html_line()
    to_header = headers("long to", LONG_TO)
    [to_line] = [x for x in to_header.split(b"\r\n") if x.startswith(b"To: ")]
    assert len(to_line) > 3_000 and len(NO_SPACES) == 5_000 and b" " not in NO_SPACES
    return {
        "html": Case(headers("html", Content_Type='text/html; charset="utf-8"')
                     + html + b"\r\n", html, False),
        "to": Case(to_header + b"short body\r\n", to_line, False),
        "nospace": Case(headers("no spaces", Content_Type="text/plain")
                        + b"before\r\n" + NO_SPACES + b"\r\nafter\r\n", NO_SPACES, True),
    }


# ------------------------------------------------------------------------- the peers


@contextmanager
def strict_postfix(sink_port: int) -> Iterator[tuple[int, str]]:
    """The strict Postfix relaying everything to the sink; yields (its smtpd port, its
    config directory).  Blocking: enter and leave it in a thread."""
    directory = tempfile.mkdtemp(prefix="postfix-upstream-")
    try:
        with private_postfix(directory, private_main_cf(directory, POSTFIX_HOSTNAME,
                                                        sink_port, STRICT_CF)) as port:
            yield port, directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def replies(f: Any) -> bytes:
    """One (possibly multi-line) SMTP reply."""
    text = b""
    while True:
        line = f.readline()
        if not line:
            raise AssertionError(f"connection closed after {text!r}")
        text += line
        if line[3:4] != b"-":
            return text


def lockstep_session(port: int, sender: str, recipient: str, data: bytes) -> list[bytes]:
    """A raw session, one command at a time (no pipelining), ``data`` written as is after
    354; returns every reply.  Blocking: run it in a thread."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s, \
            s.makefile("rb") as f:
        got = [replies(f)]
        for command in (b"EHLO client.interop.test", f"MAIL FROM:<{sender}>".encode(),
                        f"RCPT TO:<{recipient}>".encode(), b"DATA"):
            s.sendall(command + b"\r\n")
            got.append(replies(f))
        assert got[-1].startswith(b"354"), got
        s.sendall(data)
        got.append(replies(f))
        s.sendall(b"QUIT\r\n")
        got.append(replies(f))
        return got


def unfold_inserted(data: bytes) -> bytes:
    """Undo folds relaymail made by inserting CRLF SP (no white space to fold before)."""
    return data.replace(b"\r\n ", b"")


def unfold_before_space(data: bytes) -> bytes:
    """Undo folds relaymail made before white space the line had (only CRLF inserted)."""
    return re.sub(rb"\r\n(?=[ \t])", b"", data)


# ------------------------------------------------------------------------- the tests


class PostfixUpstreamTests(DkimCorpusCase):
    def setUp(self) -> None:
        super().setUp()
        require(available(), "postfix (Debian package postfix) and root")

    async def start_chain(self, with_relaymail: bool = True) -> RecordingHandler:
        """Sink, strict Postfix relaying to it, and (optionally) relaymail relaying to that
        Postfix; each stopped in a cleanup (relaymail first, then Postfix, then the sink)."""
        sink = self.start_sink()
        stack = ExitStack()
        self.postfix_port, self.postfix_dir = await self.in_thread(
            stack.enter_context, strict_postfix(self.sink_port))
        self.addCleanup(self.in_thread, stack.close)
        effective = subprocess.run(
            ["postconf", "-c", self.postfix_dir, "-h", "smtpd_forbid_bare_newline",
             "smtpd_forbid_bare_newline_exclusions", "smtpd_forbid_unauth_pipelining"],
            capture_output=True, text=True, check=True).stdout.split("\n")
        self.assertEqual(effective[:3], ["reject", "", "yes"])
        if with_relaymail:
            self.entries = [self.keygen("rsa2048", "rsa"), self.keygen("ed25519", "ed25519")]
            self.relay_port = await self.start_relaymail(self.entries, self.postfix_port)
        return sink

    def maillog(self) -> str:
        try:
            with open(os.path.join(self.postfix_dir, "maillog")) as f:
                return f.read()[-4000:]
        except OSError as e:
            return f"(no maillog: {e})"

    def attempts(self) -> list[dict[str, Any]]:
        """relaymail's delivery attempts so far, as logged (one event per outcome)."""
        return [e for e in self.events if "status={status}" in e.get("log_format", "")]

    async def arrivals(self, sink: RecordingHandler, recipients: list[str]) -> dict[str, bytes]:
        """The sink's copies by envelope recipient, once each of ``recipients`` has one;
        fails at once when relaymail's attempt to hand one to Postfix did not succeed."""
        def arrived() -> dict[str, bytes]:
            with sink.lock:
                return {m.rcpt_tos[0]: m.content for m in sink.messages}

        def unsent() -> list[str]:
            return [f"{e['to']} {e['status']} ({e['reply']})" for e in self.attempts()
                    if e["status"] != "sent"]

        try:
            await wait_until(lambda: set(recipients) <= set(arrived()) or bool(unsent()),
                             seconds=60, what=f"{recipients} at the sink")
            if unsent():
                raise AssertionError("relaymail -> Postfix")
        except AssertionError:
            raise AssertionError(f"the sink has {sorted(arrived())}; relaymail's attempts "
                                 f"that failed: {unsent()}; Postfix's log:\n{self.maillog()}"
                                 ) from None
        return arrived()

    async def relay_all(self) -> dict[str, bytes]:
        """Every message through relaymail and the strict Postfix (``self.cases`` keeps the
        ones smtplib sent); returns the sink's copies by envelope recipient."""
        sink = await self.start_chain()
        answers = await self.in_thread(lockstep_session, self.relay_port, "a@example.com",
                                       "lf@dest.test", LF_DATA)
        self.assertTrue(answers[-2].startswith(b"250 2.0.0 Ok: queued as"), answers)
        self.cases = cases()
        for name, case in self.cases.items():
            refused = await self.in_thread(send_mail, self.relay_port, SENDER,
                                           [f"{name}@dest.test"], case.data)
            self.assertEqual(refused, {})
        recipients = ["lf@dest.test"] + [f"{name}@dest.test" for name in self.cases]
        got = await self.arrivals(sink, recipients)
        await wait_until(lambda: not self.manager.queued and not self.manager.active,
                         what="relaymail's queue to drain")
        self.assertEqual(sorted(got), sorted(recipients))
        # Postfix took each at the first attempt: no 5xx, no deferral, no second try.
        self.assertEqual(sorted((e["to"], e["status"]) for e in self.attempts()),
                         sorted((f"<{r}>", "sent") for r in recipients), self.maillog())
        for e in self.attempts():
            self.assertRegex(e["reply"], r"^250 2\.0\.0 Ok: queued as [0-9A-F]+$")
        self.assertNotIn("reject:", self.maillog())
        self.assertNotIn("bare <LF>", self.maillog())
        return got

    def split_trace(self, copy: bytes) -> tuple[list[bytes], bytes]:
        """(the fields on top that the client did not write, each unfolded: Postfix's
        Received, relaymail's signatures and Received; the rest of the copy)."""
        lines = copy.split(b"\r\n")
        fields, i = [], 0
        while lines[i].lower().startswith((b"received:", b"dkim-signature:")):
            field = [lines[i]]
            i += 1
            while lines[i][:1] in (b" ", b"\t"):
                field.append(lines[i])
                i += 1
            fields.append(b"\r\n".join(field))
        return fields, b"\r\n".join(lines[i:])

    def assert_boundaries(self, got: dict[str, bytes]) -> None:
        for recipient, copy in sorted(got.items()):
            name = recipient.partition("@")[0]
            lines = copy.split(b"\r\n")
            self.assertEqual(lines[-1], b"", name)  # ends with CRLF
            self.assertLessEqual(max(len(line) for line in lines), 998, name)
            self.assertFalse([x for x in lines if b"\r" in x or b"\n" in x],
                             f"{name}: a bare CR or LF at the sink")
            trace, rest = self.split_trace(copy)
            self.assertEqual([f.partition(b":")[0].lower() for f in trace],
                             [b"received", b"dkim-signature", b"dkim-signature", b"received"],
                             name)
            self.assertRegex(trace[0], rb"^Received: from relay\.test \(localhost "
                             rb"\[127\.0\.0\.1\]\)\r\n\tby "
                             + re.escape(POSTFIX_HOSTNAME.encode())
                             + rb" \(Postfix\) with ESMTP id [0-9A-F]+\r\n\tfor <"
                             + re.escape(recipient.encode()) + rb">; ", name)
            self.assertIn(b"\r\n\tby relay.test (relaymail) with ESMTP id ", trace[3], name)
            sigs = signatures(copy)
            self.assertEqual(sorted((s.domain, s.selector, s.algorithm) for s in sigs),
                             [("example.com", "ed25519", "ed25519-sha256"),
                              ("example.com", "rsa2048", "rsa-sha256")], name)
            if name == "lf":
                self.assert_lf_copy(rest, set(sigs[0].headers))
                continue
            case = self.cases[name]
            unfold = unfold_inserted if case.inserted_space else unfold_before_space
            self.assertNotIn(case.long_line, copy, f"{name}: not folded")
            self.assertEqual(unfold(rest), case.data, f"{name}: changed beyond the folding")

    def assert_lf_copy(self, rest: bytes, signed: set[str]) -> None:
        """LF_DATA as CRLF lines, ``..stuffed`` unstuffed exactly once.  Postfix treats a
        loopback client as local and adds Message-Id and Date to a message without them:
        below the client's fields, and none of them signed, so no signature can break."""
        head, sep, body = rest.partition(b"\r\n\r\n")
        self.assertEqual(sep + body, b"\r\n\r\nfirst\r\n.stuffed\r\nlast\r\n")
        fields = head.split(b"\r\n")
        self.assertEqual(fields[:2], [b"Subject: lf", b"From: a@example.com"])
        added = {f.partition(b":")[0].lower().decode() for f in fields[2:]}
        self.assertLessEqual(added, {"message-id", "date", "to"}, fields)
        self.assertFalse(added & signed, f"Postfix added signed fields {added & signed}")

    async def test_strict_postfix_takes_all_relaymail_sends_signatures_intact(self) -> None:
        got = await self.relay_all()
        self.assert_boundaries(got)
        dnsfunc, _ = self.publish_keys(self.entries, ())
        for recipient, copy in sorted(got.items()):
            verdicts = await self.in_thread(dkimpy_verdicts, copy, dnsfunc)
            self.assertEqual(sorted((v.algorithm, v.result) for v in verdicts),
                             [("ed25519-sha256", "pass"), ("rsa-sha256", "pass")],
                             f"{recipient}: {[str(v) for v in verdicts]}")

    async def test_mail_dkim_passes_the_rsa_signature_after_postfix(self) -> None:
        require(have_mail_dkim(), "Perl's Mail::DKIM (Debian package libmail-dkim-perl)")
        got = await self.relay_all()
        _, keytable = self.publish_keys(self.entries, ())
        for recipient, copy in sorted(got.items()):
            verdicts = await self.in_thread(mail_dkim_verdicts, copy, keytable)
            self.assertEqual(
                sorted((v.algorithm, v.result, v.detail) for v in verdicts),
                [("ed25519-sha256", "invalid", "invalid (unsupported algorithm ed25519-sha256)"),
                 ("rsa-sha256", "pass", "pass")], f"{recipient}: {[str(v) for v in verdicts]}")

    async def test_negative_control_strict_postfix_refuses_bare_lf_itself(self) -> None:
        """Straight to Postfix, the LF-only message is refused; with CRLF it is taken."""
        sink = await self.start_chain(with_relaymail=False)
        refused = await self.in_thread(lockstep_session, self.postfix_port, "a@example.com",
                                       "direct-lf@dest.test", LF_DATA)
        self.assertEqual(refused[-2], BARE_LF_REFUSAL + b"\r\n", refused)
        crlf = LF_DATA.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
        self.assertEqual(crlf, LF_STORED.replace(b"\r\n.stuffed", b"\r\n..stuffed")
                         + b".\r\n")
        taken = await self.in_thread(lockstep_session, self.postfix_port, "a@example.com",
                                     "direct-crlf@dest.test", crlf)
        self.assertTrue(taken[-2].startswith(b"250 2.0.0 Ok: queued as"), taken)
        got = await self.arrivals(sink, ["direct-crlf@dest.test"])
        self.assertEqual(sorted(got), ["direct-crlf@dest.test"])  # the refused one never left
        self.assertIn(b"\r\n\r\nfirst\r\n.stuffed\r\nlast\r\n", got["direct-crlf@dest.test"])
        log = self.maillog()
        self.assertIn("reject: END-OF-MESSAGE from localhost[127.0.0.1]: bare <LF> received;"
                      " from=<a@example.com> to=<direct-lf@dest.test>", log)
