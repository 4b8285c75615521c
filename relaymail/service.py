"""Wires one relaymail process: spool, SMTP listeners and the relay manager in one reactor."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.protocols.tls import TLSMemoryBIOFactory

from relaymail import logs
from relaymail.accounts.service import Accounts
from relaymail.accounts.view import CombinedCredentials
from relaymail.common.networks import ConnectionTracker
from relaymail.config import Config, ConfigError, ListenerConfig
from relaymail.credentials import CredentialStore
from relaymail.events.archive import Archive, build_archive
from relaymail.events.hub import EventHub
from relaymail.events.outbox import Outbox
from relaymail.history import History
from relaymail.logs import Logger
from relaymail.policy.build import PolicyService
from relaymail.relay.build import build_manager
from relaymail.smtp.build import (
    build_context,
    listener_factory,
    session_factory,
    thread_runner,
)
from relaymail.smtp.proxy import TrustedProxyEndpoint
from relaymail.smtp.server import ServerContext
from relaymail.smtp.tls import server_tls_options
from relaymail.spool import Spool
from relaymail.spool import lock as spool_lock
from relaymail.spool.envelope import Envelope
from relaymail.spool.recovery import Recovery
from relaymail.web.api import ControlAPI
from relaymail.web.credentials_api import CredentialsAPI
from relaymail.web.guard import WebSite, gate_for
from relaymail.web.monitor import Monitor
from relaymail.web.session import Sessions, WebAuth
from relaymail.workers.remote import Authority
from relaymail.workers.supervisor import AcceptorPool

log = Logger(namespace="relaymail.service")


class RelaymailService(MultiService):
    """The process's services, stopped in two steps: first everything else (the listeners,
    then the relay manager, which finishes its attempts), then the ``recorders`` that keep
    what the manager reports (history, events, archive).  A MultiService stops its
    children all at once, so a recorder stopped with the manager would miss its last
    events, and the manager would wait forever for an outbox already closed."""

    def __init__(self) -> None:
        super().__init__()
        self.recorders: list[Service] = []

    def stopService(self) -> Deferred:
        Service.stopService(self)
        ordered = list(self)[::-1]

        def stop(services: list[Any]) -> Deferred:
            return DeferredList([maybeDeferred(s.stopService) for s in services])

        first = stop([s for s in ordered if s not in self.recorders])
        return first.addCallback(lambda _: stop([s for s in ordered if s in self.recorders]))


class SpoolService(Service):
    """Repairs the spool at startup (before any session runs), then reads the queue back
    behind the listeners (``recovery``; relaymail.spool.recovery says why)."""

    def __init__(self, spool: Spool, reactor: Any) -> None:
        self.spool = spool
        self.reactor = reactor
        self.recovery = Recovery(spool)
        self.lock_fd: int | None = None
        self.control_token = ""

    def privilegedStartService(self) -> None:
        try:
            self.lock_fd = spool_lock.acquire(self.spool.root)
        except spool_lock.SpoolBusyError as e:
            sys.stderr.write(f"relaymail: {e}\n")
            raise SystemExit(1) from None
        self.control_token = spool_lock.write_token(self.spool.root)
        super().privilegedStartService()

    def stopService(self) -> None:
        super().stopService()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def startService(self) -> None:
        names = self.spool.repair()
        log.info("spool {path}: {count} queued message(s) found; reading them",
                 path=self.spool.root, count=len(names))
        super().startService()
        # Once every listener is open and the reactor runs: the first batch must not make
        # the rest of startup wait (the thread takes the GIL in turns with it).
        self.reactor.callWhenRunning(self.recovery.start, names)
        self.recovery.when_finished().addCallback(lambda _: self._stock_spares())

    def _stock_spares(self) -> None:
        """Empty spare body files for the first burst (relaymail.spool.spares.STOCK),
        once the queue is read back, in a thread."""
        self.spool.run_in_thread(self.spool.spares.stock).addErrback(
            lambda f: log.failure("spool: making spare files", f))


class ListenerService(StreamServerEndpointService):
    """An endpoint service whose bind failure stops startup with one line naming the key."""

    def __init__(self, endpoint: Any, factory: Any, config_path: str, key: str,
                 description: str) -> None:
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True
        self.config_path, self.key, self.description = config_path, key, description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            sys.stderr.write(f"relaymail: cannot listen: {self.config_path}: {self.key}: "
                             f"{e.socketError} (got \"{self.description}\")\n")
            raise SystemExit(1) from None


class SessionCloser(Service):
    """Stopped after the listeners: aborts the SMTP sessions still open."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def stopService(self) -> None:
        super().stopService()
        self.ctx.close_sessions()


