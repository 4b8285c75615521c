"""The archive on a running relay, over real sockets: a message made with
``email.message.EmailMessage`` (text, HTML with an inline image, an attachment) sent with
smtplib, delivered to a scripted upstream and removed from the spool, is still readable
through /api/archive: searched by sender, recipient, subject, Message-ID and status, shown
parsed, as raw source, as sandboxed HTML and part by part, with the headers that keep a
browser safe; a bounce of ours is archived too; the retention removes old copies; mail
committed in an acceptor process is archived too."""

from __future__ import annotations

import email.policy
import json
import os
import stat
from email.message import EmailMessage
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.client import HTTPConnectionPool

from relaymail.spool.record import open_body
from tests.helpers import free_port, send_mail
from tests.integration.test_relay import RelayTestCase, plain, smarthost
from tests.integration.test_workers import WorkersTestCase
from tests.test_archive import PNG
from tests.upstreams import Script, wait_until

MESSAGE_ID = "<order-42.x@client.test>"


def message(subject: str = "Order 42 shipped") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Shop <shop@client.test>"
    msg["To"] = "a@dest.test"
    msg["Subject"] = subject
    msg["Message-ID"] = MESSAGE_ID
    msg.set_content("Your order 42 shipped.\n")
    msg.add_alternative('<p>Order <b>42</b> <a href="https://shop.test/o/42">track</a>'
                        '<img src="cid:logo@shop" alt="logo"></p>', subtype="html")
    msg.get_payload()[1].add_related(PNG, maintype="image", subtype="png",
                                     cid="<logo@shop>")
    msg.add_attachment(b"id,qty\n42,1\n", maintype="text", subtype="csv",
                       filename="../order\u202e42.csv")
    return msg.as_bytes(policy=email.policy.SMTP)


