"""``relaymail oauth2 authorize|token``: get an upstream's OAuth2 refresh token once, and
check that it still gives access tokens.

``authorize`` signs the mailbox in, either with the device flow (RFC 8628: open a URL
anywhere, type a code) or with the authorization code flow on this machine (RFC 6749 §4.1
with PKCE S256, RFC 7636, and a one-shot loopback listener on 127.0.0.1, RFC 8252 §7.3).
The refresh token goes into ``<spool_dir>/oauth2-tokens.json`` (0600), where the running
relay reads it at its next refresh.  ``token`` makes one refresh and prints how long the
access token is valid.  Neither prints a token or a secret.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO
from urllib.parse import urlencode

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site

from relaymail.cli.queue import CommandError
from relaymail.config import Config, OAuth2Config, UpstreamConfig, load_config
from relaymail.relay.oauth2 import (
    DEFAULT_TIMEOUT,
    OAuth2Error,
    Token,
    TokenEndpointError,
    TokenSource,
    TokenStore,
    fingerprint,
    make_http,
    parse_token,
    post_form,
    problem,
    resolve,
    store_key,
    store_path,
)
from relaymail.relay.presets import PRESETS

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
Sleep = Callable[[float], Deferred]


def add_parser(sub: Any) -> None:
    oauth2 = sub.add_parser("oauth2", help="OAuth2 logins to upstreams (Microsoft, Google)")
    osub = oauth2.add_subparsers(title="oauth2 commands")
    authorize = osub.add_parser("authorize", help="sign the mailbox in once; stores the "
                                                  "refresh token")
    common(authorize)
    authorize.add_argument("--device", action="store_true",
                           help="device flow: open a URL anywhere and type a code")
    authorize.add_argument("--port", type=int, default=0,
                           help="loopback port for the browser's answer (default: any)")
    authorize.add_argument("--wait", type=float, default=600,
                           help="seconds to wait for the sign-in (default 600)")
    authorize.set_defaults(run=cmd_authorize)
    token = osub.add_parser("token", help="get an access token now; prints its expiry only")
    common(token)
    token.set_defaults(run=cmd_token)


def common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=argparse.SUPPRESS, help="config file path")
    parser.add_argument("--transport", help="transport name (default: the first with an "
                                            "oauth2 upstream)")
    parser.add_argument("--upstream", type=int, help="upstream index in the transport "
                                                     "(default: its first oauth2 upstream)")


def chosen_upstream(config: Config, transport: str | None, index: int | None
                    ) -> tuple[str, UpstreamConfig]:
    """The upstream the command is about, with a CommandError naming what is missing."""
    names = [transport] if transport else [
        n for n, t in config.transports.items() if any(u.oauth2 for u in t.upstreams)]
    if not names:
        raise CommandError(f"{config.path}: no upstream has oauth2 settings")
    found = config.transports.get(names[0])
    if found is None:
        raise CommandError(f"{config.path}: no transport named {names[0]!r}")
    candidates = list(enumerate(found.upstreams))
    if index is not None:
        candidates = candidates[index:index + 1]
    where = f"transports.{names[0]}.upstreams"
    for i, upstream in candidates:
        if upstream.oauth2 is not None:
            return f"{where}[{i}]", upstream
    raise CommandError(f"{config.path}: {where}" + (f"[{index}]" if index is not None else "")
                       + " has no oauth2 settings")


def prepare(args: argparse.Namespace) -> tuple[OAuth2Config, UpstreamConfig, TokenStore]:
    """The resolved settings, the upstream and the token store for the command."""
    config = load_config(args.config)
    _, upstream = chosen_upstream(config, args.transport, args.upstream)
    settings = resolve(upstream)
    unusable = problem(settings, upstream.username)
    if unusable is not None:
        raise CommandError(unusable)
    return settings, upstream, TokenStore(store_path(config.spool_dir))


def run(coroutine: Callable[[Any], Any]) -> int:
    """Run ``coroutine(reactor)`` in a reactor of its own; OAuth2Error ends it with exit
    status 1 and one line on stderr."""
    from twisted.internet import task

    async def main(reactor: Any) -> None:
        try:
            await coroutine(reactor)
        except OAuth2Error as e:
            print(f"relaymail: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    task.react(lambda reactor: ensureDeferred(main(reactor)))
    return 0


def cmd_authorize(args: argparse.Namespace) -> int:
    settings, upstream, store = prepare(args)
    if settings.grant == "client_credentials":
        raise CommandError("the client_credentials grant needs no sign-in; check it with "
                           "`relaymail oauth2 token`")
    extra = authorize_params(upstream)
    return run(lambda reactor: authorize(
        reactor, settings, upstream.username or "", store, device=args.device,
        port=args.port, wait=args.wait, extra=extra))


def cmd_token(args: argparse.Namespace) -> int:
    settings, upstream, store = prepare(args)
    return run(lambda reactor: show_token(reactor, settings, upstream.username or "", store))


def authorize_params(upstream: UpstreamConfig) -> tuple[tuple[str, str], ...]:
    """The preset's extra authorize parameters (Google: offline access, consent)."""
    preset = PRESETS.get(upstream.preset or "")
    return preset.oauth2.authorize_params if preset and preset.oauth2 else ()


