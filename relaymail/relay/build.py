"""Assembles the relay side from the config: pool, health board, transports, manager."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from relaymail.config import Config, TransportConfig
from relaymail.logs import Logger
from relaymail.policy.dkim import Signer
from relaymail.relay.connector import open_session
from relaymail.relay.health import HealthBoard
from relaymail.relay.manager import RelayManager
from relaymail.relay.mx import MXResolver, make_resolver
from relaymail.relay.oauth2 import registry_for
from relaymail.relay.pause import marker_path, paused_on_disk
from relaymail.relay.pool import SessionPool
from relaymail.relay.rewrite import HeaderEditor
from relaymail.relay.router import Router
from relaymail.relay.transports import (
    Failover,
    MaildirTransport,
    MXTransport,
    SmarthostTransport,
    Transport,
)
from relaymail.spool import Spool

log = Logger(namespace="relaymail.relay")


def build_transport(config: TransportConfig, failover: Failover, reactor: Any,
                    run_in_thread: Callable[..., Any]) -> Transport:
    if config.type == "maildir":
        return MaildirTransport(config, run_in_thread)
    if config.type == "mx":
        resolver = MXResolver(make_resolver(config.nameservers), run_in_thread, reactor.seconds)
        return MXTransport(config, failover, resolver)
    return SmarthostTransport(config, failover)


def build_manager(config: Config, reactor: Any, spool: Spool,
                  signer: Signer | None = None) -> RelayManager:
    """``signer`` signs again a message whose From an upstream's sender rule changes."""
    delivery = config.delivery
    health = HealthBoard(reactor.seconds)
    pool = SessionPool(reactor, config.hostname, health, concurrency=delivery.concurrency,
                       per_destination=delivery.per_destination_concurrency,
                       connect_timeout=delivery.connect_timeout,
                       command_timeout=delivery.command_timeout,
                       # OAuth2 tokens: cached per process, refresh tokens beside the spool
                       opener=partial(open_session,
                                      tokens=registry_for(reactor, config.spool_dir)))
    editor = HeaderEditor(signer, spool.run_in_thread)
    failover = Failover(pool, reactor, delivery.batch_size, delivery.batch_delay, editor)
    transports = {name: build_transport(t, failover, reactor, spool.run_in_thread)
                  for name, t in config.transports.items()}
    manager = RelayManager(
        spool, Router(config.routes), transports,
        {name: t.fallback for name, t in config.transports.items()},
        delivery, config.hostname, reactor, pool=pool, health=health)
    manager.editor = editor
    if delivery.paused or paused_on_disk(config.spool_dir):
        manager.paused = True
        log.warn("relay: delivery is paused ({why}): mail is accepted and queued, none is "
                 "delivered until resumed (relaymail queue resume, or the console's Queue "
                 "page)", why="delivery.paused in the config" if delivery.paused
                 else f"{marker_path(config.spool_dir)} says so")
    return manager


def apply_routing(manager: RelayManager, config: Config, reactor: Any) -> None:
    """Use ``config``'s routes and transports from the next delivery on (a live change from
    the API).  Deliveries already running finish with what they started with; sessions,
    health and the queue are kept."""
    assert manager.pool is not None
    delivery = config.delivery
    failover = Failover(manager.pool, reactor, delivery.batch_size, delivery.batch_delay,
                        manager.editor)
    manager.transports = {name: build_transport(t, failover, reactor,
                                                manager.spool.run_in_thread)
                          for name, t in config.transports.items()}
    manager.router = Router(config.routes)
    manager.fallbacks = {name: t.fallback for name, t in config.transports.items()}
