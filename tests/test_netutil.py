"""relaymail.netutil.write_eagerly over a real TCP connection: a reply that finds the
buffer empty goes straight to the socket (no epoll round trip), whichever of ``write`` and
``writeSequence`` the protocol uses (twisted.mail's SMTP is a LineOnlyReceiver, whose
``sendLine`` is a ``writeSequence``), and the order of bytes is kept when it cannot."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial.unittest import TestCase

from relaymail.netutil import write_eagerly


class Replier(LineOnlyReceiver):
    """Writes at once on connect, and records whether Twisted had to buffer it."""

    def __init__(self, made: Deferred) -> None:
        self.made = made

    def connectionMade(self) -> None:
        write_eagerly(self.transport)
        self.sendLine(b"220 by writeSequence")
        after_sequence = bytes(self.transport.dataBuffer) + b"".join(
            self.transport._tempDataBuffer)
        self.transport.write(b"250 by write\r\n")
        after_write = bytes(self.transport.dataBuffer) + b"".join(
            self.transport._tempDataBuffer)
        self.made.callback((after_sequence, after_write))


class WriteEagerlyTests(TestCase):
    def serve(self, protocol: type[Protocol], *args: object) -> int:
        factory = Factory()
        factory.protocol = lambda: protocol(*args)  # type: ignore[assignment,misc]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def test_lines_and_writes_go_straight_to_the_socket(self) -> None:
        made: Deferred = Deferred()
        port = self.serve(Replier, made)

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                data = b""
                while data.count(b"\r\n") < 2:
                    data += s.recv(100)
                return data

        received = deferToThread(client)
        self.assertEqual(await made, (b"", b""))  # nothing left for the next reactor turn
        self.assertEqual(await received, b"220 by writeSequence\r\n250 by write\r\n")

    async def test_order_is_kept_when_the_socket_does_not_take_everything(self) -> None:
        big = b"x" * (8 << 20)  # more than the socket buffers take at once
        done: Deferred = Deferred()

        class Flood(Protocol):
            def connectionMade(self) -> None:
                write_eagerly(self.transport)
                self.transport.write(big)
                self.transport.writeSequence([b"-", b"end"])
                self.transport.loseConnection()
                done.callback(None)

        port = self.serve(Flood)

        def client() -> bytes:
            chunks = []
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                while True:
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        return b"".join(chunks)
                    chunks.append(chunk)

        received = await deferToThread(client)
        await done
        self.assertEqual(len(received), len(big) + 4)
        self.assertTrue(received.endswith(b"x-end"))