# ---------------------------------------------------------------------- the flows


async def authorize(reactor: Any, settings: OAuth2Config, username: str, store: TokenStore,
                    *, device: bool, out: TextIO | None = None, http: Any = None,
                    port: int = 0, wait: float = 600, extra: tuple[tuple[str, str], ...] = (),
                    sleep: Sleep | None = None) -> Token:
    """Sign ``username`` in with the device or the code flow and store the refresh token;
    returns the first access token.  OAuth2Error says what went wrong."""
    out = out or sys.stdout
    http = http if http is not None else make_http(reactor)
    if device:
        data = await device_flow(reactor, http, settings, username, out, wait,
                                 sleep or (lambda s: deferLater(reactor, s, lambda: None)))
    else:
        data = await code_flow(reactor, http, settings, username, out, port, wait, extra)
    token = parse_token(data, settings.token_url or "", time.time())
    if not token.refresh_token:
        raise OAuth2Error("the token endpoint gave no refresh token (Microsoft: the scope "
                          "needs offline_access; Google: access_type=offline)")
    await _thread(reactor, store.save, store_key(settings, username), token.refresh_token,
                  fingerprint(settings.refresh_token), time.time())
    print(f"Signed in as {username}. Refresh token stored in {store.path}; the relay uses "
          f"it from its next token refresh (access tokens last {token.lifetime:.0f} s).",
          file=out, flush=True)
    return token


def _thread(reactor: Any, f: Callable[..., Any], *args: Any) -> Deferred:
    from twisted.internet.threads import deferToThreadPool

    return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


async def device_flow(reactor: Any, http: Any, settings: OAuth2Config, username: str,
                      out: TextIO, wait: float, sleep: Sleep) -> dict[str, Any]:
    """RFC 8628: ask for a user code, show it, poll the token endpoint at ``interval``
    (5 s more after each slow_down) until the user has signed in."""
    if not settings.device_url:
        raise OAuth2Error("no oauth2.device_url for the device flow; set it, or leave out "
                          "--device to sign in with a browser on this machine")
    form = {"client_id": settings.client_id, **({"scope": settings.scope}
                                                if settings.scope else {})}
    start = await post_form(http, reactor, settings.device_url, form, DEFAULT_TIMEOUT)
    device_code, user_code = start.get("device_code"), start.get("user_code")
    uri = start.get("verification_uri") or start.get("verification_url")  # Google: _url
    if not (isinstance(device_code, str) and isinstance(user_code, str) and uri):
        raise OAuth2Error(f"{settings.device_url} answered without a device_code, "
                          f"user_code and verification_uri")
    print(f"To let relaymail send as {username}, open {uri} in any browser and enter the "
          f"code {user_code}", file=out, flush=True)
    interval = float(start.get("interval") or 5)
    deadline = reactor.seconds() + min(wait, float(start.get("expires_in") or wait))
    poll = {"grant_type": DEVICE_GRANT, "device_code": device_code,
            "client_id": settings.client_id}
    if settings.client_secret:
        poll["client_secret"] = settings.client_secret
    while reactor.seconds() < deadline:
        await sleep(interval)
        try:
            return await post_form(http, reactor, settings.token_url or "", poll,
                                   DEFAULT_TIMEOUT)
        except TokenEndpointError as e:
            if e.error == "slow_down":
                interval += 5
            elif e.error != "authorization_pending":
                raise OAuth2Error(f"sign-in failed: {e.detail}") from None
    raise OAuth2Error(f"gave up waiting for the sign-in after {wait:g} s")


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge (RFC 7636 §4.1, §4.2)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


