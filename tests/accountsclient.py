"""A small client of relaymail's accounts API over a real socket (treq), and SMTP sends
with smtplib in a thread, for the accounts tests (integration and PostgreSQL interop)."""

from __future__ import annotations

import json
import smtplib
import ssl
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.client import HTTPConnectionPool

MESSAGE = "From: {sender}\r\nTo: {rcpt}\r\nSubject: hello\r\n\r\nhello from {sender}\r\n"


class Api:
    """Calls on one relaymail web endpoint as one caller (a bearer token or none)."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.token = token

    def as_(self, token: str | None) -> Api:
        return Api(self.base, token)

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        sent = {k: [v] for k, v in (headers or {}).items()}
        if self.token:
            sent["Authorization"] = [f"Bearer {self.token}"]
        sent["Content-Type"] = ["application/json"]
        kwargs: dict[str, Any] = {"headers": sent,
                                  "pool": HTTPConnectionPool(reactor, persistent=False)}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
        response = await treq.request(method, self.base + path, **kwargs)
        text = await response.content()
        try:
            return response.code, json.loads(text)
        except ValueError:
            return response.code, text

    async def register(self, username: str, email: str, password: str, **more: Any
                       ) -> tuple[int, Any]:
        return await self.call("POST", "/api/auth/register",
                               {"username": username, "email": email, "password": password,
                                **more})

    async def login(self, email: str, password: str) -> Api:
        code, answer = await self.call("POST", "/api/auth/login",
                                       {"email": email, "password": password})
        assert code == 200, (code, answer)
        return self.as_(answer["token"])


def smtp_send(port: int, login: str, password: str, sender: str, rcpt: str,
              starttls: bool = False, data: str | None = None) -> Any:
    """Blocking: AUTH then one message; {} when accepted, else the SMTPException."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        try:
            if starttls:
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                s.starttls(context=context)
            s.login(login, password)
            return s.sendmail(sender, [rcpt], data or MESSAGE.format(sender=sender, rcpt=rcpt))
        except smtplib.SMTPException as e:
            return e


async def send_in_thread(*args: Any, **kwargs: Any) -> Any:
    return await deferToThread(smtp_send, *args, **kwargs)
