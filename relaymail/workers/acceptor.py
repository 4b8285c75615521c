"""One acceptor process: SMTP sessions on listening sockets inherited from the main process.

Started by relaymail.workers.supervisor as
``python -m relaymail.workers.acceptor --config PATH --index N --listener NAME=FD ...``
with AMP on file descriptors 3 (from the main process) and 4 (to it), and the listening
sockets on the descriptors named.  It runs the same session code as the single-process
relay (relaymail.smtp) and commits into the same spool; each committed message is sent to
the main process, which delivers it.  Without Redis, its counters are the main
process's (relaymail.workers.remote).  Log events go to stderr as JSON, re-emitted by the
main process with ``worker=N``.  It exits when the main process goes away.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from twisted.internet import stdio
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import connectionDone
from twisted.logger import globalLogBeginner
from twisted.protocols import amp
from twisted.python.failure import Failure

from relaymail import logs
from relaymail.accounts.database import DatabaseError
from relaymail.accounts.service import Accounts
from relaymail.config import Config, load_config
from relaymail.logs import Logger
from relaymail.netutil import write_eagerly
from relaymail.policy.counters import Counters
from relaymail.smtp.build import build_context, session_factory, thread_runner
from relaymail.smtp.state import ServerContext
from relaymail.spool.envelope import Envelope
from relaymail.workers import logpipe
from relaymail.workers import protocol as p
from relaymail.workers.remote import RemoteCounters

log = Logger(namespace="relaymail.workers")
FROM_MAIN, TO_MAIN = 3, 4


class AcceptorSide(amp.CommandLocator):
    """What the main process may ask an acceptor."""

    def __init__(self) -> None:
        super().__init__()
        self.ctx: ServerContext | None = None
        self.accounts: Any = None  # relaymail.accounts.service.Accounts

    @p.AccountsChanged.responder
    def accounts_changed(self) -> Deferred:
        if self.accounts is None:
            return succeed({})
        return self.accounts.view.refresh().addCallback(lambda _: {})

    @p.Status.responder
    def status(self) -> dict[str, str]:
        ctx = self.ctx
        if ctx is None:
            return {"status": "{}"}
        connections = ctx.connections
        return {"status": json.dumps({
            "pid": os.getpid(), "connections": connections.total,
            "per_listener": dict(connections.per_listener),
            "refusals": [[code, enhanced, n] for (code, enhanced), n in
                         ctx.stats.refusals.items()],
            "policy": ctx.policy.snapshot() if ctx.policy else {}})}


class MainLink(amp.AMP):
    """The AMP connection to the main process; losing it ends the acceptor."""

    def __init__(self, side: AcceptorSide, reactor: Any) -> None:
        super().__init__(locator=side)
        self.reactor = reactor

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        log.info("acceptor: the main process is gone; stopping")
        if self.reactor.running:
            self.reactor.stop()
        else:  # gone while this acceptor was still starting: stop as soon as it runs
            self.reactor.callWhenRunning(self.reactor.stop)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="relaymail acceptor process (internal)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--listener", action="append", default=[],
                        help="NAME=FD: a listening socket inherited for listener NAME")
    return parser.parse_args(argv)


def inherited(specs: list[str]) -> dict[str, int]:
    out = {}
    for spec in specs:
        name, _, fd = spec.rpartition("=")
        out[name] = int(fd)
    return out


def adopt(reactor: Any, fd: int, factory: Any) -> Any:
    """Listen on an inherited socket; our copy of the descriptor is closed (the reactor
    keeps its own)."""
    probe = socket.socket(fileno=fd)
    family = probe.family
    probe.detach()
    port = reactor.adoptStreamPort(fd, family, factory)
    os.close(fd)
    return port


def open_accounts(config: Config, reactor: Any) -> Accounts:
    """The users' SMTP logins, reloaded when they change.  A database that does not answer
    when this acceptor (re)starts must not keep it from serving: sessions go on with the
    credentials file, and account logins work once a poll reaches the database."""
    accounts = Accounts(config.accounts, reactor, thread_runner(reactor))
    try:
        accounts.open_now()
    except DatabaseError as e:
        log.warn("acceptor: {error}; account logins wait for the database", error=str(e))
    return accounts


def build(config: Config, reactor: Any, link: MainLink, side: AcceptorSide,
          fds: dict[str, int]) -> list[Any]:
    """The acceptor's context and its adopted ports."""
    counters: Counters | None = None
    if config.rate_limits.backend == "memory":
        counters = RemoteCounters(link)  # counted once, in the main process
    accounts = open_accounts(config, reactor)
    accounts.startService()
    side.accounts = accounts
    reactor.addSystemEventTrigger("before", "shutdown", accounts.stopService)
    ctx = build_context(config, reactor, counters=counters, accounts=accounts.view)
    side.ctx = ctx

    def committed(envelope: Envelope) -> None:
        try:
            link.callRemote(p.Committed, envelope=envelope.to_json().decode("utf-8"))
        except Exception as e:  # the link is gone: the main process scans the spool
            log.warn("acceptor: could not announce {queue_id}: {error}",
                     queue_id=envelope.queue_id, error=e)

    def report(event: dict[str, Any]) -> None:
        try:
            link.callRemote(p.Report, event=json.dumps(event))
        except Exception as e:
            log.warn("acceptor: could not report an event: {error}", error=e)

    ctx.spool.commit_listeners.append(committed)
    ctx.report = report
    if ctx.suppression is not None:
        ctx.suppression.start()
        reactor.addSystemEventTrigger("before", "shutdown", ctx.suppression.stop)
    ports = []
    for listener in config.smtp.listeners:
        if listener.name in fds:
            ports.append(adopt(reactor, fds[listener.name],
                               session_factory(ctx, listener, reactor)))
    reactor.addSystemEventTrigger("before", "shutdown", ctx.close_sessions)
    # The Redis backend's own threads would keep the process alive after the reactor.
    reactor.addSystemEventTrigger("before", "shutdown", ctx.policy.counters.close)
    return ports


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    globalLogBeginner.beginLoggingTo([logpipe.observer(sys.stderr)],
                                     redirectStandardIO=False)
    from twisted.internet import reactor

    config = load_config(args.config)
    logs.set_level(config.log.level)
    side = AcceptorSide()
    link = MainLink(side, reactor)
    pipes = stdio.StandardIO(link, stdin=FROM_MAIN, stdout=TO_MAIN,  # type: ignore[call-arg]
                             reactor=reactor)
    write_eagerly(pipes._writer)  # type: ignore[attr-defined]  # no reactor turn per box
    build(config, reactor, link, side, inherited(args.listener))
    link.callRemote(p.Serving).addErrback(lambda _: None)  # the main process stops accepting
    log.info("acceptor {index} (pid {pid}) serving {count} listener(s)", index=args.index,
             pid=os.getpid(), count=len(args.listener))
    reactor.run()  # type: ignore[attr-defined]
    sys.stderr.flush()
    os._exit(0)  # no thread left behind (a Redis call stuck in its timeout, say) may keep
    # an acceptor alive, and with it the listening socket, after the main process is gone


if __name__ == "__main__":
    raise SystemExit(main())
