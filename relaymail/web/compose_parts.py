"""The fields of the ``POST /api/send`` form (relaymail.web.compose): addresses, text, extra
header fields and files, each checked with an error that names the field, so the API can
answer 400 ``{"error": text}``."""

from __future__ import annotations

import base64
import binascii
import email.policy
import mimetypes
import re
from dataclasses import dataclass
from email.errors import ObsoleteHeaderDefect
from email.headerregistry import Address
from typing import Any

from relaymail.common.addresses import AddressError, normalize_path

MAX_TEXT = 1_000_000
MAX_LINE = 998  # octets in a line, CRLF not counted (RFC 5322 §2.1.1)
MAX_HEADERS = 100
MAX_FILES = 100
MAX_FILENAME = 255
MAX_NAME = 76  # a field name that leaves room for ": " on a 78-character line
# Fields the composer writes, the relay adds, or that would change how the message is read.
OWNED = frozenset(n.lower() for n in (
    "From", "Sender", "To", "Cc", "Bcc", "Reply-To", "Subject", "Date", "Message-ID",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-Disposition",
    "Content-ID", "DKIM-Signature", "Received", "Return-Path"))
FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # printable ASCII except ':' (RFC 5322 §3.6.8)
TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 2045 token
CONTENT_TYPE = re.compile(rf"{TOKEN}/{TOKEN}")
CID = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]{1,250}")  # printable ASCII except < and >
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # all but tab
NON_ASCII = ("internationalised addresses (SMTPUTF8) and IDN domains are not supported; "
             "write an IDN domain in its xn-- form")


class ComposeError(ValueError):
    """The form cannot make a message; the text names the field."""


def pick(form: dict[str, Any], name: str, alias: str, prefix: str = "") -> tuple[str, Any]:
    """The key used (``name`` or its SMTP2GO alias, with ``prefix``) and its value."""
    if form.get(name) is not None and form.get(alias) is not None:
        raise ComposeError(f"{prefix}{name}: give {name} or {alias}, not both")
    key = alias if form.get(alias) is not None else name
    return prefix + key, form.get(key)


def text_field(value: Any, field: str, single_line: bool, limit: int = MAX_TEXT) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise ComposeError(f"{field}: expected text (at most {limit} characters)")
    if single_line and CONTROL.search(value):
        raise ComposeError(f"{field}: must be a single line")  # no header injection
    try:
        value.encode()
    except UnicodeEncodeError:  # JSON can carry a lone surrogate (\ud800)
        raise ComposeError(f"{field}: not valid Unicode text") from None
    return value


def strict_base64(text: str, field: str) -> bytes:
    """Base64 with its padding and nothing but white space besides (line breaks are fine)."""
    compact = "".join(text.split())
    try:
        if len(compact) % 4:
            raise ValueError("not a whole number of quads")
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ComposeError(f"{field}: not valid base64") from None


def parse_mailboxes(text: str, field: str) -> list[Address]:
    """``a@b``, ``Name <a@b>`` or a comma-separated list of them; addresses checked like
    SMTP's and returned as written but with any comment or source route dropped."""
    if CONTROL.search(text):
        raise ComposeError(f"{field}: must be a single line")
    if not text.strip():
        return []
    try:
        header = email.policy.default.header_factory("to", text)
        found = list(header.addresses)
    except Exception:  # the parser can raise more than HeaderParseError
        raise ComposeError(f"{field}: {text!r} is not an address") from None
    for a in found:
        if not a.addr_spec.isascii():
            raise ComposeError(f"{field}: {a.addr_spec!r} is not a plain ASCII address "
                               f"({NON_ASCII})")
    defects = [d for d in header.defects
               if not (isinstance(d, ObsoleteHeaderDefect) and "no content" in str(d))]
    if defects or not (found or any(g.display_name for g in header.groups)):
        raise ComposeError(f"{field}: {text!r} is not an address")  # "list:;" is no error
    out = []
    for a in found:
        try:
            spec = normalize_path(a.addr_spec, allow_null=False)
        except AddressError as e:
            raise ComposeError(f"{field}: {a.addr_spec!r}: {e.reply.text}") from None
        out.append(Address(display_name=a.display_name, addr_spec=spec))
    return out


def mailboxes(value: Any, field: str) -> list[Address]:
    """A string (comma-separated) or a list of strings; [] when absent."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ComposeError(f"{field}: expected an address or a list of addresses")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ComposeError(f"{field}: expected an address")
        out.extend(parse_mailboxes(item, field))
    return out


def one_mailbox(value: Any, field: str) -> Address:
    if not isinstance(value, str) or not value.strip():
        raise ComposeError(f"{field}: expected an address")
    found = parse_mailboxes(value, field)
    if len(found) != 1:
        raise ComposeError(f"{field}: expected one address, not {len(found)}")
    return found[0]


def envelope(lists: list[list[Address]], limit: int, field: str = "to") -> list[str]:
    """The envelope recipients: the addresses in order, each once (in any case: local parts
    may be case-sensitive, but one mailbox should not get a message twice)."""
    seen, out = set(), []
    for a in (a for addresses in lists for a in addresses):
        key = a.addr_spec.lower()
        if key not in seen:
            seen.add(key)
            out.append(a.addr_spec)
    if not out:
        raise ComposeError(f"{field}: expected one or more addresses")
    if len(out) > limit:
        raise ComposeError(f"{field}: between 1 and {limit} addresses")
    return out


def extra_headers(form: dict[str, Any]) -> bytes:
    """``headers`` ({name: value}) and SMTP2GO's ``custom_headers`` ([{header, value}]) as
    folded CRLF lines to add to the message's header section."""
    given: list[tuple[str, Any, Any]] = []
    headers = form.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise ComposeError("headers: expected an object of header names and values")
        given += [(f"headers.{name}", name, value) for name, value in headers.items()]
    custom = form.get("custom_headers")
    if custom is not None:
        if not isinstance(custom, list):
            raise ComposeError('custom_headers: expected a list of {"header", "value"}')
        for i, item in enumerate(custom):
            if not isinstance(item, dict) or set(item) - {"header", "value"}:
                raise ComposeError(f'custom_headers[{i}]: expected {{"header", "value"}}')
            given.append((f"custom_headers[{i}]", item.get("header"), item.get("value")))
    if len(given) > MAX_HEADERS:
        raise ComposeError(f"headers: at most {MAX_HEADERS} (headers and custom_headers "
                           "together)")
    return b"".join(header_field(*g) for g in given)


