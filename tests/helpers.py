"""Shared test helpers: config files, certificates, an in-process server, blocking clients."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from typing import Any

import trustme
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from relaymail.config import load_config
from relaymail.service import build_context, listener_factory
from relaymail.smtp.proxy import TrustedProxyEndpoint
from relaymail.smtp.server import ServerContext

_CA: trustme.CA | None = None


def shared_ca() -> trustme.CA:
    """One trustme CA per test run; its leaf certificates name localhost and 127.0.0.1."""
    global _CA
    if _CA is None:
        _CA = trustme.CA()
    return _CA


def write_tls_files(directory: str, key_type: trustme.KeyType | None = None
                    ) -> tuple[str, str, str]:
    """Write a leaf certificate chain (for localhost and 127.0.0.1, with trustme's default
    key type or ``key_type``), its key and the CA file; return their paths."""
    kw = {} if key_type is None else {"key_type": key_type}
    leaf = shared_ca().issue_cert("localhost", "127.0.0.1", **kw)
    cert, key, ca = (os.path.join(directory, n) for n in ("cert.pem", "key.pem", "ca.pem"))
    leaf.private_key_pem.write_to_path(key)
    with open(cert, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    shared_ca().cert_pem.write_to_path(ca)
    return cert, key, ca


def write_config(directory: str, data: dict[str, Any], name: str = "relay.json") -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def base_config(directory: str, tls: bool = True, **smtp: Any) -> dict[str, Any]:
    """A config for tests: one listener on a free port, spool in ``directory``."""
    data: dict[str, Any] = {
        "hostname": "relay.test",
        "spool_dir": os.path.join(directory, "spool"),
        "credentials_file": os.path.join(directory, "credentials.json"),
        "smtp": {"listeners": [{"name": "smtp", "endpoint": "tcp:0:interface=127.0.0.1"}],
                 "workers": 0, **smtp},  # sessions in this process; test_workers tests more
        "web": {"enabled": False},
    }
    if tls:
        cert, key, _ = write_tls_files(directory)
        data["smtp"]["tls"] = {"certificate": cert, "private_key": key}
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """An in-process relaymail SMTP listener on 127.0.0.1 (one per listener config)."""

    def __init__(self, ctx: ServerContext, ports: dict[str, Any]) -> None:
        self.ctx = ctx
        self.ports = ports

    def port(self, name: str = "smtp") -> int:
        return self.ports[name].getHost().port

    async def stop(self) -> None:
        """Stop listening, then wait (bounded) until every session has closed."""
        from twisted.internet.defer import gatherResults
        from twisted.internet.task import deferLater

        await gatherResults([p.stopListening() for p in self.ports.values()])
        for _ in range(200):
            if self.ctx.connections.total == 0:
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.ctx.close_sessions()
        await deferLater(reactor, 0, lambda: None)


async def start_server(data: dict[str, Any], directory: str | None = None,
                       ops: Any = None) -> RunningServer:
    """Build the production context from ``data`` and listen with production factories."""
    directory = directory or tempfile.mkdtemp()
    config = load_config(write_config(directory, data), environ={})
    ctx = build_context(config, reactor)
    if ops is not None:
        ctx.spool.ops = ops
    ctx.spool.prepare()
    ports = {}
    for listener in config.smtp.listeners:
        endpoint: Any = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        if listener.proxy_protocol:
            endpoint = TrustedProxyEndpoint(endpoint, config.smtp.proxy_trusted_networks,
                                            reactor)
        ports[listener.name] = await endpoint.listen(listener_factory(ctx, listener))
    return RunningServer(ctx, ports)


class RunningRelay:
    """A whole relaymail process in this reactor: listeners, spool, relay manager."""

    def __init__(self, service: Any, port: int, directory: str) -> None:
        self.service = service
        self.smtp_port = port
        self.directory = directory
        self.manager = service.relay
        self.spool = service.context.spool

    async def stop(self) -> None:
        await self.service.stopService()


def relay_config(directory: str, port: int, **sections: Any) -> dict[str, Any]:
    """A plain listener on ``port`` plus the given top-level sections."""
    data = base_config(directory, tls=False)
    data["smtp"]["listeners"] = [{"name": "smtp", "tls": "none",
                                  "endpoint": f"tcp:{port}:interface=127.0.0.1"}]
    data.update(sections)
    return data


async def start_relay(directory: str, **sections: Any) -> RunningRelay:
    from relaymail.service import build_service

    port = free_port()
    config = load_config(write_config(directory, relay_config(directory, port, **sections)),
                         environ={})
    service = build_service(config, reactor)
    service.privilegedStartService()
    service.startService()
    return RunningRelay(service, port, directory)


def send_mail(port: int, sender: str, recipients: list[str], body: bytes) -> dict[str, Any]:
    """Blocking smtplib submission (run it in a thread); returns refused recipients."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        return s.sendmail(sender, recipients, body)


def without_trace(body: bytes) -> bytes:
    """The message as the client sent it: our Received header (first, folded) removed."""
    lines = body.split(b"\r\n")
    assert lines[0].startswith(b"Received: "), lines[0]
    i = 1
    while lines[i][:1] in (b"\t", b" "):
        i += 1
    return b"\r\n".join(lines[i:])


def proxied_session(port: int, source: str, commands: bytes, header: bytes | None = None,
                    bind: str = "127.0.0.1") -> bytes:
    """A raw session behind a PROXY v1 header claiming ``source`` as the client (or the
    given ``header``), from the local address ``bind``; sends all ``commands`` at once
    (pipelined) and answers everything the server said until it closed.
    Blocking: run it in a thread."""
    if header is None:
        header = f"PROXY TCP4 {source} 127.0.0.1 40000 25\r\n".encode()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(bind, 0))
    except ConnectionResetError:  # refused at once: reset while connecting
        return b""
    with s:
        data = b""
        try:
            s.sendall(header + commands)
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:  # refused: closed with our input unread
            pass
        return data
