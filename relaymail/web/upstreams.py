"""What the running relay sends through now, for ``/api/relay/status``, ``/health`` and the
dashboard: the transports the routes (and their fallbacks) reach, the upstreams of those
transports with their health (relaymail.relay.health), and where the catch-all route's mail
goes.

An upstream no route reaches any more (the relay was disabled, an upstream removed) is not
listed, whatever the health board still remembers of it; a configured upstream no delivery
has tried yet is listed as ``unknown``.
"""

from __future__ import annotations

from typing import Any

from relaymail.relay.manager import RelayManager


def transports_in_use(manager: RelayManager) -> list[str]:
    """Transport names the routes reach, with their fallbacks, in route order."""
    names: list[str] = []
    for route in manager.router.routes:
        current: str | None = route.transport
        while current is not None and current not in names:
            names.append(current)
            current = manager.fallbacks.get(current)
    return names


def upstreams_in_use(manager: RelayManager) -> list[dict[str, Any]]:
    """Each upstream of a transport in use, in failover order, with its health; for mx
    transports, the MX hosts the health board has seen."""
    board = manager.health
    now = manager.now()
    known = dict(board.upstreams) if board is not None else {}
    rows: list[dict[str, Any]] = []
    listed: set[str] = set()
    mx_in_use = []
    for name in transports_in_use(manager):
        transport = manager.transports.get(name)
        targets = getattr(transport, "targets", None)
        if targets is None:
            if getattr(transport, "resolver", None) is not None:
                mx_in_use.append(name)
            continue
        for index, target in enumerate(targets):
            label = target.label
            if label in listed:
                continue
            listed.add(label)
            health = known.get(label)
            row: dict[str, Any] = (health.as_dict(now) if health is not None else
                                   {"upstream": label, "state": "unknown", "down": False,
                                    "reachable": None, "consecutive_failures": 0,
                                    "last_success": None, "last_failure": None,
                                    "last_error": None, "messages_relayed": 0,
                                    "sessions_opened": 0, "down_until": None})
            rows.append({**row, "transport": name, "index": index})
    configured = {t.label for t in all_targets(manager)}
    for name in mx_in_use:
        for label, health in known.items():
            if label not in listed and label not in configured:
                listed.add(label)
                rows.append({**health.as_dict(now), "transport": name, "index": None})
    return rows


def all_targets(manager: RelayManager) -> list[Any]:
    return [t for transport in manager.transports.values()
            for t in getattr(transport, "targets", ())]


def destination(manager: RelayManager) -> dict[str, Any]:
    """Where the catch-all route's mail goes now: a local outbox, MX hosts, or upstreams."""
    route = next((r for r in manager.router.routes if "*" in r.domains), None)
    if route is None:
        return {"transport": None, "type": None}
    transport = manager.transports.get(route.transport)
    out: dict[str, Any] = {"transport": route.transport}
    if transport is None:
        out["type"] = None
    elif getattr(transport, "targets", None) is not None:
        out["type"] = "upstreams"
        out["upstreams"] = [t.label for t in transport.targets]  # type: ignore[attr-defined]
    elif getattr(transport, "resolver", None) is not None:
        out["type"] = "mx"
    else:
        out["type"] = "maildir"
        out["path"] = getattr(transport, "path", None)
    return out
