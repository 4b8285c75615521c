"""The defaults table (relaymail.config.defaults.TABLE) is the one place defaults live:
docs/configuration.md shows each of them, the loaded config and the dataclasses agree with
it, secrets stay out of reprs, and the config package is a leaf."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

import pytest

from relaymail.config import (
    DEFAULTS,
    OAuth2Config,
    RouteConfig,
    SenderRewrite,
    TransportConfig,
    UpstreamConfig,
    load_config,
)
from relaymail.config.defaults import TABLE, is_item_path, item_defaults

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")

# key path prefix -> (heading of the docs section, header of the table's key column)
DOC_TABLES = {
    "": ("Top level", "key"),
    "smtp": ("`smtp`", "key"),
    "smtp.listeners[]": ("A listener", "key"),
    "routes[]": ("`routes` and `transports`", "route key"),
    "transports.*": ("`routes` and `transports`", "transport key"),
    "transports.*.upstreams[]": ("`routes` and `transports`", "upstream key"),
    "transports.*.upstreams[].oauth2": ("`oauth2`", "key"),
    "transports.*.upstreams[].sender_rewrite": ("`sender_rewrite`", "key"),
    "delivery": ("`delivery`", "key"),
    "dkim[]": ("`dkim`", "key"),
    "rate_limits": ("`rate_limits`", "key"),
    "rate_limits.auth_failures": ("`rate_limits`", "auth_failures key"),
    "web": ("`web`", "key"),
    "webhooks[]": ("`webhooks`", "webhook key"),
    "suppression": ("`suppression`", "key"),
    "archive": ("`archive`", "key"),
    "accounts": ("`accounts`", "key"),
    "log": ("`log`", "key"),
}


def cells(line: str) -> list[str]:
    """The cells of a Markdown table row (``\\|`` inside a cell is not a separator)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def doc_tables(text: str) -> dict[tuple[str, str], list[list[str]]]:
    """(heading, first header cell) -> the table's rows, for tables with a default column."""
    tables: dict[tuple[str, str], list[list[str]]] = {}
    heading, lines = "", text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("|") and not lines[i - 1].startswith("|"):
            header = cells(line)
            if len(header) > 1 and header[1] == "default":
                rows = []
                for row in lines[i + 2:]:
                    if not row.startswith("|"):
                        break
                    rows.append(cells(row))
                tables[(heading, header[0])] = rows
    return tables


def split_path(path: str) -> tuple[str, str]:
    """``smtp.tls.certificate`` -> ("smtp", "tls.certificate"): the longest table prefix."""
    prefixes = [p for p in DOC_TABLES if p and path.startswith(p + ".")]
    prefix = max(prefixes, key=len, default="")
    return prefix, path[len(prefix) + 1:] if prefix else path


def shown(value: Any, cell: str) -> bool:
    """The docs' default cell shows ``value``: as JSON in backticks (``null`` or "none" for
    None)."""
    if value is None:
        return "`null`" in cell or re.search(r"\bnone\b", cell, re.IGNORECASE) is not None
    return f"`{json.dumps(value)}`" in cell


@pytest.fixture(scope="module")
def tables() -> dict[tuple[str, str], list[list[str]]]:
    with open(DOCS, encoding="utf-8") as f:
        return doc_tables(f.read())


@pytest.mark.parametrize("path", list(TABLE))
def test_every_default_is_documented(path: str, tables: dict[Any, list[list[str]]]) -> None:
    prefix, key = split_path(path)
    where = DOC_TABLES[prefix]
    assert where in tables, f"docs/configuration.md has no table {where} for {path}"
    rows = [row for row in tables[where] if key in re.findall(r"`([^`]+)`", row[0])]
    assert rows, f"docs/configuration.md: no row for {key!r} in the table {where} ({path})"
    assert shown(TABLE[path], rows[0][1]), \
        f"docs/configuration.md: {path} shows {rows[0][1]!r}, the default is " \
        f"{json.dumps(TABLE[path])}"


def test_every_docs_table_is_walked(tables: dict[Any, list[list[str]]]) -> None:
    """A docs table with a default column that no prefix maps to would go unchecked."""
    assert set(DOC_TABLES.values()) <= set(tables)


def test_defaults_document_is_the_tables_file_keys() -> None:
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and key != "transports":
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value

    walk(DEFAULTS, "")
    assert flat == {p: v for p, v in TABLE.items() if not is_item_path(p)}


def test_an_empty_file_gives_the_defaults() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "relay.json")
        with open(path, "w") as f:
            f.write("{}")
        config = load_config(path, environ={})
    assert config.hostname == TABLE["hostname"]
    assert config.smtp.max_recipients == TABLE["smtp.max_recipients"]
    assert config.smtp.strip_characters == TABLE["smtp.strip_characters"].encode()
    assert config.delivery.retry_schedule == tuple(TABLE["delivery.retry_schedule"])
    assert config.rate_limits.auth_failures.window == TABLE["rate_limits.auth_failures.window"]
    assert config.web.max_body_size == TABLE["web.max_body_size"]
    assert config.log.level == TABLE["log.level"]
    outbox = config.transports["outbox"]
    assert (outbox.port, outbox.received) == (TABLE["transports.*.port"],
                                              TABLE["transports.*.received"])
    assert config.routes[0].senders == tuple(TABLE["routes[].senders"])


@pytest.mark.parametrize(("cls", "prefix"), [
    (RouteConfig, "routes[]"),
    (TransportConfig, "transports.*"),
    (UpstreamConfig, "transports.*.upstreams[]"),
    (OAuth2Config, "transports.*.upstreams[].oauth2"),
    (SenderRewrite, "transports.*.upstreams[].sender_rewrite"),
])
def test_dataclass_defaults_come_from_the_table(cls: type, prefix: str) -> None:
    table = item_defaults(prefix)
    for field in dataclasses.fields(cls):
        if field.default is dataclasses.MISSING:
            continue
        assert field.name in table, f"{cls.__name__}.{field.name} has a default not in TABLE"
        expected = table[field.name]
        expected = tuple(expected) if isinstance(expected, list) else expected
        assert field.default == expected, f"{cls.__name__}.{field.name}"


def test_reprs_never_show_secrets() -> None:
    oauth2 = OAuth2Config(token_url="https://login.example/token", client_id="cid",
                          client_secret="client-secret-xyz", refresh_token="refresh-xyz")
    upstream = UpstreamConfig(host="smtp.example", port=587, tls="starttls",
                              username="me@example.com", password="hunter2-password",
                              oauth2=oauth2)
    for text in (repr(oauth2), repr(upstream), str(upstream), repr((upstream,)),
                 repr(TransportConfig(name="t", type="smarthost", upstreams=(upstream,)))):
        for secret in ("client-secret-xyz", "refresh-xyz", "hunter2-password"):
            assert secret not in text
    assert "smtp.example" in repr(upstream) and "cid" in repr(oauth2)


def test_config_is_a_leaf() -> None:
    """relaymail.config imports nothing from the relay, smtp, policy or web packages."""
    code = ("import json, sys, relaymail.config; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('relaymail.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    loaded = json.loads(out)
    assert [m for m in loaded if not m.startswith("relaymail.config")] == []
