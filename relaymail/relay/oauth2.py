"""OAuth2 access tokens for SMTP AUTH XOAUTH2 / OAUTHBEARER (RFC 6749, RFC 7628).

One ``TokenSource`` per upstream identity (token URL + client ID + mailbox) fetches an
access token with the refresh_token grant (Microsoft, Google) or the client_credentials
grant (Microsoft 365), caches it until 60 s before it expires, and lets concurrent
sessions share one request in flight.  Token requests are form POSTs made with treq, with a
timeout; the HTTP client, the clock and the thread runner can be injected for tests.

Refresh tokens that relaymail obtains (``relaymail oauth2 authorize``) or that a provider
rotates are kept in ``<spool_dir>/oauth2-tokens.json`` (0600), not in the config file:
Microsoft issues a new refresh token on every refresh, and the config file is the
operator's.  A refresh token written into the config by hand still wins when it differs
from the one the stored token was derived from.

No error text here ever carries an access token, a refresh token or a client secret.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from relaymail.config import OAuth2Config, UpstreamConfig
from relaymail.logs import Logger
from relaymail.relay.oauth2store import (  # noqa: F401 (importers use these names here)
    STORE_NAME,
    TokenStore,
    fingerprint,
    pick_refresh_token,
    store_key,
    store_path,
)
from relaymail.relay.outcome import SessionError
from relaymail.relay.presets import PRESETS

log = Logger(namespace="relaymail.relay.oauth2")

EXPIRY_MARGIN = 60.0  # a cached token is used until this many seconds before it expires
DEFAULT_LIFETIME = 300.0  # when the token endpoint gives no expires_in
DEFAULT_TIMEOUT = 30.0  # seconds for one token request, connect to last byte
AUTHORIZE_AGAIN = "run `relaymail oauth2 authorize` again"


class OAuth2Error(Exception):
    """A token could not be had; ``text`` is safe to log and to show (no secrets)."""

    def __init__(self, text: str) -> None:
        super().__init__(f"oauth2: {text}")
        self.text = text

    def session_error(self) -> SessionError:
        """As a session failure: a temporary 454, so the mail is deferred, never bounced."""
        return SessionError("oauth2", self.text, 454)


class TokenEndpointError(OAuth2Error):
    """The token endpoint answered with an RFC 6749 §5.2 (or RFC 8628 §3.5) error."""

    def __init__(self, url: str, error: str, description: str, status: int) -> None:
        detail = f"{error}: {description}" if description else error
        super().__init__(f"token request refused by {url}: {detail}")
        self.url, self.error, self.description, self.status = url, error, description, status

    @property
    def detail(self) -> str:
        return f"{self.error}: {self.description}" if self.description else self.error


@dataclass(frozen=True)
class Token:
    """An access token as issued (RFC 6749 §5.1); ``expires_at`` is on the source's clock."""

    access_token: str
    expires_at: float
    lifetime: float
    refresh_token: str | None = None

    def __repr__(self) -> str:  # never show the tokens
        return f"Token(expires_at={self.expires_at!r}, lifetime={self.lifetime!r})"


# ---------------------------------------------------------------------------- settings


def resolve(upstream: UpstreamConfig) -> OAuth2Config:
    """The upstream's oauth2 settings with the preset's defaults filled in (token, authorize
    and device URLs with the tenant, and the scope for the grant); keys given win."""
    conf = upstream.oauth2
    assert conf is not None
    preset = PRESETS.get(upstream.preset or "")
    if preset is None or preset.oauth2 is None:
        return conf
    defaults: dict[str, Any] = preset.oauth2.settings(conf.grant, conf.tenant)
    return replace(conf, **{k: getattr(conf, k) or v for k, v in defaults.items()})


def problem(settings: OAuth2Config, username: str | None) -> str | None:
    """What makes these settings unusable, in words for the operator; None when fine."""
    if not settings.token_url:
        return ("no oauth2.token_url: give one, or use the outlook, outlook-com or gmail "
                "preset")
    if not username:
        return "oauth2 needs the mailbox as the upstream's username"
    shared = any(f"login.microsoftonline.com/{t}/" in settings.token_url
                 for t in ("common", "organizations", "consumers"))
    if settings.grant == "client_credentials" and shared:
        return ("the client_credentials grant needs oauth2.tenant: your directory (tenant) "
                "ID or domain, not common")
    return None


def make_http(reactor: Any) -> Any:
    """A treq client on ``reactor``: no persistent connections (a token request is rare)."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    agent: Any = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    return HTTPClient(agent)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret in it replaced (a server may echo what it was sent)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def first_line(text: Any, limit: int = 300) -> str:
    """A server's description, one line and not too long (Entra IDs add trace IDs)."""
    if not isinstance(text, str):
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit] + "..."


