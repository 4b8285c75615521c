"""``GET|POST /api/relay/config``: the upstream the catch-all route relays through, in the
simple shape ``{enabled, host, port, username, password, use_tls}`` plus preset, TLS mode and
the full upstream list.  Passwords are write-only: GET masks them, and a POST (or a
connection test) without one keeps the saved password of the same username, but only for
the same host, port, TLS mode and certificate check: pointed anywhere else, the password
must be sent again (400 otherwise).  So are an upstream's ``oauth2.client_secret`` and
``oauth2.refresh_token``: GET says only ``client_secret_set`` and ``refresh_token_set``, and
a POST without them keeps the saved ones (same username and client_id, same token_url and
tenant, same destination).

A change is applied to the config *document* (the JSON file as written, not the merged
defaults), validated by the same code as startup, saved atomically with the previous
version kept as ``<file>.bak``, and then applied to the running relay.  So an upstream with
credentials and ``tls`` ``opportunistic`` or ``none``, or ``verify: false``, is refused (400)
with the startup error unless the request sets ``allow_insecure_auth: true`` for it; that
flag is not kept from the saved upstream when a change leaves it out."""

from __future__ import annotations

import copy
import os
import shutil
from typing import Any

from relaymail.config import (
    DEFAULTS,
    UPSTREAM_KEYS,
    Check,
    Config,
    ConfigError,
    UpstreamConfig,
    config_from_document,
    read_json_file,
)
from relaymail.config import validate_upstream as check_upstream
from relaymail.relay.presets import PRESETS
from relaymail.spool.safeio import write_json_atomically

MASK = "********"
PROVIDER = "provider"  # the transport the console creates when there is none


def catch_all(routes: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((r for r in routes if "*" in r.get("domains", [])), None)


def relay_transport_name(config: Config) -> str | None:
    """The smarthost transport mail goes through by default, or the first smarthost one."""
    route = next((r for r in config.routes if "*" in r.domains), None)
    if route is not None and config.transports[route.transport].type == "smarthost":
        return route.transport
    return next((n for n, t in config.transports.items() if t.type == "smarthost"), None)


RATE_UNIT = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "d"}


def rate_text(rate: tuple[int, float] | None) -> str | None:
    """``max_rate`` as the config file spells it (``"100/min"``), so it can be sent back."""
    if rate is None:
        return None
    count, seconds = rate
    return f"{count}/{RATE_UNIT.get(seconds, 's')}" if seconds in RATE_UNIT else \
        f"{count}/s"


def preset_overrides(upstream: Any) -> list[str]:
    """The fields of a preset upstream that differ from the preset's values."""
    preset = PRESETS.get(upstream.preset) if upstream.preset else None
    if preset is None:
        return []
    values = preset.as_upstream()
    return [k for k in ("host", "port", "tls") if k in values
            and getattr(upstream, k) != values[k]]


def masked(upstream: Any) -> dict[str, Any]:
    return {"host": upstream.host, "port": upstream.port, "tls": upstream.tls,
            "verify": upstream.verify, "allow_insecure_auth": upstream.allow_insecure_auth,
            "ca_file": upstream.ca_file, "helo": upstream.helo,
            "bounce_sender": upstream.bounce_sender,
            "username": upstream.username,
            "password": MASK if upstream.password else None, "preset": upstream.preset,
            "overrides": preset_overrides(upstream),
            "max_rate": rate_text(upstream.max_rate),
            "max_connections": upstream.max_connections,
            "oauth2": None if upstream.oauth2 is None else oauth2_view(upstream.oauth2)}


OAUTH2_SECRETS = ("client_secret", "refresh_token")


def oauth2_view(conf: Any) -> dict[str, Any]:
    """The oauth2 settings as the console shows them: the secrets only as ``..._set``."""
    view = {k: getattr(conf, k) for k in ("token_url", "client_id", "tenant", "grant",
                                          "scope", "mechanism", "authorize_url",
                                          "device_url")}
    return {**view, **{f"{k}_set": bool(getattr(conf, k)) for k in OAUTH2_SECRETS}}