class ArchiveTests(RelayTestCase):
    async def start(self, upstream_port: int, **archive: Any) -> Any:
        web = free_port()
        relay = await self.relay(
            web={"enabled": True, "endpoint": f"tcp:{web}:interface=127.0.0.1"},
            archive={"enabled": True, **archive},
            **smarthost(plain(upstream_port), bounces=True))
        self.base = f"http://127.0.0.1:{web}"
        self.token = relay.service.getServiceNamed("spool").control_token
        self.archive = relay.service.getServiceNamed("archive")
        return relay

    async def get(self, path: str) -> tuple[int, Any, bytes]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.get(self.base + path, pool=pool,
                                  headers={"Authorization": [f"Bearer {self.token}"]})
        return response.code, response.headers, await response.content()

    async def json(self, path: str) -> tuple[int, Any]:
        code, _, body = await self.get(path)
        return code, json.loads(body)

    async def ids(self, query: str) -> list[str]:
        code, body = await self.json("/api/archive?" + query)
        self.assertEqual(code, 200, body)
        return [item["queue_id"] for item in body["items"]]

    async def test_delivered_mail_stays_readable_and_searchable(self) -> None:
        upstream = await self.scripted(Script(rcpt={"gone@dest.test": "550 5.1.1 no user"}))
        relay = await self.start(upstream.port)
        await self.send(relay, ["a@dest.test", "b@dest.test"], message(),
                        sender="shop@client.test")
        await wait_until(lambda: upstream.messages, what="delivery")
        await self.drained(relay)
        self.assertEqual(os.listdir(relay.spool.path("data")), [])  # the spool let it go
        await self.send(relay, ["gone@dest.test"], message("Order 43 lost"),
                        sender="shop@client.test")
        await wait_until(lambda: relay.manager.counters["bounces"] == 1, what="the bounce")
        await self.drained(relay)
        await self.archive.flush()

        code, found = await self.json("/api/archive?sender=shop@client")
        self.assertEqual((code, found["total"]), (200, 2))
        lost, item = found["items"]  # newest first
        qid = item["queue_id"]
        self.assertEqual((item["subject"], item["message_id"], item["status"]),
                         ("Order 42 shipped", MESSAGE_ID.strip("<>"), "sent"))
        self.assertEqual({r["address"]: r["status"] for r in item["recipients"]},
                         {"a@dest.test": "sent", "b@dest.test": "sent"})
        self.assertEqual(item["recipients"][0]["reply"], "250 2.0.0 Ok: queued")
        self.assertEqual((lost["status"], lost["recipients"][0]["reply"]),
                         ("bounced", "550 5.1.1 no user"))
        self.assertTrue(item["received"].endswith("Z"))
        self.assertEqual(found["usage"]["messages"], 3)  # and the bounce of ours
        for query in ("recipient=B@dest", "subject=order%2042", f"message_id={MESSAGE_ID}",
                      "message_id=order-42.x@client.test", "status=sent", f"queue_id={qid}",
                      "since=2000-01-01T00:00:00Z"):
            self.assertIn(qid, await self.ids(query), query)
        for query in ("subject=nothing", "status=deferred", "status=bounced",
                      "since=2999-01-01T00:00:00Z", "sender=%25", "recipient=gone"):
            self.assertNotIn(qid, await self.ids(query), query)
        self.assertEqual(await self.ids("status=bounced"), [lost["queue_id"]])
        self.assertEqual((await self.get("/api/archive?status=nonsense"))[0], 400)
        self.assertEqual((await self.get("/api/archive?since=yesterday"))[0], 400)
        bounce = [i for i in (await self.json("/api/archive"))[1]["items"]
                  if i["bounce_of"] == lost["queue_id"]]
        self.assertEqual([b["sender"] for b in bounce], [""])  # from the null sender

        # the copy: linked, private, the exact bytes the upstream got
        path = self.archive.file(qid)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.archive.directory).st_mode), 0o700)
        code, headers, raw = await self.get(f"/api/archive/{qid}/raw")
        self.assertEqual(code, 200)
        delivered = next(m for m in upstream.messages if m.mail_from == "shop@client.test")
        self.assertEqual(raw, delivered.content)
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/plain; charset=utf-8"])
        self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        self.assertIsNone(headers.getRawHeaders("content-disposition"))
        _, headers, _ = await self.get(f"/api/archive/{qid}/raw?download=1")
        self.assertEqual(headers.getRawHeaders("content-disposition"),
                         [f"attachment; filename=\"{qid}.eml\"; filename*=UTF-8''{qid}.eml"])

        # parsed
        code, view = await self.json(f"/api/archive/{qid}")
        self.assertEqual(code, 200)
        self.assertEqual(view["text"], "Your order 42 shipped.\n")
        self.assertTrue(view["has_html"])
        self.assertIn(["Message-ID", MESSAGE_ID], view["headers"])
        self.assertEqual(view["headers"][0][0], "Received")  # ours, as stored
        self.assertEqual(view["links"], ["https://shop.test/o/42"])
        self.assertEqual(view["sender"], "shop@client.test")
        parts = {a["content_type"]: a for a in view["attachments"]}
        self.assertEqual(sorted(parts), ["image/png", "text/csv"])
        self.assertTrue(parts["image/png"]["inline"])
        self.assertEqual(parts["image/png"]["content_id"], "logo@shop")
        csv = parts["text/csv"]
        self.assertEqual((csv["filename"], csv["download_name"], csv["size"], csv["inline"]),
                         ("../order 42.csv", "order 42.csv", 12, False))

        # an attachment
        code, headers, data = await self.get(f"/api/archive/{qid}/parts/{csv['index']}")
        self.assertEqual((code, data), (200, b"id,qty\n42,1\n"))
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/octet-stream"])
        self.assertEqual(headers.getRawHeaders("content-disposition"),
                         ["attachment; filename=\"order 42.csv\"; filename*=UTF-8''order%2042.csv"])
        self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        for bad in ("0", "999", "-1", "x", "\u00b2"):
            self.assertEqual((await self.get(f"/api/archive/{qid}/parts/{bad}"))[0], 404, bad)

        # the HTML, sandboxed, its inline image a data: URL
        code, headers, page = await self.get(f"/api/archive/{qid}/html")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        policy = headers.getRawHeaders("content-security-policy")[0]
        directives = [d.strip() for d in policy.split(";")]
        self.assertEqual(directives[:4], ["sandbox", "default-src 'none'",
                                          "style-src 'unsafe-inline'", "img-src data:"])
        self.assertIn("frame-ancestors 'self'", directives)
        self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        self.assertEqual(headers.getRawHeaders("referrer-policy"), ["no-referrer"])
        self.assertIn(b'src="data:image/png;base64,', page)
        self.assertNotIn(b"cid:", page)
        _, headers, _ = await self.get(f"/api/archive/{qid}/html?remote_images=1")
        self.assertIn("img-src data: https: http:;",
                      headers.getRawHeaders("content-security-policy")[0])

        # what is not there, and who may ask
        for path in ("/api/archive/NOSUCHMESSAGE", "/api/archive/..%2f..%2fetc/raw",
                     f"/api/archive/{bounce[0]['queue_id']}/parts/99"):
            self.assertEqual((await self.get(path))[0], 404, path)
        code, body = await self.json("/api/archive/NOSUCHMESSAGE")
        self.assertEqual(body["code"], "archive_no_message")
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.get(f"{self.base}/api/archive/{qid}/raw", pool=pool)
        self.assertEqual(response.code, 401)
        await response.content()

        # still there after a restart (the index and the copies), until the retention
        await relay.stop()
        relay = await self.start(upstream.port)
        await self.archive.started
        self.assertIn(qid, await self.ids("subject=Order"))
        self.archive.retention = 0.0  # everything is now older than the retention
        self.assertEqual(await self.archive.prune(), (3, 0))
        self.assertEqual(await self.ids(""), [])
        self.assertFalse(os.path.exists(path))
        self.assertEqual((await self.get(f"/api/archive/{qid}"))[0], 404)

    async def test_size_limit_and_archive_off(self) -> None:
        upstream = await self.scripted(Script())
        relay = await self.start(upstream.port, max_bytes=1_048_576)
        big = message("big")
        filler = EmailMessage()
        filler["From"] = "shop@client.test"
        filler["Subject"] = "filler"
        filler.set_content("x\n")
        filler.add_attachment(os.urandom(700_000), maintype="application",
                              subtype="octet-stream", filename="blob.bin")
        for body in (filler.as_bytes(policy=email.policy.SMTP), big,
                     filler.as_bytes(policy=email.policy.SMTP)):
            await self.send(relay, ["a@dest.test"], body, sender="shop@client.test")
        await wait_until(lambda: len(upstream.messages) == 3, what="three deliveries")
        await self.drained(relay)
        await self.archive.flush()
        before = await self.ids("")
        self.assertEqual(len(before), 3)
        age, size = await self.archive.prune()
        self.assertEqual((age, size), (0, 1))  # the oldest goes, the rest fits in 1 MiB
        self.assertEqual(await self.ids(""), before[:2])
        usage = (await self.json("/api/archive"))[1]["usage"]
        self.assertLessEqual(usage["bytes"], 1_048_576)

        # a relay with the archive off: 404 naming the setting, no archive directory
        await relay.stop()
        web = free_port()
        other = await self.relay(web={"enabled": True,
                                      "endpoint": f"tcp:{web}:interface=127.0.0.1"},
                                 **smarthost(plain(upstream.port)))
        self.base = f"http://127.0.0.1:{web}"
        self.token = other.service.getServiceNamed("spool").control_token
        code, body = await self.json("/api/archive")
        self.assertEqual((code, body["error"]), (404, "the archive is off (archive.enabled)"))
        self.assertIsNone(other.service.archive)


class AcceptorArchiveTests(WorkersTestCase):
    async def test_mail_committed_in_an_acceptor_is_archived(self) -> None:
        """A message an acceptor process commits reaches the main process's archive (the
        link is made there, before its relay manager delivers and removes it)."""
        service = await self.start(workers=1, archive={"enabled": True})
        refused = await deferToThread(send_mail, self.port, "shop@client.test",
                                      ["a@dest.test"], message())
        self.assertEqual(refused, {})
        await self.until(lambda: self.delivered() == 1)
        await self.until(lambda: not service.relay.queued and not service.relay.active)
        archive = service.getServiceNamed("archive")
        await archive.flush()
        found = await archive.search({"message_id": MESSAGE_ID}, 10, 0)
        self.assertEqual(len(found["items"]), 1)
        qid = found["items"][0]["queue_id"]
        self.assertEqual(found["items"][0]["recipients"][0]["status"], "sent")
        self.assertFalse(os.path.exists(service.context.spool.path("data", qid + ".eml")))
        with open_body(archive.file(qid)) as f:
            self.assertIn(b"Subject: Order 42 shipped", f.read())
