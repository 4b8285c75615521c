"""The PROXY header parser and wrapper without sockets: valid v1/v2 headers, every way a
header can be wrong, a Hypothesis fuzz (never an unexpected exception, never a non-IP
address), the trusted-peer check and the header timeout on a fake clock."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from relaymail.smtp.proxy import (
    HEADER_TIMEOUT,
    V2_SIGNATURE,
    ProxyHeaderError,
    ProxyWrappingFactory,
    parse_header,
)


def v2(command: int = 1, family: int = 0x11, block: bytes | None = None) -> bytes:
    if block is None:
        block = bytes([10, 1, 2, 3, 127, 0, 0, 1]) + struct.pack("!HH", 40000, 25)
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


def test_valid_headers() -> None:
    address, length = parse_header(b"PROXY TCP4 10.1.2.3 127.0.0.1 40000 25\r\nEHLO")
    assert (address.host, address.port, length) == ("10.1.2.3", 40000, 40)
    address, _ = parse_header(b"PROXY TCP6 2001:db8::1 ::1 5 25\r\n")
    assert address.host == "2001:db8::1"
    assert parse_header(b"PROXY UNKNOWN\r\n") == (None, 15)
    address, length = parse_header(v2() + b"EHLO")
    assert (address.host, address.port, length) == ("10.1.2.3", 40000, 28)
    six = v2(family=0x21, block=bytes(15) + b"\x01" + bytes(16) + struct.pack("!HH", 7, 25))
    assert parse_header(six)[0].host == "::1"
    assert parse_header(v2(command=0, family=0, block=b""))[0] is None  # LOCAL: health check


def test_incomplete_headers_wait() -> None:
    for partial in (b"P", b"PROXY TCP4 10.1.2.3", V2_SIGNATURE[:5], v2()[:20]):
        assert parse_header(partial) is None


@pytest.mark.parametrize("bad", [
    b"EHLO c\r\n", b"PROXY TCP4 10.0.0.1\nX-Injected:via-proxy-header\n.\nRSET 1.2.3.4 1 2\r\n",
    b"PROXY TCP4 not-an-ip 127.0.0.1 1 25\r\n", b"PROXY TCP6 10.0.0.1 ::1 1 25\r\n",
    b"PROXY TCP4 10.0.0.1 127.0.0.1 99999 25\r\n", b"PROXY TCP4 10.0.0.1 127.0.0.1 -1 25\r\n",
    b"PROXY TCP4 10.0.0.1 127.0.0.1 1\r\n", b"PROXY UDP4 10.0.0.1 127.0.0.1 1 25\r\n",
    b"PROXY TCP6 fe80::1%\nX-Injected:yes ::1 25 25\r\n", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
    b"PROXY TCP4 " + b"1" * 200, b"PROXY TCP4 10.0.0.1  127.0.0.1 1 25\r\n",
    v2(family=0x12), v2(command=2), v2(block=bytes(3)), v2(block=bytes(600)),
    V2_SIGNATURE[:11] + b"X" + bytes(8),
])
def test_bad_headers_are_refused(bad: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_header(bad)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.builds(lambda rest: b"PROXY " + rest, st.binary(max_size=120)),
    st.builds(lambda a, b: b"PROXY TCP4 " + a + b" " + b + b" 1 25\r\n",
              st.binary(max_size=20), st.binary(max_size=20)),
    st.builds(lambda rest: V2_SIGNATURE + rest, st.binary(max_size=80)),
))
def test_fuzz_only_valid_ip_addresses_come_out(data: bytes) -> None:
    try:
        parsed = parse_header(data)
    except ProxyHeaderError:
        return
    if parsed is None:
        return
    address, length = parsed
    assert 0 < length <= len(data)
    if address is not None:
        ipaddress.ip_address(address.host)  # an IP literal, nothing else
        assert 0 <= address.port <= 65535


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.peer: Any = None

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()

    def dataReceived(self, data: bytes) -> None:
        self.data += data


def connect(peer: str, clock: Clock) -> tuple[Any, StringTransport, Recorder]:
    inner = Recorder()
    factory = ProxyWrappingFactory(Factory.forProtocol(lambda: inner),
                                   [ipaddress.ip_network("127.0.0.1/32")], clock)
    wrapper = factory.buildProtocol(IPv4Address("TCP", peer, 5000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 5000))
    wrapper.makeConnection(transport)
    return wrapper, transport, inner


def test_session_starts_only_after_the_header_with_the_client_address() -> None:
    clock = Clock()
    wrapper, _, inner = connect("127.0.0.1", clock)
    assert inner.peer is None  # not started before the header
    wrapper.dataReceived(b"PROXY TCP4 10.1.2.3 127.0.0.1 40000 25\r\nEHLO c\r\n")
    assert inner.peer.host == "10.1.2.3" and inner.data == b"EHLO c\r\n"
    assert not clock.getDelayedCalls()  # the header timer is gone


def test_untrusted_peer_is_disconnected_before_reading() -> None:
    _, transport, inner = connect("192.0.2.7", Clock())
    assert transport.disconnecting or transport.disconnected
    assert inner.peer is None


def test_no_header_in_time_closes() -> None:
    clock = Clock()
    wrapper, transport, inner = connect("127.0.0.1", clock)
    wrapper.dataReceived(b"PROXY TCP4 10.1")
    clock.advance(HEADER_TIMEOUT)
    assert transport.disconnecting or transport.disconnected
    assert inner.peer is None
