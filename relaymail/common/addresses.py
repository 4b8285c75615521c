"""Parsing of MAIL FROM / RCPT TO arguments: the path and the ESMTP parameters (RFC 5321 §4.1.2).

Twisted's parser accepts and then ignores parameters; we need SIZE and BODY, and must refuse
the ones we do not support, each with the reply code RFC 5321 and RFC 1870 ask for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from relaymail.common.replies import Reply

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]"
MAILBOX_RE = re.compile(rf"^(?P<local>{_DOT_ATOM}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})$")
SOURCE_ROUTE_RE = re.compile(rf"^@{_DOMAIN}(?:,@{_DOMAIN})*:")
ARGUMENT_RE = re.compile(rb"^(?P<kw>FROM|TO):\s*(?P<rest>.*)$", re.I | re.S)
PATH_RE = re.compile(rb'^<(?P<path>(?:"(?:[^"\\]|\\.)*"|[^<>"])*)>(?P<params>.*)$', re.S)
PARAM_RE = re.compile(rb"^(?P<key>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>[\x21-\x3c\x3e-\x7e]+))?$")

MAX_PATH = 256


class AddressError(Exception):
    """The argument is malformed; ``reply`` is what to answer."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass(frozen=True)
class PathArgument:
    """A parsed MAIL or RCPT argument: the mailbox ("" for the null sender) and parameters."""

    address: str
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()


def parse_argument(keyword: bytes, rest: bytes, allow_null: bool) -> PathArgument:
    """Parse ``FROM:<path> params`` or ``TO:<path> params``; raise AddressError if malformed."""
    m = ARGUMENT_RE.match(rest.strip())
    if not m or m.group("kw").upper() != keyword:
        raise AddressError(Reply(501, "5.5.4", f"Syntax: {keyword.decode()}:<address>"))
    path_text, params_text = split_path(m.group("rest"))
    try:
        path = path_text.decode("ascii")
    except UnicodeDecodeError:
        raise AddressError(Reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8, "
                                               "which this server does not offer")) from None
    address = normalize_path(path, allow_null)
    return PathArgument(address, parse_params(params_text))


def split_path(text: bytes) -> tuple[bytes, bytes]:
    """Return (path, parameters); accepts a bare address without brackets, as Postfix does."""
    m = PATH_RE.match(text)
    if m:
        return m.group("path"), m.group("params")
    if text.startswith(b"<"):
        raise AddressError(Reply(501, "5.1.7", "Bad address syntax: unbalanced <>"))
    path, _, params = text.partition(b" ")
    return path, b" " + params


def normalize_path(path: str, allow_null: bool) -> str:
    """Check a mailbox, dropping any source route (RFC 5321 §4.1.2 allows ignoring it)."""
    if len(path) > MAX_PATH:
        raise AddressError(Reply(501, "5.1.3", "Address too long"))
    if path == "":
        if allow_null:
            return ""
        raise AddressError(Reply(501, "5.1.3", "Null recipient is not allowed"))
    route = SOURCE_ROUTE_RE.match(path)
    if route:
        path = path[route.end():]
    m = MAILBOX_RE.match(path)
    if not m:
        raise AddressError(Reply(501, "5.1.3", "Bad address syntax"))
    domain = m.group("domain")
    if domain.startswith("[") and not valid_literal(domain):
        raise AddressError(Reply(501, "5.1.3", "Bad address literal"))
    return f"{m.group('local')}@{domain.rstrip('.')}"


def valid_literal(literal: str) -> bool:
    import ipaddress

    inner = literal[1:-1]
    try:
        if inner.startswith("IPv6:"):
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def parse_params(text: bytes) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for word in text.split():
        m = PARAM_RE.match(word)
        if not m:
            raise AddressError(Reply(501, "5.5.4", "Bad parameter syntax"))
        key = m.group("key").decode().upper()
        value = m.group("value")
        if key in params:
            raise AddressError(Reply(501, "5.5.4", f"Duplicate parameter {key}"))
        params[key] = None if value is None else value.decode()
    return params


def mail_options(params: dict[str, str | None], max_size: int) -> tuple[int | None, bool]:
    """Check MAIL parameters; return (declared size, 8-bit body)."""
    size: int | None = None
    eight_bit = False
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not value.isdigit() or len(value) > 20:
                raise AddressError(Reply(501, "5.5.4", "Bad SIZE parameter"))
            size = int(value)
            if size > max_size:
                raise AddressError(Reply(552, "5.3.4", "Message size exceeds fixed maximum "
                                                      "message size"))
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise AddressError(Reply(501, "5.5.4", "Bad BODY parameter"))
            eight_bit = value.upper() == "8BITMIME"
        elif key == "AUTH":
            continue  # RFC 4954 §5: accepted and not passed on (we are not trusting it)
        else:
            raise AddressError(Reply(555, "5.5.4", f"Unsupported parameter {key}"))
    return size, eight_bit


def rcpt_options(params: dict[str, str | None]) -> None:
    for key in params:
        raise AddressError(Reply(555, "5.5.4", f"Unsupported parameter {key}"))
