"""The web listener's defences in memory: the guard in front of every request (Host, Origin,
body limits checked when the headers are in) driven byte by byte over a StringTransport; the
console login's accounting on a fake clock; saved upstream secrets kept only for the same
destination.  tests/integration/test_web_security.py does the same over real sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from relaymail.config import Check
from relaymail.credentials import BCRYPT_ROUNDS, hash_password
from relaymail.policy.counters import MemoryCounters
from relaymail.policy.lockout import AuthLockout
from relaymail.policy.settings import AuthLockoutConfig
from relaymail.web.guard import (
    LINGER,
    Gate,
    WebSite,
    host_header_name,
    origin_name,
    reached_over_tls,
)
from relaymail.web.relayconfig import keep_passwords
from relaymail.web.session import Sessions, WebAuth

GATE = Gate(frozenset({"localhost", "127.0.0.1", "::1", "console.example"}), 65_536,
            {(b"POST", b"/api/send"): 1_000_000},
            lambda request: request.getHeader(b"authorization") == b"Bearer t")


class Echo(Resource):
    """Answers the size of the body it was given; remembers that it was called."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def render_GET(self, request: Any) -> bytes:
        self.calls.append(0)
        return b"ok"

    def render_POST(self, request: Any) -> bytes:
        size = len(request.content.read())
        self.calls.append(size)
        return b"%d" % size


