"""The DATA phase: turns received lines into the stored body, enforcing the content rules.

Lines arrive without their CRLF (the session splits on CRLF only; only ``CRLF.CRLF`` ends
DATA, which is what stops SMTP smuggling).  Inside a line:

* a bare CR or LF is, by default, treated as if the client had sent CRLF, including the
  dot-unstuffing of the line after it (Postfix's ``smtpd_forbid_bare_newline = normalize``),
  so that no server downstream sees a different line structure than we stored;
* a line longer than ``fold_length`` (998 octets, RFC 5321 4.5.3.1.6) is folded here, before
  DKIM signing, so that strict upstreams accept it and the signature stays valid.  The fold
  goes before the last space or tab that fits (for a header, unfolding then gives back the
  original exactly); with none, CRLF + SPACE is inserted, as Postfix's
  ``smtp_line_length_limit`` does.  Over-long lines may arrive in pieces (``partial``), so
  memory stays bounded whatever their length.
"""

from __future__ import annotations

import re

from relaymail.common.headers import header_value
from relaymail.common.replies import MESSAGE_TOO_BIG, Reply
from relaymail.policy.dkim import RelaxedBodyHash
from relaymail.spool import MessageWriter

BARE_CR_OR_LF = re.compile(rb"\r\n?|\n")
MAX_HOPS = 50
BARE_LINE_ENDING = Reply(550, "5.6.0", "Message contains bare CR or LF; send CRLF line ends")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many Received headers: mail loop?")
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header exceeds the size limit")
FORBIDDEN_CHARACTER = Reply(550, "5.6.0", "Message contains a forbidden control character")
WSP = b" \t"


