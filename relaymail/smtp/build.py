"""Builds what SMTP sessions share (the ServerContext) and each listener's session
factory; used by the single-process service and by every acceptor process alike."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.protocols.tls import TLSMemoryBIOFactory

from relaymail.accounts.view import AccountsView, CombinedCredentials
from relaymail.common.lane import ThreadLane
from relaymail.config import Config, ListenerConfig, check_runtime
from relaymail.credentials import CredentialChecker, CredentialStore
from relaymail.events.suppression import SuppressionList, SuppressionStore
from relaymail.policy.build import build_policy
from relaymail.policy.counters import Counters
from relaymail.policy.dkim import build_signer
from relaymail.smtp.proxy import ProxyWrappingFactory
from relaymail.smtp.server import RelaySMTPFactory
from relaymail.smtp.state import ServerContext
from relaymail.smtp.tls import ensure_self_signed, server_tls_options
from relaymail.spool import Spool


def thread_runner(reactor: Any) -> Any:
    """``run_in_thread`` backed by the reactor's thread pool."""
    return partial(deferToThreadPool, reactor, reactor.getThreadPool())


def spool_lane(reactor: Any) -> Any:
    """The spool's commits and removals run in a thread of their own, which finishes the
    batch under way when the reactor shuts down."""
    lane = ThreadLane(reactor, "relaymail-spool")
    reactor.addSystemEventTrigger("during", "shutdown", lane.stop)
    return lane.run


def build_context(config: Config, reactor: Any, counters: Counters | None = None,
                  accounts: AccountsView | None = None) -> ServerContext:
    """Everything the SMTP sessions share; raises ConfigError for unusable TLS material.
    ``counters`` replaces the configured backend (an acceptor's link to the main
    process's counters); ``accounts`` adds the users' SMTP logins to the credentials
    file's."""
    ensure_self_signed(config.smtp.tls, config.hostname)
    check_runtime(config)
    run_in_thread = thread_runner(reactor)
    store = CombinedCredentials(CredentialStore(config.credentials_file), accounts)
    policy = build_policy(config.rate_limits, reactor, counters)
    return ServerContext(
        hostname=config.hostname,
        smtp=config.smtp,
        spool=Spool(config.spool_dir, run_in_thread, clock=reactor.seconds,
                    run_serially=spool_lane(reactor)),
        clock=reactor.seconds,
        checker=CredentialChecker(store, run_in_thread),
        credentials=store,
        tls_options=server_tls_options(config.smtp.tls, config.path),
        signer=build_signer(config.dkim, config.path, reactor.seconds),
        limits=policy.limits,
        lockout=policy.lockout,
        policy=policy,
        suppression=build_suppression(config, reactor),
    )


def build_suppression(config: Config, reactor: Any) -> SuppressionList | None:
    """This process's view of the suppression list (``<spool_dir>/suppression.db``)."""
    if not config.suppression.enabled:
        return None
    store = SuppressionStore(os.path.join(config.spool_dir, "suppression.db"))
    return SuppressionList(store, thread_runner(reactor), reactor, clock=reactor.seconds)


def listener_factory(ctx: ServerContext, listener: ListenerConfig) -> Any:
    """The session factory of one listener; implicit TLS wraps it in a TLS factory."""
    factory: Any = RelaySMTPFactory(ctx, listener)
    if listener.tls == "implicit":
        factory = TLSMemoryBIOFactory(ctx.tls_options, False, factory)
    return factory


def session_factory(ctx: ServerContext, listener: ListenerConfig, reactor: Any) -> Any:
    """What serves a listening socket adopted from elsewhere (an acceptor's, or the main
    process's while no acceptor serves): the listener's factory behind the PROXY header
    reader when the listener takes one."""
    factory = listener_factory(ctx, listener)
    if listener.proxy_protocol:
        factory = ProxyWrappingFactory(factory, ctx.smtp.proxy_trusted_networks, reactor)
    return factory