def describe(exc: BaseException) -> str:
    """A connection failure in a few words (treq wraps the real reasons)."""
    reasons = getattr(exc, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return str(exc) or type(exc).__name__


async def post_form(http: Any, reactor: Any, url: str, form: dict[str, str], timeout: float
                    ) -> dict[str, Any]:
    """POST ``form`` (application/x-www-form-urlencoded) to ``url`` and return the JSON
    object of a 2xx answer.  TokenEndpointError for an OAuth2 error answer; OAuth2Error
    for a timeout, no connection or a non-JSON answer.  Secrets in ``form`` never appear
    in the error texts."""
    secrets = [form.get(k) for k in ("client_secret", "refresh_token", "code", "device_code",
                                     "code_verifier")]

    def timed_out(result: Any, seconds: float) -> tuple[int, bytes]:
        raise OAuth2Error(f"token endpoint {url} did not answer within {seconds:g} s")

    exchange = ensureDeferred(_exchange(http, url, form))
    try:
        status, body = await exchange.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
    except OAuth2Error:
        raise
    except Exception as e:
        raise OAuth2Error(f"cannot reach {url}: {scrub(describe(e), secrets)}") from None
    return answer(url, status, body, secrets)


async def _exchange(http: Any, url: str, form: dict[str, str]) -> tuple[int, bytes]:
    response = await http.post(url, data=form, headers={"Accept": ["application/json"]},
                               allow_redirects=False)
    return response.code, await response.content()


def answer(url: str, status: int, body: bytes, secrets: list[str | None]) -> dict[str, Any]:
    """The JSON object of a token endpoint's answer, or the error it stands for."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if 200 <= status < 300 and isinstance(data, dict):
        return data
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        error = first_line(data["error"], 80)
        description = scrub(first_line(data.get("error_description")), secrets)
        raise TokenEndpointError(url, error, description, status)
    raise OAuth2Error(f"token endpoint {url} answered HTTP {status} without an OAuth2 "
                      f"error (is token_url right?)")


def parse_token(data: dict[str, Any], url: str, now: float) -> Token:
    """An RFC 6749 §5.1 success answer as a Token (a Bearer token is required)."""
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise OAuth2Error(f"token endpoint {url} answered without an access_token")
    kind = data.get("token_type", "Bearer")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise OAuth2Error(f"token endpoint {url} issued a {first_line(str(kind), 40)!r} "
                          f"token; SMTP needs a Bearer token")
    try:
        lifetime = float(data.get("expires_in", DEFAULT_LIFETIME))
    except (TypeError, ValueError):
        lifetime = DEFAULT_LIFETIME
    refresh = data.get("refresh_token")
    return Token(access, now + lifetime, lifetime,
                 refresh if isinstance(refresh, str) and refresh else None)


# ---------------------------------------------------------------------------- sources


class TokenSource:
    """Access tokens for one upstream identity: cached, refreshed once at a time."""

    def __init__(self, settings: OAuth2Config, username: str, reactor: Any, *,
                 http: Any = None, clock: Callable[[], float] | None = None,
                 store: TokenStore | None = None,
                 run_in_thread: Callable[..., Deferred] | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.settings, self.username, self.reactor = settings, username, reactor
        self.http = http if http is not None else make_http(reactor)
        self.clock = clock or reactor.seconds
        self.store = store
        self.run_in_thread = run_in_thread or self._default_thread
        self.timeout = timeout
        self.requests = 0  # token requests made (for tests and the log)
        self._cached: Token | None = None
        self._remembered: str | None = None  # a rotated refresh token we could not store
        self._waiters: list[Deferred] = []

    def _default_thread(self, f: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    @property
    def key(self) -> str:
        return store_key(self.settings, self.username)

    @property
    def cached(self) -> Token | None:
        """The cached token while it is good for more than EXPIRY_MARGIN seconds."""
        token = self._cached
        if token is not None and self.clock() < token.expires_at - EXPIRY_MARGIN:
            return token
        return None

    def token(self) -> Deferred:
        """Fires with an access token: the cached one, or a new one from the token endpoint
        (callers that ask meanwhile share that request).  Fails with OAuth2Error."""
        cached = self.cached
        if cached is not None:
            return succeed(cached.access_token)
        return self.fresh().addCallback(lambda token: token.access_token)

    def fresh(self) -> Deferred:
        """Fires with a newly fetched Token (or the one being fetched right now)."""
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            ensureDeferred(self._fetch()).addBoth(self._settle)
        return waiter

    def invalidate(self, access_token: str | None = None) -> None:
        """Forget the cached token (the server refused it), so the next one is fetched."""
        if self._cached is not None and access_token in (None, self._cached.access_token):
            self._cached = None

    def update(self, settings: OAuth2Config) -> None:
        """New settings for the same identity (a config change): drop what came from the
        old ones."""
        if settings != self.settings:
            if settings.refresh_token != self.settings.refresh_token:
                self._remembered = None
            self.settings = settings
            self._cached = None

    def _settle(self, result: Token | Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        if isinstance(result, Failure) and not waiters and not result.check(OAuth2Error):
            log.failure("oauth2: token request for {user} failed", result, user=self.username)

    async def _fetch(self) -> Token:
        url = self.settings.token_url or ""
        form, used = await self._grant_form()
        self.requests += 1
        try:
            data = await post_form(self.http, self.reactor, url, form, self.timeout)
        except TokenEndpointError as e:
            error = self._explain(e)
            log.warn("oauth2: {error}", error=error.text, token_url=url, user=self.username,
                     oauth2_error=e.error, status=e.status)
            raise error from None
        except OAuth2Error as e:
            log.warn("oauth2: {error}", error=e.text, token_url=url, user=self.username)
            raise
        token = parse_token(data, url, self.clock())
        if token.refresh_token and token.refresh_token != used:
            await self._rotated(token.refresh_token)
        self._cached = token
        log.info("oauth2: new access token for {user} from {token_url}, valid {lifetime:.0f} s",
                 user=self.username, token_url=url, lifetime=token.lifetime,
                 grant=self.settings.grant)
        return token

    async def _grant_form(self) -> tuple[dict[str, str], str | None]:
        """The token request body for the configured grant, and the refresh token used."""
        s = self.settings
        form = {"client_id": s.client_id}
        if s.client_secret:
            form["client_secret"] = s.client_secret
        if s.scope:
            form["scope"] = s.scope
        if s.grant == "client_credentials":
            return {"grant_type": "client_credentials", **form}, None
        refresh = await self._refresh_token()
        if not refresh:
            raise OAuth2Error(f"no refresh token for {self.username} at {s.token_url}; run "
                              f"`relaymail oauth2 authorize`")
        return {"grant_type": "refresh_token", "refresh_token": refresh, **form}, refresh

    async def _refresh_token(self) -> str | None:
        """The newest refresh token: read from the store each time, so that one written by
        `relaymail oauth2 authorize` is used without a restart."""
        entry = None
        if self.store is not None:
            try:
                entry = await self.run_in_thread(self.store.load, self.key)
            except Exception as e:
                log.warn("oauth2: cannot read {path}: {error}", path=self.store.path,
                         error=str(e))
        return pick_refresh_token(self.settings.refresh_token, entry, self._remembered)

    async def _rotated(self, refresh: str) -> None:
        """The token endpoint issued a new refresh token: use it from now on, and store it
        (when storing fails it is kept in memory, and the failure is logged)."""
        self._remembered = refresh
        if self.store is None:
            return
        try:
            await self.run_in_thread(self.store.save, self.key, refresh,
                                     fingerprint(self.settings.refresh_token), self.clock())
        except Exception as e:
            log.error("oauth2: cannot store the new refresh token in {path}: {error}; it is "
                      "kept in memory until a restart", path=self.store.path, error=str(e))
            return
        self._remembered = None

    def _explain(self, e: TokenEndpointError) -> OAuth2Error:
        """The token endpoint's error with what to do about it."""
        if e.error == "invalid_grant" and self.settings.grant == "refresh_token":
            return OAuth2Error(f"refresh token rejected by {e.url}: {e.detail}; "
                               f"{AUTHORIZE_AGAIN}")
        if e.error in ("invalid_client", "unauthorized_client"):
            return OAuth2Error(f"client rejected by {e.url}: {e.detail}; check "
                               f"oauth2.client_id and client_secret")
        return e


class TokenRegistry:
    """The token sources of one relaymail process, by identity; shared by deliveries and
    the connection test, so both use (and refresh) the same cached token."""

    def __init__(self, reactor: Any, store: TokenStore | None = None, *, http: Any = None,
                 clock: Callable[[], float] | None = None,
                 run_in_thread: Callable[..., Deferred] | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.reactor, self.store, self.http, self.clock = reactor, store, http, clock
        self.run_in_thread, self.timeout = run_in_thread, timeout
        self.sources: dict[str, TokenSource] = {}

    def source(self, settings: OAuth2Config, username: str) -> TokenSource:
        key = store_key(settings, username)
        source = self.sources.get(key)
        if source is None:
            source = self.sources[key] = TokenSource(
                settings, username, self.reactor, http=self.http, clock=self.clock,
                store=self.store, run_in_thread=self.run_in_thread, timeout=self.timeout)
        else:
            source.update(settings)
        return source


_REGISTRIES: dict[str, TokenRegistry] = {}


def registry_for(reactor: Any, spool_dir: str) -> TokenRegistry:
    """The process's registry for the spool at ``spool_dir`` (its token store is there)."""
    path = os.path.abspath(store_path(spool_dir))
    registry = _REGISTRIES.get(path)
    if registry is None or registry.reactor is not reactor:
        registry = _REGISTRIES[path] = TokenRegistry(reactor, TokenStore(path))
    return registry
