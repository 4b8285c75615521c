"""What the console's pages stand on, in memory: upstream health that clears, /health's
"every recent delivery failed", the message codes of API errors, the catalogues' keys, and
the self-signed certificate's names."""

from __future__ import annotations

import ipaddress
import json
import re
from importlib import resources

from cryptography import x509

from relaymail.relay.health import HealthBoard
from relaymail.stats import RelayStats
from relaymail.web.errors import classify, with_code


def test_a_later_success_clears_the_error_and_the_state_says_down_at_once() -> None:
    now = [100.0]
    board = HealthBoard(lambda: now[0])
    assert board.get("a:25").state() == "unknown"
    board.failed("a:25", "connection refused")
    shown = board.snapshot()[0]
    assert (shown["state"], shown["down"], shown["last_error"]) == \
        ("down", False, "connection refused")  # breaker still closed, but it is down
    board.succeeded("a:25", messages=1)
    shown = board.snapshot()[0]
    assert (shown["state"], shown["last_error"], shown["last_failure"]) == ("up", None, 100.0)
    board.failed("b:25", "timeout")
    board.answered("b:25")
    assert board.get("b:25").state() == "up" and board.get("b:25").last_error is None


def event(result: str, n: int, when: float) -> dict[str, object]:
    return {"event": result, "recipients": ["r"] * n, "time": when, "delay": 1,
            "transport": "t"}


def test_recent_failing_means_the_latest_deliveries_all_failed() -> None:
    stats = RelayStats()
    stats.delivery_event(event("sent", 60, 0.0))
    stats.delivery_event(event("deferred", 2, 10.0))
    assert not stats.recent_failing(20.0)  # two are not yet "every delivery"
    stats.delivery_event(event("bounced", 1, 11.0))
    assert stats.recent_failing(20.0)  # though 60 were sent before them
    assert not stats.recent_failing(700.0)  # old news
    stats.delivery_event(event("sent", 1, 12.0))
    assert not stats.recent_failing(20.0)


def test_error_texts_get_codes_and_params() -> None:
    assert classify("credential 'app1' already exists") == ("credential_exists",
                                                           {"name": "app1"})
    assert classify("no message 'ABC'") == ("queue_no_message", {"qid": "ABC"})
    assert classify("25X is not on hold (it is in queue)") == \
        ("queue_not_held", {"qid": "25X", "state": "queue"})
    assert classify("from: expected an address") == ("field_address", {"field": "from"})
    assert classify("connection refused by 127.0.0.1:9: nothing listens there (wrong port?)"
                    )[0] == "probe_refused"
    assert classify("transports.provider.upstreams[0].port: expected a port number") == \
        ("config_field", {"key": "transports.provider.upstreams[0].port",
                          "problem": "expected a port number", "problem_code": "port"})
    assert with_code({"error": "authentication required"}) == \
        {"error": "authentication required"}  # unknown texts stay as they are
    assert with_code({"ok": True, "error": ""}) == {"ok": True, "error": ""}


def catalogue(lang: str) -> dict[str, str]:
    return dict(json.loads(resources.files("relaymail.web").joinpath(
        "static", f"{lang}.json").read_text("utf-8")))


def test_both_catalogues_have_every_key_the_scripts_and_errors_use() -> None:
    en, zh = catalogue("en"), catalogue("zh")
    assert set(en) == set(zh)
    static = resources.files("relaymail.web").joinpath("static")
    used = set()
    for name in ("console.js", "dashboard.js", "queue.js", "relay.js", "credentials.js",
                 "logs.js", "chart.js", "main.js"):
        used |= set(re.findall(r'\bt\("([a-z0-9_]+)"', static.joinpath(name).read_text()))
    assert {k for k in used if not k.endswith("_")} - set(en) == set()  # not prefixes
    from relaymail.web.errors import PATTERNS
    assert {f"err_{code}" for code, _ in PATTERNS} - set(en) == set()
    for key, text in zh.items():  # the same placeholders in both languages
        assert set(re.findall(r"{\w+}", text)) == set(re.findall(r"{\w+}", en[key])), key


def test_the_self_signed_certificate_names_the_loopback_addresses() -> None:
    from relaymail.smtp.tls import make_self_signed

    cert_pem, _ = make_self_signed("localhost")
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]


def test_config_problems_get_a_code_of_their_own() -> None:
    code, params = classify("transports.provider.upstreams[0].port: expected a port number "
                            "1-65535") or ("", {})
    assert (code, params["problem_code"]) == ("config_field", "port")
    assert "problem_code" not in (classify("routes[0].domains: something new") or ("", {}))[1]
