"""The PROXY protocol (HAProxy's, v1 and v2) in front of a listener, believed only from
trusted proxies.

A PROXY header says who the client really is, so whoever may send one may claim any
address, a trusted network's included.  As Postfix's ``smtpd_upstream_proxy_protocol`` and
HAProxy's own ``accept-proxy`` expect, the header is accepted only from a connection whose
socket peer is in ``smtp.proxy_trusted_networks``; anyone else is disconnected before a
byte is read.  The session itself starts only once the header has been read and checked
(the addresses must be IP literals of the stated family, the ports numbers), so from its
first moment it sees the real client: connection limits, blocked networks, lockouts and
rate limits all apply to that address, and the connection counts when it opens.  The
header must arrive within ``HEADER_TIMEOUT`` seconds and fit 536 bytes (v2's largest
address block with some TLVs; v1's limit is 107).

Twisted's own ``haproxy:`` wrapper believes any peer and does not check that a v1 address
is an IP, which is why this module exists.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from relaymail.logs import Logger, printable

log = Logger(namespace="relaymail.smtp.proxy")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107
HEADER_MAX = 536
HEADER_TIMEOUT = 10.0
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyHeaderError(Exception):
    """The header is malformed; the connection is closed."""


Address = IPv4Address | IPv6Address | None  # None: LOCAL/UNKNOWN, use the real peer


def parse_header(data: bytes) -> tuple[Address, int] | None:
    """(the client's address, header length) from the start of ``data``; None while
    incomplete.  Raises ProxyHeaderError for anything that is not a valid header."""
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)] and data[:1] == b"\r":
        return parse_v2(data)
    if data[:6] == b"PROXY "[:len(data)]:
        return parse_v1(data)
    raise ProxyHeaderError("not a PROXY header")


def parse_v1(data: bytes) -> tuple[Address, int] | None:
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) > V1_MAX:
            raise ProxyHeaderError("v1 header longer than 107 bytes")
        return None
    if end + 2 > V1_MAX:
        raise ProxyHeaderError("v1 header longer than 107 bytes")
    fields = data[:end].split(b" ")
    if fields[:2] == [b"PROXY", b"UNKNOWN"]:
        return None, end + 2
    if len(fields) != 6 or fields[0] != b"PROXY" or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("v1 header: expected PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    version = 4 if fields[1] == b"TCP4" else 6
    source = ip_of(fields[2], version)
    ip_of(fields[3], version)
    sport, _ = port_of(fields[4]), port_of(fields[5])
    cls = IPv4Address if version == 4 else IPv6Address
    return cls("TCP", source, sport), end + 2


def ip_of(text: bytes, version: int) -> str:
    if b"%" in text:  # an IPv6 scope ID would carry any bytes into headers and logs
        raise ProxyHeaderError("v1 header: address with a scope ID")
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("v1 header: address is not an IP literal") from None
    if address.version != version:
        raise ProxyHeaderError("v1 header: address family does not match")
    return str(address)


def port_of(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise ProxyHeaderError("v1 header: port is not a number 0-65535")
    return int(text)


def parse_v2(data: bytes) -> tuple[Address, int] | None:
    if len(data) < 16:
        if data != V2_SIGNATURE[:len(data)] and len(data) >= len(V2_SIGNATURE):
            raise ProxyHeaderError("not a PROXY v2 header")
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("not a PROXY v2 header")
    version_command, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if version_command >> 4 != 2 or version_command & 0x0F not in (0, 1):
        raise ProxyHeaderError("v2 header: unknown version or command")
    total = 16 + length
    if total > HEADER_MAX:
        raise ProxyHeaderError("v2 header too long")
    if len(data) < total:
        return None
    if version_command & 0x0F == 0 or family >> 4 == 0:  # LOCAL, or UNSPEC family
        return None, total
    block = data[16:total]
    if family == 0x11 and length >= 12:
        source = str(ipaddress.IPv4Address(block[0:4]))
        return IPv4Address("TCP", source, struct.unpack("!H", block[8:10])[0]), total
    if family == 0x21 and length >= 36:
        source = str(ipaddress.IPv6Address(block[0:16]))
        return IPv6Address("TCP", source, struct.unpack("!H", block[32:34])[0]), total
    raise ProxyHeaderError("v2 header: only TCP over IPv4 or IPv6 is accepted")


class ProxyHeaderReceiver(ProtocolWrapper):
    """Reads the header, then starts the wrapped protocol with the client's address."""

    transport: Any  # the TCP transport: ITransport declares no abortConnection

    def __init__(self, factory: Any, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.client: IPv4Address | IPv6Address | None = None
        self.started = False
        self._buffer = b""
        self._timer: Any = None

    def makeConnection(self, transport: Any) -> None:
        """Like ProtocolWrapper's, but the wrapped protocol waits for the header."""
        from zope.interface import directlyProvides, providedBy

        directlyProvides(self, providedBy(transport))
        self.transport = transport
        self.connected = True
        factory: ProxyWrappingFactory = self.factory  # type: ignore[assignment]
        peer = transport.getPeer()
        if not factory.trusts(getattr(peer, "host", "")):
            log.info("proxy: refused {peer}: not in smtp.proxy_trusted_networks",
                     peer=getattr(peer, "host", peer))
            transport.abortConnection()
            return
        self._timer = factory.reactor.callLater(HEADER_TIMEOUT, self._too_slow)

    def dataReceived(self, data: bytes) -> None:
        if self.started:
            self.wrappedProtocol.dataReceived(data)
            return
        self._buffer += data
        try:
            parsed = parse_header(self._buffer[:HEADER_MAX])
        except ProxyHeaderError as e:
            self._refuse(str(e))
            return
        if parsed is None:
            if len(self._buffer) >= HEADER_MAX:
                self._refuse("header too long")
            return
        self.client, length = parsed
        rest, self._buffer = self._buffer[length:], b""
        self._start()
        if rest and self.connected and not self.disconnecting:
            self.wrappedProtocol.dataReceived(rest)

    def _start(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.started = True
        self.factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(cast(Any, self))  # provides the transport's
        # interfaces since makeConnection (directlyProvides), which mypy cannot see

    def _refuse(self, why: str) -> None:
        peer = self.transport.getPeer()
        log.info("proxy: bad header from {peer}: {why}", peer=getattr(peer, "host", peer),
                 why=printable(why))
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.transport.abortConnection()

    def _too_slow(self) -> None:
        self._refuse(f"no header within {HEADER_TIMEOUT:.0f} s")

    def getPeer(self) -> Any:
        return self.client if self.client is not None else self.transport.getPeer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.started:
            super().connectionLost(reason)
        else:
            self.connected = False


class ProxyWrappingFactory(WrappingFactory):
    """Wraps a listener's factory; ``trusted`` are the networks proxies connect from."""

    protocol = ProxyHeaderReceiver  # type: ignore[assignment]
    noisy = False

    def __init__(self, wrapped: Any, trusted: Sequence[IPNetwork], reactor: Any) -> None:
        super().__init__(wrapped)
        self.trusted = tuple(trusted)
        self.reactor = reactor

    def trusts(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)


@implementer(IStreamServerEndpoint)
class TrustedProxyEndpoint:
    """An endpoint whose connections must start with a PROXY header from a trusted peer."""

    def __init__(self, wrapped: Any, trusted: Sequence[IPNetwork], reactor: Any) -> None:
        self.wrapped = wrapped
        self.trusted = tuple(trusted)
        self.reactor = reactor

    def listen(self, factory: Any) -> Any:
        return self.wrapped.listen(ProxyWrappingFactory(factory, self.trusted, self.reactor))
