"""OAuth2 pieces without sockets: the SASL XOAUTH2/OAUTHBEARER encodings (against the
providers' and RFC 7628's examples), the token source's cache, sharing, timeout and error
texts on a fake HTTP client and clock, the refresh token store, and preset resolution."""

from __future__ import annotations

import base64
import json
import os
import stat
import tempfile
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from relaymail.config import ConfigError, OAuth2Config, config_from_document
from relaymail.relay.connector import Target
from relaymail.relay.oauth2 import (
    OAuth2Error,
    TokenSource,
    TokenStore,
    fingerprint,
    pick_refresh_token,
    problem,
    resolve,
)
from relaymail.relay.sasl import (
    OAuth2Authenticator,
    oauthbearer_response,
    sasl_name,
    xoauth2_response,
)

URL = "https://login.example/token"


class Response:
    def __init__(self, code: int, body: Any) -> None:
        self.code = code
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()

    def content(self) -> Deferred:
        return succeed(self.body)


class FakeHTTP:
    """Answers token requests from a list; ``hold`` keeps them unanswered until released."""

    def __init__(self, *answers: tuple[int, Any], hold: bool = False) -> None:
        self.answers = list(answers)
        self.forms: list[dict[str, str]] = []
        self.hold = hold
        self.waiting: list[Deferred] = []

    def post(self, url: str, data: dict[str, str], **kw: Any) -> Deferred:
        self.forms.append(dict(data))
        answer = Response(*self.answers.pop(0)) if self.answers else None
        if self.hold or answer is None:
            d: Deferred = Deferred()
            self.waiting.append(d)
            if answer is not None:
                d.addCallback(lambda _: answer)
            return d
        return succeed(answer)

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)


def token_body(n: int = 1, expires_in: int = 3600, **extra: Any) -> dict[str, Any]:
    return {"access_token": f"access-{n}", "token_type": "Bearer", "expires_in": expires_in,
            **extra}


def settings(**kw: Any) -> OAuth2Config:
    return OAuth2Config(**{"token_url": URL, "client_id": "cid",
                           "refresh_token": "refresh-secret-1", **kw})


def sync(f: Any, *args: Any) -> Deferred:
    return maybeDeferred(f, *args)


