"""Checks made once at startup, after validation: they look at the filesystem (TLS files)
or at the whole config (no two listeners on one port)."""

from __future__ import annotations

import os
from collections.abc import Callable

from relaymail.config.check import ConfigError
from relaymail.config.load import Config
from relaymail.config.smtp import endpoint_address


def check_runtime(config: Config, readable: Callable[[str], bool] | None = None) -> None:
    """Checks that need the filesystem: TLS files readable, no two listeners on one port."""
    readable = readable or (lambda p: os.access(p, os.R_OK))
    tls = config.smtp.tls
    for key, path in (("smtp.tls.certificate", tls.certificate),
                      ("smtp.tls.private_key", tls.private_key)):
        if path is None or readable(path):
            continue
        if tls.self_signed and not os.path.exists(path):
            continue
        raise ConfigError(config.path, key, "file is missing or unreadable", path)
    check_port_overlap(config)


def check_port_overlap(config: Config) -> None:
    """Two listeners (or a listener and the web console) on the same address and port."""
    seen: dict[tuple[int, str], str] = {}
    for key, text in listening_endpoints(config):
        port, interface, kind = endpoint_address(text)
        if kind == "unix" or not port:
            continue
        for other_iface in {interface, ""} if interface else set():
            if (port, other_iface) in seen:
                raise ConfigError(config.path, key,
                                  f"port {port} is already used by {seen[(port, other_iface)]}",
                                  text)
        if not interface and any(p == port for p, _ in seen):
            other = next(v for (p, _), v in seen.items() if p == port)
            raise ConfigError(config.path, key, f"port {port} is already used by {other}", text)
        seen[(port, interface)] = key


def listening_endpoints(config: Config) -> list[tuple[str, str]]:
    """(key path, endpoint string) of every SMTP listener and of the enabled console."""
    endpoints = [(f"smtp.listeners[{i}].endpoint", listener.endpoint)
                 for i, listener in enumerate(config.smtp.listeners)]
    if config.web.enabled:
        endpoints.append(("web.endpoint", config.web.endpoint))
    return endpoints
