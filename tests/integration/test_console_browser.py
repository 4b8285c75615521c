"""The console in a real headless browser (Debian's chromium driven by Playwright): log in,
switch to Chinese, pick a provider preset, point it at a loopback upstream, test the
connection, save, send a message whose subject is an XSS attempt, and find it in the queue
(shown as text, never run) and in the delivery log.  Screenshots go to var/artifacts/."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.threads import deferToThread

from relaymail.credentials import hash_password
from tests.helpers import free_port
from tests.integration.test_relay import RelayTestCase
from tests.peers import CHROMIUM, require_browser
from tests.upstreams import Script

PASSWORD = "console-pass-123"
XSS = '<img src=x onerror="window.__xss=1">'
ARTIFACTS = os.environ.get("RELAYMAIL_ARTIFACTS", os.path.join("var", "artifacts"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class ConsoleBrowserTests(RelayTestCase):
    def setUp(self) -> None:
        super().setUp()
        require_browser()
        os.makedirs(ARTIFACTS, exist_ok=True)

    async def test_new_user_journey(self) -> None:
        # an upstream that defers the test recipient: the message stays in the queue
        upstream = await self.scripted(Script(rcpt={"you@dest.test": "451 4.7.1 try later"}))
        web = free_port()
        await self.relay(web={"enabled": True, "endpoint": f"tcp:{web}:interface=127.0.0.1",
                              "admin_password_hash": hash_password(PASSWORD, rounds=4)},
                         transports={"outbox": {"type": "maildir",
                                                "path": os.path.join(self.dir, "out")}},
                         delivery={"retry_schedule": [3600], "connect_timeout": 3,
                                   "command_timeout": 3})
        report = await deferToThread(self.journey, f"http://127.0.0.1:{web}", upstream.port)
        self.assertEqual(report["start_url"], f"http://127.0.0.1:{web}/login")
        self.assertIn("概览", report["zh_nav"])
        self.assertEqual(report["preset_host"], "smtp.qq.com")
        self.assertTrue(report["none_with_login"])  # not offered with a username
        self.assertEqual(report["tls_with_login"], "starttls")
        self.assertIn("✔ QUIT", report["steps"])
        self.assertIn("已保存并生效", report["saved"])
        self.assertIn("已排队", report["sent"])
        self.assertIn("you@dest.test", report["queue"])
        self.assertIn(XSS, report["headers"])  # shown literally...
        self.assertEqual(report["xss"], None)  # ...and never run
        self.assertEqual(report["images_in_headers"], 0)
        self.assertIn("451 4.7.1 try later", report["log"])
        self.assertEqual(report["errors"], [])

    def journey(self, base: str, upstream_port: int) -> dict[str, Any]:
        from playwright.sync_api import sync_playwright

        out: dict[str, Any] = {"errors": []}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 420, "height": 900})  # a phone
                page.set_default_timeout(15000)
                page.on("pageerror", lambda e: out["errors"].append(str(e)))
                page.goto(base + "/")
                out["start_url"] = page.url
                page.fill("#f-password", PASSWORD)
                page.click("#login button[type=submit]")
                page.wait_for_url(base + "/")
                page.wait_for_selector(".card")
                page.click("a.lang")  # 中文
                page.wait_for_selector(".card")
                out["zh_nav"] = page.inner_text("header")
                page.screenshot(path=os.path.join(ARTIFACTS, "console-dashboard.png"))

                page.goto(base + "/relay")
                page.wait_for_selector("#f-preset")
                page.select_option("#f-preset", "qq")
                out["preset_host"] = page.input_value("#f-host")
                page.select_option("#f-preset", "")
                page.fill("#f-host", "127.0.0.1")
                page.fill("#f-port", str(upstream_port))
                page.select_option("#f-tls", "none")
                page.fill("#f-username", "me@dest.test")  # M5: credentials -> verified TLS only
                out["none_with_login"] = page.eval_on_selector(
                    "#f-tls option[value=none]", "o => o.disabled")
                out["tls_with_login"] = page.input_value("#f-tls")
                page.fill("#f-username", "")
                page.select_option("#f-tls", "none")
                page.check("#f-enabled")
                page.click("#test")
                page.wait_for_selector("#steps table")
                out["steps"] = page.inner_text("#steps")
                page.click("#save")
                page.wait_for_selector("#message:has-text('已保存')")
                out["saved"] = page.inner_text("#message")
                page.screenshot(path=os.path.join(ARTIFACTS, "console-relay.png"))

                page.goto(base + "/send")
                page.fill("#f-from", "app@example.com")
                page.fill("#f-to", "you@dest.test")
                page.fill("#f-subject", XSS)
                page.fill("#f-text", "hello 你好")
                page.click("#send button[type=submit]")
                page.wait_for_selector("#message:has-text('已排队')")
                out["sent"] = page.inner_text("#message")

                page.goto(base + "/queue")
                self.poll(page, "#list:has-text('you@dest.test (pending)')", "#bulk")
                out["queue"] = page.inner_text("#list")
                page.click("a.qid")
                page.wait_for_selector("#headers")
                out["headers"] = page.inner_text("#headers")
                out["images_in_headers"] = page.locator("#details img").count()
                out["xss"] = page.evaluate("window.__xss ?? null")
                page.screenshot(path=os.path.join(ARTIFACTS, "console-queue.png"))

                page.goto(base + "/logs")
                self.poll(page, "#list:has-text('451 4.7.1')", "#list ~ * button, "
                                                               "form.filters button")
                out["log"] = page.inner_text("#list")
                page.screenshot(path=os.path.join(ARTIFACTS, "console-log.png"))
            finally:
                browser.close()
        return out

    @staticmethod
    def poll(page: Any, selector: str, reload: str, tries: int = 20) -> None:
        """Wait for ``selector``, pressing the page's own reload button between looks (the
        delivery attempt that makes it appear runs meanwhile)."""
        for _ in range(tries):
            if page.locator(selector).count():
                return
            page.wait_for_timeout(500)
            page.click(reload)
        page.wait_for_selector(selector)
