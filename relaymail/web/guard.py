"""The web listener's front door: every request is judged as soon as its headers are in,
before a byte of its body is read or stored.

* ``Host`` must name this console: one of ``web.allowed_hosts`` (any port), the address of
  ``web.endpoint``'s interface, or the address the connection arrived at.  A DNS-rebinding
  page names the attacker's domain, so it gets ``421`` and never reaches ``/health``,
  ``/metrics`` or ``/login``.  A change (POST, PATCH, DELETE, ...) sent with an ``Origin``
  that names another site gets ``403``: a page elsewhere cannot post failed logins to lock
  the admin out.
* A body may be as large as its route allows: ``web.max_body_size`` (64 KiB) for ``/login``
  and the JSON routes, twice ``smtp.max_message_size`` for ``/api/send`` (JSON escapes of a
  message that fits SMTP's limit) but only with the bearer token or a session cookie:
  without them the small limit applies, and a larger body is answered ``401`` before it is
  read.  A ``Content-Length`` over the limit is answered ``413`` at once; a body without one
  (chunked) is counted as it arrives and refused as soon as it passes the limit.

A refused request is answered at once with ``Connection: close``.  Whatever the client
still sends is read and dropped, never stored, for ``LINGER`` seconds, so that it sees the
answer rather than a connection reset; then the connection is closed.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twisted.web.iweb import IRequest
from twisted.web.server import Request, Site

from relaymail.config import Config, IPNetwork, endpoint_address
from relaymail.logs import Logger, printable

log = Logger(namespace="relaymail.web")

LINGER = 2.0  # seconds a refused connection's further input is read and dropped
SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")
PHRASES = {400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
           413: b"Content Too Large", 421: b"Misdirected Request"}
HOST_RE = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
FORWARDED = (b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")


def normal_host(text: str) -> str | None:
    """A host name or IP literal as ``web.allowed_hosts`` keeps it (lower case, no brackets,
    no trailing dot); None when it is neither."""
    text = text.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            return None
    text = text.rstrip(".")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text if HOST_RE.fullmatch(text) else None


def host_header_name(value: bytes) -> str | None:
    """The host of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``)."""
    try:
        text = value.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[:end + 1], text[end + 1:]
    else:
        host, colon, port = text.partition(":")
        rest = colon + port
    if rest and not (rest[0] == ":" and rest[1:].isdigit()):
        return None
    return normal_host(host) if host else None


def origin_name(value: bytes) -> str | None:
    """The host of an ``Origin`` header (``https://name:port``); None for ``null`` or junk."""
    try:
        parts = urlsplit(value.decode("ascii").strip())
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except (UnicodeDecodeError, ValueError):
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname
    return normal_host(f"[{host}]" if ":" in host else host)


@dataclass(frozen=True)
class Refusal:
    """An answer given before the body is read."""

    code: int
    body: bytes
    content_type: bytes = b"application/json; charset=utf-8"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    why: str = ""  # for the log

    @classmethod
    def json(cls, code: int, error: str, why: str = "",
             headers: tuple[tuple[bytes, bytes], ...] = ()) -> Refusal:
        return cls(code, json.dumps({"error": error}).encode(), headers=headers,
                   why=why or error)

    @classmethod
    def text(cls, code: int, text: str) -> Refusal:
        return cls(code, text.encode() + b"\n", b"text/plain; charset=utf-8", why=text)

    def response(self) -> bytes:
        head = [b"HTTP/1.1 %d %s" % (self.code, PHRASES.get(self.code, b"Error")),
                b"Content-Type: " + self.content_type,
                b"Content-Length: %d" % len(self.body),
                b"Connection: close", b"Cache-Control: no-store",
                b"X-Content-Type-Options: nosniff",
                *(name + b": " + value for name, value in self.headers)]
        return b"\r\n".join(head) + b"\r\n\r\n" + self.body


@dataclass
class Gate:
    """What the guard checks; built from the ``web`` section by ``gate_for``."""

    allowed_hosts: frozenset[str] = frozenset({"localhost", "127.0.0.1", "::1"})
    max_body_size: int = 65_536
    route_limits: Mapping[tuple[bytes, bytes], int] = field(default_factory=dict)
    # Does the request carry the bearer token or a live session cookie (checked again,
    # with CSRF, by the route)?  Only those may send more than max_body_size.
    authenticated: Callable[[IRequest], bool] = lambda request: False

    def host_allowed(self, name: str | None, request: IRequest) -> bool:
        if name is None:
            return False
        if "*" in self.allowed_hosts or name in self.allowed_hosts:
            return True
        local = getattr(request.getHost(), "host", None)  # the address it connected to
        return isinstance(local, str) and name == normal_host(local)

    def check_host(self, request: IRequest, method: bytes) -> Refusal | None:
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) != 1:
            return Refusal.text(400, "relaymail: a request needs exactly one Host header")
        name = host_header_name(hosts[0])
        if not self.host_allowed(name, request):
            shown = hosts[0].decode("ascii", "replace")[:100]
            return Refusal.text(421, f"relaymail: this console does not answer to the host "
                                     f"name {shown!r}; add it to web.allowed_hosts to use it")
        origins = request.requestHeaders.getRawHeaders(b"origin") or []
        if method not in SAFE_METHODS and origins and not all(
                self.host_allowed(origin_name(o), request) for o in origins):
            shown = origins[0].decode("ascii", "replace")[:100]
            return Refusal.json(403, f"cross-origin request refused (Origin {shown}); add "
                                     f"the console's name to web.allowed_hosts if it is yours")
        return None

    def body_limit(self, request: IRequest, method: bytes, path: bytes) -> tuple[int, bool]:
        """(limit, whether going over it is for want of authentication)."""
        route = self.route_limits.get((method, path), self.max_body_size)
        if route <= self.max_body_size or self.authenticated(request):
            return route, False
        return self.max_body_size, True

    def over_limit(self, method: bytes, path: bytes, limit: int, unauthenticated: bool,
                   size: int | None) -> Refusal:
        where = f"{method.decode('ascii', 'replace')} {path.decode('ascii', 'replace')[:200]}"
        got = "more" if size is None else f"{size} bytes"
        if unauthenticated:
            return Refusal.json(401, "authentication required",
                                why=f"{where}: body of {got} without authentication "
                                    f"(at most {limit} bytes)",
                                headers=((b"WWW-Authenticate", b'Bearer realm="relaymail"'),))
        return Refusal.json(413, f"request body too large: at most {limit} bytes for {where}",
                            why=f"{where}: body of {got}, at most {limit} bytes")