def routing_view(config: Config) -> dict[str, Any]:
    """The routes (in order, first match wins) and the transports they may name."""
    return {"routes": [{"domains": list(r.domains), "transport": r.transport,
                        **({"senders": list(r.senders)} if r.senders else {}),
                        **({"credentials": list(r.credentials)} if r.credentials else {})}
                       for r in config.routes],
            "transports": {n: {"type": t.type, "upstreams": len(t.upstreams)}
                           for n, t in config.transports.items()}}


def relay_view(config: Config) -> dict[str, Any]:
    name = relay_transport_name(config)
    route = next((r for r in config.routes if "*" in r.domains), None)
    if name is None:
        return {"enabled": False, "transport": None, "host": None, "port": None,
                "username": None, "password": None, "use_tls": None, "preset": None,
                "tls": None, "oauth2": None, "upstreams": [], **routing_view(config)}
    upstreams = [masked(u) for u in config.transports[name].upstreams]
    primary = upstreams[0]
    return {"enabled": route is not None and route.transport == name, "transport": name,
            **{k: primary[k] for k in ("host", "port", "username", "password", "preset",
                                       "tls", "oauth2")},
            "use_tls": primary["tls"] != "none", "upstreams": upstreams,
            **routing_view(config)}


def upstream_from_simple(body: dict[str, Any]) -> dict[str, Any]:
    item = {k: v for k, v in body.items() if k in UPSTREAM_KEYS and v not in (None, "")}
    if isinstance(item.get("oauth2"), dict):  # the console sends empty fields as ""
        item["oauth2"] = {k: v for k, v in item["oauth2"].items()
                          if v not in (None, "", MASK) and not k.endswith("_set")}
    if "tls" not in item and "use_tls" in body:
        port = int(body.get("port") or 0)
        item["tls"] = ("implicit" if port == 465 else "starttls") if body["use_tls"] else "none"
    return item


def destination(item: dict[str, Any], check: Check) -> dict[str, Any]:
    """Where an upstream's secrets would go: host, port, TLS mode and certificate check,
    with a preset's values filled in the way validation fills them."""
    preset = PRESETS.get(item["preset"]) if isinstance(item.get("preset"), str) else None
    d = {**preset.as_upstream(), **item} if preset is not None else item
    host, ca_file = d.get("host"), d.get("ca_file")
    return {"host": host.lower().rstrip(".") if isinstance(host, str) else host,
            "port": d.get("port", 587), "tls": d.get("tls", "starttls"),
            "verify": d.get("verify", True) is not False,
            "ca_file": check.path(ca_file, "ca_file") if isinstance(ca_file, str) and ca_file
            else None}


