"""The archive without sockets: copies linked (or copied across filesystems) before the
spool removes its file, the index written in batches (metadata, statuses from delivery
events, search), retention by days and by size on a task.Clock, the start-up
reconciliation; and the reading side (relaymail.events.mailview) on a real MIME message
made with Python's ``email``, hostile headers and file names."""

from __future__ import annotations

import email.policy
import errno
import os
import stat
import tempfile
from email.message import EmailMessage
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from relaymail.events import mailview
from relaymail.events.archive import Archive, summary_of
from relaymail.spool.envelope import Envelope, Recipient
from relaymail.spool.record import envelope_record, open_body

DAY = 86400.0
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00"
       b"\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05"
       b"\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def rich_message() -> bytes:
    """Text, HTML with an inline image (multipart/related), and a PDF attachment."""
    msg = EmailMessage()
    msg["From"] = "Shop <shop@client.test>"
    msg["To"] = "a@dest.test, b@dest.test"
    msg["Subject"] = "Your order 你好"
    msg["Message-ID"] = "<order-7@client.test>"
    msg.set_content("Plain text: your order shipped.\n")
    msg.add_alternative('<p>Your order <a href="https://shop.test/o/7">shipped</a>'
                        '<img src="cid:logo@shop"></p>', subtype="html")
    html = msg.get_payload()[1]
    html.add_related(PNG, maintype="image", subtype="png", cid="<logo@shop>",
                     filename="logo.png")
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf",
                       filename="../../invoice 7.pdf")
    return crlf(msg.as_bytes(policy=email.policy.SMTP))


class Spool:
    """A spool's data/ directory with committed body files (body + envelope record)."""

    def __init__(self, root: str) -> None:
        self.data = os.path.join(root, "data")
        os.makedirs(self.data)

    def commit(self, envelope: Envelope, body: bytes) -> str:
        path = os.path.join(self.data, envelope.queue_id + ".eml")
        with open(path, "wb") as f:
            f.write(body + envelope_record(envelope.to_json()))
        os.chmod(path, 0o600)
        return path


def envelope(qid: str, received: float, recipients: tuple[str, ...] = ("a@dest.test",),
             sender: str = "shop@client.test", **extra: Any) -> Envelope:
    return Envelope(queue_id=qid, sender=sender, received_at=received,
                    recipients=[Recipient(r) for r in recipients], size=100,
                    credential="app1", extra=dict(extra))


