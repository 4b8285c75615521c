"""Reading an archived message for people: its headers, text, HTML, attachments and links,
with Python's ``email`` package (``policy.default``).  Everything here blocks: call it in a
thread, never on the reactor.

Mail is hostile input.  Header values are decoded where they can be and kept raw where
they cannot (a malformed encoded word or address never fails the whole view), and lose
control and bidirectional-override characters; sizes are bounded; a filename offered for
download is reduced to a safe base name.  The HTML is not cleaned here: the API serves it
under a Content-Security-Policy sandbox (relaymail.web.archive_api), and only its inline
``cid:`` images are rewritten, to ``data:`` URLs, so that nothing is fetched to show them.
"""

from __future__ import annotations

import base64
import contextlib
import email.header
import email.policy
import mimetypes
import re
import unicodedata
from email.message import EmailMessage, Message
from email.parser import BytesParser
from html.parser import HTMLParser
from typing import Any, BinaryIO
from urllib.parse import quote, unquote

from relaymail.common.headers import header_lines, header_value

HEAD_LIMIT = 64 * 1024  # bytes of a message read for its summary (subject, from, to)
MAX_HEADERS = 500
MAX_VALUE = 8 * 1024  # characters of one header value shown
MAX_SUMMARY = 998  # characters of a subject, From or To kept in the index
MAX_TEXT = 2 * 1024 * 1024  # characters of the text part shown
MAX_PARTS = 1000
MAX_DEPTH = 30  # nested multiparts followed
MAX_LINKS = 500
MAX_INLINE_IMAGE = 2 * 1024 * 1024  # bytes of one cid: image made a data: URL
MAX_INLINE_TOTAL = 8 * 1024 * 1024
MAX_FILENAME = 150
# C0 and C1 controls, and the characters that reorder text (a name that reads "gpj.exe").
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
FILENAME_UNSAFE = re.compile(r'[\\/:*?"<>|;%]')
RESERVED = re.compile(r"(con|prn|aux|nul|com\d|lpt\d)(\..*)?", re.IGNORECASE)
CID_URL = re.compile(r"cid:([^\s\"'<>()\\]+)", re.IGNORECASE)
TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


def clean(text: str, limit: int = MAX_VALUE) -> str:
    """One line of display text: controls and reordering characters become spaces."""
    return " ".join(UNSAFE.sub(" ", text).split())[:limit]


def parse(source: BinaryIO | bytes) -> EmailMessage:
    parser = BytesParser(policy=email.policy.default)
    if isinstance(source, bytes):
        return parser.parsebytes(source)  # type: ignore[return-value]
    return parser.parse(source)  # type: ignore[return-value]


def header(msg: Message, name: str, limit: int = MAX_VALUE) -> str | None:
    """The first ``name`` field, decoded (RFC 2047) when that works, else as it came."""
    raw = next((v for k, v in msg.raw_items() if k.lower() == name.lower()), None)  # type: ignore[attr-defined]
    return None if raw is None else decoded(name, raw, limit)


def decoded(name: str, raw: Any, limit: int = MAX_VALUE) -> str:
    try:
        value = str(email.policy.default.header_fetch_parse(name, str(raw)))
    except Exception:  # the email package raises many kinds on hostile input
        return words(str(raw), limit)
    return clean(value, limit)


def headers(msg: Message) -> list[list[str]]:
    """Every header field in order, as [name, value] (at most MAX_HEADERS)."""
    out = []
    for name, raw in list(msg.raw_items())[:MAX_HEADERS]:  # type: ignore[attr-defined]
        out.append([clean(str(name), 200), decoded(str(name), raw)])
    return out


def summary(head: bytes) -> dict[str, str | None]:
    """Subject, From and To of a message's first bytes, for the archive's index: read
    without the MIME parser (a tenth of its cost, paid per archived message), encoded words
    decoded (RFC 2047)."""
    lines = header_lines(head, len(head))
    found: dict[str, str | None] = {}
    for key in ("subject", "from", "to"):
        raw = header_value(lines, key.encode())
        found[key] = None if raw is None else words(raw, MAX_SUMMARY)
    return found


