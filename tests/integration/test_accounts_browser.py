"""The console's accounts pages in a real headless browser (Debian's chromium driven by
Playwright), in Chinese and English, as people of an smtp2go-like service use them:

* alice registers on /register and lands on her own dashboard (no relay panels); makes an
  SMTP login on the credentials page and reads its one-time password there; sends through
  it with smtplib over STARTTLS + AUTH; sees the message in her own delivery log; edits the
  login's hourly quota in place (kept after a reload, usage counted against it); finds her
  address as From on the send form; makes an API key (no admin scope offered to her) and
  sees it listed; changes her password (the hint names the configured minimum);
* bob registers too: his credentials and log show nothing of alice's, an admin page sends
  him to the dashboard, the admin API answers him 403;
* the admin sees alice on the users page (and her login, with her name, on the credentials
  page, whose "Enabled" header stays whole at 1280 px), makes a login for her there (without
  a quota of its own: it names her account's), which she then finds on her credentials
  page, hinted alike; disables her: her open SMTP session is refused at the next MAIL, and
  so is a new one;
* with registration closed, the register page shows the server's refusal, translated.

Every page is checked like tests/integration/test_console_browser.py checks them (page
errors, CSP violations, overflow and header height on a phone, English left in Chinese
pages); the user's pages and the users page also at phone width.  Screenshots go to
var/artifacts/."""

from __future__ import annotations

import json
import os
import re
import smtplib
import ssl
from importlib import resources
from typing import Any

from twisted.internet.threads import deferToThread

from relaymail.credentials import hash_password
from tests.accountsclient import smtp_send
from tests.helpers import free_port, write_tls_files
from tests.integration.browser import DESKTOP, PHONE, Console
from tests.integration.test_relay import RelayTestCase
from tests.peers import require_browser

ADMIN_PASSWORD = "console-pass-123"
PASSWORD = "people-pass-123"
NEW_PASSWORD = "people-pass-456"
# An account user's pages, and what each shows once drawn.
USER_PAGES = {"dashboard": ("/", "#chart"), "credentials": ("/credentials", "#list"),
              "logs": ("/logs", "#list"), "send": ("/send", "#send"),
              "keys": ("/keys", "#list"), "account": ("/account", "#password")}
ADMIN_ONLY = ("/relay", "/queue", "/hold", "/failed", "/archive", "/webhooks",
              "/suppressions", "/users")


