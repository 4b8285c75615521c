"""``POST /api/send``: build a message from a JSON form like SMTP2GO's or Amazon SES's send
APIs (addresses, text and HTML, extra headers, attachments and inline images), or take a
whole raw message; checked like SMTP input, DKIM-signed like SMTP mail, ready for the relay
manager's ``inject``. The fields are read in relaymail.web.compose_parts."""

from __future__ import annotations

import email.policy
import email.utils
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

from relaymail.policy.dkim import RelaxedBodyHash, Signer, SigningError, from_domain, parse_headers
from relaymail.web.compose_parts import (
    FIELD_NAME,
    MAX_FILES,
    MAX_LINE,
    ComposeError,
    Part,
    envelope,
    extra_headers,
    files,
    mailboxes,
    one_mailbox,
    parse_mailboxes,
    pick,
    strict_base64,
    text_field,
)

__all__ = ["SEND_SCHEMA", "ComposeError", "compose", "sign_whole"]

ADDRESSES = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
             "description": '"a@b" or "Name <a@b>", a comma-separated string or a list'}
B64 = {"type": "string", "contentEncoding": "base64", "description": "the file, in base64"}
FILE: dict[str, Any] = {"type": "object", "required": ["filename"], "properties": {
    "filename": {"type": "string", "maxLength": 255, "description": "one line"},
    "content": B64, "fileblob": {**B64, "description": "SMTP2GO's name for content"},
    "content_type": {"type": "string", "description": "type/subtype; guessed from the "
                     "filename when absent, else application/octet-stream"},
    "mimetype": {"type": "string", "description": "SMTP2GO's name for content_type"}}}
INLINE = {**FILE, "required": ["filename", "cid"], "properties": {
    **FILE["properties"], "cid": {"type": "string", "description": "the html's cid:… name"},
    "content_id": {"type": "string", "description": "alias of cid"}}}


def text(description: str, **more: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **more}


SEND_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "description": "Aliases are SMTP2GO's names; give one of each pair. Either the form "
                   "fields or raw. At least one recipient in to, cc and bcc together.",
    "properties": {
        "from": text('"a@b" or "Name <a@b>"; the envelope sender is the bare address'),
        "sender": text("alias of from"),
        "from_name": text("display name of From (one line); wins over the name in from"),
        "to": ADDRESSES, "cc": ADDRESSES,
        "bcc": {**ADDRESSES, "description": "envelope only, never in the header"},
        "reply_to": ADDRESSES,
        "subject": text("one line", maxLength=998),
        "text": text("text/plain body"), "text_body": text("alias of text"),
        "html": text("text/html body (multipart/alternative with text)"),
        "html_body": text("alias of html"),
        "headers": {"type": "object", "additionalProperties": {"type": "string"},
                    "maxProperties": 100, "description": "extra header fields {name: value}; "
                    "one line each, at most 998 characters; not those the composer sets"},
        "custom_headers": {"type": "array", "maxItems": 100, "items": {
            "type": "object", "required": ["header", "value"], "properties": {
                "header": {"type": "string"}, "value": {"type": "string"}}},
            "description": "SMTP2GO's form of headers (100 in all)"},
        "attachments": {"type": "array", "maxItems": MAX_FILES, "items": FILE},
        "inline": {"type": "array", "maxItems": MAX_FILES, "items": INLINE,
                   "description": "parts the html shows (multipart/related); needs html"},
        "inlines": {"type": "array", "items": INLINE, "description": "alias of inline"},
        "raw": text("a whole RFC 5322 message, sent as it is (Bcc removed, Date and "
                    "Message-ID added if missing); only from, to, cc and bcc go with it"),
        "mime_email": text("alias of raw"),
        "raw_encoding": {"enum": ["base64"], "description": "raw is in base64"},
    },
}
FORM = set(SEND_SCHEMA["properties"])
RAW_ONLY = ("from_name", "reply_to", "subject", "text", "text_body", "html", "html_body",
            "headers", "custom_headers", "attachments", "inline", "inlines")


