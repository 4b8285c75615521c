"""Wires one relaymail process: spool, SMTP listeners (and later relay and web) in one reactor."""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory

from relaymail import logs
from relaymail.config import Config, ListenerConfig, check_runtime
from relaymail.credentials import CredentialChecker, CredentialStore
from relaymail.logs import Logger
from relaymail.smtp.server import RelaySMTPFactory, ServerContext
from relaymail.smtp.tls import ensure_self_signed, server_tls_options
from relaymail.spool import Spool

log = Logger(namespace="relaymail.service")


class SpoolService(Service):
    """Prepares the spool at startup (before any session runs): cleans and reloads it."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.recovered: list[Any] = []

    def startService(self) -> None:
        self.recovered = self.spool.prepare()
        log.info("spool {path}: {count} queued message(s) recovered", path=self.spool.root,
                 count=len(self.recovered))
        super().startService()


def thread_runner(reactor: Any) -> Any:
    """``run_in_thread`` backed by the reactor's thread pool."""
    return partial(deferToThreadPool, reactor, reactor.getThreadPool())


def build_context(config: Config, reactor: Any) -> ServerContext:
    """Everything the SMTP sessions share; raises ConfigError for unusable TLS material."""
    ensure_self_signed(config.smtp.tls, config.hostname)
    check_runtime(config)
    run_in_thread = thread_runner(reactor)
    store = CredentialStore(config.credentials_file)
    return ServerContext(
        hostname=config.hostname,
        smtp=config.smtp,
        spool=Spool(config.spool_dir, run_in_thread, clock=reactor.seconds),
        clock=reactor.seconds,
        checker=CredentialChecker(store, run_in_thread),
        credentials=store,
        tls_options=server_tls_options(config.smtp.tls, config.path),
    )


def listener_factory(ctx: ServerContext, listener: ListenerConfig) -> Any:
    """The session factory of one listener; implicit TLS wraps it in a TLS factory."""
    factory: Any = RelaySMTPFactory(ctx, listener)
    if listener.tls == "implicit":
        factory = TLSMemoryBIOFactory(ctx.tls_options, False, factory)
    return factory


def listener_service(ctx: ServerContext, listener: ListenerConfig, reactor: Any
                     ) -> StreamServerEndpointService:
    """One endpoint service; PROXY protocol wraps outside the TLS (the header comes first)."""
    factory = listener_factory(ctx, listener)
    endpoint = serverFromString(reactor, listener.endpoint)
    if listener.proxy_protocol:
        endpoint = proxyEndpoint(endpoint)
    service = StreamServerEndpointService(endpoint, factory)
    service._raiseSynchronously = True  # a port that cannot be bound stops startup
    service.setName(f"smtp:{listener.name}")
    return service


def build_service(config: Config, reactor: Any) -> MultiService:
    """The whole process as one MultiService (started and stopped by twistd)."""
    logs.set_level(config.log.level)
    ctx = build_context(config, reactor)
    top = MultiService()
    spool_service = SpoolService(ctx.spool)
    spool_service.setName("spool")
    spool_service.setServiceParent(top)
    for listener in config.smtp.listeners:
        listener_service(ctx, listener, reactor).setServiceParent(top)
    top.context = ctx  # type: ignore[attr-defined]
    return top