class AccountsBrowserTests(RelayTestCase):
    def setUp(self) -> None:
        super().setUp()
        require_browser()

    async def start(self, registration: str) -> str:
        web, self.smtp_port = free_port(), free_port()
        cert, key, _ = write_tls_files(self.dir)
        await self.relay(
            web={"enabled": True, "endpoint": f"tcp:{web}:interface=127.0.0.1",
                 "admin_password_hash": hash_password(ADMIN_PASSWORD, rounds=4)},
            smtp={"listeners": [{"name": "submission", "tls": "starttls", "auth": "required",
                                 "endpoint": f"tcp:{self.smtp_port}:interface=127.0.0.1"}],
                  "tls": {"certificate": cert, "private_key": key}, "workers": 0,
                  "trusted_networks": []},
            accounts={"registration": registration, "max_registrations_per_hour": 50},
            transports={"outbox": {"type": "maildir", "path": os.path.join(self.dir, "out")}},
            delivery={"retry_schedule": [3600], "connect_timeout": 3, "command_timeout": 3})
        return f"http://127.0.0.1:{web}"

    async def test_users_register_send_and_see_only_their_own(self) -> None:
        base = await self.start("open")
        r = await deferToThread(self.journey, base)
        self.assertEqual(r["problems"], [])
        for lang, done in (("zh", "已创建"), ("en", "created")):
            j = r[lang]
            # alice's own dashboard: her counts and charts, none of the relay's panels
            self.assertEqual(j["dashboard_relay_panels"], 0)
            self.assertEqual(j["nav"], ["/", "/credentials", "/logs", "/send", "/keys",
                                        "/account"])
            self.assertEqual(j["footer"], ["/api/docs"])
            # her SMTP login: generated, its password shown once with the snippet
            self.assertRegex(j["login"], r"^relay_[0-9a-f]{8}_[0-9a-f]{4}$")
            self.assertIn(done, j["created"])
            self.assertEqual(len(j["password"]), 24)
            self.assertIn(str(self.smtp_port), j["snippet"])
            self.assertIn(j["login"], j["snippet"])
            self.assertEqual(j["sent"], {})
            self.assertIn(f"rcpt-{lang}@dest.test", j["own_log"])
            # the quota edited in place, kept, the message counted against it
            self.assertEqual(j["hourly_after_reload"], "50")
            # the send form: From is her account's one sender address
            self.assertEqual(j["send_from"], f"alice-{lang}@people.example")
            self.assertEqual(j["password_rule"], {"zh": "至少 10 个字符",
                                                  "en": "at least 10 characters"}[lang])
            self.assertIn("1", j["usage"])
            self.assertIn("50", j["usage"])
            # API keys: no admin scope for her; the key once; listed by its prefix
            self.assertEqual(j["admin_scope_offered"], 0)
            # her account: the address she registered with is her one sender, for now
            self.assertEqual(j["me"].count(f"alice-{lang}@people.example"), 2)
            self.assertTrue(j["key"].startswith("rmk_"), j["key"])
            self.assertIn(j["key"].split("_")[1], j["keys_table"])
            self.assertIn("ci-" + lang, j["keys_table"])
            # bob sees nothing of hers; admin pages send him home; the admin API says 403
            self.assertNotIn(j["login"], j["bob_credentials"])
            self.assertNotIn(f"rcpt-{lang}", j["bob_log"])
            self.assertEqual(set(j["bob_admin_pages"].values()), {base + "/"})
            self.assertEqual(j["bob_users_api"], 403)
            # the admin: alice listed with her login; disabled; refused at MAIL
            self.assertIn(f"alice-{lang}@people.example", j["users_row"])
            self.assertIn(f"alice-{lang}", j["admin_credentials_row"])
            self.assertEqual(j["enabled_header_lines"], 1)
            # a login the admin made for her: listed with her name, its password once; no
            # quota of its own, so her account's is named (to the admin, and to her)
            self.assertRegex(j["made"], r"^relay_[0-9a-f]{8}_[0-9a-f]{4}$")
            self.assertEqual(len(j["made_password"]), 24)
            self.assertIn(f"alice-{lang}", j["made_row"])
            account_quota = {"zh": "账户\uff1a100/小时", "en": "account: 100/hour"}[lang]
            self.assertIn(account_quota, j["made_usage"])
            self.assertIn(j["made"], j["alice_sees_made"])
            self.assertIn(account_quota, j["alice_made_usage"])
            self.assertNotIn(account_quota, j["usage"])  # her own login has its own quota
            self.assertIsInstance(j["mail_after_disable"], smtplib.SMTPSenderRefused)
            self.assertIsInstance(j["new_session_after_disable"], smtplib.SMTPException)
            self.assertEqual(j["admin_dashboard"], 2)  # the relay's panels are the admin's
        zh, en = r["zh"], r["en"]
        self.assertIn("此用户名已被使用", zh["duplicate_username"])
        self.assertIn("This username is already taken", en["duplicate_username"])
        self.assertIn("当前密码不正确", zh["wrong_current"])
        self.assertIn("密码已修改", zh["password_changed"])
        self.assertIn("Password changed", en["password_changed"])
        self.assertIn("已保存", zh["quota_saved"])
        self.assertIn("已停用 alice-zh", zh["disabled"])
        self.assertIn("alice-en disabled", en["disabled"])
        self.assertIn("已创建密钥 ci-zh", zh["key_created"])
        # phone width: bob's pages (a login made there too) and the admin's users page
        for lang in ("zh", "en"):
            self.assertRegex(r["phone"][lang]["login"], r"^relay_[0-9a-f]{8}_[0-9a-f]{4}$")

    def journey(self, base: str) -> dict[str, Any]:
        from playwright.sync_api import sync_playwright

        out: dict[str, Any] = {"problems": [], "phone": {}}
        with sync_playwright() as p:
            for lang in ("zh", "en"):
                out[lang] = self.desktop(p, base, lang, out["problems"])
            for lang in ("zh", "en"):
                out["phone"][lang] = self.phone(p, base, lang, out["problems"])
        return out

    def desktop(self, p: Any, base: str, lang: str, problems: list[str]) -> dict[str, Any]:
        j: dict[str, Any] = {}
        alice, bob = f"alice-{lang}", f"bob-{lang}"
        c = Console(p, base, DESKTOP, lang, problems)
        try:
            self.register(c, alice, j)
            j["duplicate_username"] = self.duplicate(c, alice)
            j["nav"], j["footer"] = (c.page.eval_on_selector_all(
                where, "a => a.map(x => x.getAttribute('href'))") for where in ("#nav a",
                                                                            "footer a"))
            self.alice_credential(c, lang, j)
            self.alice_log(c, lang, j)
            self.alice_quota(c, j)
            self.alice_send_form(c, j)
            self.alice_key(c, lang, j)
            self.alice_password(c, j)
            self.logout(c)
            self.register(c, bob, {})
            self.bob_sees_nothing(c, base, j)
            self.logout(c)
            self.admin(c, lang, alice, j)
        finally:
            c.close()
        return j

    def register(self, c: Console, name: str, j: dict[str, Any]) -> None:
        """Through the login page's link when registration is open there; else /register."""
        page = c.page
        c.open("/login", "#login")
        if page.locator("#register-link a").count():
            page.click("#register-link a")
        else:
            page.goto(c.base + "/register")
        page.wait_for_selector("#register")
        c.check("register")
        j["password_rule"] = page.inner_text("#register label:has(#f-password) small")
        c.submit("#register", {"#f-username": name, "#f-email": f"{name}@people.example",
                               "#f-password": PASSWORD})
        page.wait_for_url(c.base + "/")
        page.wait_for_selector("#chart")
        j["dashboard_relay_panels"] = page.locator(
            "#upstreams, #cards-now, #destination, #queue-chart, #upstream-chart").count()
        c.check("user-dashboard")

    def duplicate(self, c: Console, name: str) -> str:
        """Registering the same name again: the server's refusal, translated."""
        c.page.context.clear_cookies()
        c.open("/register", "#register")
        c.submit("#register", {"#f-username": name, "#f-email": f"other-{name}@people.example",
                               "#f-password": PASSWORD})
        text = c.message("taken" if c.lang == "en" else "已被使用")
        c.check("register-refused")
        c.login(PASSWORD, name)
        c.page.wait_for_selector("#chart")
        return text

    def alice_credential(self, c: Console, lang: str, j: dict[str, Any]) -> None:
        page = c.page
        c.open("/credentials", "#create")
        c.check("user-credentials-empty")
        c.submit("#create", {"#f-name": "shop web server", "#f-hourly_quota": "100"})
        j["created"] = c.message("relay_")
        j["password"] = page.inner_text("#once-value")
        j["snippet"] = page.inner_text("#once-snippet")
        page.wait_for_selector("#credentials-table")
        j["login"] = page.inner_text("#credentials-table .login")
        c.check("user-credentials")
        # a registered account sends as the address it gave (until an admin gives domains)
        j["sender"] = f"alice-{lang}@people.example"
        j["sent"] = smtp_send(self.smtp_port, j["login"], j["password"], j["sender"],
                              f"rcpt-{lang}@dest.test", starttls=True)

    def alice_log(self, c: Console, lang: str, j: dict[str, Any]) -> None:
        page = c.page
        c.open("/logs", "#list")
        c.reload_until(f"#list tr:has-text('rcpt-{lang}@dest.test')", "#list")
        j["own_log"] = page.inner_text("#list")
        c.check("user-logs")

    def alice_quota(self, c: Console, j: dict[str, Any]) -> None:
        page = c.page
        c.open("/credentials", "#credentials-table")
        row = f"#list tr:has-text('{j['login']}')"
        page.fill(f"{row} .edit-hourly", "50")
        page.click(f"{row} [data-action=save]")
        j["quota_saved"] = c.message(j["login"])
        page.reload()
        page.wait_for_selector(f"{row} .edit-hourly")
        j["hourly_after_reload"] = page.input_value(f"{row} .edit-hourly")
        j["usage"] = page.inner_text(f"{row} .usage")

    def alice_send_form(self, c: Console, j: dict[str, Any]) -> None:
        c.open("/send", "#send")
        j["send_from"] = c.page.input_value("#f-from")

    def alice_key(self, c: Console, lang: str, j: dict[str, Any]) -> None:
        page = c.page
        c.open("/keys", "#create")
        j["admin_scope_offered"] = page.locator("#f-scope-admin").count()
        page.check("#f-scope-manage-credentials")
        c.submit("#create", {"#f-name": "ci-" + lang})
        j["key_created"] = c.message("ci-" + lang)
        j["key"] = page.inner_text("#once-value")
        page.wait_for_selector("#keys-table")
        j["keys_table"] = page.inner_text("#keys-table")
        c.check("keys")

    def alice_password(self, c: Console, j: dict[str, Any]) -> None:
        c.open("/account", "#password")
        j["me"] = c.page.inner_text("#me")
        c.check("account")
        c.submit("#password", {"#f-current": "not-my-password", "#f-new": NEW_PASSWORD,
                               "#f-confirm": NEW_PASSWORD})
        j["wrong_current"] = said(c, "error")
        c.submit("#password", {"#f-current": PASSWORD})
        j["password_changed"] = said(c, "ok")
        c.open("/keys", "#keys-table")  # signed in again with the new password

    def logout(self, c: Console) -> None:
        c.page.click("#logout")
        c.page.wait_for_url(c.base + "/login")

    def bob_sees_nothing(self, c: Console, base: str, j: dict[str, Any]) -> None:
        page = c.page
        c.open("/credentials", "#list")
        j["bob_credentials"] = page.inner_text("#list")
        c.open("/logs", "#list")
        j["bob_log"] = page.inner_text("#list")
        j["bob_admin_pages"] = {}
        for path in ADMIN_ONLY:
            page.goto(base + path)
            page.wait_for_selector("#chart")
            j["bob_admin_pages"][path] = page.url
        j["bob_users_api"] = page.request.get(base + "/api/users").status

    def admin(self, c: Console, lang: str, alice: str, j: dict[str, Any]) -> None:
        page = c.page
        c.login(ADMIN_PASSWORD)
        page.wait_for_selector("#destination")
        j["admin_dashboard"] = page.locator("#cards-now, #destination").count()
        page.set_viewport_size({"width": 1280, "height": 900})
        c.open("/credentials", "#credentials-table")
        j["admin_credentials_row"] = page.inner_text(f"#list tr:has-text('{j['login']}')")
        j["enabled_header_lines"] = page.evaluate(HEADER_LINES, "enabled_col")
        c.check("admin-credentials")
        self.admin_makes_a_login(c, alice, j)
        c.open("/users", "#users-table")
        row = f"#users-table tr:has-text('{alice}@people.example')"
        j["users_row"] = page.inner_text(row)
        c.check("users")
        session = open_session(self.smtp_port, j["login"], j["password"])
        try:
            page.click(f"[data-action=toggle][data-user='{alice}']")
            j["disabled"] = c.message(alice)
            page.wait_for_selector(f"{row} .edit-enabled:not(:checked)")
            try:
                session.sendmail(j["sender"], ["again@dest.test"],
                                 f"From: {j['sender']}\r\nSubject: x\r\n\r\nx\r\n")
                j["mail_after_disable"] = None
            except smtplib.SMTPException as e:
                j["mail_after_disable"] = e
        finally:
            session.close()
        j["new_session_after_disable"] = smtp_send(
            self.smtp_port, j["login"], j["password"], j["sender"], "again@dest.test",
            starttls=True)

    def admin_makes_a_login(self, c: Console, alice: str, j: dict[str, Any]) -> None:
        """A login for alice from the admin's credentials page; then alice's page."""
        page = c.page
        page.select_option("#f-user", alice)
        c.submit("#create", {"#f-name": "made by the admin"})
        made = re.search(r"relay_[0-9a-f]{8}_[0-9a-f]{4}", c.message("relay_"))
        j["made"] = made.group(0) if made else ""
        j["made_password"] = page.inner_text("#once-value")
        row = f"#list tr:has-text('{j['made']}')"
        page.wait_for_selector(row)
        j["made_row"] = page.inner_text(row)
        j["made_usage"] = page.inner_text(f"{row} .usage")
        c.check("admin-credentials-for-account")
        self.logout(c)
        c.login(NEW_PASSWORD, alice)
        c.open("/credentials", "#credentials-table")
        j["alice_sees_made"] = page.inner_text("#credentials-table")
        j["alice_made_usage"] = page.inner_text(f"{row} .usage")
        c.check("user-credentials-made-by-admin")
        self.logout(c)
        c.login(ADMIN_PASSWORD)

    def phone(self, p: Any, base: str, lang: str, problems: list[str]) -> dict[str, Any]:
        """bob's pages at phone width, a login made there; the admin's users page."""
        j: dict[str, Any] = {}
        c = Console(p, base, PHONE, lang, problems)
        try:
            c.login(PASSWORD, f"bob-{lang}@people.example")
            c.page.wait_for_selector("#chart")
            c.open("/credentials", "#create")
            c.submit("#create", {"#f-name": "phone"})
            c.message("relay_")
            c.page.wait_for_selector("#credentials-table")
            j["login"] = c.page.inner_text("#credentials-table .login")
            for name, (path, ready) in USER_PAGES.items():
                c.open(path, ready)
                c.check("user-" + name)
            self.logout(c)
            c.login(ADMIN_PASSWORD)
            c.open("/users", "#users-table")
            c.check("users")
            c.open("/credentials", "#credentials-table")
            c.check("admin-credentials")
        finally:
            c.close()
        return j

    async def test_closed_registration_is_refused_in_the_readers_language(self) -> None:
        base = await self.start("off")
        r = await deferToThread(self.closed, base)
        self.assertEqual(r["problems"], [])
        self.assertEqual(r["link"], 0)
        self.assertIn("注册已关闭", r["zh"])
        self.assertIn("Registration is closed", r["en"])

    def closed(self, base: str) -> dict[str, Any]:
        from playwright.sync_api import sync_playwright

        out: dict[str, Any] = {"problems": []}
        with sync_playwright() as p:
            for lang in ("zh", "en"):
                c = Console(p, base, DESKTOP, lang, out["problems"])
                try:
                    c.open("/login", "#login")
                    out["link"] = c.page.locator("#register-link").count()
                    c.open("/register", "#register")
                    c.submit("#register", {"#f-username": "carol",
                                           "#f-email": "carol@people.example",
                                           "#f-password": PASSWORD})
                    out[lang] = said(c, "error")
                    c.check("register-closed")
                finally:
                    c.close()
        return out


