"""Upstreams with the sender rules real providers enforce, scripted into aiosmtpd.

The replies are the providers' own words, as users meet them:
- QQ Mail: ``501 mail from address must be same as authorization user``;
- NetEase 163/126: ``553 Mail from must equal authorized user``, and ``MAIL FROM:<>`` is
  refused the same way (bounces cannot go from the null sender);
- Microsoft 365 / Outlook: ``550 5.7.60 SMTP; Client does not have permissions to send as
  this sender`` at MAIL, and ``554 5.2.0 STOREDRV.Submission.Exception:
  SendAsDeniedException.MapiExceptionSendAsDenied`` when the header From differs.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
from typing import Any

from tests.upstreams import AioUpstream, RecordingHandler

MAIL_REFUSALS = {
    "qq": "501 mail from address must be same as authorization user",
    "163": "553 Mail from must equal authorized user",
    "m365": "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
}


class SenderRules(RecordingHandler):
    """Records what it accepts; refuses senders other than the login like ``provider``."""

    def __init__(self, provider: str) -> None:
        super().__init__()
        self.provider = provider
        self.refusals: list[str] = []

    @staticmethod
    def login(session: Any) -> str:
        return session.auth_data.login.decode() if session.auth_data else ""

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        if address.lower() != self.login(session).lower():
            self.refusals.append(f"MAIL FROM:<{address}>")
            return MAIL_REFUSALS[self.provider]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.provider == "m365":
            message = email.message_from_bytes(envelope.original_content,
                                               policy=email.policy.default)
            _, author = email.utils.parseaddr(str(message.get("From", "")))
            if author.lower() != self.login(session).lower():
                self.refusals.append(f"From: {author}")
                return ("554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException."
                        "MapiExceptionSendAsDenied; Failed to process message due to a "
                        f"permanent exception ({self.login(session)} may not send as {author})")
        return await super().handle_DATA(server, session, envelope)


def provider(name: str, login: str, password: str = "app-password") -> AioUpstream:
    """A STARTTLS + AUTH upstream enforcing ``name``'s sender rule for ``login``."""
    return AioUpstream(username=login, password=password, handler=SenderRules(name))
