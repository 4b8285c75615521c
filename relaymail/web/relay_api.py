"""``/api/relay``: the upstream settings (read, change and apply live, test a connection)
and the relay's status (upstream health, queue counts, counters, policy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from relaymail.config import Config, UpstreamConfig
from relaymail.logs import Logger
from relaymail.relay.manager import RelayManager
from relaymail.relay.oauth2 import registry_for
from relaymail.relay.probe import Probe
from relaymail.relay.transports import target_from_upstream
from relaymail.web.applier import ConfigApplier
from relaymail.web.errors import classify
from relaymail.web.http import json_body, json_reply
from relaymail.web.relayconfig import relay_view, requested_upstream
from relaymail.web.routing import SubApp, route
from relaymail.web.session import who
from relaymail.web.upstreams import destination, upstreams_in_use

log = Logger(namespace="relaymail.web")

OBJ: dict[str, Any] = {"type": "object"}
UPSTREAM = {"type": "object", "properties": {
    "enabled": {"type": "boolean"}, "host": {"type": "string"},
    "port": {"type": "integer"}, "username": {"type": ["string", "null"]},
    "password": {"type": ["string", "null"], "description": "write-only; GET shows ********"},
    "use_tls": {"type": "boolean"}, "preset": {"type": ["string", "null"]},
    "tls": {"enum": ["starttls", "implicit", "opportunistic", "none"]},
    "upstreams": {"type": "array", "items": OBJ}}}


async def probe(reactor: IReactorTime, config: Config,
                upstream: UpstreamConfig) -> dict[str, Any]:
    """Connect to ``upstream`` step by step (relaymail.relay.probe); the steps and the
    upstream tried."""
    result = await Probe(reactor, target_from_upstream(upstream), config.hostname,
                         float(config.delivery.connect_timeout),
                         registry_for(reactor, config.spool_dir)).run()
    result["upstream"] = {"host": upstream.host, "port": upstream.port,
                          "tls": upstream.tls, "username": upstream.username}
    for step in result["steps"]:  # message codes for the console, like the answer's error
        known = classify(step.get("error") or "")
        if known is not None:
            step["code"], step["params"] = known
    return result


class RelayConfigAPI(SubApp):
    unavailable = "relay settings are not managed here"

    def __init__(self, applier: ConfigApplier, reactor: IReactorTime) -> None:
        self.applier = applier
        self.reactor = reactor  # for connection tests

    @route("get", "/api/relay/config", "The relay upstream (simple shape, passwords masked)")
    def relay_config(self, request: IRequest) -> bytes:
        return json_reply(request, relay_view(self.applier.current()))

    @route("post", "/api/relay/config", "Change the relay upstream; validated, saved with a "
           ".bak, applied without restart", body=UPSTREAM)
    async def relay_config_update(self, request: IRequest) -> bytes:
        """Validate like startup, save atomically (previous file kept as .bak), apply to
        the next delivery; no restart."""
        try:
            body = json_body(request)
            view = await self.applier.apply(body)
        except ValueError as e:
            return json_reply(request, {"error": str(e)}, 400)
        log.info("web: relay settings changed by {who}: {what}; mail now goes through "
                 "{transport}", who=who(request), what=change_summary(body, view),
                 transport=view.get("transport") if view.get("enabled") else "the outbox")
        return json_reply(request, {**view, "applied": True, "restart_required": []})

    @route("post", "/api/relay/test", "Connect step by step (TCP, banner, EHLO, STARTTLS, "
           "AUTH, QUIT) to the given or saved upstream; a test that works clears that "
           "upstream's error and open breaker", body=UPSTREAM)
    async def relay_test(self, request: IRequest) -> bytes:
        """Connect to the given (or saved) upstream step by step; 200 with the steps whether
        or not it worked, 400 for an unusable request."""
        config = self.applier.current()
        try:
            body = json_body(request)
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            upstream = requested_upstream(body, config)
        except ValueError as e:
            return json_reply(request, {"error": str(e)}, 400)
        result = await probe(self.reactor, config, upstream)
        board = self.applier.manager.health
        label = target_from_upstream(upstream).label
        if result["ok"] and board is not None and label in board.upstreams:
            board.answered(label)  # it works now: its error and open breaker are cleared
        return json_reply(request, result)


class RelayStatusAPI(SubApp):
    def __init__(self, manager: RelayManager, policy: Callable[[], dict[str, Any]]) -> None:
        self.manager = manager
        self.policy = policy  # rate-limit and lockout counters

    @route("get", "/api/relay/status", "The upstreams in use with their health (state up, "
           "down or unknown), where mail goes now, queue counts, counters, policy")
    def relay_status(self, request: IRequest) -> bytes:
        manager = self.manager
        pool = manager.pool
        return json_reply(request, {
            "upstreams": upstreams_in_use(manager),
            "destination": destination(manager),
            "queue": {"queued": len(manager.queued), "active": len(manager.active),
                      "hold": manager.spool.count("hold"),
                      "failed": manager.spool.count("failed")},
            "counters": dict(manager.counters),
            "connections_opened": pool.connections_opened if pool is not None else 0,
            "policy": self.policy(),
        })


def change_summary(body: Any, view: dict[str, Any]) -> str:
    """What a settings change touched, for the log (never a secret)."""
    if not isinstance(body, dict):
        return "nothing"
    keys = sorted(k for k in body if k not in ("password", "oauth2"))
    upstreams = ", ".join(f"{u['host']}:{u['port']}" for u in view.get("upstreams", []))
    parts = [f"fields {', '.join(keys) or 'none'}"]
    if "password" in body or "oauth2" in body:
        parts.append("secrets sent")
    return "; ".join(parts) + f"; upstreams now [{upstreams}]"
