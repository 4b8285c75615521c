"""The archive, the webhooks page and the suppression list in a real headless browser
(Debian's chromium through Playwright), as an operator uses them.

A hostile HTML message is archived and opened in the console: an inline script that would
set a marker, log and fetch; ``<img onerror>``; a remote image, a style sheet, an
``@import``, a CSS background and a web font on a local recorder (an HTTP server that notes
every request); a meta refresh, a form that submits itself, a frame, a ``javascript:``
link, an object.  No script runs in any frame and the recorder gets no request at all;
after "load remote images" it gets the image (and the CSS background image, an image
too), never the script, style sheets, font, frame, form or refresh.

The webhooks page (endpoints with backlog and failures, failed deliveries sent again one
by one and all at once) and the suppression list (add, search, remove, import, export)
are used in Chinese and toured in English and on a phone with the checks every page gets
(tests.integration.browser: no CSP violation, no English left, no overflow)."""

from __future__ import annotations

import email.policy
import os
import threading
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from twisted.internet.threads import deferToThread

from relaymail.credentials import hash_password
from tests.helpers import free_port
from tests.integration.browser import DESKTOP, PHONE, Console
from tests.integration.test_relay import RelayTestCase
from tests.peers import require_browser
from tests.test_archive import PNG
from tests.upstreams import wait_until
from tests.webhookreceiver import WebhookReceiver

PASSWORD = "archive-pass-123"
SECRET = "s3cret-webhook-key-0123456789"
MARKER = "HOSTILE-SCRIPT-RAN"
PAGES = {"archive": ("/archive", "#archive-table"), "webhooks": ("/webhooks", "#endpoint-table"),
         "suppressions": ("/suppressions", "#suppression-add")}


class Recorder:
    """An HTTP server noting the path of every request it gets (any method)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                recorder.paths.append(self.path)
                body = PNG if self.path.endswith(".png") else b"/* nothing */"
                self.send_response(200)
                self.send_header("Content-Type", "image/png" if self.path.endswith(".png")
                                 else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def hostile(r: str) -> bytes:
    page = f"""<!doctype html><html><head>