def listener_service(ctx: ServerContext, listener: ListenerConfig, key: str, config_path: str,
                     reactor: Any) -> ListenerService:
    """One endpoint service; PROXY protocol wraps outside the TLS (the header comes first)."""
    factory = listener_factory(ctx, listener)
    endpoint = serverFromString(reactor, listener.endpoint)
    if listener.proxy_protocol:
        endpoint = TrustedProxyEndpoint(endpoint, ctx.smtp.proxy_trusted_networks, reactor)
    service = ListenerService(endpoint, factory, config_path, key, listener.endpoint)
    service.setName(f"smtp:{listener.name}")
    return service


def web_auth(config: Config, reactor: Any, ctx: ServerContext) -> WebAuth:
    return WebAuth(Sessions(reactor.seconds), config.web.admin_user,
                   config.web.admin_password_hash, ctx.policy.web_lockout,
                   thread_runner(reactor))


def web_tls_options(config: Config) -> Any:
    """The console's certificate (``web.tls``), or None for plain HTTP; errors name the
    web keys."""
    try:
        return server_tls_options(config.web.tls, config.path)
    except ConfigError as e:
        raise ConfigError(e.source, e.key.replace("smtp.tls.", "web.tls."), e.problem,
                          e.value) from None


def web_service(config: Config, reactor: Any, manager: Any, spool_service: SpoolService,
                ctx: ServerContext, history: History | None = None,
                acceptors: AcceptorPool | None = None, events: EventHub | None = None,
                archive: Archive | None = None, accounts: Accounts | None = None
                ) -> ListenerService:
    """The HTTP API on ``web.endpoint``, in the same reactor; HTTPS with ``web.tls``, like
    an implicit-TLS SMTP listener.  Requests are checked (Host, body size) by
    relaymail.web.guard before their bodies are read."""
    monitor = Monitor(ctx.stats, manager, ctx.connections, ctx.policy.snapshot,
                      thread_runner(reactor), reactor.seconds, acceptors, events,
                      accounts.view if accounts is not None else None)
    api = ControlAPI(manager, lambda: spool_service.control_token, ctx.policy.snapshot,
                     monitor, config.web.open_metrics_to_loopback, config, reactor,
                     CredentialsAPI(credentials_of(ctx), thread_runner(reactor), accounts),
                     ctx.signer, history, web_auth(config, reactor, ctx), events, archive,
                     accounts, ctx.policy.counters, ctx.limits)
    factory: Any = WebSite(api.app.resource(), gate_for(config, api.may_send_body))
    tls_options = web_tls_options(config)
    if tls_options is not None:
        factory = TLSMemoryBIOFactory(tls_options, False, factory)
    service = ListenerService(serverFromString(reactor, config.web.endpoint), factory,
                              config.path, "web.endpoint", config.web.endpoint)
    service.setName("web")
    return service


def credentials_of(ctx: ServerContext) -> CredentialStore:
    """The credentials file's store (build_context always makes one)."""
    assert isinstance(ctx.credentials, CombinedCredentials)
    return ctx.credentials.file_store  # type: ignore[no-any-return]


def build_accounts(config: Config, reactor: Any) -> Accounts:
    """Users, their SMTP logins and API keys: opened (and migrated) now, so that a
    database that cannot be used stops startup (DatabaseError)."""
    accounts = Accounts(config.accounts, reactor, thread_runner(reactor),
                        reserved=(config.web.admin_user,))
    accounts.open_now()
    accounts.setName("accounts")
    return accounts


def build_history(config: Config, reactor: Any) -> History:
    path = config.web.history_database or config.web.history_file or \
        os.path.join(config.spool_dir, "history.db")
    history = History(path, reactor, config.web.history_retention_days, reactor.seconds)
    history.setName("history")
    return history


def build_events(config: Config, reactor: Any, ctx: ServerContext, manager: Any
                 ) -> EventHub:
    """Webhooks (when configured) and the suppression list's automatic side, fed by the
    spool, the relay manager and the SMTP sessions of this process."""
    outbox = None
    if config.webhooks:
        outbox = Outbox(os.path.join(config.spool_dir, "webhooks.db"), reactor,
                        reactor.seconds, config.web.history_retention_days)
    hub = EventHub(config.webhooks, outbox, ctx.suppression, reactor,
                   auto_suppress=config.suppression.auto)
    manager.observers.append(hub.delivery_event)
    if outbox is not None:
        ctx.spool.commit_listeners.append(hub.accepted)
        manager.barriers.append(hub.durable)
    suppression = ctx.suppression
    if suppression is not None:
        ctx.report = hub.suppressed
        manager.suppressed = suppression.__contains__
    hub.setName("events")
    return hub


