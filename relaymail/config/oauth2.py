"""An upstream's ``oauth2`` object: how relaymail gets an access token for SASL XOAUTH2 or
OAUTHBEARER (RFC 6749, 7628) instead of sending a password."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from relaymail.config.check import Check
from relaymail.config.defaults import UPSTREAM, fill, item_defaults

OAUTH2 = f"{UPSTREAM}.oauth2"
_OAUTH2 = item_defaults(OAUTH2)
OAUTH2_KEYS = {"token_url", "client_id", "client_secret", "refresh_token", "grant", "scope",
               "mechanism", "authorize_url", "device_url", "tenant"}
GRANTS = ("refresh_token", "client_credentials")
MECHANISMS = ("XOAUTH2", "OAUTHBEARER")


@dataclass(frozen=True)
class OAuth2Config:
    """How relaymail gets an access token for SASL XOAUTH2/OAUTHBEARER (RFC 6749, 7628).

    ``token_url`` (and the scope and flow URLs) may be left out with an outlook or gmail
    preset: relaymail.relay.oauth2.resolve fills them from the preset, using ``tenant``."""

    token_url: str | None
    client_id: str
    grant: str = _OAUTH2["grant"]  # refresh_token | client_credentials
    client_secret: str | None = _OAUTH2["client_secret"]
    refresh_token: str | None = _OAUTH2["refresh_token"]
    scope: str | None = _OAUTH2["scope"]
    mechanism: str = _OAUTH2["mechanism"]  # XOAUTH2 | OAUTHBEARER
    authorize_url: str | None = _OAUTH2["authorize_url"]  # `relaymail oauth2 authorize`
    device_url: str | None = _OAUTH2["device_url"]  # `relaymail oauth2 authorize --device`
    tenant: str | None = _OAUTH2["tenant"]  # Microsoft: tenant ID or domain; "common"

    def __repr__(self) -> str:
        """Never shows the client secret nor the refresh token."""
        return (f"OAuth2Config(token_url={self.token_url!r}, client_id={self.client_id!r}, "
                f"grant={self.grant!r}, mechanism={self.mechanism!r})")


def validate_oauth2(c: Check, value: Any, key: str) -> OAuth2Config | None:
    """An upstream's ``oauth2`` (None when it has none); client_credentials needs a secret."""
    if value is None:
        return None
    d = fill(OAUTH2, c.obj(value, key, OAUTH2_KEYS))
    grant = c.choice(d["grant"], f"{key}.grant", GRANTS)
    conf = OAuth2Config(
        token_url=optional_url(c, d["token_url"], f"{key}.token_url"),
        client_id=c.string(d.get("client_id"), f"{key}.client_id"),
        grant=grant,
        client_secret=c.string(d["client_secret"], f"{key}.client_secret", allow_none=True),
        refresh_token=c.string(d["refresh_token"], f"{key}.refresh_token", allow_none=True),
        scope=c.string(d["scope"], f"{key}.scope", allow_none=True),
        mechanism=c.choice(d["mechanism"], f"{key}.mechanism", MECHANISMS),
        authorize_url=optional_url(c, d["authorize_url"], f"{key}.authorize_url"),
        device_url=optional_url(c, d["device_url"], f"{key}.device_url"),
        tenant=validate_tenant(c, d["tenant"], f"{key}.tenant"),
    )
    if grant == "client_credentials" and not conf.client_secret:
        raise c.fail(f"{key}.client_secret", "the client_credentials grant needs a secret")
    return conf


def validate_tenant(c: Check, value: Any, key: str) -> str | None:
    """A Microsoft tenant: a GUID, a domain, or common/organizations/consumers (it becomes
    part of the token URL, so nothing else is allowed)."""
    if value is None:
        return None
    text = c.string(value, key)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", text):
        raise c.fail(key, "expected a tenant ID or domain like contoso.onmicrosoft.com", value)
    return text


def optional_url(c: Check, value: Any, key: str) -> str | None:
    """An http(s) URL, or None when absent."""
    return None if value is None else validate_url(c, value, key)


def validate_url(c: Check, value: Any, key: str) -> str:
    """An ``http://`` or ``https://`` URL without spaces."""
    text = c.string(value, key)
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise c.fail(key, "expected an http(s) URL", value)
    return text
