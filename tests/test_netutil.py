"""relaymail.netutil.write_eagerly over a real TCP connection: a reply that finds the
buffer empty goes straight to the socket (no epoll round trip), whichever of ``write`` and
``writeSequence`` the protocol uses (twisted.mail's SMTP is a LineOnlyReceiver, whose
``sendLine`` is a ``writeSequence``), and the order of bytes is kept when it cannot; the
same for the writing end of a pipe (the AMP link between the processes)."""

from __future__ import annotations

import contextlib
import os
import socket

from twisted.internet import process, reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
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


class PipeOwner:
    """What a ProcessWriter tells when its pipe is lost."""

    def __init__(self) -> None:
        self.lost: list[str] = []

    def childConnectionLost(self, name: str, reason: object) -> None:
        self.lost.append(name)


class WriteEagerlyToPipeTests(TestCase):
    """The AMP link between the main process and an acceptor is a pair of pipes."""

    def writer(self) -> tuple[process.ProcessWriter, int]:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        self.addCleanup(os.close, read_end)
        owner = PipeOwner()
        writer = process.ProcessWriter(reactor, owner, "to-child", write_end)
        self.addCleanup(self.close, writer, write_end)
        return writer, read_end

    def close(self, writer: process.ProcessWriter, fd: int) -> None:
        writer.stopReading()
        writer.stopWriting()
        with contextlib.suppress(OSError):
            os.close(fd)

    def test_a_write_reaches_the_pipe_before_the_next_reactor_turn(self) -> None:
        writer, read_end = self.writer()
        write_eagerly(writer)
        writer.write(b"box one")
        writer.writeSequence([b", ", b"box two"])
        self.assertEqual(os.read(read_end, 100), b"box one, box two")
        self.assertEqual(writer.dataBuffer, b"")

    def test_without_it_twisted_buffers(self) -> None:  # what the test above relies on
        writer, read_end = self.writer()
        writer.write(b"box")
        self.assertRaises(BlockingIOError, os.read, read_end, 100)

    async def test_order_is_kept_when_the_pipe_is_full(self) -> None:
        writer, read_end = self.writer()
        write_eagerly(writer)
        big = b"y" * (1 << 20)  # a pipe holds 64 KiB
        writer.write(big)
        writer.write(b"-end")
        received = b""
        while len(received) < len(big) + 4:
            try:
                received += os.read(read_end, 1 << 20)
            except BlockingIOError:
                await deferLater(reactor, 0.001)
        self.assertEqual(received, big + b"-end")

    def test_nothing_is_written_once_the_writer_is_lost(self) -> None:
        writer, read_end = self.writer()
        write_eagerly(writer)
        writer.connectionLost(None)
        writer.write(b"late")
        self.assertRaises(BlockingIOError, os.read, read_end, 100)
