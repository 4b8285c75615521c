"""The ``dkim`` section: the signing keys, chosen by the From domain at acceptance.  The
key files themselves are read by relaymail.policy.dkim at startup."""

from __future__ import annotations

from typing import Any

from relaymail.config.check import Check
from relaymail.config.defaults import fill

DKIM_KEY = "dkim[]"
DKIM_KEYS = {"domain", "selector", "private_key", "algorithm"}
ALGORITHMS = ("rsa-sha256", "ed25519-sha256")


def validate_dkim(c: Check, value: Any) -> list[dict[str, Any]]:
    """The ``dkim`` list, each entry with its domain lower-cased and its key file's path
    made absolute."""
    return [validate_dkim_key(c, item, f"dkim[{i}]")
            for i, item in enumerate(c.array(value, "dkim"))]


def validate_dkim_key(c: Check, item: Any, key: str) -> dict[str, Any]:
    """One ``dkim[N]``: domain, selector, private_key, algorithm."""
    d = fill(DKIM_KEY, c.obj(item, key, DKIM_KEYS))
    return {
        "domain": c.string(d.get("domain"), f"{key}.domain").lower(),
        "selector": c.string(d.get("selector"), f"{key}.selector"),
        "private_key": c.path(d.get("private_key"), f"{key}.private_key"),
        "algorithm": c.choice(d["algorithm"], f"{key}.algorithm", ALGORITHMS),
    }
