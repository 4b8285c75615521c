"""DKIM pieces without sockets: the streaming body hash against dkimpy's canonicalization,
signatures verified by dkimpy, key loading errors, and ``relaymail dkim keygen``."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import tempfile

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from relaymail.cli import main
from relaymail.config import ConfigError
from relaymail.policy.dkim import (
    DkimKey,
    RelaxedBodyHash,
    Signer,
    build_signer,
    from_domain,
    parse_headers,
)

LINE = st.lists(st.sampled_from([b"a", b" ", b"\t", b"x y", b"\xc3\xa9", b"."]),
                max_size=6).map(b"".join)


def dkimpy_body_hash(lines: list[bytes]) -> bytes:
    body = b"".join(line + b"\r\n" for line in lines)
    canonical = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed") \
        .canonicalize_body(body)
    return base64.b64encode(hashlib.sha256(canonical).digest())


@settings(max_examples=400, deadline=None)
@given(st.lists(LINE, max_size=12))
def test_streaming_body_hash_equals_dkimpy(lines: list[bytes]) -> None:
    class TinyBlocks(RelaxedBodyHash):
        BLOCK = 7  # a flush every line or two: trailing empty lines span blocks

    for streaming in (RelaxedBodyHash(), TinyBlocks()):
        for line in lines:
            streaming.line(line)
        assert streaming.digest_b64() == dkimpy_body_hash(lines)


def rsa_key(domain: str = "example.com", selector: str = "r") -> DkimKey:
    return DkimKey(domain, selector, "rsa-sha256",
                   rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ed_key(domain: str = "example.com", selector: str = "e") -> DkimKey:
    return DkimKey(domain, selector, "ed25519-sha256", ed25519.Ed25519PrivateKey.generate())


def signed_message(keys: list[DkimKey], headers: bytes, body_lines: list[bytes]) -> bytes:
    signer = Signer(keys, clock=lambda: 1_700_000_000)
    body_hash = RelaxedBodyHash()
    for line in body_lines:
        body_hash.line(line)
    fields = parse_headers(headers)
    chosen = signer.keys_for(from_domain(fields))
    header = signer.sign(fields, body_hash.digest_b64(), chosen)
    return header + headers + b"\r\n" + b"".join(line + b"\r\n" for line in body_lines)


def records(*keys: DkimKey) -> dict[bytes, bytes]:
    return {f"{k.selector}._domainkey.{k.domain}.".encode(): k.dns_record().encode()
            for k in keys}


HEADERS = (b"From: =?utf-8?q?Caf=C3=A9?= <app@mail.example.com>\r\nTo: a@b.test\r\n"
           b"Subject:   folded\r\n\tsubject  \r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n")
BODY = [b"caf\xc3\xa9  with   spaces \t", b".", b"", b"end", b"", b""]


def test_dual_signature_rsa_and_ed25519_both_verify() -> None:
    keys = [rsa_key(), ed_key()]
    message = signed_message(keys, HEADERS, BODY)
    dns = records(*keys)
    checker = dkim.DKIM(message)
    assert checker.verify(0, dnsfunc=lambda name, timeout=5: dns.get(name))
    assert checker.verify(1, dnsfunc=lambda name, timeout=5: dns.get(name))
    first = dkim.util.parse_tag_value(message.split(b"\r\nDKIM-Signature")[0].split(b": ", 1)[1]
                                      .replace(b"\r\n", b""))
    assert first[b"h"].split(b":").count(b"from") == 2  # From oversigned
    assert first[b"c"] == b"relaxed/relaxed"


def test_tampered_subject_or_added_from_fails() -> None:
    key = rsa_key()
    message = signed_message([key], HEADERS, BODY)
    dns = records(key)
    lookup = lambda name, timeout=5: dns.get(name)  # noqa: E731
    assert not dkim.verify(message.replace(b"folded", b"changed"), dnsfunc=lookup)
    head, _, rest = message.partition(b"From: ")
    assert not dkim.verify(head + b"From: evil@example.com\r\nFrom: " + rest, dnsfunc=lookup)


def test_parent_domain_key_signs_subdomain_and_unknown_domain_gets_none() -> None:
    signer = Signer([rsa_key("example.com")], clock=lambda: 0)
    assert signer.keys_for("mail.example.com")
    assert signer.keys_for("example.com")
    assert signer.keys_for("notexample.com") == []
    assert signer.keys_for("com") == []
    assert signer.keys_for(None) == []
    assert from_domain(parse_headers(b"To: x@y\r\n")) is None


def write_key(directory: str, key: object, name: str, fmt: object) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, fmt,  # type: ignore[attr-defined]
                                  serialization.NoEncryption()))
    return path


def test_keys_load_from_pkcs1_and_pkcs8_pem_and_bad_keys_name_the_config_key() -> None:
    d = tempfile.mkdtemp()
    pkcs1 = write_key(d, rsa.generate_private_key(public_exponent=65537, key_size=2048),
                      "a.key", serialization.PrivateFormat.TraditionalOpenSSL)
    ed = write_key(d, ed25519.Ed25519PrivateKey.generate(), "e.key",
                   serialization.PrivateFormat.PKCS8)
    entries = [{"domain": "example.com", "selector": "a", "private_key": pkcs1,
                "algorithm": "rsa-sha256"},
               {"domain": "example.com", "selector": "e", "private_key": ed,
                "algorithm": "ed25519-sha256"}]
    signer = build_signer(entries, "relay.json", clock=lambda: 0)
    assert signer is not None and len(signer.keys_for("example.com")) == 2
    assert build_signer([], "relay.json", clock=lambda: 0) is None
    wrong_type = [{**entries[1], "algorithm": "rsa-sha256"}]
    with pytest.raises(ConfigError, match=r"relay.json: dkim\[0\].private_key: key type"):
        build_signer(wrong_type, "relay.json", clock=lambda: 0)
    missing = [{**entries[0], "private_key": os.path.join(d, "nope.key")}]
    with pytest.raises(ConfigError, match=r"dkim\[0\].private_key: cannot read key.*nope.key"):
        build_signer(missing, "relay.json", clock=lambda: 0)
    garbage = os.path.join(d, "garbage.key")
    with open(garbage, "w") as f:
        f.write("not a key")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        build_signer([{**entries[0], "private_key": garbage}], "relay.json", clock=lambda: 0)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_keygen_writes_0600_key_and_the_record_matches(
        algorithm: str, capsys: pytest.CaptureFixture[str]) -> None:
    d = tempfile.mkdtemp()
    path = os.path.join(d, "k", "example.key")
    assert main(["dkim", "keygen", "--domain", "Example.COM", "--selector", "s1",
                 "--algorithm", algorithm, "--output", path]) == 0
    out = capsys.readouterr().out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    full = "ed25519-sha256" if algorithm == "ed25519" else "rsa-sha256"
    [key] = build_signer([{"domain": "example.com", "selector": "s1", "private_key": path,
                           "algorithm": full}], "relay.json", lambda: 0).keys_for("example.com")
    record = next(line for line in out.splitlines() if " IN TXT " in line)
    assert record.startswith("s1._domainkey.example.com. IN TXT ( ")
    assert "".join(record.split('"')[1::2]) == key.dns_record()
    assert main(["dkim", "keygen", "--domain", "example.com", "--selector", "s1",
                 "--output", path]) == 2  # never overwrites without --force


def test_keygen_refuses_names_that_are_not_dns_labels(capsys: pytest.CaptureFixture[str]) -> None:
    out = os.path.join(tempfile.mkdtemp(), "k.key")
    assert main(["dkim", "keygen", "--domain", "exa mple.com", "--selector", "s",
                 "--output", out]) == 2
    assert main(["dkim", "keygen", "--domain", "example.com", "--selector", "../x",
                 "--output", out]) == 2
    assert "--selector must be DNS labels" in capsys.readouterr().err
    assert not os.path.exists(out)


ALL_HEADERS = b"".join(
    name.title() + b": " + value + b"\r\n" for name, value in (
        (b"from", b"Shop <shop@example.com>"), (b"sender", b"bulk@example.com"),
        (b"reply-to", b"help@example.com"), (b"subject", b"Your order"),
        (b"date", b"Mon, 1 Jan 2024 00:00:00 +0000"), (b"message-id", b"<1@example.com>"),
        (b"to", b"a@b.test"), (b"cc", b"c@b.test"), (b"mime-version", b"1.0"),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-transfer-encoding", b"8bit"), (b"content-id", b"<c@x>"),
        (b"content-description", b"note"), (b"in-reply-to", b"<0@example.com>"),
        (b"references", b"<0@example.com>"), (b"list-id", b"<shop.example.com>"),
        (b"list-help", b"<mailto:h@example.com>"),
        (b"list-unsubscribe", b"<mailto:u@example.com>"),
        (b"list-unsubscribe-post", b"List-Unsubscribe=One-Click"),
    ))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(ALL_HEADERS.split(b"\r\n")[1:-1]), unique=True),
       st.sampled_from(["example.com", "a-much-longer-subdomain.mail.example.com"]),
       st.sampled_from(["s", "selector-with-a-rather-long-name-2026"]))
def test_folding_never_splits_a_tag_value_and_every_header_set_verifies(
        others: list[bytes], domain: str, selector: str) -> None:
    """The bug users hit: ``h=`` folded inside ``content-transfer-encoding``.  Whatever
    header set and name lengths, unfolding (RFC 6376 3.2: FWS removed) gives back exactly
    the names, domain and selector, every line fits 78 octets, and both algorithms verify."""
    headers = b"From: x <x@" + domain.encode() + b">\r\n" + b"".join(h + b"\r\n" for h in others)
    keys = [rsa_key(domain, selector), ed_key(domain, selector + "e")]
    message = signed_message(keys, headers, BODY)
    dns = records(*keys)
    checker = dkim.DKIM(message)
    for i in range(2):
        assert checker.verify(i, dnsfunc=lambda name, timeout=5: dns.get(name))
    for field in message.split(b"\r\n\r\n")[0].split(b"\r\nDKIM-Signature")[:2]:
        lines = field.split(b"\r\n")
        assert all(len(line) <= 78 for line in lines)
        tags = {}
        for part in b"".join(lines).split(b":", 1)[1].split(b";"):
            name, _, value = part.partition(b"=")
            tags[name.strip()] = value
        names = [n.strip() for n in tags[b"h"].split(b":")]
        assert all(b" " not in n and n for n in names)
        expected = [n for n in (h.split(b":")[0].lower() for h in headers.split(b"\r\n") if h)]
        assert sorted(set(names)) == sorted(set(expected))
        assert tags[b"d"] == domain.encode() and tags[b"s"].startswith(selector.encode())