def acceptor_pool(config: Config, reactor: Any, ctx: ServerContext, manager: Any
                  ) -> AcceptorPool:
    """``smtp.workers`` acceptor processes; what they commit reaches ``manager`` through
    the spool's commit listeners, as a commit in this process would."""
    spool = ctx.spool

    def committed(text: str) -> None:
        announce_unknown(Envelope.from_json(text.encode("utf-8")))

    def announce_unknown(envelope: Envelope) -> None:
        qid = envelope.queue_id
        if qid in manager.queued or qid in manager.active:
            return  # already found by a scan after an acceptor's death
        if not os.path.exists(spool.path("queue", qid + ".json")):
            return  # delivered or moved meanwhile (found by such a scan)
        spool.announce(envelope)

    def rescan() -> None:
        d = thread_runner(reactor)(lambda: list(spool.load_state("queue")))
        d.addCallback(lambda found: list(map(announce_unknown, found)))
        d.addErrback(lambda f: log.failure("scanning the spool after an acceptor ended",
                                           failure=f))

    def authority() -> Authority:
        return Authority(ctx.policy.counters, committed, ctx.report)

    listeners = {listener.name: listener for listener in config.smtp.listeners}

    def serve_here(name: str) -> Any:
        # Its own session counts: ctx.connections holds the acceptors' sums (metrics).
        here = dataclasses.replace(ctx, connections=ConnectionTracker())
        return session_factory(here, listeners[name], reactor)

    pool = AcceptorPool(config, reactor, authority, rescan, tracker=ctx.connections,
                        serve_here=serve_here)
    ctx.policy.elsewhere.append(pool.policy_stats)
    pool.setName("acceptors")
    return pool


def build_service(config: Config, reactor: Any) -> RelaymailService:
    """The whole process as one MultiService (started and stopped by twistd)."""
    logs.set_level(config.log.level)
    accounts = build_accounts(config, reactor)
    ctx = build_context(config, reactor, accounts=accounts.view)
    top = RelaymailService()
    accounts.setServiceParent(top)
    top.accounts = accounts  # type: ignore[attr-defined]
    spool_service = SpoolService(ctx.spool, reactor)
    spool_service.setName("spool")
    SessionCloser(ctx).setServiceParent(top)  # first in, so stopped after the listeners
    spool_service.setServiceParent(top)
    PolicyService(ctx.policy).setServiceParent(top)
    manager = build_manager(config, reactor, ctx.spool, signer=ctx.signer)
    events = build_events(config, reactor, ctx, manager)
    recovery = spool_service.recovery
    recovery.subscribe(events.take_recovered)
    top.acceptors = None  # type: ignore[attr-defined]
    if config.smtp.workers:
        top.acceptors = acceptor_pool(config, reactor, ctx, manager)  # type: ignore[attr-defined]
        top.acceptors.setServiceParent(top)  # type: ignore[attr-defined]
        accounts.changed.append(top.acceptors.accounts_changed)  # type: ignore[attr-defined]
    else:
        for i, listener in enumerate(config.smtp.listeners):
            key = f"smtp.listeners[{i}].endpoint"
            listener_service(ctx, listener, key, config.path, reactor).setServiceParent(top)
    ctx.spool.commit_listeners.append(ctx.stats.accepted)
    manager.observers.append(ctx.stats.delivery_event)
    history = build_history(config, reactor)
    history.watch_queue(lambda: len(manager.queued))  # messages being delivered included
    history.setServiceParent(top)
    top.recorders.append(history)  # stopped after the manager, keeping its last events
    ctx.spool.commit_listeners.append(history.accepted)
    manager.observers.append(history.delivery_event)
    top.history = history  # type: ignore[attr-defined]
    events.setServiceParent(top)
    top.recorders.append(events)
    top.events = events  # type: ignore[attr-defined]
    archive = None
    if config.archive.enabled:  # a copy of every message, linked before the manager runs
        archive = build_archive(config, reactor, ctx.spool.path("data"))
        recovery.subscribe(archive.take_recovered)  # linked before the manager may remove it
        archive.setServiceParent(top)
        top.recorders.append(archive)
        ctx.spool.commit_listeners.append(archive.accepted)
        manager.observers.append(archive.delivery_event)
    top.archive = archive  # type: ignore[attr-defined]
    recovery.subscribe(manager.take_recovered)
    manager.setName("relay")
    manager.setServiceParent(top)
    if config.web.enabled:
        acceptors = top.acceptors  # type: ignore[attr-defined]
        web_service(config, reactor, manager, spool_service, ctx, history, acceptors, events,
                    archive, accounts).setServiceParent(top)
    top.context = ctx  # type: ignore[attr-defined]
    top.relay = manager  # type: ignore[attr-defined]
    return top
