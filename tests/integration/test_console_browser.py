"""The console in a real headless browser (Debian's chromium driven by Playwright), as a new
operator uses it, at desktop (1366x900) and phone (390x844) widths, in Chinese and English:

* the relay page: an upstream list (a refused primary, a working backup) with the preset
  explicit field by field, each upstream tested, routes edited, the relay disabled again;
* the dashboard: SVG charts with axes (no inline style: nothing the CSP blocks), the queue
  depth over time from the history's samples (a line with hover values), counters
  from the history, where mail goes, upstream status that tells the truth (a refused
  upstream down, listed right after saving, gone once disabled), /health degraded while
  every delivery fails;
* the queue: per-recipient state in words (deferred), attempts, next retry, last reply;
  Hold with a message and a busy button, held mail listed with Release; the message page
  with its timeline, and an XSS subject shown as text, never run;
* credentials edited in place with usage against quota, the one-time password cleared by
  the next action, a translated server error; the delivery log paged, with readable
  times and queue IDs linked; the send form's required fields, cleared after sending;
* first-run setup: the log names the console and a one-time token; the token (from
  loopback only) sets the admin password.

Every page of every combination is checked for page errors, CSP violations, overflow on a
phone, and English left in the Chinese pages; screenshots go to var/artifacts/."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.logger import formatEvent

from relaymail.credentials import hash_password
from tests.helpers import free_port, send_mail
from tests.integration.browser import DESKTOP, FLAGS, PHONE, READABLE_TIME, Console
from tests.integration.test_relay import RelayTestCase
from tests.peers import CHROMIUM, require_browser
from tests.upstreams import Script, ScriptedSession, ScriptedUpstream

__all__ = ["CHROMIUM", "FLAGS", "PASSWORD"]  # test_oauth2's browser test uses them too
PASSWORD = "console-pass-123"
XSS = '<img src=x onerror="window.__xss=1">'
PAGES = {"dashboard": ("/", "#chart"), "relay": ("/relay", "#f-preset"),
         "queue": ("/queue", "#list"), "hold": ("/hold", "#list"),
         "failed": ("/failed", "#list"), "credentials": ("/credentials", "#list table"),
         "logs": ("/logs", "#log-table"), "send": ("/send", "#send")}


class ConsoleBrowserTests(RelayTestCase):
    def setUp(self) -> None:
        super().setUp()
        require_browser()

    async def start(self, **web: Any) -> str:
        port = free_port()
        self.running = await self.relay(
            web={"enabled": True, "endpoint": f"tcp:{port}:interface=127.0.0.1", **web},
            transports={"outbox": {"type": "maildir", "path": os.path.join(self.dir, "out")}},
            delivery={"retry_schedule": [3600], "connect_timeout": 3, "command_timeout": 3})
        return f"http://127.0.0.1:{port}"

    def document(self) -> dict[str, Any]:
        with open(os.path.join(self.dir, "relay.json")) as f:
            return dict(json.load(f))

    async def test_operator_journey(self) -> None:
        backup = await self.scripted(Script(rcpt={"you@dest.test": "451 4.7.1 try later"}))
        base = await self.start(admin_password_hash=hash_password(PASSWORD, rounds=4))
        # 60 recipients to the outbox: a delivery log of more than one page
        await self.send(self.running, [f"r{i}@dest.test" for i in range(60)])
        refused = free_port()
        report = await deferToThread(self.journey, base, refused, backup.port)
        self.assertEqual(report["problems"], [])
        r = report
        self.assertEqual(r["scan_probe"], ["Nothing here"])
        # dashboard: counters from the history, charts drawn as SVG with axes
        self.assertEqual((r["cards"]["received"], r["cards"]["sent"]), ("1", "60"))
        self.assertGreater(r["bars"], 0)
        self.assertGreaterEqual(r["ticks"], 3)
        self.assertIn("本地发件箱", r["destination"])
        # the queue depth over time: a line through the samples, axes, hover values
        depth = r["queue_depth"]
        self.assertEqual((depth["lines"], depth["areas"]), (1, 1))
        self.assertGreaterEqual(depth["points"], 3)
        self.assertGreaterEqual(depth["ticks"], 3 + 8)  # y: 0, half, top; x: every 3 h
        self.assertIn("队列深度变化", depth["label"])
        self.assertTrue([x for x in depth["titles"] if READABLE_TIME.search(x)
                         and x.endswith(": 队列深度 40")], depth["titles"])
        self.assertGreaterEqual(int(depth["titles"][-1].rsplit(" ", 1)[1]), 1)  # the deferred
        self.assertEqual(depth["top_tick"], "50")
        self.assertEqual(depth["dot"], ("hidden", "visible"))  # shown on hover
        self.assertIn("每 5 分钟取最高值", depth["note"])
        self.assertIn("队列深度变化", r["queue_depth_label"]["zh 390px"])
        self.assertEqual((r["queue_depth_label"]["en 390px"], r["queue_depth_label"]["en 1366px"]),
                         ("Queue depth over time (last 24 h)",) * 2)
        # relay page: preset explicit, each upstream tested, saved list, routes
        self.assertIn("来自预设", r["origin_preset"])
        self.assertIn("已覆盖", r["origin_overridden"])
        self.assertIn("拒绝连接", r["test_primary"])
        self.assertIn("host：不能为空", r["empty_host"])  # noqa: RUF001
        self.assertIn("\u2714 QUIT", r["test_backup"])
        self.assertIn("已保存并生效", r["saved"])
        upstreams = self.document()["transports"]["provider"]["upstreams"]
        self.assertEqual([u["port"] for u in upstreams], [refused, backup.port])
        self.assertEqual((upstreams[1]["max_rate"], upstreams[1]["max_connections"]),
                         ("100/min", 2))
        self.assertIn({"domains": ["internal.test"], "transport": "outbox"},
                      self.document()["routes"])
        # listed right after saving, before any delivery; refused: down; degraded health
        self.assertEqual(r["after_save"].count("尚未使用"), 1)
        self.assertEqual(r["health_when_failing"]["status"], "degraded")
        self.assertIn("recent_failures", [x["code"] for x in
                                          r["health_when_failing"]["details"]["degraded_reasons"]])
        self.assertIn("最近 10 分钟内的投递全部失败", r["dashboard_failing"])
        self.assertIn("不可用", r["upstreams_after"])
        self.assertIn("正常", r["primary_back"])  # a later success clears the error
        self.assertNotIn("refused", r["primary_back"])
        self.assertIn("正常", r["upstreams_after"])
        # send form
        self.assertTrue(r["empty_submit_invalid"])
        self.assertIn("已加入队列，队列 ID：", r["sent"])  # noqa: RUF001
        self.assertEqual(r["cleared"], ["", "", ""])
        # queue: states in words, hold/release with messages, timeline, XSS as text
        self.assertIn("已延迟", r["queue_row"])
        self.assertIn("451 4.7.1 try later", r["queue_row"])
        self.assertTrue(READABLE_TIME.search(r["queue_row"]), r["queue_row"])
        self.assertTrue(r["busy"])
        self.assertIn("已暂缓", r["held_message"])
        self.assertIn(r["qid"], r["held_list"])
        self.assertIn("已恢复投递", r["released"])
        self.assertIn("投递已暂停", r["paused_notice"])  # pause all, resume, in the browser
        self.assertEqual((r["paused_health"], r["resumed_health"], r["notice_after"]),
                         (True, False, 0))
        self.assertIn("已接收", r["timeline"])
        self.assertIn("已延迟", r["timeline"])
        self.assertIn(XSS, r["headers"])
        self.assertEqual((r["xss"], r["images"]), (None, 0))
        # credentials
        self.assertEqual(len(r["password_once"]), 24)
        self.assertIn("名为 app1 的凭据已存在", r["duplicate"])
        self.assertTrue(r["once_hidden_after_error"])
        self.assertIn("已保存 app1", r["patched"])
        self.assertIn("已用 0 / 200", r["usage"])
        self.assertIn("已复制", r["copied"])
        # delivery log: total, pages, date range, readable times, linked queue IDs
        self.assertRegex(r["range_first"], r"第 1–50 条，共 1\d\d 条")  # noqa: RUF001
        self.assertRegex(r["range_next"], r"第 51–100 条")  # noqa: RUF001
        self.assertTrue(READABLE_TIME.search(r["log_text"]))
        self.assertNotRegex(r["log_text"], r"\d{2}:\d{2}:\d{2}\.\d{6}")
        self.assertTrue(r["qid_href"].startswith("/queue?id="))
        self.assertIn("共 0 条", r["range_future"])
        # links, API docs, favicon
        self.assertEqual(r["links"], ["/health", "/metrics", "/api/docs"])
        self.assertEqual(r["docs_wide_chars"], [])
        self.assertEqual(r["favicon"], (200, "image/svg+xml"))
        # disabled: the upstreams disappear, mail goes to the outbox
        self.assertIn("本地发件箱", r["disabled_saved"])
        self.assertIn("暂无内容", r["upstreams_disabled"])
        self.assertIn("本地发件箱", r["destination_disabled"])
        # the phone and English passes
        self.assertIn("Queued as ", r["phone_sent"])
        self.assertLess(r["phone_qid_height"], 40)
        self.assertIn("on hold", r["phone_held"])
        self.assertIn("deferred", r["en_queue"])
        # the acceptor processes, when /health has them
        for where, (rows, text) in r["workers"].items():
            self.assertEqual(rows, 2, where)
            self.assertIn("接收进程" if where.startswith("zh") else "Acceptor processes", text)
        self.assertEqual(len(r["workers"]), 4)
        # who changed what
        self.assertIn("relay settings changed by console user admin from 127.0.0.1",
                      self.log_lines())
        self.assertIn("SMTP credential 'app1' changed (allowed_sender_domains, daily_quota, "
                      "enabled, hourly_quota) by console user admin", self.log_lines())

    def log_lines(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    def journey(self, base: str, refused: int, backup: int) -> dict[str, Any]:
        from playwright.sync_api import sync_playwright

        out: dict[str, Any] = {"problems": []}
        with sync_playwright() as p:
            zh = Console(p, base, DESKTOP, "zh", out["problems"])
            try:
                zh.login(PASSWORD)
                self.dashboard(zh, out)
                self.relay_page(zh, out, refused, backup)
                self.send_form(zh, out)
                self.queue_pages(zh, out)
                self.queue_depth(zh, out)
                self.primary_back(zh, out, refused)
                self.credentials_page(zh, out)
                self.logs_page(zh, out)
                self.links(zh, out)
                self.workers(zh, out)
                for name, (path, ready) in PAGES.items():
                    zh.open(path, ready)
                    zh.check(name)
                self.disable(zh, out)
            finally:
                zh.close()
            for viewport, lang in ((PHONE, "zh"), (PHONE, "en"), (DESKTOP, "en")):
                self.tour(p, base, viewport, lang, out)
        return out

    def dashboard(self, c: Console, out: dict[str, Any]) -> None:
        page = c.page
        c.open("/", "#chart rect.s-sent")
        # the scan for English left in Chinese pages finds what it should, and only that
        page.evaluate("() => document.getElementById('content').append("
                      "Object.assign(document.createElement('p'), {id: 'probe', textContent: "
                      "'Nothing here'}))")
        out["scan_probe"] = c.untranslated()
        page.evaluate("() => document.getElementById('probe').remove()")
        out["cards"] = {k: page.inner_text(f"#card-{k} b") for k in ("received", "sent")}
        out["bars"] = page.locator("#chart rect.s-sent").count()
        out["ticks"] = page.locator("#chart text.tick").count()
        out["destination"] = page.inner_text("#destination")
        c.check("dashboard-start")

    def relay_page(self, c: Console, out: dict[str, Any], refused: int, backup: int) -> None:
        page = c.page
        c.open("/relay", "#f-preset")
        page.select_option("#f-preset", "qq")
        out["origin_preset"] = page.inner_text("#origin-host")
        page.fill("#f-host", "smtp.example.test")
        out["origin_overridden"] = page.inner_text("#origin-host")
        page.select_option("#f-preset", "")
        page.fill("#f-host", "")
        page.click("#save")  # the server's refusal, in Chinese
        out["empty_host"] = c.message("未保存")
        page.fill("#f-host", "127.0.0.1")
        page.fill("#f-port", str(refused))
        page.select_option("#f-tls", "none")
        page.check("#f-enabled")
        page.click("#test")
        page.wait_for_selector("#steps table")
        out["test_primary"] = page.inner_text("#steps") + page.inner_text("#message")
        page.click("#save")
        c.message("已保存并生效")
        c.check("relay-one")
        # right after saving, before any delivery: listed, "not tried yet"
        c.open("/", "#upstreams")
        out["after_save"] = page.inner_text("#upstreams")
        # every delivery fails (the only upstream refuses): /health degraded, and why
        send_mail(self.running.smtp_port, "app@example.com",
                  ["a1@dest.test", "a2@dest.test", "a3@dest.test"],
                  b"Subject: failing\r\n\r\nhello\r\n")
        for _ in range(40):
            health = page.request.get(base_of(c) + "/health").json()
            if health["status"] == "degraded":
                break
            page.wait_for_timeout(250)
        out["health_when_failing"] = health
        c.open("/", "#reasons")
        out["dashboard_failing"] = page.inner_text("#main")
        c.check("dashboard-failing")
        # a working backup, tested, saved; the routes
        c.open("/relay", "#f-preset")
        page.click("#add-upstream")
        page.fill("#f-host-1", "127.0.0.1")
        page.fill("#f-port-1", str(backup))
        page.select_option("#f-tls-1", "none")
        page.fill("#f-max_rate-1", "100/min")
        page.fill("#f-max_connections-1", "2")
        page.click("#test-1")
        page.wait_for_selector("#steps-1 table")
        out["test_backup"] = page.inner_text("#steps-1")
        page.click("#save")
        out["saved"] = c.message("已保存并生效")
        page.click("#add-route")
        page.fill("#f-route-domains-0", "internal.test")
        page.select_option("#f-route-transport-0", "outbox")
        page.click("#save-routes")
        c.message("路由已保存并生效")
        c.check("relay")
        c.open("/queue", "#bulk")
        page.click("#bulk")  # the three failed messages, again, through the backup
        c.message("立即重试")

    def send_form(self, c: Console, out: dict[str, Any]) -> None:
        page = c.page
        c.open("/send", "#send")
        page.click("#send button[type=submit]")
        out["empty_submit_invalid"] = page.locator("#f-from:invalid").count() == 1 and \
            page.inner_text("#message") == ""
        page.fill("#f-from", "app@example.com")
        page.fill("#f-to", "you@dest.test, ok1@dest.test")
        page.fill("#f-subject", XSS)
        page.fill("#f-text", "hello 你好")
        page.click("#send button[type=submit]")
        out["sent"] = c.message("已加入队列")
        out["qid"] = page.inner_text("#message a.qid")
        out["cleared"] = [page.input_value(s) for s in ("#f-from", "#f-to", "#f-subject")]
        c.check("send-done")
        c.open("/", "#upstreams")
        for _ in range(40):
            text = page.inner_text("#upstreams")
            if "不可用" in text and "正常" in text:
                break
            page.wait_for_timeout(300)
            page.reload()
            page.wait_for_selector("#upstreams")
        out["upstreams_after"] = page.inner_text("#upstreams")
        c.check("dashboard")

    def queue_pages(self, c: Console, out: dict[str, Any]) -> None:
        page, qid = c.page, out["qid"]
        c.open("/queue", "#bulk")
        c.poll(f"#list tr:has-text('{qid}'):has-text('451 4.7.1')", "#reload")
        row = f"#list tr:has-text('{qid}')"
        out["queue_row"] = page.inner_text(row)
        c.check("queue")
        out["busy"] = c.clicked_busy(f"[data-action=hold][data-qid='{qid}']")
        out["held_message"] = c.message("已暂缓")
        c.open("/hold", "#list")
        out["held_list"] = page.inner_text("#list")
        c.check("hold")
        page.click(f"#list tr:has-text('{qid}') [data-action=release]")
        out["released"] = c.message("已恢复投递")
        c.open(f"/queue?id={qid}", "#timeline")
        page.wait_for_selector("#timeline:has-text('已延迟')")
        out["timeline"] = page.inner_text("#timeline")
        out["headers"] = page.inner_text("#headers")
        out["images"] = page.locator("#details img").count()
        out["xss"] = page.evaluate("window.__xss ?? null")
        c.check("message")
        c.open("/queue", "#pause")  # pause all delivery (confirmed), then resume it
        page.click("#pause")
        out["paused_message"] = c.message("已暂停全部投递")
        out["paused_notice"] = page.inner_text("#paused-notice")
        out["paused_health"] = self.running.manager.paused
        c.check("queue-paused")
        page.click("#resume")
        out["resumed_message"] = c.message("已恢复全部投递")
        page.wait_for_selector("#pause")
        out["notice_after"] = page.locator("#paused-notice").count()
        out["resumed_health"] = self.running.manager.paused

    async def listen_on(self, port: int) -> None:
        """The refused primary starts answering (a scripted server on its port)."""
        revived = ScriptedUpstream()
        factory = Factory.forProtocol(lambda: ScriptedSession(revived, Script()))
        revived.listening = await TCP4ServerEndpoint(reactor, port,
                                                     interface="127.0.0.1").listen(factory)
        self.addCleanup(revived.stop)

    def queue_depth(self, c: Console, out: dict[str, Any]) -> None:
        """The dashboard's queue depth chart: two earlier samples (the sampler takes one a
        minute; the test cannot wait for them) and one now, with the deferred message."""
        page = c.page
        history = self.running.service.getServiceNamed("history")

        def sample() -> Any:
            now = history.clock()
            history.samples += [(now - 600, 0), (now - 300, 40)]
            history.sample_queue()
            return history.flush()

        blockingCallFromThread(reactor, sample)
        c.open("/", "#queue-chart g.point")
        chart = "#queue-chart"
        dot = f"{chart} g.point:last-of-type circle.dot"
        hidden = page.eval_on_selector(dot, "d => getComputedStyle(d).visibility")
        page.hover(f"{chart} g.point:last-of-type rect.hover")
        shown = page.eval_on_selector(dot, "d => getComputedStyle(d).visibility")
        out["queue_depth"] = {
            "lines": page.locator(f"{chart} path.line").count(),
            "areas": page.locator(f"{chart} path.area").count(),
            "points": page.locator(f"{chart} g.point").count(),
            "ticks": page.locator(f"{chart} text.tick").count(),
            "label": page.get_attribute(chart, "aria-label"),
            "top_tick": page.eval_on_selector_all(f"{chart} text.tick",
                                                  "ts => ts.map(t => t.textContent)")[2],
            "titles": page.eval_on_selector_all(f"{chart} g.point title",
                                                "ts => ts.map(t => t.textContent)"),
            "dot": (hidden, shown),
            "note": page.inner_text("#queue-depth-note"),
        }
        c.check("dashboard-queue-depth")

    def primary_back(self, c: Console, out: dict[str, Any], refused: int) -> None:
        """A later success clears the upstream's error: it shows up again, no error."""
        page = c.page
        blockingCallFromThread(reactor, lambda: ensureDeferred(self.listen_on(refused)))
        c.open("/relay", "#f-preset")
        page.click("#test")  # works now: the breaker opened by the refusals closes
        c.message("连接正常")
        send_mail(self.running.smtp_port, "app@example.com", ["z@dest.test"],
                  b"Subject: back\r\n\r\nhello\r\n")
        c.open("/", "#upstreams")
        row = f"#upstreams tr:has-text('127.0.0.1:{refused}')"
        for _ in range(40):
            if "正常" in page.inner_text(row):
                break
            page.wait_for_timeout(300)
            page.reload()
            page.wait_for_selector("#upstreams")
        out["primary_back"] = page.inner_text(row)
        c.check("dashboard-recovered")

    def credentials_page(self, c: Console, out: dict[str, Any]) -> None:
        page = c.page
        c.open("/credentials", "#create")
        page.fill("#f-name", "app1")
        page.fill("#f-hourly_quota", "100")
        page.click("#create button[type=submit]")
        c.message("已创建 app1")
        out["password_once"] = page.inner_text("#once-value")
        page.fill("#f-name", "app1")
        page.click("#create button[type=submit]")
        out["duplicate"] = c.message("已存在")
        out["once_hidden_after_error"] = not page.is_visible("#password-once")
        row = "#list tr:has-text('app1')"
        page.fill(f"{row} .edit-hourly", "200")
        page.click(f"{row} [data-action=save]")
        out["patched"] = c.message("已保存 app1")
        out["usage"] = page.inner_text(f"{row} .usage")
        page.click(f"{row} .copy")
        out["copied"] = c.message("已复制")
        c.check("credentials")

    def logs_page(self, c: Console, out: dict[str, Any]) -> None:
        page = c.page
        c.open("/logs", "#log-table")
        out["range_first"] = page.inner_text("#range")
        out["log_text"] = page.inner_text("#list")
        out["qid_href"] = page.get_attribute("#list a.qid", "href")
        page.click("#next")
        page.wait_for_selector("#range:has-text('第 51')")
        out["range_next"] = page.inner_text("#range")
        c.check("logs")
        page.fill("#f-since", "2099-01-01T00:00")
        page.click("form.filters button[type=submit]")
        page.wait_for_selector("#range:has-text('共 0 条')")
        out["range_future"] = page.inner_text("#range")

    def links(self, c: Console, out: dict[str, Any]) -> None:
        page = c.page
        c.open("/", "footer")
        out["links"] = page.eval_on_selector_all("footer a",
                                                 "a => a.map(x => x.getAttribute('href'))")
        docs = page.request.get(base_of(c) + "/api/docs").text()
        out["docs_wide_chars"] = [ch for ch in docs if ord(ch) > 0x2FFF]
        icon = page.request.get(base_of(c) + "/favicon.ico")
        out["favicon"] = (icon.status, icon.headers.get("content-type"))
        c.open("/api/docs", "table")
        c.page.wait_for_timeout(100)

    def disable(self, c: Console, out: dict[str, Any]) -> None:
        page = c.page
        c.open("/relay", "#f-preset")
        page.uncheck("#f-enabled")
        page.click("#save")
        out["disabled_saved"] = c.message("本地发件箱")
        c.open("/", "#destination")
        out["upstreams_disabled"] = page.inner_text("#main")
        out["destination_disabled"] = page.inner_text("#destination")

    def workers(self, c: Console, out: dict[str, Any]) -> None:
        """/health's details.workers (smtp.workers > 0) as the dashboard shows it."""
        c.page.route("**/health", with_workers)
        c.open("/", "#workers")
        out.setdefault("workers", {})[c.where] = (
            c.page.locator("#workers tbody tr").count(), c.page.inner_text("#main"))
        c.check("dashboard-workers")
        c.page.unroute("**/health")

    def tour(self, p: Any, base: str, viewport: dict[str, int], lang: str,
             out: dict[str, Any]) -> None:
        c = Console(p, base, viewport, lang, out["problems"])
        try:
            c.open("/login", "#login")
            c.check("login")
            c.login(PASSWORD)
            for name, (path, ready) in PAGES.items():
                c.open(path, ready)
                c.check(name)
                if name == "dashboard":
                    out.setdefault("queue_depth_label", {})[c.where] = \
                        c.page.get_attribute("#queue-chart", "aria-label")
            c.open(f"/queue?id={out['qid']}", "#timeline")
            c.check("message")
            self.workers(c, out)
            if c.phone and lang == "en":
                c.open("/send", "#send")
                c.page.fill("#f-from", "app@example.com")
                c.page.fill("#f-to", "you@dest.test")
                c.page.fill("#f-subject", "from a phone")
                c.page.fill("#f-text", "hi")
                c.page.click("#send button[type=submit]")
                out["phone_sent"] = c.message("Queued as")
                c.open("/queue", "#bulk")
                c.poll(f"#list tr:has-text('{out['qid']}')", "#reload")
                out["en_queue"] = c.page.inner_text(f"#list tr:has-text('{out['qid']}')")
                out["phone_qid_height"] = c.page.eval_on_selector(
                    "#list a.qid", "a => a.getBoundingClientRect().height")
                c.page.click(f"#list tr:has-text('{out['qid']}') [data-action=hold]")
                out["phone_held"] = c.message("on hold")
                c.open("/hold", "#list")
                c.page.click(f"#list tr:has-text('{out['qid']}') [data-action=release]")
                c.message("released")
        finally:
            c.close()

    async def test_first_run_setup(self) -> None:
        base = await self.start()
        lines = [formatEvent(e) for e in self.events]
        announced = next((line for line in lines if "setup?token=" in line), "\n".join(lines))
        url = re.search(r"(http://\S+/setup\?token=(\S+))", announced)
        assert url is not None, announced
        self.assertTrue(url.group(1).startswith(base + "/setup?token="))
        report = await deferToThread(self.setup_journey, base, url.group(1), url.group(2))
        self.assertEqual(report["problems"], [])
        self.assertEqual(report["start"], base + "/setup")
        self.assertIn("尚未设置管理员密码", report["login_note"])
        self.assertIn("设置令牌错误", report["wrong_token"])
        self.assertIn("两次输入的密码不一致", report["mismatch"])
        self.assertEqual(report["forwarded"], 403)
        self.assertEqual(report["after"], base + "/")
        self.assertEqual(report["again"], 409)
        self.assertEqual(report["relogin"], base + "/")
        self.assertTrue(self.document()["web"]["admin_password_hash"].startswith("$2"))
        self.assertIn("admin password set through first-run setup",
                      "\n".join(formatEvent(e) for e in self.events))

    def setup_journey(self, base: str, link: str, token: str) -> dict[str, Any]:
        from playwright.sync_api import sync_playwright

        out: dict[str, Any] = {"problems": []}
        new_password = "first-run-pass-1"
        with sync_playwright() as p:
            c = Console(p, base, DESKTOP, "zh", out["problems"])
            try:
                c.page.goto(base + "/")
                out["start"] = c.page.url
                c.open("/login", "#setup-note")
                out["login_note"] = c.page.inner_text("#setup-note")
                c.check("login-setup")
                c.open("/setup?token=wrong", "#setup")
                c.page.fill("#f-password", new_password)
                c.page.fill("#f-confirm", new_password)
                c.page.click("#setup button[type=submit]")
                out["wrong_token"] = c.message("设置令牌")
                c.open(link.replace(base, ""), "#setup")
                c.check("setup")
                c.page.fill("#f-password", new_password)
                c.page.fill("#f-confirm", new_password + "x")
                c.page.click("#setup button[type=submit]")
                out["mismatch"] = c.message("不一致")
                out["forwarded"] = c.page.request.post(
                    base + "/setup", headers={"X-Forwarded-For": "203.0.113.9"},
                    data={"token": token, "password": new_password,
                          "confirm": new_password}).status
                c.page.fill("#f-confirm", new_password)
                c.page.click("#setup button[type=submit]")
                c.page.wait_for_url(base + "/")
                out["after"] = c.page.url
                c.page.wait_for_selector("#chart")
                c.check("dashboard-after-setup")
                out["again"] = c.page.request.post(base + "/setup", data={
                    "token": token, "password": new_password, "confirm": new_password}).status
            finally:
                c.close()
            phone = Console(p, base, PHONE, "en", out["problems"])
            try:
                phone.login(new_password)
                out["relogin"] = phone.page.url
                phone.check("dashboard-after-setup")
            finally:
                phone.close()
        return out


def with_workers(route: Any) -> None:
    response = route.fetch()
    body = response.json()
    body["details"]["workers"] = [{"id": 1, "pid": 4242, "alive": True, "restarts": 0},
                                  {"id": 2, "pid": 4243, "alive": False, "restarts": 3}]
    route.fulfill(response=response, json=body)


def base_of(c: Console) -> str:
    return c.base
