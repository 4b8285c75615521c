"""Fuzzing the HTTP API and console of a running ``twistd relaymail`` over real sockets:
any method, path, Host, headers, cookie, token and body.  For every request: an HTTP
answer that is not a 500, no state-changing route ever succeeds without the admin's
login, and the server still answers a normal request afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaymail.credentials import hash_password
from tests.helpers import free_port
from tests.integration.test_twistd import stop, twistd_logged, wait_for_banner

ROUTES = ["/", "/login", "/logout", "/health", "/metrics", "/metrics?format=json",
          "/api/session", "/api/openapi.json", "/api/docs", "/api/smtp-credentials",
          "/api/smtp-credentials/app1", "/api/smtp-credentials/app1/reset-password",
          "/api/mail-logs", "/api/mail-logs/stats", "/api/send", "/api/relay/config",
          "/api/relay/test", "/api/relay/status", "/api/queue", "/api/queue/ABC",
          "/api/queue/ABC/retry", "/api/queue/flush", "/admin/retry-failed",
          "/static/console.js", "/static/../../etc/passwd", "/queue", "/%00", "/api/queue/%2e%2e"]
PUBLIC_CHANGES = {"/login", "/logout"}  # may answer 2xx/3xx to anybody
METHODS = ["GET", "POST", "PATCH", "DELETE", "PUT", "HEAD", "OPTIONS", "TRACE", "G\x00T"]
HOSTS = ["127.0.0.1", "localhost", "evil.example", "127.0.0.1:8025", "[::1]", "", "a" * 300,
         "127.0.0.1\r\nX-Injected: 1"]
BODIES = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(st.sampled_from(["to", "from", "subject", "text", "host", "port",
                                     "password", "name", "username", "enabled", "raw"]),
                    st.one_of(st.text(max_size=40), st.integers(), st.booleans(), st.none(),
                              st.lists(st.text(max_size=10), max_size=3)),
                    max_size=6).map(lambda d: json.dumps(d).encode()),
)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: Any) -> Iterator[int]:
    directory = tmp_path_factory.mktemp("fuzzhttp")
    port, web_port = free_port(), free_port()
    config = os.path.join(directory, "relay.json")
    with open(config, "w") as f:
        json.dump({"hostname": "relay.test", "spool_dir": "spool",
                   "smtp": {"listeners": [{"name": "smtp", "tls": "none",
                                           "endpoint": f"tcp:{port}:interface=127.0.0.1"}]},
                   "web": {"endpoint": f"tcp:{web_port}:interface=127.0.0.1",
                           "admin_password_hash": hash_password("s3cret", rounds=4)}}, f)
    proc = twistd_logged(config)
    try:
        wait_for_banner(port, proc)
        yield web_port
    finally:
        stop(proc)


def request(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with contextlib.suppress(OSError):
            s.sendall(raw)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass  # a timeout: the server waits for more of a request that never ends
        return data


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(METHODS), st.one_of(st.sampled_from(ROUTES),
                                           st.text(max_size=40).map(lambda t: "/" + t)),
       st.sampled_from(HOSTS), BODIES,
       st.sampled_from(["application/json", "application/x-www-form-urlencoded", "",
                        "text/plain"]),
       st.sampled_from(["", "Cookie: relaymail_session=x\r\n", "Authorization: Bearer x\r\n",
                        "Content-Length: 10000000000\r\n", "Transfer-Encoding: chunked\r\n",
                        "Origin: http://evil.example\r\n", "X-Forwarded-Proto: https\r\n"]))
def test_fuzzed_requests_are_answered_and_never_change_anything_unauthenticated(
        relay: int, method: str, path: str, host: str, body: bytes, content_type: str,
        extra: str) -> None:
    target = path.encode("utf-8", "replace").replace(b" ", b"%20").replace(b"\r", b"")
    target = target.replace(b"\n", b"")
    head = method.encode("latin-1") + b" " + target + b" HTTP/1.1\r\n"
    head += b"Host: " + host.encode() + b"\r\n" if host else b""
    if content_type:
        head += f"Content-Type: {content_type}\r\n".encode()
    head += extra.encode()
    if "chunked" in extra:
        body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    elif "Content-Length" not in extra:
        head += b"Content-Length: %d\r\n" % len(body)
    answer = request(relay, head + b"Connection: close\r\n\r\n" + body)
    if not answer:
        return  # closed without an answer: refused at the socket (a bad request line)
    assert answer.startswith(b"HTTP/1."), answer[:200]
    status = int(answer.split(b" ", 2)[1])
    assert status != 500, answer[:500]
    if method in ("POST", "PATCH", "DELETE", "PUT") and path.split("?")[0] not in PUBLIC_CHANGES:
        assert not 200 <= status < 300, (method, path, answer[:300])
    health = request(relay, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Connection: close\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200") or health.startswith(b"HTTP/1.1 503"), health[:200]