<meta http-equiv="refresh" content="0;url={r}/refresh">
<base href="{r}/base/">
<link rel="stylesheet" href="{r}/style.css">
<style>@import url("{r}/import.css");
body {{ background: url("{r}/bg.png"); }}
@font-face {{ font-family: evil; src: url("{r}/font.woff"); }}
p {{ font-family: evil; color: #246; }}</style>
<script>window.__pwned = 1; document.title = "PWNED"; console.log("{MARKER}");
fetch("{r}/fetch"); top.document.body.dataset.pwned = "1";</script>
<script src="{r}/script.js"></script>
</head><body onload="window.__pwned = 2">
<p id="hello">Hello from a hostile message</p>
<img src="x" onerror="window.__pwned = 3; console.log('{MARKER}'); fetch('{r}/onerror')">
<img id="remote" src="{r}/remote.png" alt="remote">
<img id="inline" src="cid:logo@hostile" alt="inline">
<form action="{r}/form" method="post"><input name="a" value="b"></form>
<script>document.forms[0].submit();</script>
<iframe src="{r}/frame.html"></iframe>
<object data="{r}/object.bin"></object>
<a id="js" href="javascript:window.__pwned = 4; console.log('{MARKER}')">click me</a>
<svg onload="window.__pwned = 5"></svg>
</body></html>"""
    msg = EmailMessage()
    msg["From"] = "attacker@evil.test"
    msg["To"] = "victim@dest.test"
    msg["Subject"] = "Invoice <script>window.__xss=1</script>"
    msg["Message-ID"] = "<hostile-1@evil.test>"
    msg.set_content("The text part.\n")
    msg.add_alternative(page, subtype="html")
    msg.get_payload()[1].add_related(PNG, maintype="image", subtype="png",
                                     cid="<logo@hostile>")
    msg.add_attachment(b"MZ evil", maintype="application", subtype="octet-stream",
                       filename="..\\..\\report.pdf.exe")
    return msg.as_bytes(policy=email.policy.SMTP)


class FrameAwareConsole(Console):
    """The console checks, with what the archived message's frame says kept apart: its
    CSP refusals are the protection working, not a fault of the console page."""

    def __init__(self, *args: Any) -> None:
        self.frame_output: list[str] = []
        super().__init__(*args)

    def _console(self, message: Any) -> None:
        where = (message.location or {}).get("url", "")
        # Chromium names the page, not the frame, for a frame the mail tried to open: the
        # directive says whose it is (the console's own policy has frame-src 'self').
        if "/api/archive/" in where or MARKER in message.text or \
                "\"frame-src 'none'\"" in message.text:
            self.frame_output.append(message.text)
            return
        super()._console(message)


class ArchiveBrowserTests(RelayTestCase):
    def setUp(self) -> None:
        super().setUp()
        require_browser()

    async def test_hostile_html_runs_nothing_and_loads_nothing(self) -> None:
        recorder = Recorder()
        self.addCleanup(recorder.stop)
        receiver = WebhookReceiver(default=503).start()  # never takes an event
        self.addCleanup(receiver.stop)
        port = free_port()
        relay = await self.relay(
            web={"enabled": True, "endpoint": f"tcp:{port}:interface=127.0.0.1",
                 "admin_password_hash": hash_password(PASSWORD, rounds=4)},
            archive={"enabled": True},
            webhooks=[{"name": "shop", "url": receiver.url, "secret": SECRET, "timeout": 1,
                       "max_backlog": 1}],  # one waits, the rest are failed at once
            transports={"outbox": {"type": "maildir", "path": os.path.join(self.dir, "out")}})
        await self.send(relay, ["victim@dest.test", "other@dest.test"],
                        hostile(recorder.base), sender="attacker@evil.test")
        await self.drained(relay)
        archive = relay.service.getServiceNamed("archive")
        await archive.flush()
        qid = (await archive.search({}, 1, 0))["items"][0]["queue_id"]
        await wait_until(lambda: receiver.received, what="a webhook attempt")
        report = await deferToThread(self.journey, f"http://127.0.0.1:{port}", qid, recorder)
        self.assertEqual(report["problems"], [])
        r = report
        # nothing ran, nothing was fetched, in any frame
        self.assertEqual(r["before"], [])
        # the mail's frame, and the frame it holds (refused: never loaded)
        self.assertEqual(sorted(r["frames"]), [["", "hostile", None, False],
                                               ["html", "hostile", None, False]])
        self.assertFalse(r["parent_pwned"])
        self.assertEqual([x for x in r["frame_output"] if MARKER in x], [])
        self.assertEqual((r["xss"], r["sandbox"]), (None, ""))
        self.assertIn("Hello from a hostile message", r["frame_text"])
        self.assertTrue(r["inline_image_shown"])  # the cid: image, as a data: URL
        self.assertFalse(r["remote_image_shown"])
        self.assertEqual(r["after_js_click"], [])
        # after "load remote images": the images, and only them
        self.assertIn("/remote.png", r["after"])
        self.assertLessEqual(set(r["after"]), {"/remote.png", "/bg.png"}, r["after"])
        self.assertTrue(r["remote_image_shown_after"])
        self.assertEqual(sorted(r["frames_after"]), [["", "hostile", None, False],
                                                     ["html", "hostile", None, False]])
        # the message page in Chinese
        self.assertIn("Invoice <script>", r["subject"])
        self.assertIn("已阻止远程图片", r["remote_note"])
        self.assertIn("本次查看已加载远程图片", r["remote_note_after"])
        self.assertIn("report.pdf.exe", r["attachments"])
        self.assertEqual(r["download"], ("report.pdf.exe", f"/api/archive/{qid}/parts/6"))
        self.assertIn("The text part.", r["text"])
        self.assertIn("Received: from", r["raw"])
        self.assertIn(f"/archive?id={qid}", r["log_link"])
        self.assertEqual(r["queue_link"], f"/archive?id={qid}")
        self.assertIn("已存档 1 封邮件", r["usage"])
        # webhooks and the suppression list
        self.assertIn("shop", r["endpoints"])
        self.assertIn("503", r["endpoints"])
        self.assertIn("将立即重新发送", r["retried_one"])
        self.assertIn("条失败推送将立即重新发送", r["retried_all"])
        self.assertIn("已添加 bad@dest.test", r["suppressed"])
        self.assertIn("bad@dest.test", r["suppression_rows"])
        self.assertIn("手动添加", r["suppression_rows"])
        self.assertIn("不是有效的邮箱地址", r["bad_address"])
        self.assertIn("已添加 2 个地址", r["imported"])
        self.assertEqual(r["searched"], ["one@dest.test"])
        self.assertIn("已将 bad@dest.test 移出列表", r["removed"])
        self.assertEqual(r["export"], (200, "address,reason,source,queue_id,created"))
        self.assertEqual(list(r["nav"].values()), [["/archive", "/webhooks", "/suppressions"]] * 4)

    def journey(self, base: str, qid: str, recorder: Recorder) -> dict[str, Any]:
        from playwright.sync_api import sync_playwright

        out: dict[str, Any] = {"problems": []}
        with sync_playwright() as p:
            zh = FrameAwareConsole(p, base, DESKTOP, "zh", out["problems"])
            try:
                zh.login(PASSWORD)
                self.hostile_view(zh, out, qid, recorder)
                self.links(zh, out, qid)
                self.webhooks(zh, out)
                self.suppressions(zh, out)
                out["nav"] = {"zh": self.optional_nav(zh)}
            finally:
                out["frame_output"] = zh.frame_output
                zh.close()
            for viewport, lang in ((PHONE, "zh"), (PHONE, "en"), (DESKTOP, "en")):
                self.tour(p, base, viewport, lang, qid, out)
        return out

    def frames(self, c: Console) -> list[list[Any]]:
        """What every child frame says of itself: title, marker, dataset."""
        found = []
        for frame in c.page.frames[1:]:
            found.append([frame.url.split("?")[0].rsplit("/", 1)[-1], *frame.evaluate(
                "() => [document.title === 'PWNED' ? 'PWNED' : 'hostile',"
                " window.__pwned ?? null, !!(document.body && document.body.dataset.pwned)]")])
        return found

    def hostile_view(self, c: Console, out: dict[str, Any], qid: str,
                     recorder: Recorder) -> None:
        page = c.page
        c.open("/archive", "#archive-table")
        page.fill("#f-subject", "Invoice")
        page.click("#archive-search button[type=submit]")
        page.click(f"#archive-table a[href='/archive?id={qid}']")
        page.wait_for_selector("#html-frame")
        frame = page.frame_locator("#html-frame")
        frame.locator("#hello").wait_for()
        page.wait_for_timeout(1500)  # time for a refresh, a fetch, a submit to happen
        out["before"] = list(recorder.paths)
        out["frames"] = self.frames(c)
        out["parent_pwned"] = page.evaluate("() => 'pwned' in document.body.dataset")
        out["xss"] = page.evaluate("() => window.__xss ?? null")
        out["sandbox"] = page.get_attribute("#html-frame", "sandbox")
        out["frame_text"] = frame.locator("body").inner_text()
        out["inline_image_shown"] = frame.locator("#inline").evaluate(
            "i => i.complete && i.naturalWidth > 0 && i.src.startsWith('data:image/png')")
        out["remote_image_shown"] = frame.locator("#remote").evaluate(
            "i => i.complete && i.naturalWidth > 0")
        frame.locator("#js").click()
        page.wait_for_timeout(300)
        out["after_js_click"] = [f for f in self.frames(c) if f[2] is not None] + \
            [x for x in recorder.paths if x not in out["before"]]
        out["subject"] = page.inner_text("#archived h2")
        out["remote_note"] = page.inner_text("#remote-note")
        out["attachments"] = page.inner_text("#attachments")
        link = page.locator("#attachments tr:has-text('report.pdf.exe') a.download")
        out["download"] = (link.get_attribute("download"), link.get_attribute("href"))
        out["text"] = page.inner_text("#text")
        c.check("archive-message")
        page.click("#show-raw")
        page.wait_for_selector("#raw:not([hidden])")
        out["raw"] = page.inner_text("#raw")[:2000]
        page.click("#remote-images")
        frame.locator("#hello").wait_for()
        for _ in range(40):
            if "/remote.png" in recorder.paths:
                break
            page.wait_for_timeout(100)
        page.wait_for_timeout(1000)
        out["after"] = list(recorder.paths)
        out["remote_note_after"] = page.inner_text("#remote-note")
        out["remote_image_shown_after"] = page.frame_locator("#html-frame").locator(
            "#remote").evaluate("i => i.complete && i.naturalWidth > 0")
        out["frames_after"] = self.frames(c)
        c.check("archive-message-remote")

    def links(self, c: Console, out: dict[str, Any], qid: str) -> None:
        page = c.page
        c.open(f"/logs?queue_id={qid}", "#log-table")
        out["log_link"] = page.get_attribute("#log-table a.archived", "href")
        c.open(f"/queue?id={qid}", "#timeline")
        out["queue_link"] = page.get_attribute("#archived-copy", "href")
        c.open("/archive", "#archive-table")
        out["usage"] = page.inner_text("#usage")
        c.check("archive")

    def webhooks(self, c: Console, out: dict[str, Any]) -> None:
        page = c.page
        c.open("/webhooks", "#delivery-table [data-action=retry]")
        out["endpoints"] = page.inner_text("#endpoint-table")
        c.check("webhooks")
        page.click("#delivery-table [data-action=retry] >> nth=0")
        out["retried_one"] = c.message("重新发送")
        page.click("#bulk")
        out["retried_all"] = c.message("条失败推送")

    def suppressions(self, c: Console, out: dict[str, Any]) -> None:
        page = c.page
        c.open("/suppressions", "#suppression-add")
        page.fill("#f-address", "bad@dest.test")
        page.fill("#f-reason", "asked to stop")
        page.click("#suppression-add button[type=submit]")
        out["suppressed"] = c.message("已添加")
        page.wait_for_selector("#suppression-table:has-text('bad@dest.test')")
        out["suppression_rows"] = page.inner_text("#suppression-table")
        page.fill("#f-csv", "one@dest.test\ntwo@dest.test\n")
        page.click("#import")
        out["imported"] = c.message("个地址")
        page.fill("#f-csv", "not an address\n")
        page.click("#import")
        out["bad_address"] = c.message("不是有效")
        page.fill("#f-q", "one@")
        page.click("#suppression-search button[type=submit]")
        page.wait_for_selector("#suppression-table:not(:has-text('two@dest.test'))")
        out["searched"] = page.eval_on_selector_all(
            "#suppression-table tbody tr td:first-child", "tds => tds.map(t => t.innerText)")
        c.check("suppressions")
        page.fill("#f-q", "")
        page.click("#suppression-search button[type=submit]")
        page.click("#suppression-table tr:has-text('bad@dest.test') [data-action=remove]")
        out["removed"] = c.message("移出列表")
        href = page.get_attribute("#export", "href")
        response = page.request.get(c.base + str(href))
        out["export"] = (response.status, response.text().splitlines()[0])

    def optional_nav(self, c: Console) -> list[str]:
        return [h for h in c.page.eval_on_selector_all(
            "#nav a", "as => as.map(a => a.getAttribute('href'))")
            if h in ("/archive", "/webhooks", "/suppressions")]

    def tour(self, p: Any, base: str, viewport: dict[str, int], lang: str, qid: str,
             out: dict[str, Any]) -> None:
        c = FrameAwareConsole(p, base, viewport, lang, out["problems"])
        try:
            c.login(PASSWORD)
            for name, (path, ready) in PAGES.items():
                c.open(path, ready)
                c.check(name)
            c.open(f"/archive?id={qid}", "#html-frame")
            c.page.frame_locator("#html-frame").locator("#hello").wait_for()
            c.check("archive-message")
            out["nav"][c.where] = self.optional_nav(c)
        finally:
            c.close()

    async def test_pages_of_areas_not_configured(self) -> None:
        """Without the archive and webhooks, their nav entries are gone and their pages
        say why; the suppression list (on by default) stays."""
        port = free_port()
        await self.relay(web={"enabled": True, "endpoint": f"tcp:{port}:interface=127.0.0.1",
                              "admin_password_hash": hash_password(PASSWORD, rounds=4)},
                         transports={"outbox": {"type": "maildir",
                                                "path": os.path.join(self.dir, "out")}})
        report = await deferToThread(self.absent_journey, f"http://127.0.0.1:{port}")
        self.assertEqual(report["problems"], [])
        self.assertEqual(report["nav"], ["/suppressions"])
        self.assertIn("未启用邮件存档", report["archive"])
        self.assertIn("未配置事件推送", report["webhooks"])
        self.assertEqual(report["log_links"], 0)

    def absent_journey(self, base: str) -> dict[str, Any]:
        from playwright.sync_api import sync_playwright

        out: dict[str, Any] = {"problems": []}
        with sync_playwright() as p:
            c = FrameAwareConsole(p, base, DESKTOP, "zh", out["problems"])
            try:
                c.login(PASSWORD)
                out["nav"] = self.optional_nav(c)
                for name in ("archive", "webhooks"):
                    c.open(f"/{name}", "#not-here")
                    out[name] = c.page.inner_text("#not-here")
                    c.check(f"{name}-off")
                c.open("/send", "#send")
                c.page.fill("#f-from", "app@example.com")
                c.page.fill("#f-to", "you@dest.test")
                c.page.fill("#f-subject", "hi")
                c.page.fill("#f-text", "hi")
                c.page.click("#send button[type=submit]")
                c.message("已加入队列")
                c.page.wait_for_timeout(1000)  # the history's next batch
                c.open("/logs", "#log-table")
                out["log_links"] = c.page.locator("#log-table a.archived").count()
            finally:
                c.close()
        return out
