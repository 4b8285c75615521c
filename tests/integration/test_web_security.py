"""The web listener's defences on a running relay, over real sockets: bodies refused with
413 (or 401 without credentials) when the headers are in, so nothing is read or stored;
Host names other than the console's own refused (DNS rebinding) with 421; the console over
HTTPS with a Secure cookie; behind a TLS proxy; X-Forwarded-Proto believed only from a
trusted proxy."""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool

from relaymail.credentials import hash_password
from tests.helpers import free_port, write_tls_files
from tests.integration.test_relay import RelayTestCase
from tests.upstreams import wait_until

PASSWORD = "console-pass-123"


def open_temp_bytes() -> int:
    """Bytes in this process's open, deleted files (twisted.web spools bodies there)."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)"):
                total += os.fstat(int(fd)).st_size
        except OSError:
            pass
    return total


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def connect(port: int, source: str = "127.0.0.1", tls: str | None = None,
            timeout: float = 10.0) -> socket.socket:
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    if tls is not None:
        context = ssl.create_default_context(cafile=tls)
        return context.wrap_socket(s, server_hostname="localhost")
    return s


def read_answer(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer (status, headers in lower case, body by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    status, *fields = top.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for f in fields:
        k, v = f.split(":", 1)
        headers[k.lower()] = (headers[k.lower()] + ", " if k.lower() in headers else "") + \
            v.strip()
    if headers.get("transfer-encoding") == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(status.split()[1]), headers, dechunk(body)
    size = int(headers.get("content-length", "0"))
    while len(body) < size:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status.split()[1]), headers, body


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


def request_head(method: str, path: str, host: str | None, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *([f"Host: {host}"] if host else []),
             "Connection: close", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def exchange(port: int, method: str, path: str, body: bytes = b"", host: str | None = None,
             source: str = "127.0.0.1", tls: str | None = None,
             **headers: str) -> tuple[int, dict[str, str], bytes]:
    """Blocking: one request on its own connection; run it in a thread."""
    host = host or f"127.0.0.1:{port}"
    if body or method == "POST":
        headers.setdefault("Content_Length", str(len(body)))
    with connect(port, source, tls) as s:
        s.sendall(request_head(method, path, host, **headers) + body)
        return read_answer(s)


def lingering() -> bool:
    """A refused connection still waits to be closed (relaymail.web.guard.LINGER)."""
    return any(getattr(call.func, "__name__", "") == "loseConnection" and call.active()
               for call in reactor.getDelayedCalls())


class WebTestCase(RelayTestCase):
    async def start(self, **web: Any) -> int:
        # Last cleanup: the server sees the clients' sockets close (or closes them itself
        # after LINGER) before the reactor is checked for leftovers.
        self.addCleanup(lambda: ensureDeferred(wait_until(lambda: not lingering(), 5,
                                                          "refused connections to close")))
        self.port = free_port()
        relay = await self.relay(web={"enabled": True,
                                      "endpoint": f"tcp:{self.port}:interface=127.0.0.1",
                                      "admin_password_hash": hash_password(PASSWORD, rounds=4),
                                      **web},
                                 rate_limits={"auth_failures": {"max_failures": 5,
                                                                "window": 600,
                                                                "lockout": 60}})
        self.token = relay.service.getServiceNamed("spool").control_token
        return self.port

    async def thread(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        return await deferToThreadPool(reactor, self.clients, lambda: f(*args, **kwargs))

    async def call(self, method: str, path: str, body: Any = None,
                   **kw: Any) -> tuple[int, dict[str, str], Any]:
        data = b"" if body is None else json.dumps(body).encode()
        if body is not None:
            kw.setdefault("Content_Type", "application/json")
        code, headers, raw = await self.thread(exchange, self.port, method, path, data, **kw)
        try:
            return code, headers, json.loads(raw)
        except ValueError:
            return code, headers, raw.decode("utf-8", "replace")


class BodyLimitTests(WebTestCase):
    async def test_huge_content_length_at_login_is_refused_at_once(self) -> None:
        """M6: ``POST /login`` with Content-Length 10^10 kept filling a temporary file;
        now 413 as soon as the headers are in, with nothing stored."""
        port = await self.start()
        before = open_temp_bytes()

        def send_headers_only() -> tuple[Any, float, int]:
            s = connect(port, timeout=5)
            start = time.monotonic()
            s.sendall(request_head("POST", "/login", f"127.0.0.1:{port}",
                                   Content_Type="application/json",
                                   Content_Length="10000000000"))
            answer = read_answer(s)
            return answer, time.monotonic() - start, s

        (code, headers, body), seconds, s = await self.thread(send_headers_only)
        self.addCleanup(s.close)
        self.assertEqual(code, 413)
        self.assertLess(seconds, 2)
        self.assertEqual(json.loads(body)["error"],
                         "request body too large: at most 65536 bytes for POST /login")
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(open_temp_bytes(), before)

    async def test_a_streamed_body_is_neither_read_into_memory_nor_stored(self) -> None:
        """M6: what the client sends after the refusal is dropped: no temporary file grows
        and memory stays flat while 24 MB arrive."""
        port = await self.start()
        temp, rss = open_temp_bytes(), rss_bytes()

        def stream() -> socket.socket:
            s = connect(port)
            s.sendall(request_head("POST", "/login", f"127.0.0.1:{port}",
                                   Content_Length=str(25 * 1024 * 1024)))
            block = b"x" * (1024 * 1024)
            try:
                for _ in range(24):
                    s.sendall(block)
            except OSError:
                pass
            return s

        s = await self.thread(stream)
        try:
            self.assertLess(open_temp_bytes() - temp, 1024 * 1024)
            self.assertLess(rss_bytes() - rss, 16 * 1024 * 1024)
            self.assertEqual((await self.thread(read_answer, s))[0], 413)
        finally:
            s.close()
            await deferLater(reactor, 0.3, lambda: None)  # the server sees the close

    async def test_unauthenticated_send_is_refused_before_its_body(self) -> None:
        """M6: an unauthenticated 30 MB POST to /api/send was read in full before the 401;
        now the 401 comes when the headers are in."""
        port = await self.start()

        def send() -> tuple[Any, float]:
            with connect(port, timeout=5) as s:
                start = time.monotonic()
                s.sendall(request_head("POST", "/api/send", f"127.0.0.1:{port}",
                                       Content_Type="application/json",
                                       Content_Length="30000000"))
                return read_answer(s), time.monotonic() - start

        (code, headers, body), seconds = await self.thread(send)
        self.assertEqual((code, json.loads(body)), (401, {"error": "authentication required"}))
        self.assertLess(seconds, 2)
        self.assertEqual(headers["www-authenticate"], 'Bearer realm="relaymail"')

    async def test_route_limits_with_the_token(self) -> None:
        """With the token, /api/send takes a large form; other routes stay at 64 KiB, also
        chunked (no Content-Length)."""
        await self.start()
        auth = {"Authorization": f"Bearer {self.token}"}
        form = {"from": "app@example.com", "to": "a@dest.test", "subject": "big",
                "text": "x" * 300_000}
        code, _, answer = await self.call("POST", "/api/send", form, **auth)
        self.assertEqual(code, 202, answer)
        code, _, answer = await self.call("POST", "/api/relay/config",
                                          {"host": "h" * 70_000}, **auth)
        self.assertEqual(code, 413)
        self.assertIn("at most 65536 bytes for POST /api/relay/config", answer["error"])

        def chunked() -> tuple[int, dict[str, str], bytes]:
            with connect(self.port) as s:
                s.sendall(request_head("POST", "/api/relay/test", f"127.0.0.1:{self.port}",
                                       Transfer_Encoding="chunked", **auth))
                try:
                    for _ in range(8):
                        s.sendall(b"4000\r\n" + b"a" * 0x4000 + b"\r\n")
                except OSError:
                    pass
                return read_answer(s)

        self.assertEqual((await self.thread(chunked))[0], 413)


class HostTests(WebTestCase):
    async def test_rebinding_names_are_refused_and_count_no_failure(self) -> None:
        """Low: a DNS-rebinding page (its own name in Host) read /health and /metrics and
        could lock the admin out; now 421 before any route runs."""
        port = await self.start()
        for path in ("/health", "/metrics", "/api/openapi.json", "/login"):
            code, _, text = await self.call("GET", path, host=f"rebind.attacker.example:{port}")
            self.assertEqual(code, 421, path)
            self.assertIn("does not answer to the host name 'rebind.attacker.example:", text)
            self.assertIn("web.allowed_hosts", text)
        for _ in range(8):
            code, _, _ = await self.call("POST", "/login",
                                         {"username": "admin", "password": "guess"},
                                         host=f"rebind.attacker.example:{port}")
            self.assertEqual(code, 421)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            self.assertEqual((await self.call("GET", "/health", host=host))[0], 200, host)
        code, _, answer = await self.call("POST", "/login",
                                          {"username": "admin", "password": PASSWORD})
        self.assertEqual(code, 200, answer)  # not locked out

    async def test_a_page_elsewhere_cannot_post_logins(self) -> None:
        await self.start()
        for _ in range(8):
            code, _, answer = await self.call("POST", "/login",
                                              {"username": "admin", "password": "guess"},
                                              Origin="https://attacker.example")
            self.assertEqual(code, 403)
            self.assertIn("cross-origin request refused", answer["error"])
        code, _, _ = await self.call("POST", "/login",
                                     {"username": "admin", "password": PASSWORD},
                                     Origin=f"http://127.0.0.1:{self.port}")
        self.assertEqual(code, 200)

    async def test_configured_names(self) -> None:
        port = await self.start(allowed_hosts=["console.example.com"])
        self.assertEqual((await self.call("GET", "/health",
                                          host="Console.Example.COM"))[0], 200)
        self.assertEqual((await self.call("GET", "/health", host=f"127.0.0.1:{port}"))[0],
                         200)  # the address it listens on, whatever the list says
        self.assertEqual((await self.call("GET", "/health", host="localhost"))[0], 421)
        # relaymail queue talks to the same listener
        code, _, answer = await self.call("GET", "/api/queue",
                                          Authorization=f"Bearer {self.token}")
        self.assertEqual((code, answer["total"]), (200, 0))


class TLSTests(WebTestCase):
    async def test_console_over_https_sets_a_secure_cookie(self) -> None:
        """Low: the console was HTTP only, so its cookie was never Secure."""
        cert, key, ca = write_tls_files(self.dir)
        port = await self.start(tls={"certificate": cert, "private_key": key})
        code, headers, answer = await self.call(
            "POST", "/login", {"username": "admin", "password": PASSWORD}, tls=ca,
            host=f"localhost:{port}")
        self.assertEqual(code, 200, answer)
        cookie = headers["set-cookie"]
        self.assertIn("; Secure", cookie)
        self.assertIn("HttpOnly", cookie)
        token = cookie.split(";")[0]
        code, _, session = await self.call("GET", "/api/session", tls=ca, Cookie=token,
                                           host=f"localhost:{port}")
        self.assertEqual((code, session["csrf"]), (200, answer["csrf"]))
        with self.assertRaises((ConnectionError, OSError)):  # plain HTTP gets no answer
            await self.call("GET", "/health")

    async def test_queue_command_over_https_trusts_only_the_console_certificate(self) -> None:
        """``relaymail queue`` follows web.tls: HTTPS to the listener's address, trusting
        the configured certificate (and no other: a different one is refused)."""
        from relaymail.cli.queue import CommandError, OnlineQueue, pinned_context
        from relaymail.config import load_config

        cert, key, _ = write_tls_files(self.dir)
        await self.start(tls={"certificate": cert, "private_key": key})
        config = load_config(os.path.join(self.dir, "relay.json"), environ={})
        online = OnlineQueue(config)
        self.assertTrue(online.base.startswith("https://127.0.0.1:"))
        self.assertEqual(await self.thread(online.list, "queue"), [])
        other = os.path.join(self.dir, "other")
        os.mkdir(other)
        other_cert, _, _ = write_tls_files(other)  # same CA, another certificate
        online.context = pinned_context(other_cert)
        with self.assertRaises(CommandError) as e:
            await self.thread(online.list, "queue")
        self.assertIn("cannot reach relaymail", str(e.exception))

    async def test_a_bad_certificate_stops_startup_naming_the_web_key(self) -> None:
        from relaymail.config import ConfigError

        bad = os.path.join(self.dir, "missing.pem")
        with self.assertRaises(ConfigError) as e:
            await self.start(tls={"certificate": bad, "private_key": bad})
        self.assertIn("web.tls.certificate", str(e.exception))

    async def test_behind_a_tls_proxy(self) -> None:
        await self.start(behind_tls_proxy=True)
        code, headers, _ = await self.call("POST", "/login",
                                           {"username": "admin", "password": PASSWORD})
        self.assertEqual(code, 200)
        self.assertIn("; Secure", headers["set-cookie"])
        # a request the proxy forwarded is not a loopback client for /health and /metrics
        self.assertEqual((await self.call("GET", "/metrics",
                                          X_Forwarded_For="203.0.113.9"))[0], 401)
        self.assertEqual((await self.call("GET", "/health"))[0], 200)

    async def test_forwarded_proto_only_from_a_trusted_proxy(self) -> None:
        await self.start()
        login = {"username": "admin", "password": PASSWORD}
        code, headers, _ = await self.call("POST", "/login", login)
        self.assertEqual(code, 200)
        self.assertNotIn("Secure", headers["set-cookie"])
        _, headers, _ = await self.call("POST", "/login", login, X_Forwarded_Proto="https")
        self.assertIn("; Secure", headers["set-cookie"])  # loopback is trusted by default

    async def test_forwarded_proto_from_others_is_ignored(self) -> None:
        await self.start(trusted_proxies=["10.0.0.0/8"])
        code, headers, _ = await self.call("POST", "/login",
                                           {"username": "admin", "password": PASSWORD},
                                           X_Forwarded_Proto="https")
        self.assertEqual(code, 200)
        self.assertNotIn("Secure", headers["set-cookie"])
