"""``POST /api/send``: build a message from a small JSON form, checked like SMTP input,
DKIM-signed like SMTP mail, ready for the relay manager's ``inject``."""

from __future__ import annotations

import email.policy
import email.utils
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

from relaymail.common.addresses import AddressError, normalize_path
from relaymail.policy.dkim import RelaxedBodyHash, Signer, SigningError, from_domain, parse_headers

MAX_TEXT = 1_000_000


class ComposeError(ValueError):
    """The form cannot make a message; the text names the field."""


def address(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ComposeError(f"{field}: expected an address")
    text = value.strip()
    if any(c in text for c in "\r\n<>,;") or not text.isascii():
        raise ComposeError(f"{field}: {text!r} is not a plain ASCII address")
    try:
        return normalize_path(text, allow_null=False)
    except AddressError as e:
        raise ComposeError(f"{field}: {e.reply.text}") from None


def recipients(value: Any, limit: int) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ComposeError("to: expected one or more addresses")
    out = [address(x, "to") for x in items if not isinstance(x, str) or x.strip()]
    if not out or len(out) > limit:
        raise ComposeError(f"to: between 1 and {limit} addresses")
    return out


def text_field(form: dict[str, Any], name: str, single_line: bool) -> str:
    value = form.get(name) or ""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ComposeError(f"{name}: expected text (at most {MAX_TEXT} characters)")
    if single_line and ("\r" in value or "\n" in value):
        raise ComposeError(f"{name}: must be a single line")  # no header injection
    return value


def compose(form: Any, hostname: str, now: float, max_recipients: int
            ) -> tuple[str, list[str], bytes]:
    """(envelope sender, recipients, message bytes with CRLF line ends)."""
    if not isinstance(form, dict):
        raise ComposeError("expected a JSON object")
    sender = address(form.get("from"), "from")
    rcpts = recipients(form.get("to"), max_recipients)
    subject = text_field(form, "subject", single_line=True)
    name = text_field(form, "from_name", single_line=True)
    text, html = text_field(form, "text", False), text_field(form, "html", False)
    message = EmailMessage(policy=email.policy.SMTP)
    local, _, domain = sender.rpartition("@")
    message["From"] = Address(display_name=name, username=local, domain=domain)
    message["To"] = ", ".join(rcpts)
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(now, usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain=hostname)
    message.set_content(text or " ", cte="8bit" if not text.isascii() else None)
    if html:
        message.add_alternative(html, subtype="html")
    return sender, rcpts, message.as_bytes()


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
