"""What a message looks like to one upstream: the sender it insists on, our Received header
without the client part, earlier Received headers dropped, DKIM signed again.

The spool holds each message once, exactly as accepted.  Some upstreams need it changed:
QQ, 163 and Outlook refuse an envelope sender or header From other than the login
(``501 mail from address must be same as authorization user``, ``553 Mail from must equal
authorized user``, ``550 5.7.60 SendAsDenied``), SES wants a verified domain, and a home
network may not want its host names and addresses in every message it sends through a
public provider.  These are Postfix's canonical/generic maps and header_checks; here they
are per upstream (``sender_rewrite``, ``bounce_sender``) and per transport (``received``,
``strip_received``), applied to the header block as the message is sent, so failing over
to another upstream sends what that one needs.

A rewritten header From keeps the display name; the original author stays reachable
(``Reply-To`` when there was none, and ``X-Original-From``).  Every DKIM signature signs
From, so all are removed when it changes, and the message is signed again when a key for
the new From domain is configured.  The body is never changed, so its hash from acceptance
(kept in the envelope) serves the new signature.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relaymail.config import SenderRewrite
from relaymail.logs import Logger
from relaymail.policy.dkim import RelaxedBodyHash, Signer, from_domain, parse_headers
from relaymail.relay.bounce import fold_line
from relaymail.spool.envelope import Envelope
from relaymail.spool.record import open_body

log = Logger(namespace="relaymail.relay.rewrite")
HEAD_LIMIT = 2 * 1024 * 1024  # the header block is capped at acceptance (smtp.max_header_size)
OUR_RECEIVED_FROM = re.compile(rb"^Received: from [^\r\n]*\r\n[ \t]+by ", re.IGNORECASE)


@dataclass(frozen=True)
class SendPolicy:
    """How one upstream (or transport) wants messages changed; the default changes nothing."""

    sender_rewrite: SenderRewrite | None = None
    bounce_sender: str | None = None
    received: str = "full"  # full | anonymous
    strip_received: bool = False

    @property
    def edits_headers(self) -> bool:
        return (self.sender_rewrite is not None or self.received != "full"
                or self.strip_received)

    def mail_from(self, sender: str) -> str:
        """The envelope sender to give: a bounce (null sender) goes from ``bounce_sender``
        (or the rewrite address) where the upstream refuses ``MAIL FROM:<>``; relaymail
        itself never bounces a bounce, whatever MAIL FROM it was sent with."""
        rewrite = self.sender_rewrite
        if not sender:
            return self.bounce_sender or (rewrite.address if rewrite else "")
        if rewrite is not None and not rewrite.keeps(sender):
            return rewrite.address
        return sender


@dataclass(frozen=True)
class Edit:
    """What to send instead of the stored file's first ``offset`` bytes."""

    mail_from: str
    head: bytes | None = None
    offset: int = 0