class ArchiveTests(TestCase):
    def setUp(self) -> None:
        self.root = tempfile.mkdtemp()
        self.spool = Spool(self.root)
        self.clock = Clock()
        self.clock.advance(100 * DAY)
        self.timer = Clock()

    async def archive(self, retention_days: float = 30, max_bytes: int = 1 << 30
                      ) -> Archive:
        archive = Archive(os.path.join(self.root, "archive"), self.spool.data, reactor,
                          self.clock.seconds, retention_days, max_bytes, timer=self.timer)
        archive.startService()
        self.addCleanup(archive.stopService)
        await archive.started
        return archive

    def accept(self, archive: Archive, qid: str, age: float = 0.0, body: bytes = b"",
               **kw: Any) -> Envelope:
        env = envelope(qid, self.clock.seconds() - age, **kw)
        path = self.spool.commit(env, body or
                                 crlf(b"From: shop@client.test\nSubject: m " +
                                      qid.encode() + b"\n\nhello\n"))
        archive.accepted(env)
        os.unlink(path)  # the relay delivered it and the spool removed it at once
        return env

    async def search(self, archive: Archive, **filters: Any) -> list[str]:
        await archive.flush()
        found = await archive.search(filters, 100, 0)
        return [item["queue_id"] for item in found["items"]]

    async def test_linked_copy_outlives_the_spool_file_and_is_indexed(self) -> None:
        archive = await self.archive()
        body = rich_message()
        self.accept(archive, "Q1", body=body, recipients=("a@dest.test", "b@dest.test"),
                    message_id="<order-7@client.test>")
        await archive.flush()
        path = archive.file("Q1")
        with open_body(path) as f:
            self.assertEqual(f.read(), body)  # the envelope record is not part of it
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(archive.directory).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(archive.db_path).st_mode), 0o600)
        row = await archive.lookup("Q1")
        self.assertEqual((row["subject"], row["header_from"], row["header_to"]),
                         ("Your order 你好", "Shop <shop@client.test>",
                          "a@dest.test, b@dest.test"))
        self.assertEqual((row["message_id"], row["credential"], row["status"], row["size"]),
                         ("order-7@client.test", "app1", "received", 100))
        self.assertEqual(row["stored"], os.stat(path).st_size)
        self.assertEqual([r["address"] for r in row["recipients"]],
                         ["a@dest.test", "b@dest.test"])
        self.assertEqual(archive.copies, 0)

    async def test_copied_when_it_cannot_be_linked(self) -> None:
        archive = await self.archive()

        def cross_device(*args: Any, **kw: Any) -> None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        archive.link = cross_device
        self.accept(archive, "Q2")  # the spool file is unlinked at once: the fd keeps it
        await archive.flush()
        self.assertEqual(archive.copies, 1)
        with open_body(archive.file("Q2")) as f:
            self.assertIn(b"Subject: m Q2", f.read())
        self.assertEqual(stat.S_IMODE(os.stat(archive.file("Q2")).st_mode), 0o600)
        self.assertEqual(await self.search(archive, subject="Q2"), ["Q2"])

    async def test_statuses_follow_delivery_events(self) -> None:
        archive = await self.archive()
        self.accept(archive, "Q3", recipients=("a@dest.test", "b@dest.test"))
        now = self.clock.seconds()
        archive.delivery_event({"event": "sent", "queue_id": "Q3", "recipients": ["a@dest.test"],
                                "reply": "250 ok", "time": now})
        archive.delivery_event({"event": "deferred", "queue_id": "Q3",
                                "recipients": ["b@dest.test"], "reply": "451 later",
                                "time": now})
        archive.delivery_event({"event": "sent", "queue_id": "UNKNOWN", "recipients": ["x"],
                                "reply": "250", "time": now})  # never archived: ignored
        self.assertEqual(await self.search(archive, status="deferred"), ["Q3"])
        self.assertEqual(await self.search(archive, status="sent"), ["Q3"])  # a recipient
        archive.delivery_event({"event": "bounced", "queue_id": "Q3",
                                "recipients": ["b@dest.test"], "reply": "550 5.1.1 no",
                                "time": now + 5})
        self.assertEqual(await self.search(archive, status="deferred"), [])
        row = await archive.lookup("Q3")
        self.assertEqual(row["status"], "bounced")
        self.assertEqual({r["address"]: (r["status"], r["reply"]) for r in row["recipients"]},
                         {"a@dest.test": ("sent", "250 ok"),
                          "b@dest.test": ("bounced", "550 5.1.1 no")})
        self.assertEqual([summary_of(s) for s in (["sent", "sent"], ["sent", "failed"],
                                                   ["received"], ["failed"])],
                         ["sent", "failed", "received", "failed"])

    async def test_search_filters(self) -> None:
        archive = await self.archive()
        self.accept(archive, "A1", age=3 * DAY, sender="news@other.test",
                    recipients=("Zed@Dest.test",), message_id="<m1@other.test>")
        self.accept(archive, "A2", age=DAY, message_id="<m2@client.test>")
        self.accept(archive, "A3", age=60)
        self.assertEqual(await self.search(archive), ["A3", "A2", "A1"])  # newest first
        self.assertEqual(await self.search(archive, sender="NEWS@"), ["A1"])
        self.assertEqual(await self.search(archive, recipient="zed@dest"), ["A1"])
        self.assertEqual(await self.search(archive, subject="m A2"), ["A2"])
        self.assertEqual(await self.search(archive, message_id="m2@client.test"), ["A2"])
        self.assertEqual(await self.search(archive, message_id=" <m2@client.test> "), ["A2"])
        self.assertEqual(await self.search(archive, message_id="m2"), [])  # exact
        self.assertEqual(await self.search(archive, since=self.clock.seconds() - 2 * DAY),
                         ["A3", "A2"])
        self.assertEqual(await self.search(archive, until=self.clock.seconds() - 2 * DAY),
                         ["A1"])
        self.assertEqual(await self.search(archive, credential="app1"), ["A3", "A2", "A1"])
        self.assertEqual(await self.search(archive, sender="%"), [])  # data, never a pattern
        self.assertEqual(await self.search(archive, sender="' OR 1=1 --"), [])
        page = await archive.search({}, 1, 1)
        self.assertEqual((page["total"], [i["queue_id"] for i in page["items"]]), (3, ["A2"]))

    async def test_retention_by_days_then_by_size(self) -> None:
        archive = await self.archive(retention_days=30, max_bytes=1 << 30)
        for qid, age in (("OLD", 40 * DAY), ("MID", 10 * DAY), ("NEW", 3600)):
            self.accept(archive, qid, age=age)
        await archive.flush()
        self.assertEqual(await archive.prune(), (1, 0))
        self.assertFalse(os.path.exists(archive.file("OLD")))
        self.assertEqual(await self.search(archive), ["NEW", "MID"])
        size = os.stat(archive.file("NEW")).st_size
        archive.max_bytes = size + 10  # room for one copy: the oldest goes
        self.assertEqual(await archive.prune(), (0, 1))
        self.assertEqual(await self.search(archive), ["NEW"])
        self.assertFalse(os.path.exists(archive.file("MID")))
        self.assertTrue(os.path.exists(archive.file("NEW")))
        usage = await archive.usage()
        self.assertEqual((usage["messages"], usage["bytes"]), (1, size))

    async def test_retention_runs_at_start_and_hourly_on_the_clock(self) -> None:
        archive = await self.archive(retention_days=1)
        self.accept(archive, "Q9")
        await archive.flush()
        self.clock.advance(2 * DAY)  # now older than the retention
        self.assertEqual(await self.search(archive), ["Q9"])
        self.timer.advance(3600)  # the hourly run
        for _ in range(50):
            if not os.path.exists(archive.file("Q9")):
                break
            await archive._run(lambda: None)  # let the chunks run in the archive's thread
        self.assertEqual(await self.search(archive), [])

    async def test_start_reconciles_copies_and_rows(self) -> None:
        archive = await self.archive()
        self.accept(archive, "KEPT")
        self.accept(archive, "GONE")
        await archive.flush()
        await archive.stopService()
        os.unlink(archive.file("GONE"))  # removed by hand
        orphan = envelope("ORPHAN", self.clock.seconds(), recipients=("o@dest.test",))
        with open(os.path.join(archive.directory, "ORPHAN.eml"), "wb") as f:  # never indexed
            f.write(crlf(b"Subject: orphan\n\nx\n") + envelope_record(orphan.to_json()))
        with open(os.path.join(archive.directory, "CUT.eml.tmp"), "wb") as f:
            f.write(b"half a copy")
        queued = envelope("QUEUED", self.clock.seconds())  # recovered by the spool
        self.spool.commit(queued, crlf(b"Subject: queued\n\nx\n"))
        again = await self.archive()
        again.take_recovered([queued])  # the spool's first batch after the start
        self.assertTrue(os.path.exists(again.file("QUEUED")))  # linked at once
        self.assertEqual(sorted(await self.search(again)), ["KEPT", "ORPHAN", "QUEUED"])
        row = await again.lookup("ORPHAN")
        self.assertEqual((row["subject"], row["recipients"][0]["address"]),
                         ("orphan", "o@dest.test"))
        self.assertFalse(os.path.exists(os.path.join(again.directory, "CUT.eml.tmp")))

    async def test_announced_twice_is_indexed_once(self) -> None:
        archive = await self.archive()
        env = envelope("TWICE", self.clock.seconds())
        self.spool.commit(env, crlf(b"Subject: twice\n\nx\n"))
        archive.accepted(env)
        archive.accepted(env)
        self.assertEqual(len(archive.batch.messages), 1)
        self.assertEqual(await self.search(archive), ["TWICE"])