async def code_flow(reactor: Any, http: Any, settings: OAuth2Config, username: str,
                    out: TextIO, port: int, wait: float,
                    extra: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """The authorization code flow with PKCE: print the authorize URL, receive the code on
    a loopback listener, exchange it at the token endpoint."""
    if not settings.authorize_url:
        raise OAuth2Error("no oauth2.authorize_url for the browser sign-in; set it, or use "
                          "--device")
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    receiver = CodeReceiver(state)
    listening = await listen_loopback(reactor, port, receiver)
    try:
        redirect = f"http://127.0.0.1:{listening.getHost().port}/"
        query = [("response_type", "code"), ("client_id", settings.client_id),
                 ("redirect_uri", redirect), ("scope", settings.scope or ""),
                 ("state", state), ("code_challenge", challenge),
                 ("code_challenge_method", "S256"), ("login_hint", username), *extra]
        print(f"Open this URL in a browser on this machine and sign in as {username} (the "
              f"answer comes back to {redirect}; from elsewhere, forward that port with "
              f"ssh -L, or use --device):\n{settings.authorize_url}?{urlencode(query)}",
              file=out, flush=True)
        code = await receiver.code.addTimeout(wait, reactor)
    except DeferredTimeout:
        raise OAuth2Error(f"gave up waiting for the browser after {wait:g} s") from None
    finally:
        await listening.stopListening()
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
            "client_id": settings.client_id, "code_verifier": verifier}
    if settings.client_secret:
        form["client_secret"] = settings.client_secret
    return await post_form(http, reactor, settings.token_url or "", form, DEFAULT_TIMEOUT)


class CodeReceiver(Resource):
    """The loopback redirect target: takes the first answer whose state matches."""

    isLeaf = True

    def __init__(self, state: str) -> None:
        super().__init__()
        self.state = state
        self.code: Deferred = Deferred()

    def render_GET(self, request: Any) -> bytes:
        args = {k.decode(): v[0].decode("utf-8", "replace") for k, v in request.args.items()}
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self.code.called or args.get("state") != self.state:
            request.setResponseCode(400)
            return b"relaymail: not the answer this sign-in waits for\n"
        if "code" in args:
            self.code.callback(args["code"])
            return b"relaymail has the authorization. You can close this window.\n"
        error = f"{args.get('error', 'no code')}: {args.get('error_description', '')}"
        self.code.errback(OAuth2Error(f"sign-in refused: {error.strip(': ')}"))
        return b"relaymail: the sign-in was refused; see the terminal.\n"


async def listen_loopback(reactor: Any, port: int, resource: Resource) -> Any:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    site = Site(resource)
    site.displayTracebacks = False
    return await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(site)


async def show_token(reactor: Any, settings: OAuth2Config, username: str, store: TokenStore,
                     out: TextIO | None = None, http: Any = None) -> Token:
    """One token request as the relay would make it; prints only the expiry."""
    out = out or sys.stdout
    source = TokenSource(settings, username, reactor, http=http, store=store)
    token: Token = await source.fresh()
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + token.lifetime))
    print(f"Access token for {username} from {settings.token_url}: valid {token.lifetime:.0f} "
          f"s (until {until})", file=out, flush=True)
    return token