class BodyReader:
    """Accumulates one message's lines into a MessageWriter and remembers the first problem."""

    def __init__(self, writer: MessageWriter, max_size: int, reject_bare: bool,
                 body_hash: RelaxedBodyHash | None = None, fold_length: int = 998,
                 max_header_size: int = 1_048_576, strip: bytes = b"\x00",
                 reject: bytes = b"") -> None:
        self.writer = writer
        self.max_size = max_size
        self.reject_bare = reject_bare
        self.fold_length = fold_length
        self.max_header_size = max_header_size
        self.problem: Reply | None = None
        self.in_headers = True
        self.hops = 0
        self.eight_bit_seen = False
        self.folded_lines = 0  # how many over-long lines were folded (for the log)
        self.header_lines: list[bytes] = []  # the client's header block (DKIM, From check)
        self.header_size = 0
        self.body_hash = body_hash
        self._current = bytearray()  # the logical line being assembled (over-long or split)
        self._at_start = True  # nothing of the current line seen yet (dot-unstuffing)
        self.strip, self.reject = strip, reject
        self._controls = strip + reject
        self._control_bytes = tuple(bytes((c,)) for c in self._controls)
        self._one_control = self._control_bytes[0] if len(self._control_bytes) == 1 else None

    # ------------------------------------------------------------------ input

    def line(self, line: bytes) -> None:
        """The rest of one CRLF-terminated line of DATA (the final "." is the caller's)."""
        if self._at_start and len(line) <= self.fold_length and b"\r" not in line \
                and b"\n" not in line:  # the common case, kept short
            if line[:1] == b".":
                line = line[1:]
            one = self._one_control
            if (one is not None and one in line) or (one is None and self._controls
                                                     and self._has_control(line)):
                line = self._cleaned(line)  # after unstuffing: "NUL ." stays a "." line
            if self.problem is None:
                self._store(line)
            return
        self.partial(line)
        self._end_line()

    def block(self, data: bytes) -> None:
        """Complete lines, each ending in CRLF, starting at a line start: the header lines
        one by one, the body at once when nothing in it needs a rule applied (no bare CR
        or LF, no control character to strip or refuse, no line to fold), which is what
        almost every message is; else line by line, with the same result."""
        start = 0
        while self.in_headers and start < len(data) and self.problem is None:
            end = data.index(b"\r\n", start)
            self.line(data[start:end])
            start = end + 2
        if start >= len(data) or self.problem is not None:
            return
        rest = data[start:] if start else data
        if self._plain(rest):
            self._store_block(rest)
            return
        for line in rest[:-2].split(b"\r\n"):
            self.line(line)

    def _plain(self, data: bytes) -> bool:
        crlf = data.count(b"\r\n")
        return (self._at_start and not self._current and data.count(b"\r") == crlf
                and data.count(b"\n") == crlf and not self._has_control(data)
                and max(map(len, data.split(b"\r\n"))) <= self.fold_length)

    def _store_block(self, data: bytes) -> None:
        """Body lines stored at once: dot-unstuffed, hashed, checked for 8 bits and size.
        A block that may go over the size limit takes the line path, so that what was
        hashed and seen when the message is refused is the same either way."""
        if self.writer.size + len(data) > self.max_size:
            for line in data[:-2].split(b"\r\n"):
                self.line(line)
            return
        if data[:1] == b".":
            data = data[1:]
        data = data.replace(b"\r\n.", b"\r\n")
        if self.body_hash is not None:
            self.body_hash.block(data)
        if not self.eight_bit_seen and not data.isascii():
            self.eight_bit_seen = True
        if self.writer.size + len(data) > self.max_size:
            self._fail(MESSAGE_TOO_BIG)
            return
        self.writer.write(data)

    def partial(self, data: bytes) -> None:
        """A piece of a line whose CRLF has not arrived yet."""
        if self.problem is not None:
            return
        if b"\r" not in data and b"\n" not in data:
            self._text(data)
            return
        if self.reject_bare:
            self._fail(BARE_LINE_ENDING)
            return
        parts = BARE_CR_OR_LF.split(data)
        self._text(parts[0])
        for part in parts[1:]:  # each bare ending ends a line, as CRLF would have
            self._end_line()
            self._text(part)

    def _has_control(self, data: bytes) -> bool:
        if not self._controls:
            return False
        if self._one_control is not None:  # the usual case: NUL only
            return self._one_control in data
        return any(c in data for c in self._control_bytes)

    def _cleaned(self, data: bytes) -> bytes:
        """NUL (by default) removed, as Postfix's ``message_strip_characters`` does: a
        receiver that drops NUL before looking for the end of data could otherwise see
        ``CRLF NUL . CRLF`` as one; a ``reject_characters`` one refuses the message."""
        if self.reject and any(bytes((c,)) in data for c in self.reject):
            self._fail(FORBIDDEN_CHARACTER)
            return b""
        return data.translate(None, self.strip)

    # ------------------------------------------------------------------ logical lines

    def _text(self, data: bytes) -> None:
        if self._at_start and data:
            self._at_start = False
            if data[:1] == b".":
                data = data[1:]
        if self._controls and self._has_control(data):
            data = self._cleaned(data)
        self._current += data
        while len(self._current) > self.fold_length and self.problem is None:
            self._store(self._fold_off())

    def _fold_off(self) -> bytes:
        """The first segment of an over-long line; what remains starts with white space."""
        limit, current = self.fold_length, self._current
        cut = max(current.rfind(b" ", 1, limit + 1), current.rfind(b"\t", 1, limit + 1))
        self.folded_lines += 1
        if cut > 0:
            segment = bytes(current[:cut])
            del current[:cut]
            return segment
        cut = limit
        while cut > limit - 3 and 0x80 <= current[cut] < 0xC0:
            cut -= 1  # never inside a UTF-8 sequence
        segment = bytes(current[:cut])
        current[:cut] = b" "
        return segment

    def _end_line(self) -> None:
        line = bytes(self._current)
        self._current.clear()
        self._at_start = True
        if self.problem is None:
            self._store(line)

    def _store(self, line: bytes) -> None:
        if self.in_headers:
            self._header_line(line)
            if self.problem is not None:
                return
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
        self.header_size += len(line) + 2
        if self.header_size > self.max_header_size:
            self._fail(HEADER_TOO_BIG)
            return
        self.header_lines.append(line + b"\r\n")
        if line[:9].lower() == b"received:":
            self.hops += 1
            if self.hops > MAX_HOPS:
                self._fail(TOO_MANY_HOPS)

    @property
    def header_block(self) -> bytes:
        return b"".join(self.header_lines)

    def message_id(self) -> str | None:
        """The Message-ID header's value, unfolded (for events and the archive)."""
        return header_value(self.header_lines, b"message-id")

    def _fail(self, reply: Reply) -> None:
        if self.problem is not None:
            return  # the first problem is the one answered
        self.problem = reply
        self.header_lines = []
        self._current.clear()
        self.writer.discard()
