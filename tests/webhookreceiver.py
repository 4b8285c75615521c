"""A real HTTP webhook receiver for the tests: Python's http.server in a thread of its own
(no Twisted in it), on a port of its own, recording every POST and answering as told.

``answers`` is consumed one per request: ``200``, ``503`` (or any code), or ``"hang"``
(read the request, never answer, until the server stops); when empty, ``default`` is used.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: Any
    at: float = field(default_factory=time.time)

    def json(self) -> Any:
        return json.loads(self.body)


def independent_verify(secret: str, header: str, body: bytes) -> bool:
    """The check a receiver writes from the docs, without relaymail's code."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    mac = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), parts["v1"])


class WebhookReceiver:
    def __init__(self, default: Any = 200, rude: bool = False) -> None:
        self.default = default
        self.rude = rude  # close each connection after answering, without saying so
        self.answers: list[Any] = []
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    return  # the sender went away mid-request (killed): nothing arrived
                with receiver.lock:
                    answer = receiver.answers.pop(0) if receiver.answers else receiver.default
                    receiver.received.append(Received(self.path, dict(self.headers.items()),
                                                      body, answer))
                if answer == "hang":
                    receiver.stopping.wait(60)
                    return
                self.send_response(int(answer))
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                if receiver.rude:  # a request sent meanwhile meets a closed connection
                    self.wfile.flush()
                    time.sleep(0.05)
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def events(self, answered: Any = 200) -> list[dict[str, Any]]:
        """The documents of the POSTs answered with ``answered``, in arrival order."""
        with self.lock:
            return [r.json() for r in self.received if r.answered == answered]
