"""``relaymail queue``: list and control the queue, like Postfix's mailq/postqueue/postsuper.

While relaymail runs (it holds the spool lock), the command asks the running instance
through its HTTP API with the local control token, so the scheduler stays in charge.  When
it is stopped, the command works on the spool files itself, with the same code.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from twisted.internet.defer import ensureDeferred

from relaymail.config import Config, endpoint_address, load_config
from relaymail.relay.control import QueueControl, QueueError, read_headers
from relaymail.relay.manager import RelayManager
from relaymail.relay.pause import paused_on_disk
from relaymail.relay.router import Router
from relaymail.spool import STATES, Spool, run_synchronously
from relaymail.spool import lock as spool_lock
from relaymail.web.shapes import envelope_json

ACTIONS = ("retry", "hold", "release", "delete", "bounce")


class CommandError(Exception):
    """A queue command that could not be done; the message says why."""


def add_parser(sub: Any) -> None:
    queue = sub.add_parser("queue", help="list and control the mail queue")
    qsub = queue.add_subparsers(title="queue commands")
    listing = qsub.add_parser("list", help="show queued messages (like mailq)")
    listing.add_argument("--state", choices=(*STATES, "all"), default="all")
    listing.add_argument("--sender")
    listing.add_argument("--recipient")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_list)
    show = qsub.add_parser("show", help="one message: envelope, per-recipient state, headers")
    show.add_argument("queue_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=cmd_show)
    for action in ACTIONS:
        p = qsub.add_parser(action, help=f"{action} the given messages")
        p.add_argument("queue_ids", nargs="*", metavar="QUEUE_ID")
        if action == "retry":
            p.add_argument("--failed", action="store_true", help="retry every failed message")
        p.add_argument("--json", action="store_true")
        p.set_defaults(run=cmd_action, action=action)
    flush = qsub.add_parser("flush", help="attempt every queued message now")
    flush.add_argument("--json", action="store_true")
    flush.set_defaults(run=cmd_flush)
    for verb, text in (("pause", "accept and queue mail, deliver none until resumed"),
                       ("resume", "deliver again after a pause")):
        p = qsub.add_parser(verb, help=text)
        p.add_argument("--json", action="store_true")
        p.set_defaults(run=cmd_pause, pause=verb == "pause")


# ---------------------------------------------------------------------- back ends


def pinned_context(certificate: str) -> ssl.SSLContext:
    """TLS to our own console (``web.tls``): trust exactly its certificate, the first in
    the configured file.  The command connects to an address, which the certificate need
    not name, so the name is not checked; no other certificate is accepted."""
    try:
        with open(certificate, encoding="ascii") as f:
            first = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                              f.read(), re.S)
    except (OSError, ValueError) as e:
        raise CommandError(f"cannot read web.tls.certificate {certificate}: {e}") from None
    if first is None:
        raise CommandError(f"no certificate in web.tls.certificate {certificate}")
    context = ssl.create_default_context(cadata=first.group(0))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the anchor
    return context


class OnlineQueue:
    """The running instance's API (over HTTPS with ``web.tls``)."""

    def __init__(self, config: Config) -> None:
        if not config.web.enabled:
            raise CommandError("relaymail is running with web.enabled false; enable the API "
                               "to control its queue while it runs")
        port, interface, _ = endpoint_address(config.web.endpoint)
        host = interface if interface and interface not in ("0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        certificate = config.web.tls.certificate
        self.context = None if certificate is None else pinned_context(certificate)
        self.base = f"{'http' if certificate is None else 'https'}://{host}:{port}"
        self.token = spool_lock.read_token(config.spool_dir)

    def call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.base + path, method=method,
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=60, context=self.context) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                detail = e.reason
            raise CommandError(str(detail)) from None
        except OSError as e:
            raise CommandError(f"cannot reach relaymail at {self.base}: {e}") from None

    def list(self, state: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/api/queue?state={state}&limit=1000000")["messages"]

    def show(self, qid: str) -> dict[str, Any]:
        return self.call("GET", f"/api/queue/{qid}")

    def act(self, action: str, qid: str) -> str:
        if action == "delete":
            return self.call("DELETE", f"/api/queue/{qid}")["state"]
        return self.call("POST", f"/api/queue/{qid}/{action}")["state"]

    def flush(self) -> int:
        return self.call("POST", "/api/queue/flush")["flushed"]

    def retry_failed(self) -> int:
        return self.call("POST", "/admin/retry-failed")["requeued"]

    def paused(self) -> bool:
        return bool(self.call("GET", "/api/queue?limit=0").get("paused"))

    def set_paused(self, paused: bool) -> bool:
        return bool(self.call("POST", "/api/queue/pause" if paused else "/api/queue/resume")
                    ["paused"])


class _WallClock:
    def seconds(self) -> float:
        return time.time()

    def callLater(self, *args: Any) -> None:  # the offline manager never schedules
        raise AssertionError("offline queue control does not schedule")


class OfflineQueue:
    """The spool files, with the manager's own operations run synchronously."""

    def __init__(self, config: Config) -> None:
        self.config = config
        spool = Spool(config.spool_dir, run_synchronously)
        self.manager = RelayManager(spool, Router(config.routes), {}, {}, config.delivery,
                                    config.hostname, _WallClock())
        self.control: QueueControl = self.manager.control

    @staticmethod
    def _wait(coroutine: Any) -> Any:
        results: list[Any] = []
        ensureDeferred(coroutine).addBoth(results.append)
        if hasattr(results[0], "raiseException"):
            if results[0].check(QueueError):
                raise CommandError(results[0].getErrorMessage())
            results[0].raiseException()
        return results[0]

    def list(self, state: str) -> list[dict[str, Any]]:
        now = time.time()
        names = STATES if state == "all" else (state,)
        return [envelope_json(e, name, now, False)
                for name in names for e in self.control.spool.load_state(name)]

    def show(self, qid: str) -> dict[str, Any]:
        try:
            state, envelope = self.control.find(qid)
        except QueueError as e:
            raise CommandError(str(e)) from None
        out = envelope_json(envelope, state, time.time(), False)
        out["headers"] = read_headers(self.control.spool.path("data", qid + ".eml"))
        return out

    def act(self, action: str, qid: str) -> str:
        return self._wait(getattr(self.control, action)(qid))

    def flush(self) -> int:
        return self._wait(self.control.flush_offline())

    def retry_failed(self) -> int:
        return self._wait(self.control.retry_failed())

    def paused(self) -> bool:
        """Whether the next start will be paused (the spool's marker, or the config)."""
        return self.config.delivery.paused or paused_on_disk(self.config.spool_dir)

    def set_paused(self, paused: bool) -> bool:
        """Stopped: the spool's marker alone, which the next start reads."""
        by = "relaymail queue (offline)"
        return bool(self._wait(self.control.pause(by) if paused else self.control.resume(by)))


def open_queue(args: argparse.Namespace) -> OnlineQueue | OfflineQueue:
    config = load_config(args.config)
    if spool_lock.is_locked(config.spool_dir):
        return OnlineQueue(config)
    return OfflineQueue(config)


# ---------------------------------------------------------------------- output


def arrival(iso_time: str | None) -> str:
    if not iso_time:
        return "-"
    when = datetime.datetime.fromisoformat(iso_time.replace("Z", "+00:00")).astimezone()
    return when.strftime("%a %b %d %H:%M:%S")


MARKS = {"active": "*", "hold": "!", "failed": "#", "queue": " "}


def print_mailq(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("Mail queue is empty")
        return
    print(f"{'-Queue ID-':<16} {'--Size--':>8} {'----Arrival Time----':<20} "
          "-Sender/Recipient-------")
    total = 0
    for row in rows:
        total += row["size"] or 0
        print(f"{row['queue_id']}{MARKS.get(row['state'], ' ')} {row['size'] or 0:>8} "
              f"{arrival(row['received_at']):<20} {row['sender'] or 'MAILER-DAEMON'}")
        for rcpt in row["recipients"]:
            if rcpt["state"] == "delivered":
                continue
            if rcpt.get("last_reply"):
                print(f"{'':<47}({rcpt['last_reply'][:120]})")
            print(f"{'':<47}{rcpt['address']}")
        print()
    print(f"-- {(total + 1023) // 1024} Kbytes in {len(rows)} Request"
          f"{'s' if len(rows) != 1 else ''}.  (* active, ! held, # failed)")


# ---------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:
    queue = open_queue(args)
    rows = queue.list(args.state)
    rows = [r for r in rows if (not args.sender or args.sender.lower() in r["sender"].lower())
            and (not args.recipient or any(args.recipient.lower() in x["address"].lower()
                                           for x in r["recipients"]))]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        if queue.paused():
            print("-- delivery is paused: nothing is sent until `relaymail queue resume` --")
        print_mailq(rows)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    row = open_queue(args).show(args.queue_id)
    if args.json:
        print(json.dumps(row, indent=2, ensure_ascii=False))
        return 0
    for key in ("queue_id", "state", "sender", "size", "received_at", "attempts",
                "next_attempt", "last_attempt", "reason", "client_ip", "credential"):
        print(f"{key + ':':<14}{row.get(key) if row.get(key) is not None else '-'}")
    print("recipients:")
    for r in row["recipients"]:
        print(f"  {r['address']:<40} {r['state']:<10} attempts={r['attempts']} "
              f"{r.get('last_reply') or ''}")
    print("headers:")
    print(row.get("headers", ""))
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    queue = open_queue(args)
    results: list[dict[str, Any]] = []
    if getattr(args, "failed", False):
        results.append({"action": "retry-failed", "count": queue.retry_failed()})
    elif not args.queue_ids:
        raise CommandError(f"queue {args.action}: give one or more queue IDs")
    status = 0
    for qid in args.queue_ids:
        try:
            results.append({"queue_id": qid, "action": args.action,
                            "state": queue.act(args.action, qid)})
        except CommandError as e:
            results.append({"queue_id": qid, "action": args.action, "error": str(e)})
            status = 1
    for row in results:
        if args.json:
            continue
        if "error" in row:
            print(f"relaymail: {row['queue_id']}: {row['error']}")
        elif "count" in row:
            print(f"{row['count']} failed message(s) requeued")
        else:
            print(f"{row['queue_id']}: {row['action']} -> {row['state']}")
    if args.json:
        print(json.dumps(results, indent=2))
    return status


def cmd_pause(args: argparse.Namespace) -> int:
    paused = open_queue(args).set_paused(args.pause)
    if args.json:
        print(json.dumps({"paused": paused}))
    else:
        print("delivery paused: mail is accepted and queued, none is delivered until "
              "`relaymail queue resume`" if paused else "delivery resumed")
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    count = open_queue(args).flush()
    print(json.dumps({"flushed": count}) if args.json else f"{count} message(s) due now")
    return 0