def gate_for(config: Config, authenticated: Callable[[IRequest], bool]) -> Gate:
    """The listener's checks from the config: allowed names (plus the endpoint's interface
    address), 64 KiB bodies, /api/send up to twice the SMTP message size limit."""
    hosts = set(config.web.allowed_hosts)
    _, interface, kind = endpoint_address(config.web.endpoint)
    if kind != "unix" and interface and not ipaddress.ip_address(interface).is_unspecified:
        hosts.add(str(ipaddress.ip_address(interface)))
    send = max(2 * config.smtp.max_message_size, config.web.max_body_size)
    return Gate(frozenset(hosts), config.web.max_body_size,
                {(b"POST", b"/api/send"): send}, authenticated)


class GuardedRequest(Request):
    """A Request that its Site's ``gate`` may refuse when its headers are in."""

    refusal: Refusal | None = None
    body_cap: int | None = None
    _unauthenticated = False
    _received = 0
    _head = (b"", b"")
    _linger: Any = None

    def _gate(self) -> Gate | None:
        """The checks of the Site this request came to (a WebSite has them)."""
        return getattr(getattr(self.channel, "site", None), "gate", None)

    def gotLength(self, length: int | None) -> None:
        gate = self._gate()
        if gate is not None:
            # The method and target are known to the channel only until the body is in.
            method = bytes(getattr(self.channel, "_command", b"")).upper()
            path = bytes(getattr(self.channel, "_path", b"")).split(b"?", 1)[0]
            self._head = (method, path)
            refusal = gate.check_host(self, method)
            if refusal is None:
                self.body_cap, self._unauthenticated = gate.body_limit(self, method, path)
                if length is not None and length > self.body_cap:
                    refusal = gate.over_limit(method, path, self.body_cap,
                                              self._unauthenticated, length)
            if refusal is not None:
                self.refuse(refusal)
                return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refusal is not None:
            return
        self._received += len(data)
        if self.body_cap is not None and self._received > self.body_cap:
            gate = self._gate()
            assert gate is not None  # body_cap is set by the gate
            self.refuse(gate.over_limit(*self._head, self.body_cap, self._unauthenticated,
                                        None))
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.refusal is None:
            super().requestReceived(command, path, version)

    def refuse(self, refusal: Refusal) -> None:
        """Answer now, then drop the rest of what the client sends; close in LINGER s."""
        self.refusal = refusal
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the answer
        if self.content is not None:
            self.content.close()
            self.content = None
        channel = self.channel

        def drop(*_: Any) -> None:
            return None

        for name in ("dataReceived", "lineReceived", "rawDataReceived"):
            setattr(channel, name, drop)
        channel.setTimeout(None)
        transport: Any = channel.transport  # TCP or TLS: ITransport has no abortConnection
        assert transport is not None  # still connected: it is the one sending the request
        transport.write(refusal.response())
        self._linger = channel.callLater(LINGER, transport.abortConnection)  # TLS would wait
        peer = getattr(self.getClientAddress(), "host", "?")
        log.info("web: refused {code} to {peer}: {why}", code=refusal.code, peer=peer,
                 why=printable(refusal.why))

    def connectionLost(self, reason: Any) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)


class WebSite(Site):
    """The console's Site: GuardedRequest, no tracebacks in answers."""

    requestFactory = GuardedRequest
    displayTracebacks = False

    def __init__(self, resource: Any, gate: Gate, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.gate = gate


def reached_over_tls(request: IRequest, behind_tls_proxy: bool,
                     trusted_proxies: tuple[IPNetwork, ...]) -> bool:
    """Does the browser talk HTTPS to us: TLS on this connection, ``web.behind_tls_proxy``,
    or ``X-Forwarded-Proto: https`` from a trusted proxy (believed from nobody else)."""
    if request.isSecure() or behind_tls_proxy:
        return True
    proto = request.getHeader(b"x-forwarded-proto")
    if proto is None or proto.split(b",")[0].strip().lower() != b"https":
        return False
    return peer_in(request, trusted_proxies)


def peer_in(request: IRequest, networks: tuple[IPNetwork, ...]) -> bool:
    host = getattr(request.getClientAddress(), "host", "")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def forwarded(request: IRequest) -> bool:
    """The request came through a proxy (it says whom it forwards)."""
    return any(request.getHeader(name) is not None for name in FORWARDED)
