"""The upstream that ``POST /api/relay/test`` should try: the one in the request (the simple
``{host, port, username, password, use_tls}`` shape, or preset/tls), checked by the same code
as the config file, or the saved one."""

from __future__ import annotations

from typing import Any

from relaymail.config import UPSTREAM_KEYS, Config, ConfigError, UpstreamConfig, _Check
from relaymail.config import validate_upstream as check_upstream
from relaymail.relay.connector import Target
from relaymail.relay.transports import target_from_upstream


def saved_upstream(config: Config, transport: str | None = None,
                   index: int = 0) -> UpstreamConfig | None:
    for name, t in config.transports.items():
        if (transport is None or name == transport) and t.upstreams:
            return t.upstreams[index] if index < len(t.upstreams) else None
    return None


def requested_upstream(body: dict[str, Any], config: Config) -> UpstreamConfig:
    """Raise ValueError with a message naming the field when the request is unusable."""
    saved = saved_upstream(config, body.get("transport"), int(body.get("index", 0) or 0))
    if "host" not in body and "preset" not in body:
        if saved is None:
            raise ValueError("no upstream given and none configured")
        return saved
    item = {k: v for k, v in body.items() if k in UPSTREAM_KEYS and v not in (None, "")}
    if "tls" not in item and "use_tls" in body:
        item["tls"] = ("implicit" if int(body.get("port") or 0) == 465 else "starttls") \
            if body["use_tls"] else "none"
    if "password" not in item and saved is not None and saved.password and \
            (saved.host, saved.username) == (item.get("host", saved.host), item.get("username")):
        item["password"] = saved.password  # the console never shows it; unchanged means same
    try:
        return check_upstream(_Check(config.path), item, "upstream")
    except ConfigError as e:  # without the value: it may be the password
        raise ValueError(f"{e.key}: {e.problem}") from None


def probe_target(upstream: UpstreamConfig) -> Target:
    return target_from_upstream(upstream)