class MailViewTests(TestCase):
    def test_a_real_mime_message_is_described(self) -> None:
        msg = mailview.parse(rich_message())
        view = mailview.describe(msg)
        self.assertEqual(view["text"], "Plain text: your order shipped.\n")
        self.assertTrue(view["has_html"])
        self.assertEqual(view["subject"], "Your order 你好")
        self.assertIn(["Message-ID", "<order-7@client.test>"], view["headers"])
        self.assertEqual(view["links"], ["https://shop.test/o/7"])
        got = {(a["filename"], a["content_type"], a["size"], a["inline"], a["content_id"])
               for a in view["attachments"]}
        self.assertEqual(got, {("logo.png", "image/png", len(PNG), True, "logo@shop"),
                               ("../../invoice 7.pdf", "application/pdf", 13, False, None)})
        pdf = next(a for a in view["attachments"] if a["content_type"] == "application/pdf")
        self.assertEqual(pdf["download_name"], "invoice 7.pdf")
        self.assertEqual(mailview.part_download(msg, pdf["index"]),
                         ("invoice 7.pdf", b"%PDF-1.4 fake"))
        self.assertIsNone(mailview.part_download(msg, 0))  # the multipart itself
        self.assertIsNone(mailview.part_download(msg, 999))
        page = mailview.html_view(msg)
        assert page is not None
        self.assertNotIn("cid:", page)
        self.assertIn('src="data:image/png;base64,iVBORw0KGgo', page)

    def test_inline_images_are_bounded(self) -> None:
        msg = EmailMessage()
        msg.set_content('<img src="cid:big"><img src="CID:small">', subtype="html")
        msg.add_related(b"x" * (mailview.MAX_INLINE_IMAGE + 1), maintype="image",
                        subtype="gif", cid="<big>")
        msg.add_related(b"GIF89a", maintype="image", subtype="gif", cid="<small>")
        page = mailview.html_view(mailview.parse(msg.as_bytes()))
        assert page is not None
        self.assertIn('src="cid:big"', page)  # too big: left for the sandbox to refuse
        self.assertIn('src="data:image/gif;base64,R0lGODlh"', page)

    def test_hostile_headers_never_fail_the_view(self) -> None:
        raw = crlf(
            b"From: \"unterminated <@@@>, =?utf-8?q?=E2=80=AE?= <x@y>\n"
            b"To: ;;;@,,\n"
            b"Subject: =?x-unknown?B?!!!?= tail \x1b[31mred\x07\n"
            b"Subject: second\n"
            b"X-Bidi: =?utf-8?b?4oCuZ3BqLmV4ZQ==?=\n"
            b"X-Long: " + b"A" * 20000 + b"\n"
            b"Content-Type: multipart/mixed; boundary=\"b\"\n"
            b"\n--b\nContent-Type: text/plain; charset=no-such-charset\n\nhi \xff\n"
            b"--b\nContent-Type: application/x-evil\n"
            b"Content-Disposition: attachment; filename*=utf-8''%E2%80%AEgpj.exe\n\nMZ\n--b--\n")
        msg = mailview.parse(raw)
        view = mailview.describe(msg)
        values = dict((k, v) for k, v in reversed(view["headers"]))
        for value in values.values():
            self.assertFalse(any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in value), value)
            self.assertLessEqual(len(value), mailview.MAX_VALUE)
        self.assertNotIn("\u202e", values["X-Bidi"])
        self.assertIn("red", view["subject"])
        self.assertEqual(view["text"], "hi \ufffd")
        evil = view["attachments"][0]
        self.assertEqual((evil["filename"], evil["download_name"]), ("gpj.exe", "gpj.exe"))
        summary = mailview.summary(raw[:200])
        self.assertIn("tail", summary["subject"] or "")

    def test_deep_nesting_is_bounded(self) -> None:
        raw = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                       for i in range(200)) + b"Content-Type: text/plain\r\n\r\nbottom\r\n"
        msg = mailview.parse(raw)
        self.assertLessEqual(len(mailview.walk(msg)), mailview.MAX_DEPTH + 1)
        mailview.describe(msg)

    def test_file_names_are_made_safe(self) -> None:
        cases = {
            "../../etc/passwd": "passwd", "C:\\Users\\x\\evil.exe": "evil.exe",
            "\u202egpj.exe": "gpj.exe", "a\x00b\r\nc.txt": "abc.txt", "CON": "_CON",
            "con.txt": "_con.txt", "...": "part-3.bin", "": "part-3.bin",
            ".htaccess": "htaccess", 'say "hi";x.txt': "say _hi__x.txt",
            "报告 2024.pdf": "报告 2024.pdf", "a:b*c?.txt": "a_b_c_.txt",
        }
        for given, wanted in cases.items():
            self.assertEqual(mailview.safe_filename(given, 3), wanted, given)
        self.assertEqual(mailview.safe_filename(None, 4, "application/pdf"), "part-4.pdf")
        long = mailview.safe_filename("x" * 400 + ".docx", 1)
        self.assertEqual((len(long), long[-5:]), (mailview.MAX_FILENAME, ".docx"))
        self.assertEqual(mailview.content_disposition("报告 \"1\".pdf"),
                         b"attachment; filename=\"__ _1_.pdf\"; "
                         b"filename*=UTF-8''%E6%8A%A5%E5%91%8A%20%221%22.pdf")
