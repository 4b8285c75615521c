"""The DKIM corpus harness: relay real-world messages through a running relaymail (its
production service in this reactor, SMTP on a real socket bound to port 0) that holds two
keys for the From domain, rsa-sha256 (2048 bits, ``relaymail dkim keygen``) and
ed25519-sha256, into an aiosmtpd sink that keeps the bytes exactly as relayed; then ask
independent verifiers about every DKIM-Signature of every copy:

- dkimpy, against the keys published by a real DNS server on loopback (tests/dnszone.py);
- Perl's Mail::DKIM (libmail-dkim-perl), through mail_dkim_verify.pl and a key table;
- OpenDKIM's own filter in test mode (``opendkim -t``, Debian package ``opendkim``) with
  ``TestPublicKeys`` pointing at the same key table.

Each verifier's answer becomes one ``Verdict`` per signature, in message order."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dkim
from aiosmtpd.controller import Controller
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThreadPool

from relaymail.config import load_config
from relaymail.service import build_service
from tests.dnszone import dkimpy_dnsfunc, start_dns, txt
from tests.helpers import base_config, send_mail, write_config
from tests.integration.test_dkim_signing import DkimHelpers
from tests.integration.test_relay import plain, smarthost
from tests.peers import require
from tests.upstreams import RecordingHandler, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
NODEMAILER_DIR = os.path.join(HERE, "nodemailer")
MAIL_DKIM_SCRIPT = os.path.join(HERE, "mail_dkim_verify.pl")
SENDER = "ops@example.com"


# ------------------------------------------------------------------------- the pieces


class Port0Controller(Controller):
    """aiosmtpd's threaded Controller on a socket bound to port 0 before it starts (the
    stock one takes a port number and binds it itself)."""

    def __init__(self, handler: Any, **kw: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        super().__init__(handler, hostname="127.0.0.1", port=self.sock.getsockname()[1], **kw)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self.sock,
                                       ssl=self.ssl_context)


@dataclass(frozen=True)
class Signature:
    """One DKIM-Signature field of a message, its tags unfolded."""

    domain: str
    selector: str
    algorithm: str
    headers: tuple[str, ...]  # h=
    b: str


def signatures(message: bytes) -> list[Signature]:
    """The DKIM-Signature fields of ``message``, top first (dkimpy's parsers)."""
    fields, _ = dkim.rfc822_parse(message)
    found = []
    for name, value in fields:
        if name.lower() != b"dkim-signature":
            continue
        tags = dkim.util.parse_tag_value(value)

        def tag(t: bytes, tags: dict = tags) -> str:
            return re.sub(r"\s+", "", tags.get(t, b"").decode())

        found.append(Signature(tag(b"d"), tag(b"s"), tag(b"a"),
                               tuple(tag(b"h").lower().split(":")), tag(b"b")))
    return found


@dataclass(frozen=True)
class Verdict:
    """A verifier's word on one signature."""

    result: str  # pass, fail, invalid, ... as the verifier says it
    domain: str
    selector: str
    algorithm: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.result} d={self.domain} s={self.selector} a={self.algorithm} {self.detail}"


# ------------------------------------------------------------------------- verifiers


def dkimpy_verdicts(message: bytes, dnsfunc: Any) -> list[Verdict]:
    """dkimpy's verify(idx=i) for each signature (blocking: run it in a thread)."""
    verdicts = []
    for i, sig in enumerate(signatures(message)):
        detail = ""
        try:
            ok = dkim.DKIM(message, minkey=1024).verify(idx=i, dnsfunc=dnsfunc)
        except dkim.DKIMException as e:  # a body hash mismatch raises
            ok, detail = False, str(e)
        verdicts.append(Verdict("pass" if ok else "fail", sig.domain, sig.selector,
                                sig.algorithm, detail))
    return verdicts


def have_mail_dkim() -> bool:
    if shutil.which("perl") is None:
        return False
    return subprocess.run(["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e", "1"],
                          capture_output=True, timeout=60).returncode == 0


def mail_dkim_verdicts(message: bytes, keytable: str) -> list[Verdict]:
    """Mail::DKIM's result per signature, from mail_dkim_verify.pl (blocking)."""
    out = subprocess.run(["perl", MAIL_DKIM_SCRIPT, keytable], input=message,
                         capture_output=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"mail_dkim_verify.pl failed: {out.stderr.decode()}")
    verdicts = []
    for line in out.stdout.decode().splitlines():
        result, domain, selector, algorithm, detail = line.split(" ", 4)
        if result != "none":
            verdicts.append(Verdict(result, domain, selector, algorithm, detail))
    return verdicts