def words(raw: str, limit: int = MAX_VALUE) -> str:
    """A raw header value with its encoded words decoded, when they decode."""
    if "=?" in raw:
        with contextlib.suppress(Exception):  # a malformed encoded word: shown as it came
            raw = str(email.header.make_header(email.header.decode_header(raw)))
    return clean(raw, limit)


# ---------------------------------------------------------------------------- parts


def walk(msg: Message) -> list[Message]:
    """The message's parts in order (the message itself first), numbered by position: the
    numbers of the attachment list and of ``/parts/{n}``.  An attached message
    (message/rfc822) is one part, not opened; nesting and count are bounded."""
    found: list[Message] = []

    def visit(part: Message, depth: int) -> None:
        if len(found) >= MAX_PARTS:
            return
        found.append(part)
        if part.get_content_maintype() == "multipart" and depth < MAX_DEPTH:
            payload = part.get_payload()
            for sub in payload if isinstance(payload, list) else []:
                if isinstance(sub, Message):
                    visit(sub, depth + 1)

    visit(msg, 0)
    return found


def body_part(msg: EmailMessage, kind: str) -> EmailMessage | None:
    try:
        return msg.get_body(preferencelist=(kind,))  # type: ignore[return-value]
    except Exception:
        return None


def payload(part: Message) -> bytes:
    """A part's content as bytes (transfer encoding undone; an attached message whole)."""
    if part.get_content_maintype() == "message":
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            try:
                return bytes(inner[0].as_bytes(policy=email.policy.default))
            except Exception:  # an attached message too broken to write out again
                pass
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def text_of(part: Message, limit: int = MAX_TEXT) -> str:
    """A text part's content as a string (an unknown charset read as UTF-8)."""
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content[:limit]
    except Exception:
        pass
    return payload(part).decode("utf-8", "replace")[:limit]


def content_id(part: Message) -> str | None:
    value = part.get("Content-ID")
    if value is None:
        return None
    text = clean(str(value), 500).strip().strip("<>").strip()
    return text or None


