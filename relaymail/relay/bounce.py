"""Delivery status notifications (RFC 3464) for recipients that failed for good.

The report is a multipart/report with a human-readable part, a message/delivery-status
part with one block per failed recipient, and the original headers (text/rfc822-headers).
It is sent from the null sender, so it can never bounce back (RFC 5321 §4.5.5).
"""

from __future__ import annotations

import email.utils
import re
import secrets
from collections.abc import Sequence

from relaymail.spool.envelope import Envelope, Recipient

# RFC 3463: the enhanced code opens the reply text, right after the reply code, and has the
# reply code's class.  Our own notes ("4.4.7 message expired ...") open with the code.
LEADING_CODE = re.compile(r"(?:([245])\d\d[ -])?([245]\.\d{1,3}\.\d{1,3})\b")
REPLY_CODE = re.compile(r"([45])\d\d\b")


def status_of(reply: str | None) -> str:
    """The enhanced status code of a failed recipient's last reply (4.x.x for an expired
    message); without one, the reply code's class with .0.0, else 5.0.0.  A code elsewhere
    in the text ("500 Line too long (see RFC5321 4.5.3.1.6)") is not the status."""
    text = (reply or "").strip()
    m = LEADING_CODE.match(text)
    if m and m.group(2)[0] in "45" and m.group(1) in (None, m.group(2)[0]):
        return m.group(2)
    basic = REPLY_CODE.match(text)
    return f"{basic.group(1)}.0.0" if basic else "5.0.0"


QUOTED_HEADERS_MAX = 64 * 1024
LINE_LIMIT = 998


def header_block(body: bytes) -> bytes:
    """The header section of a stored message (up to the first empty line), CRLF ended,
    made safe to quote: a bounce must never carry what made the original undeliverable, so
    lines over 998 octets are folded (a strict upstream refuses them with 500, and the
    sender would never hear of the failure) and the whole is cut, at a line end, to 64 KiB."""
    end = body.find(b"\r\n\r\n")
    head = body if end < 0 else body[:end + 2]
    if not head.endswith(b"\r\n"):  # read cut it mid-line
        head = head[:head.rfind(b"\r\n") + 2]
    out: list[bytes] = []
    size = 0
    for line in head.split(b"\r\n")[:-1]:
        for piece in fold_line(line):
            size += len(piece) + 2
            if size > QUOTED_HEADERS_MAX:
                return b"".join(out)
            out.append(piece + b"\r\n")
    return b"".join(out)


def fold_line(line: bytes) -> list[bytes]:
    """A header line as lines of at most 998 octets, folded before white space where there
    is some, else with CRLF + SPACE."""
    pieces = []
    while len(line) > LINE_LIMIT:
        cut = max(line.rfind(b" ", 1, LINE_LIMIT + 1), line.rfind(b"\t", 1, LINE_LIMIT + 1))
        if cut > 0:
            pieces.append(line[:cut])
            line = line[cut:]
        else:
            pieces.append(line[:LINE_LIMIT])
            line = b" " + line[LINE_LIMIT:]
    pieces.append(line)
    return pieces


def clean(text: str) -> str:
    """A single printable ASCII line, for diagnostic fields."""
    return re.sub(r"[^\x20-\x7e]", "?", " ".join(text.split()))[:900]


def build_bounce(envelope: Envelope, failed: Sequence[Recipient], original: bytes,
                 reporting_mta: str, now: float) -> bytes:
    """The RFC 3464 report for ``failed`` recipients of ``envelope`` (whose body is
    ``original``); returns the message bytes with CRLF line ends."""
    boundary = f"=_relaymail_{secrets.token_hex(12)}"
    date = email.utils.formatdate(now, localtime=True)
    headers = header_block(original)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{envelope.sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <{envelope.queue_id}.{secrets.token_hex(6)}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"This is the mail system at host {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "It has been returned below with the reason for each recipient.",
        "",
        *(f"<{r.address}>: {clean(r.last_reply or 'delivery failed')}" for r in failed),
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Relaymail-Queue-ID: {envelope.queue_id}",
        f"Arrival-Date: {email.utils.formatdate(envelope.received_at, localtime=True)}",
    ]
    for r in failed:
        lines += [
            "",
            f"Final-Recipient: rfc822; {r.address}",
            "Action: failed",
            f"Status: {status_of(r.last_reply)}",
        ]
        if r.last_reply:
            lines.append(f"Diagnostic-Code: smtp; {clean(r.last_reply)}")
        lines.append(f"Last-Attempt-Date: {date}")
    eight_bit = any(b > 127 for b in headers)
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        *(["Content-Transfer-Encoding: 8bit"] if eight_bit else []),
        "",
    ]
    head = "\r\n".join(lines).encode("ascii") + b"\r\n"
    return head + headers + f"\r\n--{boundary}--\r\n".encode("ascii")