def opendkim_binary() -> str | None:
    return shutil.which("opendkim") or shutil.which("opendkim", path="/usr/sbin:/sbin")


def opendkim_algorithms(binary: str) -> set[str]:
    """The signing algorithms ``opendkim -V`` lists (ed25519-sha256 since 2.11)."""
    out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    return set(re.findall(r"^\s+((?:rsa|ed25519)-sha\d+)\s*$", text, re.M))


def opendkim_config(directory: str, keytable: str) -> str:
    """A verify-only opendkim.conf whose public keys come from the key table, not DNS."""
    path = os.path.join(directory, "opendkim.conf")
    with open(path, "w") as f:
        f.write(f"Mode v\nSyslog no\nAuthservID corpus.test\nTestPublicKeys {keytable}\n"
                f"TemporaryDirectory {directory}\nMinimumKeyBits 1024\n")
    return path


AR_LINE = re.compile(r"\bdkim=(\w+)(?: reason=\"([^\"]*)\")?[^;']*?\bheader\.b=([^\s;']+)")


def opendkim_verdicts(message: bytes, binary: str, config: str, directory: str) -> list[Verdict]:
    """OpenDKIM's filter in test mode (``opendkim -x CONF -t FILE -vv``) on the message: its
    Authentication-Results names each signature by the first bytes of its b= (header.b)."""
    path = os.path.join(tempfile.mkdtemp(dir=directory), "message.eml")
    with open(path, "wb") as f:
        f.write(message)
    out = subprocess.run([binary, "-x", config, "-t", path, "-vv"], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"opendkim -t failed ({out.returncode}): {out.stdout}{out.stderr}")
    inserted = re.findall(r"### INSHEADER: idx=\d+ hname='Authentication-Results' "
                          r"hvalue='([^']*)'", out.stdout)
    if not inserted:
        return []
    sigs = signatures(message)
    found = []
    for result, reason, b in AR_LINE.findall(inserted[0]):
        [index] = [i for i, s in enumerate(sigs) if s.b.startswith(b)]
        sig = sigs[index]
        found.append((index, Verdict(result, sig.domain, sig.selector, sig.algorithm, reason)))
    return [verdict for _, verdict in sorted(found, key=lambda pair: pair[0])]


# ------------------------------------------------------------------------- corpora


@dataclass(frozen=True)
class Corpus:
    messages: dict[str, bytes]  # name -> message as the application hands it over
    keys: tuple[str, ...] = ()  # key-table lines of keys the applications signed with


_NODEMAILER: Corpus | None = None


def nodemailer_corpus() -> Corpus:
    """The messages tests/corpus/nodemailer/build.js makes with nodemailer's MailComposer
    (``npm ci`` first when node_modules is missing), and the key nm-presigned was signed
    with by nodemailer's DKIM signer; built once per test run."""
    global _NODEMAILER
    require(shutil.which("node") is not None and shutil.which("npm") is not None,
            "node and npm (Debian packages nodejs and npm)")
    if _NODEMAILER is None:
        if not os.path.isdir(os.path.join(NODEMAILER_DIR, "node_modules", "nodemailer")):
            npm = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODEMAILER_DIR,
                                 capture_output=True, text=True, timeout=600)
            if npm.returncode != 0:
                raise AssertionError(f"npm ci failed in {NODEMAILER_DIR}:\n"
                                     f"{npm.stdout[-3000:]}{npm.stderr[-3000:]}")
        out = tempfile.mkdtemp(prefix="nodemailer-corpus-")
        try:
            built = subprocess.run(["node", "build.js", out], cwd=NODEMAILER_DIR,
                                   capture_output=True, text=True, timeout=120)
            if built.returncode != 0:
                raise AssertionError(f"node build.js failed: {built.stderr[-3000:]}")
            messages = {}
            for name in built.stdout.split():
                with open(os.path.join(out, name + ".eml"), "rb") as f:
                    messages[name] = f.read()
            with open(os.path.join(out, "keytable.txt")) as f:
                keys = tuple(f.read().splitlines())
        finally:
            shutil.rmtree(out, ignore_errors=True)
        _NODEMAILER = Corpus(messages, keys)
    return _NODEMAILER


