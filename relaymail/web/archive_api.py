"""``/api/archive``: the archived copies of accepted mail (relaymail.events.archive),
searched, shown parsed, as raw source, as sandboxed HTML and part by part.

Privacy: today only the admin (bearer token or console session) reaches these routes.  The
index keeps the SMTP credential of each message, so that a per-user filter (``credential``
in the search) can be applied once accounts exist (issue 16).

The HTML part is hostile content and is served so that a browser cannot run or fetch
anything for it: ``Content-Security-Policy: sandbox`` (an opaque origin, no scripts, no
forms, no popups, no plugins) with ``default-src 'none'``, inline styles only, images from
``data:`` (the message's own ``cid:`` images, rewritten) and, only when the reader asks
(``?remote_images=1``), from http(s).  The console shows it in an ``<iframe sandbox>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from relaymail.events import mailview
from relaymail.events.archive import STATUSES, Archive
from relaymail.spool.envelope import QUEUE_ID_RE
from relaymail.spool.record import open_body
from relaymail.web.http import int_arg, json_reply, str_arg, time_arg
from relaymail.web.routing import SubApp, query, route
from relaymail.web.shapes import iso

HTML_POLICY = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:{remote}; "
               "frame-src 'none'; form-action 'none'; base-uri 'none'; "
               "frame-ancestors 'self'")
RAW_POLICY = b"sandbox; default-src 'none'; frame-ancestors 'none'"
FILTERS = ("sender", "recipient", "subject", "message_id", "queue_id", "credential")


def read_message(path: str) -> Any:
    """Thread: the parsed message (never its envelope record)."""
    with open_body(path) as f:
        return mailview.parse(f)


def read_raw(path: str) -> bytes:
    with open_body(path) as f:
        return f.read()


def common_headers(request: IRequest, content_type: bytes, policy: bytes) -> None:
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-security-policy", policy)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"cross-origin-resource-policy", b"same-origin")


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """An index row as the API shows it."""
    return {"queue_id": row["queue_id"], "received": iso(row["received"]),
            "sender": row["sender"], "credential": row["credential"], "size": row["size"],
            "stored_bytes": row["stored"], "subject": row["subject"],
            "from": row["header_from"], "to": row["header_to"],
            "message_id": row["message_id"], "bounce_of": row["bounce_of"],
            "status": row["status"], "updated": iso(row["updated"]),
            "recipients": [{**r, "time": iso(r["time"])} for r in row["recipients"]]}


class ArchiveAPI(SubApp):
    unavailable = "the archive is off (archive.enabled)"

    def __init__(self, archive: Archive, run_in_thread: Callable[..., Deferred]) -> None:
        self.archive = archive
        self.run_in_thread = run_in_thread  # parsing: the reactor's pool, not the index's

    @route("get", "/api/archive", "Search the archived messages, newest first",
           query=[query("sender", "substring"), query("recipient", "substring"),
                  query("subject", "substring"), query("message_id", "exact, <> optional"),
                  query("queue_id", "exact"), query("credential", "exact (the SMTP login)"),
                  query("status", ", ".join(STATUSES)),
                  query("since", "ISO 8601 or Unix seconds"),
                  query("until", "ISO 8601 or Unix seconds"),
                  query("limit", "at most 500", "integer"),
                  query("offset", "paging", "integer")])
    async def search(self, request: IRequest) -> bytes:
        try:
            filters: dict[str, Any] = {name: str_arg(request, name) for name in FILTERS}
            filters["since"] = time_arg(request, "since")
            filters["until"] = time_arg(request, "until")
        except ValueError as e:
            return json_reply(request, {"error": str(e)}, 400)
        status = str_arg(request, "status")
        if status is not None and status not in STATUSES:
            return json_reply(request, {"error": f"unknown state {status}"}, 400)
        filters["status"] = status
        found = await self.archive.search(filters, int_arg(request, "limit", 50),
                                          int_arg(request, "offset", 0))
        usage = await self.archive.usage()
        return json_reply(request, {"total": found["total"],
                                    "items": [public_row(r) for r in found["items"]],
                                    "usage": usage})

    async def _found(self, request: IRequest, qid: str) -> tuple[dict[str, Any], str] | bytes:
        """The index row and the copy's path, or the 404 answer."""
        row = await self.archive.lookup(qid) if QUEUE_ID_RE.fullmatch(qid) else None
        if row is None:
            return json_reply(request, {"error": f"no archived message {qid[:40]}",
                                        "code": "archive_no_message",
                                        "params": {"qid": qid[:40]}}, 404)
        return row, self.archive.file(qid)

    async def _parsed(self, request: IRequest, qid: str) -> tuple[dict[str, Any], Any] | bytes:
        found = await self._found(request, qid)
        if isinstance(found, bytes):
            return found
        row, path = found
        try:
            msg = await self.run_in_thread(read_message, path)
        except OSError:  # removed by the retention meanwhile
            return json_reply(request, {"error": f"no archived message {qid[:40]}",
                                        "code": "archive_no_message",
                                        "params": {"qid": qid[:40]}}, 404)
        return row, msg

    @route("get", "/api/archive/{qid}", "One archived message, parsed: envelope, headers, "
           "text part, has_html, attachments, links")
    async def show(self, request: IRequest, qid: str) -> bytes:
        found = await self._parsed(request, qid)
        if isinstance(found, bytes):
            return found
        row, msg = found
        view = await self.run_in_thread(mailview.describe, msg)
        return json_reply(request, {**public_row(row), **view,
                                    "subject": view["subject"] or row["subject"]})

    @route("get", "/api/archive/{qid}/raw", "The message's source as text (download=1: as an "
           "attachment)", query=[query("download", "1: Content-Disposition attachment")])
    async def raw(self, request: IRequest, qid: str) -> bytes:
        found = await self._found(request, qid)
        if isinstance(found, bytes):
            return found
        try:
            data = await self.run_in_thread(read_raw, found[1])
        except OSError:
            return json_reply(request, {"error": f"no archived message {qid[:40]}",
                                        "code": "archive_no_message"}, 404)
        common_headers(request, b"text/plain; charset=utf-8", RAW_POLICY)
        if str_arg(request, "download") == "1":
            request.setHeader(b"content-disposition", mailview.content_disposition(qid + ".eml"))
        return bytes(data)

    @route("get", "/api/archive/{qid}/html", "The HTML part, sandboxed (no script, no remote "
           "load; remote_images=1 allows http(s) images)",
           query=[query("remote_images", "1: load remote images")])
    async def html(self, request: IRequest, qid: str) -> bytes:
        found = await self._parsed(request, qid)
        if isinstance(found, bytes):
            return found
        page = await self.run_in_thread(mailview.html_view, found[1])
        if page is None:
            return json_reply(request, {"error": f"{qid} has no HTML part",
                                        "code": "archive_no_html"}, 404)
        remote = " https: http:" if str_arg(request, "remote_images") == "1" else ""
        common_headers(request, b"text/html; charset=utf-8",
                       HTML_POLICY.format(remote=remote).encode())
        request.setHeader(b"x-frame-options", b"SAMEORIGIN")
        return str(page).encode("utf-8", "replace")

    @route("get", "/api/archive/{qid}/parts/{n}", "One part (an attachment) as a download")
    async def part(self, request: IRequest, qid: str, n: str) -> bytes:
        found = await self._parsed(request, qid)
        if isinstance(found, bytes):
            return found
        index = int(n) if n.isascii() and n.isdigit() else -1
        got = await self.run_in_thread(mailview.part_download, found[1], index)
        if got is None:
            return json_reply(request, {"error": f"{qid} has no part {n[:10]}",
                                        "code": "archive_no_part"}, 404)
        filename, data = got
        common_headers(request, b"application/octet-stream", RAW_POLICY)
        request.setHeader(b"content-disposition", mailview.content_disposition(filename))
        return bytes(data)