# How many lines a header of the page's table takes (by its catalogue key).
HEADER_LINES = """
(key) => {
  const label = JSON.parse(document.body.dataset.console).t[key];
  const th = [...document.querySelectorAll("th")].find((x) => x.textContent === label);
  const range = document.createRange();
  range.selectNodeContents(th);
  return range.getClientRects().length;
}
"""


def said(c: Console, kind: str) -> str:
    """The message line once it says something of ``kind`` (ok, error)."""
    c.page.wait_for_selector(f"#message.{kind}")
    return str(c.page.inner_text("#message"))


def open_session(port: int, login: str, password: str) -> smtplib.SMTP:
    """An SMTP session over STARTTLS, authenticated, left open."""
    session = smtplib.SMTP("127.0.0.1", port, timeout=20)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    session.starttls(context=context)
    session.login(login, password)
    return session


def test_the_accounts_scripts_use_only_catalogued_keys() -> None:
    """Every t("key") of the accounts scripts is in both catalogues."""
    static = resources.files("relaymail.web").joinpath("static")
    en, zh = (set(json.loads(static.joinpath(f"{lang}.json").read_text("utf-8")))
              for lang in ("en", "zh"))
    used: set[str] = set()
    for name in ("users.js", "account.js", "credentials.js", "dashboard.js", "logs.js"):
        used |= set(re.findall(r'\bt\("([a-z0-9_-]+)"', static.joinpath(name).read_text()))
    used = {k for k in used if not k.endswith("_")}
    assert used - en == set()
    assert used - zh == set()