def split_fields(head: bytes) -> list[bytes]:
    """A CRLF header block as whole fields (each with its continuation lines and CRLF)."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


def field_name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def read_head(path: str) -> tuple[bytes, int]:
    """The stored header block (CRLF ended, without the empty line) and where the rest
    starts; blocking, for a thread."""
    with open_body(path) as f:
        data = f.read(HEAD_LIMIT)
    end = data.find(b"\r\n\r\n")
    if end < 0 and len(data) == HEAD_LIMIT:  # cut mid-header: editing it could smuggle one
        raise ValueError(f"header block longer than {HEAD_LIMIT} bytes")
    if end < 0:
        return data, len(data)
    return data[:end + 2], end + 2


def body_hash_of(path: str, offset: int) -> bytes:
    """The relaxed body hash of a stored message, for mail accepted before DKIM was set up;
    blocking, for a thread."""
    hasher = RelaxedBodyHash()
    with open_body(path) as f:
        f.seek(offset + 2)  # past the empty line
        rest = b""
        while chunk := f.read(1 << 20):
            lines = (rest + chunk).split(b"\r\n")
            rest = lines.pop()
            for line in lines:
                hasher.line(line)
        if rest:
            hasher.line(rest)
    return hasher.digest_b64()


class HeaderEditor:
    """Applies a SendPolicy to one stored message; ``signer`` signs the result again."""

    def __init__(self, signer: Signer | None, run_in_thread: Callable[..., Any]) -> None:
        self.signer = signer
        self.run_in_thread = run_in_thread

    async def edit(self, envelope: Envelope, body_path: str, policy: SendPolicy | None) -> Edit:
        if policy is None:
            return Edit(envelope.sender)
        mail_from = policy.mail_from(envelope.sender)
        if not policy.edits_headers:
            return Edit(mail_from)
        try:
            head, offset = await self.run_in_thread(read_head, body_path)
        except ValueError as e:
            log.warn("{queue_id}: sent unchanged: {why}", queue_id=envelope.queue_id, why=e)
            return Edit(mail_from)
        fields = split_fields(head)
        fields = received_policy(fields, policy, envelope.queue_id)
        fields, changed_from = rewrite_from(fields, policy.sender_rewrite)
        if changed_from:
            fields = [f for f in fields if field_name(f) != b"dkim-signature"]
            fields = await self.sign(fields, envelope, body_path, offset) + fields
        return Edit(mail_from, b"".join(fields), offset)

    async def sign(self, fields: list[bytes], envelope: Envelope, body_path: str,
                   offset: int) -> list[bytes]:
        """DKIM-Signature fields for the rewritten header block, when a key fits."""
        if self.signer is None:
            return []
        parsed = parse_headers(b"".join(fields))
        keys = self.signer.keys_for(from_domain(parsed))
        if not keys:
            return []
        stored = envelope.extra.get("body_hash")
        body_hash = stored.encode() if isinstance(stored, str) else \
            await self.run_in_thread(body_hash_of, body_path, offset)
        signed = await self.run_in_thread(self.signer.sign, parsed, body_hash, keys)
        return split_fields(signed)


def received_policy(fields: list[bytes], policy: SendPolicy, queue_id: str) -> list[bytes]:
    """Our Received header without its client part (``anonymous``), and the client's
    earlier Received headers dropped (``strip_received``)."""
    out, ours_seen = [], False
    marker = b" id " + queue_id.encode()
    for field in fields:
        if field_name(field) != b"received":
            out.append(field)
        elif not ours_seen and b"(relaymail)" in field and marker in field:
            ours_seen = True
            if policy.received == "anonymous":
                field = OUR_RECEIVED_FROM.sub(b"Received: by ", field, count=1)
            out.append(field)
        elif not policy.strip_received:
            out.append(field)
    return out


def rewrite_from(fields: list[bytes], rewrite: SenderRewrite | None
                 ) -> tuple[list[bytes], bool]:
    """The header From rewritten to ``rewrite.address`` unless already acceptable."""
    if rewrite is None or not rewrite.header_from:
        return fields, False
    index = next((i for i, f in enumerate(fields) if field_name(f) == b"from"), None)
    if index is None:
        return [*fields, b"From: <" + rewrite.address.encode() + b">\r\n"], True
    original = unfold(fields[index].split(b":", 1)[1].strip())
    try:
        name, address = email.utils.parseaddr(original.decode("utf-8", "replace"))
    except Exception:  # e.g. RecursionError on "((((..." : unparsable, so not the login
        name, address = "", ""
    if address and rewrite.keeps(address):
        return fields, False
    name = "".join(ch for ch in name if ch not in "\r\n")
    new_from = email.utils.formataddr((name, rewrite.address)) if name else \
        f"<{rewrite.address}>"
    out = list(fields)
    out[index] = folded(b"From: " + new_from.encode("utf-8"))
    extra = [folded(b"X-Original-From: " + original)]
    has_reply_to = any(field_name(f) == b"reply-to" for f in fields)
    if rewrite.reply_to and not has_reply_to and address:
        extra.append(folded(b"Reply-To: " + original))
    return out[:index + 1] + extra + out[index + 1:], True


def folded(line: bytes) -> bytes:
    """A header field we write, folded to lines of at most 998 octets (CRLF ended)."""
    return b"\r\n".join(fold_line(line)) + b"\r\n"


def unfold(value: bytes) -> bytes:
    """A field value on one line: each CRLF before white space removed (RFC 5322 2.2.3)."""
    return re.sub(rb"\r\n([ \t])", rb"\1", value)