class SASLTests(TestCase):
    def test_xoauth2_matches_googles_example(self) -> None:
        raw = xoauth2_response("someuser@example.com",
                               "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
        self.assertEqual(base64.b64encode(raw), b"dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJl"
                         b"YXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0"
                         b"Q2cBAQ==")

    def test_oauthbearer_gs2_header_and_escaping(self) -> None:
        self.assertEqual(oauthbearer_response("user@example.com", "vF9dft4qmTc2Nvb3RlckBhdHRh"),
                         b"n,a=user@example.com,\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRh"
                         b"\x01\x01")
        self.assertEqual(sasl_name("a=b,c@example.com"), "a=3Db=2Cc@example.com")
        self.assertTrue(oauthbearer_response("a,b=c", "t").startswith(b"n,a=a=2Cb=3Dc,\x01"))

    def test_error_challenge_gets_the_dummy_response(self) -> None:
        challenge = json.dumps({"status": "invalid_token", "scope": "x"}).encode()
        for mechanism, dummy in (("XOAUTH2", b""), ("OAUTHBEARER", b"\x01")):
            sasl = OAuth2Authenticator(mechanism, "u@example.com")
            self.assertEqual(sasl.getName(), mechanism.encode())
            self.assertIn(b"auth=Bearer tok\x01\x01", sasl.challengeResponse(b"tok"))
            self.assertEqual(sasl.challengeResponse(b"tok", challenge), dummy)
            self.assertEqual(sasl.error_status, "invalid_token")


class TokenSourceTests(TestCase):
    def source(self, http: FakeHTTP, clock: Clock, **kw: Any) -> TokenSource:
        store = kw.pop("store", None)
        return TokenSource(settings(**kw), "u@example.com", clock, http=http,
                           clock=clock.seconds, store=store, run_in_thread=sync)

    def test_cached_until_a_minute_before_expiry(self) -> None:
        clock, http = Clock(), FakeHTTP((200, token_body(1)), (200, token_body(2)))
        source = self.source(http, clock)
        self.assertEqual(self.successResultOf(source.token()), "access-1")
        clock.advance(3600 - 61)
        self.assertEqual(self.successResultOf(source.token()), "access-1")
        self.assertEqual(len(http.forms), 1)
        clock.advance(2)
        self.assertEqual(self.successResultOf(source.token()), "access-2")
        self.assertEqual(http.forms[0], {"grant_type": "refresh_token",
                                         "refresh_token": "refresh-secret-1",
                                         "client_id": "cid"})

    def test_concurrent_callers_share_one_request(self) -> None:
        clock, http = Clock(), FakeHTTP((200, token_body(1)), hold=True)
        source = self.source(http, clock)
        first, second = source.token(), source.token()
        self.assertNoResult(first)
        http.release()
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)),
                         ("access-1", "access-1"))
        self.assertEqual(len(http.forms), 1)

    def test_invalidate_forgets_only_that_token(self) -> None:
        clock, http = Clock(), FakeHTTP((200, token_body(1)), (200, token_body(2)))
        source = self.source(http, clock)
        self.successResultOf(source.token())
        source.invalidate("access-other")
        self.assertEqual(self.successResultOf(source.token()), "access-1")
        source.invalidate("access-1")
        self.assertEqual(self.successResultOf(source.token()), "access-2")

    def test_timeout(self) -> None:
        clock, http = Clock(), FakeHTTP()
        source = self.source(http, clock)
        d = source.token()
        clock.advance(29)
        self.assertNoResult(d)
        clock.advance(1)
        error = self.failureResultOf(d, OAuth2Error).value
        self.assertEqual(str(error), f"oauth2: token endpoint {URL} did not answer within 30 s")

    def test_invalid_grant_says_what_to_do_and_hides_secrets(self) -> None:
        echo = {"error": "invalid_grant",
                "error_description": "token refresh-secret-1 was revoked\nTrace ID: 1"}
        clock, http = Clock(), FakeHTTP((400, echo))
        error = self.failureResultOf(self.source(http, clock).token(), OAuth2Error).value
        self.assertEqual(str(error), f"oauth2: refresh token rejected by {URL}: invalid_grant: "
                                     f"token *** was revoked; run `relaymail oauth2 authorize` "
                                     f"again")
        self.assertEqual(error.session_error().outcome("up").code, 454)

    def test_other_answers(self) -> None:
        cases = [((502, b"<html>bad gateway</html>"), f"{URL} answered HTTP 502"),
                 ((200, {"access_token": "a", "token_type": "mac"}), "issued a 'mac' token"),
                 ((200, {"token_type": "Bearer"}), "answered without an access_token"),
                 ((401, {"error": "invalid_client"}), f"client rejected by {URL}: "
                                                      f"invalid_client; check")]
        for answer, expected in cases:
            error = self.failureResultOf(self.source(FakeHTTP(answer), Clock()).token(),
                                         OAuth2Error).value
            self.assertIn(expected, str(error))

    def test_client_credentials_form(self) -> None:
        http = FakeHTTP((200, token_body(1)))
        source = self.source(http, Clock(), grant="client_credentials", client_secret="cs",
                             refresh_token=None, scope="https://outlook.office365.com/.default")
        self.successResultOf(source.token())
        self.assertEqual(http.forms[0], {"grant_type": "client_credentials", "client_id": "cid",
                                         "client_secret": "cs",
                                         "scope": "https://outlook.office365.com/.default"})

    def test_no_refresh_token_anywhere(self) -> None:
        source = self.source(FakeHTTP(), Clock(), refresh_token=None)
        error = self.failureResultOf(source.token(), OAuth2Error).value
        self.assertIn("no refresh token for u@example.com", str(error))

    def test_rotation_is_stored_and_used(self) -> None:
        path = os.path.join(tempfile.mkdtemp(), "spool", "oauth2-tokens.json")
        store = TokenStore(path)
        http = FakeHTTP((200, token_body(1, refresh_token="refresh-secret-2")),
                        (200, token_body(2)))
        source = self.source(http, Clock(), store=store)
        self.successResultOf(source.fresh())
        entry = store.load(source.key)
        self.assertEqual((entry["refresh_token"], entry["seed"]),
                         ("refresh-secret-2", fingerprint("refresh-secret-1")))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.successResultOf(source.fresh())
        self.assertEqual(http.forms[1]["refresh_token"], "refresh-secret-2")


