"""Small socket helpers shared by the listener and the relay client."""

from __future__ import annotations

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