def header_field(field: str, name: Any, value: Any) -> bytes:
    if not isinstance(name, str) or not FIELD_NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise ComposeError(f"{field}: {name!r} is not a header field name (printable ASCII "
                           f"without ':' or spaces, at most {MAX_NAME} characters)")
    if name.lower() in OWNED:
        raise ComposeError(f"{field}: {name} is set by the composer or the relay and cannot "
                           "be given")
    if not isinstance(value, str):
        raise ComposeError(f"{field}: expected text (the value of {name})")
    value = text_field(value, field, single_line=True, limit=MAX_LINE)
    if not value.isascii():  # encoded words (RFC 2047), folded by the email package
        return email.policy.SMTP.header_factory(name, value).fold(
            policy=email.policy.SMTP).encode("ascii")
    lines, word = [f"{name}:"], False  # folded before white space, never in a word (URLs)
    for chunk in re.findall(r"[ \t]*[^ \t]+|[ \t]+$", " " + value if value else ""):
        if word and chunk.strip() and len(lines[-1]) + len(chunk) > 78:
            lines.append(chunk)
        else:
            lines[-1] += chunk
        word = word or bool(chunk.strip())
    if max(len(line) for line in lines) > MAX_LINE:
        raise ComposeError(f"{field}: {name} has a word too long for a {MAX_LINE}-octet line")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


@dataclass(frozen=True)
class Part:
    """An attachment or an inline part (``cid`` set), decoded."""

    filename: str
    data: bytes
    maintype: str
    subtype: str
    cid: str | None = None


def files(key: str, value: Any, inline: bool) -> list[Part]:
    """``attachments`` or ``inline``/``inlines``: [{filename, content (base64) or fileblob,
    content_type or mimetype, and for inline parts cid or content_id}]."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ComposeError(f"{key}: expected a list of files")
    if len(value) > MAX_FILES:
        raise ComposeError(f"{key}: at most {MAX_FILES} files")
    parts = [one_file(item, f"{key}[{i}]", inline) for i, item in enumerate(value)]
    cids = [p.cid for p in parts]
    for i, cid in enumerate(cids):
        if cid is not None and cid in cids[:i]:
            raise ComposeError(f"{key}[{i}].cid: {cid!r} is used twice")
    return parts


FILE_FIELDS = {"filename", "content", "fileblob", "content_type", "mimetype"}
INLINE_FIELDS = FILE_FIELDS | {"cid", "content_id"}


def one_file(item: Any, path: str, inline: bool) -> Part:
    if not isinstance(item, dict):
        raise ComposeError(f"{path}: expected an object with filename and content")
    unknown = sorted(set(item) - (INLINE_FIELDS if inline else FILE_FIELDS))
    if unknown:
        raise ComposeError(f"{path}.{unknown[0]}: unknown field")
    filename = item.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise ComposeError(f"{path}.filename: expected a file name")
    text_field(filename, f"{path}.filename", single_line=True, limit=MAX_FILENAME)
    ckey, content = pick(item, "content", "fileblob", f"{path}.")
    if not isinstance(content, str):
        raise ComposeError(f"{ckey}: expected the file's content in base64")
    data = strict_base64(content, ckey)
    tkey, ctype = pick(item, "content_type", "mimetype", f"{path}.")
    if ctype is None:  # message/* and multipart/* cannot be sent in base64 (RFC 2046 §5)
        ctype = mimetypes.guess_type(filename, strict=False)[0] or ""
        ctype = ctype if CONTENT_TYPE.fullmatch(ctype) and not ctype.startswith(
            ("message/", "multipart/")) else "application/octet-stream"
    if not isinstance(ctype, str) or not CONTENT_TYPE.fullmatch(ctype):
        raise ComposeError(f"{tkey}: {ctype!r} is not a type/subtype (no parameters)")
    maintype, _, subtype = ctype.lower().partition("/")
    if maintype in ("message", "multipart"):
        raise ComposeError(f"{tkey}: {ctype} cannot be sent as a base64 file; use "
                           "application/octet-stream")
    if not inline:
        return Part(filename, data, maintype, subtype)
    ikey, cid = pick(item, "cid", "content_id", f"{path}.")
    if not isinstance(cid, str) or not CID.fullmatch(cid.strip().removeprefix("<")
                                                     .removesuffix(">")):
        raise ComposeError(f"{ikey}: expected a content ID (what the html calls cid:…)")
    return Part(filename, data, maintype, subtype, cid.strip().removeprefix("<")
                .removesuffix(">"))