def head(method: str, path: str, host: str = "127.0.0.1:8025", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *([f"Host: {host}"] if host else []),
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class GuardTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.echo = Echo()
        self.site = WebSite(self.echo, GATE, reactor=self.clock)

    def connect(self, local: str = "127.0.0.1") -> tuple[Any, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(hostAddress=IPv4Address("TCP", local, 8025),
                                    peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        self.addCleanup(lambda: channel.connectionLost(None) if transport.connected else None)
        return channel, transport

    def answer(self, transport: StringTransport) -> tuple[int, dict[str, str], bytes]:
        raw = transport.value()
        top, _, body = raw.partition(b"\r\n\r\n")
        status, *fields = top.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
        return int(status.split()[1]), headers, body

    def test_huge_content_length_is_refused_before_a_byte_is_read(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(head("POST", "/login", Content_Type="application/json",
                                  Content_Length="10000000000"))
        code, headers, body = self.answer(transport)
        self.assertEqual(code, 413)
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(json.loads(body)["error"],
                         "request body too large: at most 65536 bytes for POST /login")
        [request] = channel._channel.requests
        self.assertIsNone(request.content)  # no temporary file was made for it
        answered = transport.value()
        for _ in range(64):  # what the client sends anyway is read and dropped
            channel.dataReceived(b"x" * 65536)
        self.assertEqual(transport.value(), answered)
        self.assertEqual((request._received, self.echo.calls), (0, []))
        self.assertFalse(transport.disconnecting)
        self.clock.advance(LINGER)
        self.assertTrue(transport.disconnecting)

    def test_no_100_continue_after_the_refusal(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(head("POST", "/login", Content_Length="99999999",
                                  Expect="100-continue"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertNotIn(b"100 Continue", transport.value())

    def test_chunked_body_is_cut_when_it_passes_the_limit(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(head("POST", "/login", Transfer_Encoding="chunked"))
        chunk = b"4000\r\n" + b"a" * 0x4000 + b"\r\n"
        for _ in range(4):  # 64 KiB: exactly the limit
            channel.dataReceived(chunk)
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(chunk)
        self.assertEqual(self.answer(transport)[0], 413)
        for _ in range(20):
            channel.dataReceived(chunk)
        channel.dataReceived(b"0\r\n\r\n")
        self.assertEqual(self.echo.calls, [])  # never handled

    def test_bodies_within_the_limit_reach_the_route(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(head("POST", "/login", Content_Length="65536") + b"a" * 65536)
        code, _, body = self.answer(transport)
        self.assertEqual((code, body), (200, b"65536"))

    def test_large_send_bodies_only_with_credentials(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(head("POST", "/api/send", Content_Length="200000"))
        code, headers, body = self.answer(transport)
        self.assertEqual((code, json.loads(body)), (401, {"error": "authentication required"}))
        self.assertEqual(headers["www-authenticate"], 'Bearer realm="relaymail"')

        channel, transport = self.connect()
        channel.dataReceived(head("POST", "/api/send", Content_Length="200000",
                                  Authorization="Bearer t") + b"a" * 200000)
        self.assertEqual(self.answer(transport)[::2], (200, b"200000"))

        channel, transport = self.connect()
        channel.dataReceived(head("POST", "/api/send", Content_Length="1000001",
                                  Authorization="Bearer t"))
        code, _, body = self.answer(transport)
        self.assertEqual(code, 413)
        self.assertIn("at most 1000000 bytes for POST /api/send", json.loads(body)["error"])

    def status(self, data: bytes, local: str = "127.0.0.1") -> tuple[int, bytes]:
        channel, transport = self.connect(local)
        channel.dataReceived(data)
        code, _, body = self.answer(transport)
        return code, body

    def test_host_header_must_name_this_console(self) -> None:
        for host in ("127.0.0.1:8025", "localhost:8025", "LOCALHOST.", "[::1]:8025",
                     "console.example:443", "console.example"):
            self.assertEqual(self.status(head("GET", "/health", host)), (200, b"ok"), host)
        code, body = self.status(head("GET", "/health", "rebind.attacker.example:8025"))
        self.assertEqual(code, 421)
        self.assertIn(b"does not answer to the host name 'rebind.attacker.example:8025'; "
                      b"add it to web.allowed_hosts", body)
        for bad in ("127.0.0.1:80x", "a b", "[::1", "evil.example@127.0.0.1"):
            self.assertEqual(self.status(head("GET", "/metrics", bad))[0], 421, bad)
        self.assertEqual(self.status(head("GET", "/health", ""))[0], 400)
        self.assertEqual(self.status(head("GET", "/health", "127.0.0.1",
                                          Host="localhost"))[0], 400)
        # the address the client connected to is this console too, by IP only
        self.assertEqual(self.status(head("GET", "/", "10.1.2.3:8025"), "10.1.2.3")[0], 200)
        self.assertEqual(self.status(head("GET", "/", "10.1.2.4:8025"), "10.1.2.3")[0], 421)
        self.assertEqual(self.echo.calls, [0] * 7)

    def test_changes_from_another_origin_are_refused(self) -> None:
        login = head("POST", "/login", Content_Length="2", Origin="https://evil.example") + b"{}"
        code, body = self.status(login)
        self.assertEqual(code, 403)
        self.assertIn("cross-origin request refused (Origin https://evil.example)",
                      json.loads(body)["error"])
        self.assertEqual(self.status(head("POST", "/login", Content_Length="0",
                                          Origin="null"))[0], 403)
        self.assertEqual(self.status(head("POST", "/login", Content_Length="0",
                                          Origin="http://127.0.0.1:8025"))[0], 200)
        self.assertEqual(self.status(head("GET", "/health",
                                          Origin="https://evil.example"))[0], 200)
        self.assertEqual(self.echo.calls, [0, 0])


def test_host_and_origin_parsing() -> None:
    assert host_header_name(b"Relay.Example.COM.:8025") == "relay.example.com"
    assert host_header_name(b"[0:0::1]:8025") == "::1"
    assert host_header_name(b"127.0.0.1") == "127.0.0.1"
    assert host_header_name(b"127.0.0.1:") is None
    assert host_header_name(b"::1") is None
    assert host_header_name("h\u00e9.example".encode()) is None
    assert origin_name(b"https://[::1]:8025") == "::1"
    assert origin_name(b"http://Console.Example") == "console.example"
    assert origin_name(b"null") is None
    assert origin_name(b"file://") is None
    assert origin_name(b"http://a.example:99999") is None


class FakeRequest:
    def __init__(self, secure: bool = False, peer: str = "127.0.0.1",
                 **headers: str) -> None:
        self.secure, self.peer = secure, peer
        self.headers = {k.lower().replace("_", "-").encode(): v.encode()
                        for k, v in headers.items()}

    def isSecure(self) -> bool:
        return self.secure

    def getHeader(self, name: bytes) -> bytes | None:
        return self.headers.get(name.lower())

    def getClientAddress(self) -> Any:
        return IPv4Address("TCP", self.peer, 1234)


def test_tls_is_believed_from_the_connection_the_setting_or_a_trusted_proxy() -> None:
    import ipaddress

    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    request: Any = FakeRequest
    assert reached_over_tls(request(secure=True), False, ())
    assert reached_over_tls(request(), True, ())
    assert not reached_over_tls(request(), False, loopback)
    assert reached_over_tls(request(X_Forwarded_Proto="https"), False, loopback)
    assert reached_over_tls(request(X_Forwarded_Proto="HTTPS, http"), False, loopback)
    assert not reached_over_tls(request(X_Forwarded_Proto="http"), False, loopback)
    assert not reached_over_tls(request(peer="198.51.100.7", X_Forwarded_Proto="https"),
                                False, loopback)


# ---------------------------------------------------------------------- console login


class Bcrypt:
    """A run_in_thread whose password checks wait until the test answers them."""

    def __init__(self) -> None:
        self.pending: list[tuple[tuple[Any, ...], Deferred]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append((args, d))
        return d


class ConsoleLoginAccountingTests(TestCase):
    def auth(self, max_failures: int) -> tuple[WebAuth, Bcrypt, Clock]:
        clock = Clock()
        lockout = AuthLockout(AuthLockoutConfig(max_failures, 600, 60, 3600),
                              MemoryCounters(clock.seconds), clock, 1.0, True, scope="web")
        bcrypt = Bcrypt()
        return WebAuth(Sessions(clock.seconds), "admin", "$2b$12$stored", lockout,
                       bcrypt), bcrypt, clock

    def test_concurrent_guesses_cannot_pass_the_limit(self) -> None:
        """M2: the attempt is counted before bcrypt runs; 10 guesses at once with a limit
        of 3 used to be checked all 10."""
        auth, bcrypt, _ = self.auth(3)
        results: list[Any] = []
        for _ in range(10):
            ensureDeferred(auth.login("198.51.100.7", "admin", "guess")).addCallback(
                results.append)
        self.assertEqual(len(bcrypt.pending), 3)
        self.assertEqual([r[0] for r in results], ["locked"] * 7)
        for _, d in bcrypt.pending:
            d.callback(False)
        self.assertEqual([r[0] for r in results], ["locked"] * 7 + ["bad"] * 3)
        ensureDeferred(auth.login("198.51.100.7", "admin", "right")).addCallback(
            results.append)
        self.assertEqual((results[-1][0], len(bcrypt.pending)), ("locked", 3))

    def test_guesses_at_one_login_from_many_addresses_are_slowed(self) -> None:
        """M2: 16 guesses at admin from four addresses were never held back (only the
        address was looked at); past the limit each further one now waits 1, 2, 4 ... s
        before its password is checked."""
        auth, bcrypt, clock = self.auth(2)
        for i in range(2):
            ensureDeferred(auth.login(f"127.0.0.{i + 2}", "admin", "guess"))
            bcrypt.pending[-1][1].callback(False)
        self.assertEqual(len(bcrypt.pending), 2)
        for n, wait in ((3, 1.0), (4, 2.0), (5, 4.0)):
            ensureDeferred(auth.login(f"127.0.0.{n}", "Admin", "guess"))
            clock.advance(wait - 0.01)
            self.assertEqual(len(bcrypt.pending), n - 1, n)
            clock.advance(0.01)
            self.assertEqual(len(bcrypt.pending), n, n)
            bcrypt.pending[-1][1].callback(False)

    def test_an_unknown_username_costs_what_the_admin_costs(self) -> None:
        """M1: whatever the username, the admin's own hash is checked (same bcrypt cost);
        without a hash configured, a dummy of the real cost is."""
        auth, bcrypt, _ = self.auth(5)
        for name in ("admin", "nobody", "x" * 200):
            ensureDeferred(auth.login("198.51.100.7", name, "guess"))
        self.assertEqual({args for args, _ in bcrypt.pending}, {("guess", "$2b$12$stored")})

        import relaymail.web.session as session_module
        from relaymail.credentials import dummy_hash
        from relaymail.web.session import password_matches

        checked: list[bytes] = []
        real = session_module.bcrypt.checkpw
        self.patch(session_module.bcrypt, "checkpw",
                   lambda password, stored: checked.append(stored) or real(password, stored))
        self.assertFalse(password_matches("guess", None))
        self.assertTrue(checked[0].startswith(b"$2b$%02d$" % BCRYPT_ROUNDS), checked)
        self.assertEqual(checked, [dummy_hash()])
        self.assertFalse(password_matches("x" * 100, None))  # over 72 bytes: no crash
        self.assertFalse(password_matches("guess", hash_password("right", rounds=4)))
        self.assertTrue(password_matches("right", hash_password("right", rounds=4)))


# ---------------------------------------------------------------------- saved secrets


SAVED = {"host": "smtp.example", "port": 587, "tls": "starttls", "username": "u",
         "password": "saved-pw"}


def kept(item: dict[str, Any], old: list[dict[str, Any]] | None = None) -> str | None:
    item = dict(item)
    keep_passwords([item], [dict(o) for o in old or [SAVED]], Check("/etc/relay.json"))
    return item.get("password")


def test_saved_password_is_kept_only_for_the_same_destination() -> None:
    """M1 of the relay test: host and username used to be enough."""
    login = {"host": "smtp.example", "username": "u"}
    assert kept({**login, "port": 587, "tls": "starttls"}) == "saved-pw"
    assert kept({**login, "host": "SMTP.Example.", "password": "********"}) == "saved-pw"
    assert kept({**login, "password": "new-pw", "port": 2525}) == "new-pw"
    assert kept({"host": "other.example", "username": "u"}) is None  # another upstream
    assert kept({**login, "username": "v"}) is None
    for change in ({"port": 2525}, {"tls": "none"}, {"tls": "implicit"}, {"verify": False},
                   {"ca_file": "/tmp/attacker-ca.pem"}):
        with pytest.raises(ValueError, match="send the password again"):
            kept({**login, **change})
    # a check no weaker than the saved one keeps it
    with_ca = {**SAVED, "ca_file": "ca.pem"}
    assert kept({**login, "ca_file": "/etc/ca.pem"}, [with_ca]) == "saved-pw"
    assert kept(login, [with_ca]) == "saved-pw"  # the system's roots
    unverified = {**SAVED, "verify": False}
    assert kept(login, [unverified]) == "saved-pw"
    # presets resolve to their host, port and TLS mode
    preset = {"preset": "tencent-ses", "username": "u", "password": "p"}
    assert kept({"preset": "tencent-ses", "username": "u"}, [preset]) == "p"
    with pytest.raises(ValueError, match="port 25, tls implicit"):
        kept({"preset": "tencent-ses", "username": "u", "port": 25}, [preset])


def test_saved_oauth2_secrets_follow_the_same_rule() -> None:
    old = {"host": "smtp.example", "username": "u",
           "oauth2": {"client_id": "c", "token_url": "https://login.example/token",
                      "client_secret": "cs", "refresh_token": "rt"}}

    def item(**oauth2: Any) -> dict[str, Any]:
        return {"host": "smtp.example", "username": "u",
                "oauth2": {"client_id": "c", "token_url": "https://login.example/token",
                           **oauth2}}

    same = item()
    keep_passwords([same], [old], Check("/etc/relay.json"))
    assert (same["oauth2"]["client_secret"], same["oauth2"]["refresh_token"]) == ("cs", "rt")
    for changed in (item(token_url="https://attacker.example/token"),
                    {**item(), "port": 2525}):
        with pytest.raises(ValueError, match="send it again"):
            keep_passwords([changed], [old], Check("/etc/relay.json"))
    other_client = item(client_id="d")
    keep_passwords([other_client], [old], Check("/etc/relay.json"))
    assert "client_secret" not in other_client["oauth2"]


def test_nothing_is_read_for_a_site_without_a_gate() -> None:
    """GuardedRequest is plain twisted.web without a gate (the OAuth2 callback site)."""
    from twisted.web.server import Site

    from relaymail.web.guard import GuardedRequest

    site = Site(Echo(), requestFactory=GuardedRequest, reactor=Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(head("POST", "/x", "anything.example", Content_Length="3") + b"abc")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert transport.value().endswith(b"3")
