"""Transports: how recipients of one route are delivered.

Each has ``deliver(envelope, recipients, body_path)`` firing with ``{recipient: Outcome}``
for every recipient given, and never failing: trouble is a temporary outcome.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred
from twisted.internet.task import deferLater

from relaymail.config import TransportConfig, UpstreamConfig
from relaymail.relay.client import Job
from relaymail.relay.connector import Target
from relaymail.relay.maildir import deliver_to_maildir
from relaymail.relay.mx import MXResolver
from relaymail.relay.outcome import TEMPORARY, Outcome, temporary
from relaymail.relay.pool import SessionPool
from relaymail.relay.rewrite import Edit, HeaderEditor, SendPolicy
from relaymail.relay.router import recipient_domain
from relaymail.spool.envelope import Envelope
from relaymail.spool.record import open_body


class Transport(Protocol):
    name: str

    def deliver(self, envelope: Envelope, recipients: list[str], body_path: str
                ) -> Deferred: ...


def target_from_upstream(upstream: UpstreamConfig) -> Target:
    """The Target of a configured upstream; oauth2 settings get their preset's defaults
    (relaymail.relay.oauth2.resolve), and then no password is sent."""
    from relaymail.relay.oauth2 import resolve

    oauth2 = resolve(upstream) if upstream.oauth2 is not None else None
    return Target(host=upstream.host, port=upstream.port, tls=upstream.tls,
                  verify=upstream.verify, ca_file=upstream.ca_file,
                  username=upstream.username,
                  password=None if oauth2 is not None else upstream.password,
                  helo=upstream.helo, max_connections=upstream.max_connections,
                  max_rate=upstream.max_rate, oauth2=oauth2)


def tls_failed(outcomes: dict[str, Outcome], recipients: list[str]) -> bool:
    return all(outcomes[r].session_error == "tls" for r in recipients)


def batches(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


class Failover:
    """Tries targets in order; recipients with a temporary outcome move to the next one."""

    def __init__(self, pool: SessionPool, reactor: Any, batch_size: int,
                 batch_delay: float, editor: HeaderEditor | None = None) -> None:
        self.pool = pool
        self.reactor = reactor
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self.editor = editor or HeaderEditor(None, lambda f, *a: maybeDeferred(f, *a))

    async def deliver(self, envelope: Envelope, recipients: list[str], body_path: str,
                      targets: Sequence[Target],
                      policies: Mapping[Any, SendPolicy] | None = None) -> dict[str, Outcome]:
        """``policies`` (by target key) say how each upstream wants the message changed."""
        remaining = list(recipients)
        results: dict[str, Outcome] = {}
        last: dict[str, Outcome] = {}
        health = self.pool.health
        for target in targets:
            if not remaining:
                break
            if not health.available(target.label):
                down = dataclasses.replace(temporary(f"4.4.1 {target.label} is marked down after "
                                         f"repeated failures", target.label),
                               not_before=health.get(target.label).down_until)
                for address in remaining:
                    last.setdefault(address, down)  # a real deferral elsewhere says more
                continue
            edit = await self.editor.edit(envelope, body_path, (policies or {}).get(target.key))
            outcomes = await self._send(envelope, remaining, body_path, target, edit)
            if target.tls == "opportunistic" and not target.has_credentials \
                    and tls_failed(outcomes, remaining):
                # RFC 7435: when opportunistic TLS cannot be set up, send in plaintext; never
                # with credentials (the password would go in clear): those move on instead.
                plain = dataclasses.replace(target, tls="none")
                outcomes = await self._send(envelope, remaining, body_path, plain, edit)
            still = []
            for address in remaining:
                outcome = outcomes[address]
                if outcome.kind == TEMPORARY:
                    last[address] = outcome
                    still.append(address)
                else:
                    results[address] = outcome
            remaining = still
        for address in remaining:
            results[address] = last.get(address) or temporary("4.4.1 no upstream to try")
        return results

    async def _send(self, envelope: Envelope, recipients: list[str], body_path: str,
                    target: Target, edit: Edit) -> dict[str, Outcome]:
        waits = []
        for i, batch in enumerate(batches(recipients, self.batch_size)):
            if i and self.batch_delay:
                await deferLater(self.reactor, self.batch_delay, lambda: None)
            job = Job(queue_id=envelope.queue_id, sender=envelope.sender, recipients=batch,
                      body_path=body_path, size=envelope.size, body_8bit=envelope.body_8bit,
                      mail_from=edit.mail_from, head=edit.head, body_offset=edit.offset)
            waits.append(self.pool.submit(target, job))
        merged: dict[str, Outcome] = {}
        for _, result in await DeferredList(waits):
            merged.update(result)
        return merged


class SmarthostTransport:
    """``smarthost`` and ``smtp``: a fixed, ordered list of upstreams."""

    def __init__(self, config: TransportConfig, failover: Failover) -> None:
        self.name = config.name
        self.targets = [target_from_upstream(u) for u in config.upstreams]
        self.policies = {t.key: send_policy(config, u)
                         for t, u in zip(self.targets, config.upstreams, strict=True)}
        self.failover = failover

    def deliver(self, envelope: Envelope, recipients: list[str], body_path: str) -> Deferred:
        return ensureDeferred(self.failover.deliver(envelope, recipients, body_path,
                                                    self.targets, self.policies))


def send_policy(transport: TransportConfig, upstream: UpstreamConfig | None = None
                ) -> SendPolicy:
    """The message changes a transport (and one of its upstreams) asks for."""
    return SendPolicy(
        sender_rewrite=upstream.sender_rewrite if upstream else None,
        bounce_sender=upstream.bounce_sender if upstream else None,
        received=transport.received, strip_received=transport.strip_received)


class MXTransport:
    """``mx``: straight to each recipient domain's MX hosts."""

    def __init__(self, config: TransportConfig, failover: Failover, resolver: MXResolver) -> None:
        self.name = config.name
        self.policy = send_policy(config)
        self.port = config.port
        self.require_tls = config.require_tls
        self.failover = failover
        self.resolver = resolver

    def deliver(self, envelope: Envelope, recipients: list[str], body_path: str) -> Deferred:
        return ensureDeferred(self._deliver(envelope, recipients, body_path))

    async def _deliver(self, envelope: Envelope, recipients: list[str], body_path: str
                       ) -> dict[str, Outcome]:
        by_domain: dict[str, list[str]] = {}
        for address in recipients:
            by_domain.setdefault(recipient_domain(address), []).append(address)
        waits = [ensureDeferred(self._deliver_domain(envelope, domain, rcpts, body_path))
                 for domain, rcpts in by_domain.items()]
        results: dict[str, Outcome] = {}
        for _, part in await DeferredList(waits):
            results.update(part)
        return results

    async def _deliver_domain(self, envelope: Envelope, domain: str, recipients: list[str],
                              body_path: str) -> dict[str, Outcome]:
        answer = await self.resolver.lookup(domain)
        if answer.error is not None:
            return dict.fromkeys(recipients, answer.error)
        tls = "starttls" if self.require_tls else "opportunistic"
        targets = [Target(host=host.name, address=address, port=self.port, tls=tls,
                          verify=self.require_tls)
                   for host in answer.hosts for address in host.addresses]
        policies = dict.fromkeys((t.key for t in targets), self.policy)
        return await self.failover.deliver(envelope, recipients, body_path, targets, policies)


class MaildirTransport:
    """``maildir``: a local outbox; one file per message, whatever the recipients."""

    def __init__(self, config: TransportConfig, run_in_thread: Callable[..., Deferred]) -> None:
        self.name = config.name
        assert config.path is not None
        self.path = config.path
        self.run_in_thread = run_in_thread

    def deliver(self, envelope: Envelope, recipients: list[str], body_path: str) -> Deferred:
        d = self.run_in_thread(self._store, envelope.sender, recipients, body_path)
        d.addCallback(lambda name: dict.fromkeys(
            recipients, Outcome(250, f"2.0.0 stored in {self.path} as {name}", self.name)))
        d.addErrback(lambda f: dict.fromkeys(
            recipients, Outcome(451, f"4.3.0 cannot store in {self.path}: "
                                     f"{f.getErrorMessage()}", self.name)))
        return d

    def _store(self, sender: str, recipients: list[str], body_path: str) -> str:
        os.makedirs(self.path, exist_ok=True)
        with open_body(body_path) as body:
            return deliver_to_maildir(self.path, sender, recipients, body)
