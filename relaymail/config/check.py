"""The error every config problem raises, and :class:`Check`, the typed accessors the
section validators read values through (each failure names the key path and the value)."""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration problem, phrased as ``file: key.path: problem (got value)``."""

    def __init__(self, source: str, key: str, problem: str, value: Any = None) -> None:
        self.source, self.key, self.problem, self.value = source, key, problem, value
        shown = "" if value is None else f" (got {json.dumps(value, default=str)})"
        where = f"{key}: " if key else ""
        super().__init__(f"{source}: {where}{problem}{shown}")


class Check:
    """Small typed accessors that raise ConfigError naming the key path and value.

    Relative paths are resolved against the directory of ``source`` (the config file)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.base = os.path.dirname(os.path.abspath(source))

    def fail(self, key: str, problem: str, value: Any = None) -> ConfigError:
        """The error to raise for ``key`` (the caller raises it)."""
        return ConfigError(self.source, key, problem, value)

    def integer(self, value: Any, key: str, minimum: int = 0) -> int:
        """An int (not a bool) of at least ``minimum``."""
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"expected an integer >= {minimum}", value)
        return value

    def port(self, value: Any, key: str) -> int:
        """A TCP port, 1-65535."""
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise self.fail(key, "expected a port number 1-65535", value)
        return value

    def number(self, value: Any, key: str, minimum: float = 0) -> float:
        """An int or float (not a bool) of at least ``minimum``, as a float."""
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.fail(key, f"expected a number >= {minimum}", value)
        return float(value)

    def boolean(self, value: Any, key: str) -> bool:
        """``true`` or ``false``."""
        if not isinstance(value, bool):
            raise self.fail(key, "expected true or false", value)
        return value

    def string(self, value: Any, key: str, allow_none: bool = False) -> str:
        """A non-empty string (or None with ``allow_none``)."""
        if value is None and allow_none:
            return None  # type: ignore[return-value]
        if not isinstance(value, str) or not value:
            raise self.fail(key, "expected a non-empty string", value)
        return value

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        """One of ``choices``."""
        if value not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}", value)
        return value

    def path(self, value: Any, key: str, allow_none: bool = False) -> str:
        """A file or directory name, made absolute relative to the config file's directory."""
        text = self.string(value, key, allow_none)
        if text is None:
            return None  # type: ignore[return-value]
        return os.path.normpath(os.path.join(self.base, os.path.expanduser(text)))

    def obj(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        """A JSON object whose keys are all in ``allowed``."""
        if not isinstance(value, dict):
            raise self.fail(key, "expected an object", value)
        for name in value:
            if name not in allowed:
                raise self.fail(f"{key}.{name}", "unknown key; see docs/configuration.md")
        return value

    def array(self, value: Any, key: str) -> list[Any]:
        """A JSON list."""
        if not isinstance(value, list):
            raise self.fail(key, "expected a list", value)
        return value

    def networks(self, value: Any, key: str) -> tuple[IPNetwork, ...]:
        """A list of IP networks (``10.0.0.0/8``; host bits allowed)."""
        out = []
        for i, item in enumerate(self.array(value, key)):
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except (TypeError, ValueError):
                raise self.fail(f"{key}[{i}]", "expected an IP network like 10.0.0.0/8", item)\
                    from None
        return tuple(out)