class StoreAndSettingsTests(TestCase):
    def test_pick_refresh_token(self) -> None:
        entry = {"refresh_token": "stored", "seed": fingerprint("configured")}
        self.assertEqual(pick_refresh_token("configured", entry), "stored")
        self.assertEqual(pick_refresh_token(None, entry), "stored")
        self.assertEqual(pick_refresh_token("edited", entry), "edited")  # changed by hand
        self.assertEqual(pick_refresh_token("configured", None, "rotated"), "rotated")
        self.assertEqual(pick_refresh_token("configured", None), "configured")

    def upstream(self, preset: str, **oauth2: Any) -> Any:
        doc = {"routes": [{"domains": ["*"], "transport": "p"}],
               "transports": {"p": {"type": "smarthost", "upstreams": [
            {"preset": preset, "username": "u@example.com",
             "oauth2": {"client_id": "cid", **oauth2}}]}}}
        return config_from_document(doc, "relay.json", environ={}).transports["p"].upstreams[0]

    def test_presets_fill_endpoints_and_scopes(self) -> None:
        ms = resolve(self.upstream("outlook"))
        self.assertEqual((ms.token_url, ms.device_url, ms.scope), (
            "https://login.microsoftonline.com/common/oauth2/v2.0/token",
            "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
            "https://outlook.office.com/SMTP.Send offline_access"))
        app = resolve(self.upstream("outlook", grant="client_credentials", client_secret="s",
                                    tenant="contoso.onmicrosoft.com"))
        self.assertEqual((app.token_url, app.scope), (
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
            "https://outlook.office365.com/.default"))
        self.assertIsNone(problem(app, "u@example.com"))
        shared = resolve(self.upstream("outlook", grant="client_credentials", client_secret="s"))
        self.assertIn("needs oauth2.tenant", problem(shared, "u@example.com") or "")
        personal = resolve(self.upstream("outlook-com"))
        self.assertIn("/consumers/", personal.token_url or "")
        google = resolve(self.upstream("gmail", client_secret="s"))
        self.assertEqual((google.token_url, google.scope, google.device_url), (
            "https://oauth2.googleapis.com/token", "https://mail.google.com/",
            "https://oauth2.googleapis.com/device/code"))
        own = resolve(self.upstream("gmail", token_url="https://t.example/token", scope="x"))
        self.assertEqual((own.token_url, own.scope), ("https://t.example/token", "x"))

    def test_config_checks(self) -> None:
        custom = self.upstream("sendgrid")  # a preset without OAuth2 defaults
        self.assertIn("no oauth2.token_url", problem(resolve(custom), "u@example.com") or "")
        with self.assertRaises(ConfigError) as e:
            self.upstream("outlook", tenant="../evil")
        self.assertIn("oauth2.tenant", str(e.exception))

    def test_targets_keep_secrets_out_of_repr_and_apart_in_key(self) -> None:
        conf = settings(client_secret="cs-secret")
        password = Target("smtp.example", 587, username="u", password="pw")
        oauth = Target("smtp.example", 587, username="u", oauth2=conf)
        other = Target("smtp.example", 587, username="u", oauth2=replace(conf, client_id="x"))
        self.assertEqual(len({password.key, oauth.key, other.key}), 3)
        for text in (repr(oauth), repr(conf)):
            self.assertNotIn("cs-secret", text)
            self.assertNotIn("refresh-secret-1", text)