def compose(form: Any, hostname: str, now: float, max_recipients: int, *,
            max_size: int = 10 * 1024 * 1024) -> tuple[str, list[str], bytes]:
    """(envelope sender, recipients: to, cc and bcc once each, message bytes with CRLF
    line ends); ComposeError naming the field when the form cannot make a message."""
    if not isinstance(form, dict):
        raise ComposeError("expected a JSON object")
    unknown = sorted(set(form) - FORM)
    if unknown:
        raise ComposeError(f"{unknown[0]}: unknown field")
    key, raw = pick(form, "raw", "mime_email")
    if raw is not None:
        sender, rcpts, data = compose_raw(form, key, raw, hostname, now, max_recipients)
    else:
        if form.get("raw_encoding") is not None:
            raise ComposeError("raw_encoding: only with raw")
        sender, rcpts, data = compose_form(form, hostname, now, max_recipients, max_size)
    if len(data) > max_size:
        raise ComposeError(f"message: {len(data)} bytes is over the limit of {max_size}")
    return sender, rcpts, data


def compose_form(form: dict[str, Any], hostname: str, now: float, max_recipients: int,
                 max_size: int) -> tuple[str, list[str], bytes]:
    fkey, value = pick(form, "from", "sender")
    origin = one_mailbox(value, fkey)
    name = text_field(form.get("from_name"), "from_name", single_line=True)
    to, cc, bcc = (mailboxes(form.get(k), k) for k in ("to", "cc", "bcc"))
    reply_to = mailboxes(form.get("reply_to"), "reply_to")
    rcpts = envelope([to, cc, bcc], max_recipients, "to" if not cc and not bcc else "to+cc+bcc")
    subject = text_field(form.get("subject"), "subject", single_line=True, limit=MAX_LINE)
    tkey, value = pick(form, "text", "text_body")
    body_text = text_field(value, tkey, single_line=False)
    hkey, value = pick(form, "html", "html_body")
    html = text_field(value, hkey, single_line=False)
    extra = extra_headers(form)
    attachments = files("attachments", form.get("attachments"), inline=False)
    ikey, value = pick(form, "inline", "inlines")
    inlines = files(ikey, value, inline=True)
    if inlines and not html:
        raise ComposeError(f"{ikey}: inline parts are shown by the html, and there is none")
    if len(attachments) + len(inlines) > MAX_FILES:
        raise ComposeError(f"attachments: at most {MAX_FILES} with the inline parts")
    least = len(body_text.encode()) + len(html.encode()) + sum(
        (len(p.data) + 2) // 3 * 4 for p in attachments + inlines)
    if least > max_size:  # before building it: the encoded message is no smaller
        raise ComposeError(f"message: at least {least} bytes is over the limit of {max_size}")
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = Address(display_name=name or origin.display_name,
                              addr_spec=origin.addr_spec)
    for field, addresses in (("To", to), ("Cc", cc), ("Reply-To", reply_to)):
        if addresses:
            message[field] = addresses
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(now, usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain=hostname)
    add_body(message, body_text, html, inlines)
    for p in attachments:
        message.add_attachment(p.data, p.maintype, p.subtype, filename=p.filename)
    head, _, rest = message.as_bytes().partition(b"\r\n\r\n")
    return origin.addr_spec, rcpts, head + b"\r\n" + extra + b"\r\n" + rest


def add_body(message: EmailMessage, text: str, html: str, inlines: list[Part]) -> None:
    """text/plain, text/html, or multipart/alternative of both; inline parts make the html
    a multipart/related. The email package picks 8bit, quoted-printable or base64 so that
    no line is longer than 78 characters."""
    if html:
        if text:
            message.set_content(text)
            message.add_alternative(html, subtype="html")
        else:
            message.set_content(html, subtype="html")
        html_part = message.get_body(("html",))
        assert html_part is not None
        for p in inlines:
            html_part.add_related(p.data, p.maintype, p.subtype, cid=f"<{p.cid}>",
                                  filename=p.filename, disposition="inline")
    else:
        message.set_content(text)


def compose_raw(form: dict[str, Any], key: str, raw: Any, hostname: str, now: float,
                max_recipients: int) -> tuple[str, list[str], bytes]:
    """A whole message from ``raw``: CRLF line ends, Bcc removed, Date and Message-ID
    added when missing; the envelope from the fields, else from the headers."""
    mixed = [k for k in RAW_ONLY if form.get(k) is not None]
    if mixed:
        raise ComposeError(f"{key}: cannot go with {mixed[0]} (a raw message is sent as it is)")
    lines = raw_lines(raw, key, form.get("raw_encoding"))
    end = lines.index(b"") if b"" in lines else len(lines)
    head, body = lines[:end], lines[end + 1:]
    fields: list[list[bytes]] = []  # each field: its first line and continuation lines
    for n, line in enumerate(head, 1):
        name, colon, _ = line.partition(b":")
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif colon and FIELD_NAME.fullmatch(name.decode("latin-1")):
            fields.append([line])
        else:
            raise ComposeError(f"{key}: the header section does not parse (line {n})")

    def values(name: str) -> list[str]:
        return [b"".join(f).partition(b":")[2].decode("ascii") for f in fields
                if f[0].partition(b":")[0].decode().lower() == name]

    if not all(line.isascii() for line in head):
        raise ComposeError(f"{key}: the header section is not ASCII (encode words as RFC 2047)")
    froms = values("from")
    if len(froms) != 1:
        raise ComposeError(f"{key}: expected one From header, not {len(froms)}")
    origin = one_mailbox(froms[0], f"{key}: From header")
    fkey, value = pick(form, "from", "sender")
    if value is not None:
        origin = one_mailbox(value, fkey)
    if any(form.get(k) is not None for k in ("to", "cc", "bcc")):
        given = [mailboxes(form.get(k), k) for k in ("to", "cc", "bcc")]
        rcpts = envelope(given, max_recipients, "to+cc+bcc")
    else:
        given = [parse_mailboxes(v, f"{key}: {k} header") for k in ("To", "Cc", "Bcc")
                 for v in values(k.lower())]
        rcpts = envelope(given, max_recipients, f"{key}: To, Cc and Bcc headers")
    kept = [line for f in fields if f[0].partition(b":")[0].lower() != b"bcc" for line in f]
    if not values("date"):
        kept.append(b"Date: " + email.utils.formatdate(now, usegmt=True).encode())
    if not values("message-id"):
        kept.append(b"Message-ID: " + email.utils.make_msgid(domain=hostname).encode())
    return origin.addr_spec, rcpts, b"".join(x + b"\r\n" for x in [*kept, b"", *body])


def raw_lines(raw: Any, key: str, encoding: Any) -> list[bytes]:
    """The message's lines without line ends (CRLF, LF or CR), each at most 998 octets."""
    if not isinstance(raw, str):
        raise ComposeError(f"{key}: expected the message as a string")
    if encoding not in (None, "base64"):
        raise ComposeError('raw_encoding: expected "base64" or nothing')
    if encoding is None:
        data = text_field(raw, key, single_line=False, limit=len(raw)).encode()
    else:
        data = strict_base64(raw, key)
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for n, line in enumerate(lines, 1):
        if len(line) > MAX_LINE:
            raise ComposeError(f"{key}: line {n} is {len(line)} octets, over the limit of "
                               f"{MAX_LINE}")
    return lines


def sign_whole(signer: Signer | None, data: bytes) -> bytes:
    """DKIM for a message made here (small, already in memory); unsigned without a key."""
    if signer is None:
        return data
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        fields = parse_headers(head + b"\r\n")
    except SigningError:
        return data
    keys = signer.keys_for(from_domain(fields))
    if not keys:
        return data
    body_hash = RelaxedBodyHash()
    lines = body.split(b"\r\n")
    for line in lines[:-1] if body.endswith(b"\r\n") else lines:
        body_hash.line(line)
    return signer.sign(fields, body_hash.digest_b64(), keys) + data
