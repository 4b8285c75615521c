"""The DATA fast path (whole blocks of lines, relaymail.smtp.body.BodyReader.block) stores
exactly what the line-by-line path stores, for any message and any way the network cuts
it: same bytes, same DKIM body hash, same 8-bit flag, same refusal."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from relaymail.policy.dkim import RelaxedBodyHash
from relaymail.smtp.body import BodyReader


class Writer:
    """The part of MessageWriter a BodyReader uses, in memory."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.discarded = False

    @property
    def size(self) -> int:
        return len(self.data)

    def write(self, data: bytes) -> None:
        self.data += data

    def discard(self) -> None:
        self.discarded = True


PIECES = [b"", b".", b"..", b" ", b"\t", b"a", b"Subject: x", b"\x00", b"\x07", b"\xc3\xa9",
          b"\n", b"\r", b"From: a@b", b"x" * 120, b"y " * 70]
# What the session hands on as one line never holds a CRLF (it splits there).
line = st.lists(st.sampled_from(PIECES), max_size=12).map(b"".join)\
    .filter(lambda text: b"\r\n" not in text)
message = st.lists(line, max_size=40)


def reader(fold: int, reject_bare: bool, strip: bytes, reject: bytes, max_size: int
           ) -> tuple[BodyReader, Writer]:
    writer = Writer()
    body = BodyReader(writer, max_size, reject_bare, RelaxedBodyHash(), fold_length=fold,
                      max_header_size=4096, strip=strip, reject=reject)  # type: ignore[arg-type]
    return body, writer


def outcome(body: BodyReader, writer: Writer) -> Any:
    return (bytes(writer.data) if body.problem is None else None, body.problem,
            body.eight_bit_seen, body.body_hash.digest_b64() if body.body_hash else None,
            body.header_block)


@settings(max_examples=400, deadline=None)
@given(message, st.lists(st.integers(0, 40), max_size=6), st.sampled_from([60, 998]),
       st.booleans(), st.sampled_from([(b"\x00", b""), (b"", b""), (b"\x00", b"\x07")]),
       st.sampled_from([10_000, 300]))
def test_block_path_equals_line_path(lines: list[bytes], cuts: list[int], fold: int,
                                     reject_bare: bool, controls: tuple[bytes, bytes],
                                     max_size: int) -> None:
    strip, reject = controls
    one, one_writer = reader(fold, reject_bare, strip, reject, max_size)
    for text in lines:
        one.line(text)
    many, many_writer = reader(fold, reject_bare, strip, reject, max_size)
    blocks, start = [], 0
    for cut in sorted(set(cuts)):
        if start < cut <= len(lines):
            blocks.append(lines[start:cut])
            start = cut
    blocks.append(lines[start:])
    for block in blocks:
        if block:
            many.block(b"".join(text + b"\r\n" for text in block))
    assert outcome(one, one_writer) == outcome(many, many_writer)


def test_block_path_is_taken_for_an_ordinary_body() -> None:
    body, writer = reader(998, False, b"\x00", b"", 10_000)
    calls: list[bytes] = []
    body.line = calls.append  # type: ignore[method-assign]
    body.in_headers = False
    body.block(b"line one\r\n..dot\r\nlast\r\n")
    assert calls == [] and bytes(writer.data) == b"line one\r\n.dot\r\nlast\r\n"
