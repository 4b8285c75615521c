"""The DATA phase: turns received lines into the stored body, enforcing the content rules.

Lines arrive without their CRLF (Twisted's line receiver splits on CRLF only), so a bare CR
or LF can only appear inside a line.  By default each is rewritten as CRLF, so no server
downstream can see a different message boundary than we did (the SMTP smuggling class).
"""

from __future__ import annotations

import re

from relaymail.policy.dkim import RelaxedBodyHash
from relaymail.smtp.replies import MESSAGE_TOO_BIG, Reply
from relaymail.spool import MessageWriter

BARE_CR_OR_LF = re.compile(rb"\r\n?|\n")
MAX_HOPS = 50
BARE_LINE_ENDING = Reply(550, "5.6.0", "Message contains bare CR or LF; send CRLF line ends")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many Received headers: mail loop?")


class BodyReader:
    """Accumulates one message's lines into a MessageWriter and remembers the first problem."""

    def __init__(self, writer: MessageWriter, max_size: int, reject_bare: bool,
                 body_hash: RelaxedBodyHash | None = None) -> None:
        self.writer = writer
        self.max_size = max_size
        self.reject_bare = reject_bare
        self.problem: Reply | None = None
        self.in_headers = True
        self.hops = 0
        self.eight_bit_seen = False
        self.header_lines: list[bytes] = []  # the client's header block (DKIM, From check)
        self.body_hash = body_hash

    def line(self, line: bytes) -> None:
        """Handle one line of DATA (the terminating "." is handled by the caller)."""
        if line[:1] == b".":
            line = line[1:]
        if self.problem is not None:
            return
        if b"\r" in line or b"\n" in line:
            if self.reject_bare:
                self._fail(BARE_LINE_ENDING)
                return
            for part in BARE_CR_OR_LF.split(line):  # each bare ending becomes a CRLF line
                self._store(part)
        else:
            self._store(line)

    def _store(self, line: bytes) -> None:
        if self.problem is not None:
            return
        if self.in_headers:
            self._header_line(line)
        elif self.body_hash is not None:
            self.body_hash.line(line)
        if not self.eight_bit_seen and not line.isascii():
            self.eight_bit_seen = True  # relayed with BODY=8BITMIME even if not declared
        if self.writer.size + len(line) + 2 > self.max_size:
            self._fail(MESSAGE_TOO_BIG)
            return
        self.writer.write(line + b"\r\n")

    def _header_line(self, line: bytes) -> None:
        if not line:
            self.in_headers = False
            return
        self.header_lines.append(line + b"\r\n")
        if line[:9].lower() == b"received:":
            self.hops += 1
            if self.hops > MAX_HOPS:
                self._fail(TOO_MANY_HOPS)

    @property
    def header_block(self) -> bytes:
        return b"".join(self.header_lines)

    def _fail(self, reply: Reply) -> None:
        self.problem = reply
        self.writer.discard()
