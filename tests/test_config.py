"""Config loading: defaults, env overrides, relative paths, and a table of broken configs."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import pytest

from relaymail.config import ConfigError, check_runtime, load_config

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "etc", "relay.json")


def write(directory: str, data: Any, raw: str | None = None) -> str:
    path = os.path.join(directory, "relay.json")
    with open(path, "w") as f:
        f.write(raw if raw is not None else json.dumps(data))
    return path


def test_sample_config_loads() -> None:
    config = load_config(SAMPLE, environ={})
    assert config.smtp.listeners[0].endpoint == "tcp:2525:interface=127.0.0.1"
    assert config.spool_dir == os.path.normpath(os.path.join(HERE, "..", "var", "spool"))
    assert config.routes[0].transport == "outbox"


def test_container_config_loads_with_environment_overrides() -> None:
    """The image's config (Dockerfile): three listeners on all addresses, state on the volume,
    and the admin hash and hostname from ``docker run -e``."""
    container = os.path.join(HERE, "..", "etc", "container.json")
    config = load_config(container, environ={"RELAYMAIL_HOSTNAME": "relay.example.net",
                                             "RELAYMAIL_WEB_ADMIN_PASSWORD_HASH": "$2b$12$x"})
    assert [x.auth for x in config.smtp.listeners] == ["optional", "required", "required"]
    assert config.spool_dir == "/var/lib/relaymail/spool"
    assert config.credentials_file.startswith("/var/lib/relaymail/")
    assert (config.hostname, config.web.admin_password_hash) == ("relay.example.net", "$2b$12$x")


def test_defaults_for_an_empty_file(tmp_path: Any) -> None:
    config = load_config(write(str(tmp_path), {}), environ={})
    assert config.smtp.max_recipients == 100
    assert config.smtp.trusted_networks[0].with_prefixlen == "127.0.0.0/8"
    assert config.spool_dir == os.path.join(str(tmp_path), "var", "spool")


def test_environment_overrides(tmp_path: Any) -> None:
    env = {"RELAYMAIL_SMTP_MAX_RECIPIENTS": "7", "RELAYMAIL_HOSTNAME": "mx.example.com",
           "RELAYMAIL_SMTP_TRUSTED_NETWORKS": '["10.0.0.0/8"]', "RELAYMAIL_LOG_LEVEL": "debug"}
    config = load_config(write(str(tmp_path), {}), environ=env)
    assert config.smtp.max_recipients == 7
    assert config.hostname == "mx.example.com"
    assert [n.with_prefixlen for n in config.smtp.trusted_networks] == ["10.0.0.0/8"]
    assert config.log.level == "debug"


def test_bad_environment_override(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(str(tmp_path), {}), environ={"RELAYMAIL_SMTP_MAX_RECIPIENTS": "ten"})
    assert "smtp.max_recipients" in str(e.value) and '"ten"' in str(e.value)
    with pytest.raises(ConfigError, match="RELAYMAIL_NOPE"):
        load_config(write(str(tmp_path), {}), environ={"RELAYMAIL_NOPE": "1"})


def test_preset_fills_upstream(tmp_path: Any) -> None:
    data = {"transports": {"up": {"type": "smarthost", "upstreams": [
        {"preset": "tencent-ses", "username": "u", "password": "p"}]}},
        "routes": [{"domains": ["*"], "transport": "up"}]}
    upstream = load_config(write(str(tmp_path), data), environ={}).transports["up"].upstreams[0]
    assert (upstream.host, upstream.port, upstream.tls) == ("smtp.qcloudmail.com", 465, "implicit")


# (config, expected key path, expected words in the message)
BAD_CONFIGS: list[tuple[Any, str, str]] = [
    ({"smtp": {"max_recipients": "ten"}}, "smtp.max_recipients", '"ten"'),
    ({"smtp": {"max_recipients": 0}}, "smtp.max_recipients", "integer >= 1"),
    ({"smtp": {"max_message_size": True}}, "smtp.max_message_size", "true"),
    ({"smpt": {}}, "smpt", "unknown key"),
    ({"smtp": {"max_recipents": 5}}, "smtp.max_recipents", "unknown key"),
    ({"smtp": {"listeners": [{"endpoint": "tcp:abc"}]}}, "smtp.listeners[0].endpoint", "tcp:abc"),
    ({"smtp": {"listeners": [{"endpoint": "tcp:70000"}]}}, "smtp.listeners[0].endpoint", "70000"),
    ({"transports": {"up": {"type": "smarthost", "upstreams": [{"host": "h.example",
                                                                "port": 70000}]}}},
     "transports.up.upstreams[0].port", "1-65535"),
    ({"smtp": {"workers": -1}}, "smtp.workers", "integer >= 0"),
    ({"smtp": {"workers": 1000}}, "smtp.workers", "at most 64"),
    ({"smtp": {"listeners": [{"endpoint": "carrier-pigeon:1"}]}}, "smtp.listeners[0].endpoint",
     "carrier-pigeon"),
    ({"smtp": {"listeners": [{"endpoint": "tcp:25:colour=blue"}]}},
     "smtp.listeners[0].endpoint", "colour"),
    ({"smtp": {"listeners": [{"name": "a"}]}}, "smtp.listeners[0].endpoint", "missing"),
    ({"smtp": {"listeners": [{"endpoint": "tcp:25", "tls": "maybe"}]}},
     "smtp.listeners[0].tls", "maybe"),
    ({"smtp": {"listeners": [{"endpoint": "tcp:25", "tls": "implicit"}]}},
     "smtp.listeners[0].tls", "certificate"),
    ({"smtp": {"listeners": [{"endpoint": "tcp:25", "auth": "sometimes"}]}},
     "smtp.listeners[0].auth", "sometimes"),
    ({"smtp": {"listeners": []}}, "smtp.listeners", "at least one"),
    ({"smtp": {"listeners": [{"name": "a", "endpoint": "tcp:25"},
                             {"name": "a", "endpoint": "tcp:26"}]}},
     "smtp.listeners[1].name", "duplicate"),
    ({"smtp": {"trusted_networks": ["10.0.0.0/33"]}}, "smtp.trusted_networks[0]", "10.0.0.0/33"),
    ({"smtp": {"trusted_networks": "127.0.0.1"}}, "smtp.trusted_networks", "list"),
    ({"smtp": {"tls": {"certificate": "a.pem"}}}, "smtp.tls", "together"),
    ({"hostname": "bad host!"}, "hostname", "bad host!"),
    ({"routes": [{"domains": ["*"], "transport": "nowhere"}]}, "routes[0].transport", "nowhere"),
    ({"routes": [{"domains": ["bad domain"], "transport": "outbox"}]}, "routes[0].domains[0]",
     "bad domain"),
    ({"transports": {"x": {"type": "pigeon"}}}, "transports.x.type", "pigeon"),
    ({"transports": {"x": {"type": "smarthost"}}}, "transports.x.upstreams", "at least one"),
    ({"transports": {"x": {"type": "smarthost", "upstreams": [{"preset": "nope"}]}}},
     "transports.x.upstreams[0].preset", "nope"),
    ({"transports": {"x": {"type": "smarthost", "upstreams": [{"host": "h", "tls": "ssl3"}]}}},
     "transports.x.upstreams[0].tls", "ssl3"),
    ({"delivery": {"retry_schedule": [60, -1]}}, "delivery.retry_schedule[1]", "-1"),
    ({"log": {"level": "loud"}}, "log.level", "loud"),
    ({"dkim": [{"domain": "example.com"}]}, "dkim[0].selector", "non-empty string"),
    ({"transports": {"x": {"type": "smarthost", "upstreams": [
        {"host": "h", "max_rate": "10 per hour"}]}}}, "transports.x.upstreams[0].max_rate",
     '"10/s"'),
    ({"transports": {"x": {"type": "smarthost", "upstreams": [
        {"host": "h", "max_rate": "0/h"}]}}}, "transports.x.upstreams[0].max_rate", "0/h"),
    ({"transports": {"x": {"type": "smarthost", "upstreams": [
        {"host": "h", "max_connections": 0}]}}}, "transports.x.upstreams[0].max_connections",
     "integer >= 1"),
    ({"rate_limits": {"per_sender": {"week": 5}}}, "rate_limits.per_sender.week", "unknown"),
    ({"rate_limits": {"global": {"hour": -1}}}, "rate_limits.global.hour", "-1"),
    ({"rate_limits": {"count": "bytes"}}, "rate_limits.count", "bytes"),
    ({"rate_limits": {"backend": "mysql://x"}}, "rate_limits.backend", "redis://"),
    ({"rate_limits": {"on_backend_error": "panic"}}, "rate_limits.on_backend_error", "panic"),
    ({"rate_limits": {"auth_failures": {"max_failures": "5"}}},
     "rate_limits.auth_failures.max_failures", '"5"'),
    ([1, 2], "", "JSON object"),
    ({"smtp": {"fold_line_length": 2000}}, "smtp.fold_line_length", "998"),
    ({"smtp": {"strip_characters": "a"}}, "smtp.strip_characters", "control characters"),
    ({"smtp": {"max_header_size": 3_000_000}}, "smtp.max_header_size", "at most"),
    ({"smtp": {"reject_characters": "\n"}}, "smtp.reject_characters", "CR and LF"),
    ({"smtp": {"listeners": [{"endpoint": "tcp:25", "proxy_protocol": True}]}},
     "smtp.proxy_trusted_networks", "proxies connect from"),
    ({"smtp": {"listeners": [{"endpoint": "tcp:25:interface=\\:\\:1"}]}},
     "smtp.listeners[0].endpoint", "tcp6"),
    ({"smtp": {"listeners": [{"endpoint": "tcp6:25:interface=localhost"}]}},
     "smtp.listeners[0].endpoint", "IP address"),
    ({"routes": [{"senders": ["*@x.example"], "transport": "outbox"}]}, "routes[0].senders[0]",
     "address"),
    ({"transports": {"x": {"type": "smarthost", "upstreams": [
        {"host": "h", "username": "apikey", "sender_rewrite": {"address": "login"}}]}}},
     "transports.x.upstreams[0].sender_rewrite.address", "apikey"),
    ({"transports": {"x": {"type": "smarthost", "upstreams": [
        {"host": "h", "bounce_sender": "Me <me@x.example>"}]}}},
     "transports.x.upstreams[0].bounce_sender", "address"),
    ({"transports": {"x": {"type": "smarthost", "received": "hidden", "upstreams": [
        {"host": "h"}]}}}, "transports.x.received", "hidden"),
]


@pytest.mark.parametrize("endpoint", [
    "tcp:2525", "tcp:port=2525", "tcp:2525:interface=127.0.0.1", "tcp:2525:127.0.0.1",
    "tcp:2525:interface=127.0.0.1:backlog=10", "tcp6:2525", "tcp6:2525:interface=\\:\\:1",
    "tcp6:port=2525:interface=\\:\\:", "tcp6:2525:interface=fe80\\:\\:1", "unix:/tmp/r.sock",
    "unix:address=/tmp/r.sock:mode=660:lockfile=0",
])
def test_every_endpoint_form_twisted_takes(tmp_path: Any, endpoint: str) -> None:
    listeners = [{"name": "a", "endpoint": endpoint, "tls": "none"}]
    config = load_config(write(str(tmp_path), {"smtp": {"listeners": listeners}}), environ={})
    assert config.smtp.listeners[0].endpoint == endpoint


def test_preset_sender_rules(tmp_path: Any) -> None:
    """QQ/163/Outlook/Gmail want the login as sender: rewrite to it and send bounces from
    it, unless told otherwise; Mailgun wants the login's domain; SES/SendGrid their own
    verified identities (nothing to assume)."""
    def upstream(**u: Any) -> Any:
        data = {"transports": {"up": {"type": "smarthost", "upstreams": [u]}},
                "routes": [{"domains": ["*"], "transport": "up"}]}
        return load_config(write(str(tmp_path), data), environ={}).transports["up"].upstreams[0]

    qq = upstream(preset="qq", username="me@qq.com", password="code")
    assert qq.sender_rewrite.address == "me@qq.com" and qq.bounce_sender == "me@qq.com"
    assert upstream(preset="163", username="me@163.com", sender_rewrite=False).sender_rewrite \
        is None
    mailgun = upstream(preset="mailgun", username="postmaster@mg.example.com")
    assert mailgun.sender_rewrite.domains == ("mg.example.com",)
    assert mailgun.sender_rewrite.keeps("news@mg.example.com")
    assert not mailgun.sender_rewrite.keeps("root@nas.local")
    assert upstream(preset="sendgrid", username="apikey").sender_rewrite is None
    assert upstream(preset="amazon-ses-us-east-1", username="AKIA").sender_rewrite is None


def test_rates_and_limits_parse(tmp_path: Any) -> None:
    data = {"transports": {"up": {"type": "smarthost", "upstreams": [
        {"preset": "qq", "username": "u", "password": "p", "max_rate": "20/min",
         "max_connections": 2}]}}, "routes": [{"domains": ["*"], "transport": "up"}],
        "rate_limits": {"per_ip": {"hour": 100, "day": 1000}}}
    config = load_config(write(str(tmp_path), data),
                         environ={"RELAYMAIL_RATE_LIMITS_BACKEND": "redis://10.0.0.5:6379/1"})
    upstream = config.transports["up"].upstreams[0]
    assert (upstream.max_rate, upstream.max_connections) == ((20, 60.0), 2)
    assert config.rate_limits.quotas["per_ip"].items() == [("hour", 100), ("day", 1000)]
    assert config.rate_limits.backend == "redis://10.0.0.5:6379/1"


@pytest.mark.parametrize(("data", "key", "words"), BAD_CONFIGS)
def test_bad_config_table(tmp_path: Any, data: Any, key: str, words: str) -> None:
    path = write(str(tmp_path), data)
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    message = str(e.value)
    assert message.startswith(path + ": ")
    assert e.value.key == key
    assert words in message


def test_invalid_json_names_line(tmp_path: Any) -> None:
    path = write(str(tmp_path), None, raw='{"smtp": {\n  "max_recipients": 5,\n}\n}')
    with pytest.raises(ConfigError, match=r"invalid JSON at line 3"):
        load_config(path, environ={})


def test_missing_file() -> None:
    path = os.path.join(tempfile.mkdtemp(), "nope.json")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(path, environ={})


def test_unreadable_certificate(tmp_path: Any) -> None:
    data = {"smtp": {"tls": {"certificate": "missing.pem", "private_key": "missing.key"}}}
    config = load_config(write(str(tmp_path), data), environ={})
    with pytest.raises(ConfigError) as e:
        check_runtime(config)
    assert e.value.key == "smtp.tls.certificate"
    assert str(tmp_path / "missing.pem") in str(e.value)


@pytest.mark.parametrize(("endpoints", "key"), [
    (["tcp:2525", "tcp:2525:interface=127.0.0.1"], "smtp.listeners[1].endpoint"),
    (["tcp:2525:interface=127.0.0.1", "tcp:2525:interface=127.0.0.1"],
     "smtp.listeners[1].endpoint"),
    (["tcp:8025:interface=127.0.0.1"], "web.endpoint"),
])
def test_overlapping_ports(tmp_path: Any, endpoints: list[str], key: str) -> None:
    listeners = [{"name": f"l{i}", "endpoint": e, "tls": "none"} for i, e in enumerate(endpoints)]
    data = {"smtp": {"listeners": listeners}, "web": {"endpoint": "tcp:8025:interface=127.0.0.1"}}
    config = load_config(write(str(tmp_path), data), environ={})
    with pytest.raises(ConfigError) as e:
        check_runtime(config)
    assert e.value.key == key and "already used" in str(e.value)


def test_different_interfaces_same_port_ok(tmp_path: Any) -> None:
    listeners = [{"name": "a", "endpoint": "tcp:2525:interface=127.0.0.1"},
                 {"name": "b", "endpoint": "tcp:2525:interface=127.0.0.2"}]
    config = load_config(write(str(tmp_path), {"smtp": {"listeners": listeners}}), environ={})
    check_runtime(config)


# M5: credentials go only to a verified server unless allow_insecure_auth says otherwise.
INSECURE_AUTH: list[tuple[dict[str, Any], str, str]] = [
    ({"tls": "opportunistic", "username": "u", "password": "p"}, "tls",
     '"opportunistic" with a password sends it to an unverified server; use "starttls" '
     'with verify, or set allow_insecure_auth'),
    ({"tls": "starttls", "verify": False, "username": "u", "password": "p"}, "verify",
     "false with a password sends it to an unverified server"),
    ({"tls": "implicit", "port": 465, "verify": False, "username": "u", "password": "p"},
     "verify", "unverified server"),
    ({"tls": "none", "username": "u", "password": "p"}, "tls",
     '"none" with a password sends it in plaintext'),
    ({"preset": "qq", "tls": "opportunistic", "username": "u@qq.com", "password": "p"}, "tls",
     "opportunistic"),
    ({"tls": "opportunistic", "username": "u@example.com",
      "oauth2": {"client_id": "c", "token_url": "https://login.example/token"}}, "tls",
     '"opportunistic" with an OAuth2 token sends it to an unverified server'),
    ({"tls": "none", "username": "u"}, "tls", "plaintext"),
]


def smarthost_data(upstream: dict[str, Any]) -> dict[str, Any]:
    return {"transports": {"provider": {"type": "smarthost",
                                        "upstreams": [{"host": "h", **upstream}]}},
            "routes": [{"domains": ["*"], "transport": "provider"}]}


@pytest.mark.parametrize(("upstream", "field", "words"), INSECURE_AUTH)
def test_credentials_to_an_unverified_server_are_refused(tmp_path: Any, upstream: Any,
                                                         field: str, words: str) -> None:
    path = write(str(tmp_path), smarthost_data(upstream))
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    assert e.value.key == f"transports.provider.upstreams[0].{field}"
    assert str(e.value).startswith(f"{path}: transports.provider.upstreams[0].{field}: ")
    assert words in str(e.value)
    assert '"p"' not in str(e.value)  # the password is never shown


@pytest.mark.parametrize(("upstream", "field", "words"), INSECURE_AUTH)
def test_allow_insecure_auth_accepts_them_explicitly(tmp_path: Any, upstream: Any,
                                                     field: str, words: str) -> None:
    data = smarthost_data({**upstream, "allow_insecure_auth": True})
    loaded = load_config(write(str(tmp_path), data), environ={})
    assert loaded.transports["provider"].upstreams[0].allow_insecure_auth is True


@pytest.mark.parametrize("upstream", [
    {"tls": "opportunistic"}, {"tls": "none"}, {"tls": "starttls", "verify": False},
    {"tls": "starttls", "username": "u", "password": "p"},
    {"tls": "implicit", "username": "u", "password": "p", "ca_file": "ca.pem"},
    {"preset": "tencent-ses", "username": "u", "password": "p"},
])
def test_secure_or_credential_free_upstreams_need_no_flag(tmp_path: Any, upstream: Any) -> None:
    loaded = load_config(write(str(tmp_path), smarthost_data(upstream)), environ={})
    assert loaded.transports["provider"].upstreams[0].allow_insecure_auth is False


def test_allow_insecure_auth_must_be_a_boolean(tmp_path: Any) -> None:
    data = smarthost_data({"tls": "none", "username": "u", "password": "p",
                           "allow_insecure_auth": "yes"})
    with pytest.raises(ConfigError) as e:
        load_config(write(str(tmp_path), data), environ={})
    assert e.value.key == "transports.provider.upstreams[0].allow_insecure_auth"