def filename_of(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    return clean(str(name), 500) if name else None


def content_type(part: Message) -> str:
    text = part.get_content_type().lower()
    return text if TYPE.fullmatch(text) else "application/octet-stream"


def attachments(msg: EmailMessage, parts: list[Message] | None = None
                ) -> list[dict[str, Any]]:
    """Every part that is not a container nor the text or HTML shown: its number, name,
    type, decoded size, and whether it is shown inline (so marked, or its Content-ID is
    referenced by the HTML)."""
    parts = walk(msg) if parts is None else parts
    html = body_part(msg, "html")
    shown = {id(p) for p in (body_part(msg, "plain"), html) if p is not None}
    used = {unquote(c).strip("<>") for c in CID_URL.findall(text_of(html))} if html else set()
    out = []
    for n, part in enumerate(parts):
        if part.get_content_maintype() == "multipart" or id(part) in shown:
            continue
        try:
            disposition = part.get_content_disposition()
        except Exception:
            disposition = None
        cid = content_id(part)
        out.append({"index": n, "filename": filename_of(part),
                    "download_name": safe_filename(filename_of(part), n, content_type(part)),
                    "content_type": content_type(part), "size": len(payload(part)),
                    "disposition": disposition, "content_id": cid,
                    "inline": disposition == "inline" or cid in used})
    return out


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("a", "area") and len(self.links) < MAX_LINKS:
            for name, value in attrs:
                if name == "href" and value and value.strip():
                    self.links.append(clean(value, 2000))


def links(html: str) -> list[str]:
    """The targets of the HTML part's links, in order, once each."""
    finder = _Links()
    try:
        finder.feed(html)
        finder.close()
    except Exception:
        pass
    return list(dict.fromkeys(finder.links))


def describe(msg: EmailMessage) -> dict[str, Any]:
    """What the console shows of a message (the envelope comes from the archive's index)."""
    text = body_part(msg, "plain")
    html = body_part(msg, "html")
    return {"headers": headers(msg),
            "subject": header(msg, "Subject"), "from": header(msg, "From"),
            "to": header(msg, "To"), "date": header(msg, "Date"),
            "text": text_of(text).replace("\r\n", "\n") if text is not None else None,
            "has_html": html is not None,
            "attachments": attachments(msg),
            "links": links(text_of(html)) if html is not None else []}


# ---------------------------------------------------------------------------- HTML


def inline_images(msg: EmailMessage) -> dict[str, tuple[str, bytes]]:
    """Content-ID -> (type, bytes) of the message's images."""
    out: dict[str, tuple[str, bytes]] = {}
    for part in walk(msg):
        cid = content_id(part)
        if cid and part.get_content_maintype() == "image":
            out.setdefault(cid, (content_type(part), payload(part)))
    return out


def html_view(msg: EmailMessage) -> str | None:
    """The HTML part with its ``cid:`` images made ``data:`` URLs (each and all bounded;
    one past the bounds stays a ``cid:`` reference, which the sandbox never loads)."""
    part = body_part(msg, "html")
    if part is None:
        return None
    images = inline_images(msg)
    budget = [MAX_INLINE_TOTAL]

    def inline(match: re.Match[str]) -> str:
        cid = unquote(match.group(1)).strip("<>")
        found = images.get(cid)
        if found is None or len(found[1]) > min(MAX_INLINE_IMAGE, budget[0]):
            return match.group(0)
        budget[0] -= len(found[1])
        return f"data:{found[0]};base64,{base64.b64encode(found[1]).decode('ascii')}"

    return CID_URL.sub(inline, text_of(part))


# ---------------------------------------------------------------------------- downloads


def part_download(msg: EmailMessage, n: int) -> tuple[str, bytes] | None:
    """Part ``n`` (as numbered by ``walk``) as (safe file name, content), or None when
    there is no such part or it is a container."""
    parts = walk(msg)
    if not 0 <= n < len(parts) or parts[n].get_content_maintype() == "multipart":
        return None
    part = parts[n]
    return safe_filename(filename_of(part), n, content_type(part)), payload(part)


def safe_filename(name: str | None, n: int, kind: str = "application/octet-stream") -> str:
    """A base name that is safe to save anywhere: no directory, no control or reordering
    character, no character Windows refuses, no leading dot, not a device name, at most
    MAX_FILENAME characters (the extension kept); ``part-<n>.<ext>`` when nothing is left."""
    text = unicodedata.normalize("NFC", name or "")
    text = re.split(r"[\\/]", text)[-1]
    text = FILENAME_UNSAFE.sub("_", UNSAFE.sub("", text))
    text = " ".join(text.split()).strip(" .")
    if RESERVED.fullmatch(text):
        text = "_" + text
    if len(text) > MAX_FILENAME:
        stem, dot, ext = text.rpartition(".")
        ext = ext if dot and 0 < len(ext) <= 10 else ""
        text = (stem if ext else text)[:MAX_FILENAME - len(ext) - 1].rstrip(" .") + \
            ("." + ext if ext else "")
    if not text:
        ext = mimetypes.guess_extension(kind, strict=False) or ".bin"
        text = f"part-{n}{ext}"
    return text


def content_disposition(filename: str) -> bytes:
    """``attachment`` with an ASCII ``filename`` for old clients and the UTF-8
    ``filename*`` (RFC 6266) for the rest."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return (f'attachment; filename="{fallback}"; '
            f"filename*=UTF-8''{quote(filename, safe='')}").encode("ascii")