def same_destination(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """May a saved secret go where ``new`` points?  The same host, port and TLS mode, and a
    certificate check no weaker than the saved one (the system's roots, or the saved
    ca_file, when the saved upstream checks)."""
    if any(new[k] != old[k] for k in ("host", "port", "tls")):
        return False
    if not old["verify"]:
        return True
    return new["verify"] and new["ca_file"] in (None, old["ca_file"])


def keep_passwords(new: list[dict[str, Any]], old: list[dict[str, Any]],
                   check: Check) -> None:
    """A password left out (or sent back masked) stays what it was for the same username
    at the same destination (``same_destination``).  For that username at another port,
    with TLS off or the certificate unchecked, it must be sent again (ValueError): a
    request must not send the saved password to a listener of its choosing."""
    for item in new:
        if item.get("password") in (None, "", MASK):
            item.pop("password", None)
            where = destination(item, check)
            logins = [o for o in old if o.get("password")
                      and o.get("username") == item.get("username")
                      and destination(o, check)["host"] == where["host"]]
            same = next((o for o in logins if same_destination(where, destination(o, check))),
                        None)
            if same is not None:
                item["password"] = same["password"]
            elif logins:
                raise ValueError(
                    f"password: the saved password of {item.get('username')} at "
                    f"{where['host']} is used only with the same port, TLS mode and "
                    f"certificate check; send the password again to use it with port "
                    f"{where['port']}, tls {where['tls']}"
                    f"{'' if where['verify'] else ', verify false'}")
        keep_oauth2_secrets(item, old, check)


def keep_oauth2_secrets(item: dict[str, Any], old: list[dict[str, Any]],
                        check: Check) -> None:
    """An oauth2 client_secret or refresh_token left out stays what it was for the same
    username and client_id, token endpoint (token_url, tenant) and SMTP destination; for
    the same username and client_id elsewhere it must be sent again (ValueError)."""
    conf = item.get("oauth2")
    if not isinstance(conf, dict):
        return
    missing = [k for k in OAUTH2_SECRETS if conf.get(k) in (None, "", MASK)]
    for key in missing:
        conf.pop(key, None)
    where = destination(item, check)
    logins = [o for o in old if isinstance(o.get("oauth2"), dict)
              and o.get("username") == item.get("username")
              and destination(o, check)["host"] == where["host"]
              and o["oauth2"].get("client_id") == conf.get("client_id")]
    same = next((o["oauth2"] for o in logins
                 if same_destination(where, destination(o, check))
                 and token_endpoint(o["oauth2"]) == token_endpoint(conf)),
                None)
    for key in missing:
        if same is not None and same.get(key):
            conf[key] = same[key]
        elif any(o["oauth2"].get(key) for o in logins):
            raise ValueError(
                f"oauth2.{key}: the saved one is used only with the same token_url, tenant, "
                f"port, TLS mode and certificate check; send it again to use it here")


def token_endpoint(conf: dict[str, Any]) -> str:
    """Where the secrets go: the token_url when given, else the preset's URL, which the
    tenant decides."""
    return conf.get("token_url") or f"preset tenant {conf.get('tenant') or ''}"


def saved_upstream(config: Config, transport: str | None = None,
                   index: int = 0) -> UpstreamConfig | None:
    for name, t in config.transports.items():
        if (transport is None or name == transport) and t.upstreams:
            return t.upstreams[index] if index < len(t.upstreams) else None
    return None


def requested_upstream(body: dict[str, Any], config: Config) -> UpstreamConfig:
    """What ``POST /api/relay/test`` tries: the upstream in the request, checked like the
    config file (a left-out password is the saved one), or the saved upstream itself.
    ValueError names the field when the request is unusable."""
    saved = saved_upstream(config, body.get("transport"), int(body.get("index", 0) or 0))
    if "host" not in body and "preset" not in body:
        if saved is None:
            raise ValueError("no upstream given and none configured")
        return saved
    item = upstream_from_simple(body)
    check = Check(config.path)
    if saved is not None:
        keep_passwords([item], [{"host": saved.host, "port": saved.port, "tls": saved.tls,
                                 "verify": saved.verify, "ca_file": saved.ca_file,
                                 "username": saved.username, "password": saved.password,
                                 "oauth2": saved_oauth2_secrets(saved)}], check)
    try:
        return check_upstream(check, item, "upstream")
    except ConfigError as e:
        raise request_error(e) from None


def saved_oauth2_secrets(saved: UpstreamConfig) -> dict[str, Any] | None:
    """What keep_oauth2_secrets needs of a saved upstream's oauth2 settings."""
    if saved.oauth2 is None:
        return None
    return {"client_id": saved.oauth2.client_id, "token_url": saved.oauth2.token_url,
            "tenant": saved.oauth2.tenant,
            **{k: getattr(saved.oauth2, k) for k in OAUTH2_SECRETS}}


def request_error(e: ConfigError) -> ValueError:
    """The config problem for a 400 answer, without the value: it may be a password."""
    return ValueError(f"{e.key}: {e.problem}")


def changed_document(document: dict[str, Any], body: dict[str, Any],
                     config: Config) -> dict[str, Any]:
    """The config document with the request applied (not yet validated)."""
    doc = copy.deepcopy(document)
    routes = doc.setdefault("routes", copy.deepcopy(DEFAULTS["routes"]))
    transports = doc.setdefault("transports", copy.deepcopy(DEFAULTS["transports"]))
    if "routes" in body:
        doc["routes"] = routes = changed_routes(body["routes"])
        if not {"upstreams", "host", "preset", "enabled"} & set(body):
            return doc  # only the routes change
    name = body.get("transport") or relay_transport_name(config) or PROVIDER
    current = transports.setdefault(name, {"type": "smarthost", "upstreams": []})
    if current.get("type") != "smarthost":
        raise ValueError(f"transport {name!r} is not a smarthost transport")
    old = current.get("upstreams", [])
    if "upstreams" in body:
        if not isinstance(body["upstreams"], list) or not body["upstreams"]:
            raise ValueError("upstreams: expected a non-empty list")
        new = [upstream_from_simple(u) if isinstance(u, dict) else u
               for u in body["upstreams"]]
    elif "host" in body or "preset" in body:
        new = [upstream_from_simple(body), *old[1:]]  # the primary changes, backups stay
    else:
        new = old
    keep_passwords(new, old, Check(config.path))
    current["upstreams"] = new
    if "enabled" in body:
        set_enabled(routes, transports, name, bool(body["enabled"]))
    return doc


def changed_routes(given: Any) -> list[dict[str, Any]]:
    """The routes of a request (``[{"domains": [...], "transport": name}, ...]``, senders
    and credentials optional), shape-checked; validation names the rest."""
    if not isinstance(given, list) or not given:
        raise ValueError("routes: expected a non-empty list")
    out = []
    for i, item in enumerate(given):
        if not isinstance(item, dict) or set(item) - {"domains", "transport", "senders",
                                                     "credentials"}:
            raise ValueError(f"routes[{i}]: expected domains, transport, senders, "
                             "credentials")
        out.append({k: v for k, v in item.items() if v not in (None, [])})
    return out


def set_enabled(routes: list[dict[str, Any]], transports: dict[str, Any], name: str,
                enabled: bool) -> None:
    """Enabled: the catch-all route relays through ``name``; disabled: through the first
    local or direct transport (the outbox in the sample config)."""
    route = catch_all(routes)
    if route is None:
        route = {"domains": ["*"], "transport": name}
        routes.append(route)
    if enabled:
        route["transport"] = name
        return
    other = next((n for n, t in transports.items() if t.get("type") in ("maildir", "mx")),
                 None)
    if other is None:
        raise ValueError("enabled: false needs a maildir or mx transport to route to instead")
    route["transport"] = other


def save_document(path: str, document: dict[str, Any]) -> None:
    """Thread: keep the previous file as ``.bak``, then replace it atomically (0600: it
    holds upstream passwords)."""
    if os.path.exists(path):
        shutil.copy2(path, path + ".bak")
        os.chmod(path + ".bak", 0o600)
    write_json_atomically(path, document)


def update(path: str, body: Any, config: Config) -> tuple[Config, dict[str, Any]]:
    """Thread: read the file, apply, validate like startup, save; the new Config and view.
    ValueError carries the message for a 400."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    document = read_json_file(path)
    new_document = changed_document(document, body, config)
    try:
        new_config = config_from_document(new_document, path)
    except ConfigError as e:
        raise request_error(e) from None
    save_document(path, new_document)
    return new_config, relay_view(new_config)


def set_admin_hash(path: str, digest: str) -> Config:
    """Thread: the config file with ``web.admin_password_hash`` set, validated like startup
    and saved (the previous file kept as ``.bak``); the new Config."""
    try:
        document = read_json_file(path)
    except ConfigError as e:
        raise request_error(e) from None
    web = document.setdefault("web", {})
    if not isinstance(web, dict):
        raise ValueError("web: expected an object")
    web["admin_password_hash"] = digest
    try:
        config = config_from_document(document, path)
    except ConfigError as e:
        raise request_error(e) from None
    save_document(path, document)
    return config