# ------------------------------------------------------------------------- the test case


@dataclass
class Relayed:
    """The corpus as the upstream received it, with what the verifiers need."""

    sent: dict[str, bytes]  # name -> bytes as submitted
    messages: dict[str, bytes]  # name -> bytes exactly as relayed
    dnsfunc: Any  # dkimpy's lookup against the loopback DNS server
    keytable: str  # "SELECTOR._domainkey.DOMAIN TXT" lines: Mail::DKIM and OpenDKIM
    seconds: float  # submission to last delivery


class DkimCorpusCase(DkimHelpers):
    """Relays a corpus through a running relaymail signing with RSA and Ed25519 keys."""

    def start_sink(self) -> RecordingHandler:
        handler = RecordingHandler()
        controller = Port0Controller(handler)
        controller.start()
        self.addCleanup(controller.stop)
        self.sink_port = controller.port
        return handler

    async def start_relaymail(self, dkim_entries: list[dict], upstream_port: int) -> int:
        """relaymail's whole service (listener, spool, relay manager) on 127.0.0.1:0."""
        data = base_config(self.dir, tls=False)
        data["smtp"]["listeners"] = [{"name": "smtp", "tls": "none",
                                      "endpoint": "tcp:0:interface=127.0.0.1"}]
        data.update(dkim=dkim_entries, **smarthost(plain(upstream_port)))
        config = load_config(write_config(self.dir, data), environ={})
        service = build_service(config, reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.manager = service.relay
        ports: list[Any] = []
        # privilegedStartService listened already (ListenerService raises synchronously),
        # so this callback runs now; it passes the port on for stopService to close.
        service.getServiceNamed("smtp:smtp")._waitingForPort.addCallback(
            lambda port: ports.append(port) or port)
        [port] = ports
        return port.getHost().port

    def publish_keys(self, entries: list[dict], extra: tuple[str, ...]) -> tuple[Any, str]:
        """Relaymail's public keys (as keygen prints them) and ``extra`` key-table lines, as
        a key table file and from a real DNS server on loopback (dkimpy's ``dnsfunc``)."""
        from relaymail.policy.dkim import build_signer

        signer = build_signer(entries, "relay.json", reactor.seconds)
        assert signer is not None
        lines = [f"{key.selector}._domainkey.{key.domain} {key.dns_record()}"
                 for keys in signer.by_domain.values() for key in keys] + list(extra)
        path = os.path.join(self.dir, "keytable.txt")
        with open(path, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        zone = {}
        for line in lines:
            name, _, record = line.partition(" ")
            zone[(name.lower().encode(), 16)] = [txt(record)]
        port = start_dns(zone)
        self.addCleanup(port.stopListening)
        return dkimpy_dnsfunc(port.getHost().port), path

    async def relay_corpus(self, corpus: dict[str, bytes], keys: tuple[str, ...] = ()) -> Relayed:
        """Submit every message (envelope recipient NAME@dest.test), four at a time, and
        wait until the sink has them all.  ``keys``: key-table lines for signatures the
        messages already carry."""
        entries = [self.keygen("rsa2048", "rsa"), self.keygen("ed25519", "ed25519")]
        handler = self.start_sink()
        port = await self.start_relaymail(entries, self.sink_port)
        started = time.monotonic()
        names = list(corpus)
        for i in range(0, len(names), 4):
            await defer.gatherResults([
                deferToThreadPool(reactor, self.clients, send_mail, port, SENDER,
                                  [f"{name}@dest.test"], corpus[name])
                for name in names[i:i + 4]])

        def arrived() -> dict[str, bytes]:
            with handler.lock:
                return {m.rcpt_tos[0].partition("@")[0]: m.content for m in handler.messages}

        try:
            await wait_until(lambda: len(arrived()) == len(corpus), seconds=60,
                             what=f"{len(corpus)} deliveries")
        except AssertionError:
            replies = [f"{r.address}: {r.last_reply}" for e in self.manager.queued.values()
                       for r in e.recipients]
            raise AssertionError(f"not delivered: {sorted(set(corpus) - set(arrived()))}; "
                                 f"relaymail's queue: {replies}") from None
        seconds = time.monotonic() - started
        await wait_until(lambda: not self.manager.queued and not self.manager.active,
                         what="the queue to drain")
        messages = arrived()
        self.assertEqual(sorted(messages), sorted(corpus))
        dnsfunc, keytable = self.publish_keys(entries, keys)
        return Relayed(dict(corpus), messages, dnsfunc, keytable, seconds)

    def in_thread(self, f: Callable[..., Any], *args: Any) -> Any:
        return deferToThreadPool(reactor, self.clients, f, *args)

    async def verdicts(self, verifier: Callable[..., list[Verdict]], relayed: Relayed,
                       *args: Any) -> dict[str, list[Verdict]]:
        """One verifier's verdicts on every relayed message (blocking work in threads)."""
        def run_all() -> dict[str, list[Verdict]]:
            return {name: verifier(message, *args)
                    for name, message in sorted(relayed.messages.items())}

        return await self.in_thread(run_all)

    def assert_signed_twice(self, relayed: Relayed) -> None:
        """Each copy is the submitted message, unchanged (line ends made CRLF; lines over
        998 octets folded), under relaymail's Received field and exactly two new signatures,
        RSA and Ed25519, each listing From first and last (oversigned)."""
        for name, message in relayed.messages.items():
            sent = relayed.sent[name]
            sent += b"" if sent.endswith(b"\r\n") else b"\r\n"  # as smtplib ends DATA
            sent = re.sub(rb"\r?\n", b"\r\n", sent)
            self.assertLessEqual(max(len(line) for line in message.split(b"\r\n")), 998)
            if max(len(line) for line in sent.split(b"\r\n")) > 998:
                # folded before white space the line had: only CRLFs were put in
                start = message.index(sent[:200])
                self.assertEqual(message[start:].replace(b"\r\n", b""),
                                 sent.replace(b"\r\n", b""), name)
            else:
                self.assertTrue(message.endswith(sent), f"{name} was changed on the way")
                start = len(message) - len(sent)
            added = signatures(message[:start])
            self.assertEqual(sorted((s.domain, s.selector, s.algorithm) for s in added),
                             [("example.com", "ed25519", "ed25519-sha256"),
                              ("example.com", "rsa2048", "rsa-sha256")], name)
            for sig in added:
                self.assertEqual((sig.headers[0], sig.headers[-1]), ("from", "from"), name)

    def assert_all(self, verdicts: dict[str, list[Verdict]], expected: Callable[[str], str],
                   relayed: Relayed, verifier: str) -> int:
        """Every signature of every message got the verdict ``expected(algorithm)``; the
        failures, if any, are listed together.  Returns the number of signatures checked."""
        wrong = []
        count = 0
        for name, message in sorted(relayed.messages.items()):
            got = verdicts[name]
            want_sigs = signatures(message)
            if [(v.selector, v.algorithm) for v in got] != \
                    [(s.selector, s.algorithm) for s in want_sigs]:
                wrong.append(f"{name}: {verifier} saw {[str(v) for v in got]}, "
                             f"message has {[(s.selector, s.algorithm) for s in want_sigs]}")
                continue
            for verdict in got:
                count += 1
                if verdict.result != expected(verdict.algorithm):
                    wrong.append(f"{name}: {verifier}: {verdict}")
        if wrong:
            raise AssertionError(f"{len(wrong)} unexpected verdict(s):\n" + "\n".join(wrong))
        return count


# ------------------------------------------------------------------------- tampering


def tamper_subject(message: bytes) -> bytes:
    """A signed header changed: one more word in the (first) Subject."""
    head, sep, body = message.partition(b"\r\n\r\n")
    changed = re.sub(rb"(?im)^(Subject:[ \t]*)", rb"\1[changed] ", head, count=1)
    assert changed != head
    return changed + sep + body


def tamper_body(message: bytes) -> bytes:
    """One body byte changed: the first letter or digit of the body, shifted by one."""
    head, sep, body = message.partition(b"\r\n\r\n")
    match = re.search(rb"[A-Za-y0-8]", body)
    assert match is not None
    i = match.start()
    return head + sep + body[:i] + bytes([body[i] + 1]) + body[i + 1:]


def add_second_from(message: bytes) -> bytes:
    """A second From added below the signatures: From is oversigned, so this must fail."""
    lines = message.split(b"\r\n")
    i = next(n for n, line in enumerate(lines) if line.lower().startswith(b"from:"))
    lines.insert(i, b"From: Mallory <ceo@example.com>")
    return b"\r\n".join(lines)


TAMPERINGS = {"subject changed": tamper_subject, "body byte changed": tamper_body,
              "second From added": add_second_from}
