"""Small socket helpers shared by the listener and the relay client."""

from __future__ import annotations

import functools
import os
from typing import Any


def disable_nagle(transport: Any) -> None:
    """Set TCP_NODELAY on the TCP transport under any wrappers (TLS, PROXY).

    SMTP writes small pieces after one another (a reply after a reply, the "." after the
    body); with Nagle's algorithm each can wait for the peer's delayed ACK, 40 ms.
    """
    for _ in range(5):  # a few wrapper levels at most
        if transport is None:
            return
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
                return
            except (AttributeError, OSError, NotImplementedError):
                pass
        transport = getattr(transport, "transport", None)


def write_eagerly(transport: Any) -> None:
    """Let a plain TCP transport, or the writing end of a pipe, write at once when nothing
    is waiting in its buffer.

    Twisted buffers every write until the next reactor turn: two ``epoll_ctl`` calls and
    one more ``epoll_wait`` wake-up per SMTP reply, a third of the system calls of an
    accepted message (and as many again per AMP message between the processes).  Here a
    write that finds the buffer empty goes straight to the non-blocking descriptor (what
    asyncio does); what the kernel does not take, and every write while data waits, takes
    Twisted's buffered path, so the order is kept; so does every write while a producer is
    registered (a pull producer is driven by the buffer draining, which it would otherwise
    never see).  Only an exact ``tcp.Server``/``tcp.Client``/``process.ProcessWriter`` is
    changed, a connection that has started TLS always takes Twisted's path (its writes
    must be encrypted), and nothing is written once the transport is lost or closing (its
    descriptor number may already belong to another file).
    """
    from twisted.internet import process, tcp

    kind = type(transport)
    if kind in (tcp.Server, tcp.Client):
        send = transport.socket.send
    elif kind is process.ProcessWriter:
        send = functools.partial(os.write, transport.fd)
    else:
        return
    buffered = kind.write

    def write(data: bytes) -> None:
        if (not getattr(transport, "TLS", False) and transport.producer is None
                and transport.connected and not transport.disconnecting
                and not transport._writeDisconnected and not transport._tempDataBuffer
                and len(transport.dataBuffer) == transport.offset and data):
            try:
                sent = send(data)
            except OSError:  # EAGAIN, or an error Twisted's own write path will report
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        buffered(transport, data)

    def write_sequence(data: Any) -> None:
        write(b"".join(data))

    transport.write = write
    # twisted.mail's SMTP is a LineOnlyReceiver: every reply line is a writeSequence.
    transport.writeSequence = write_sequence
