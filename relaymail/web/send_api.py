"""``POST /api/send``: the console's send form, composed and DKIM-signed
(relaymail.web.compose) and queued like mail received over SMTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.iweb import IRequest

from relaymail.accounts.principal import Principal
from relaymail.common.replies import Reply
from relaymail.config import Config
from relaymail.credentials import Credential
from relaymail.policy.dkim import Signer, parse_headers
from relaymail.policy.limits import RateLimiter, Reservation, Who
from relaymail.policy.senders import header_sender_problem, sender_allowed
from relaymail.relay.manager import RelayManager
from relaymail.web.access import principal_of
from relaymail.web.compose import SEND_SCHEMA, compose, sign_whole
from relaymail.web.http import json_body, json_reply
from relaymail.web.routing import Access, SubApp, route

SEND = SEND_SCHEMA  # the form's fields (relaymail.web.compose)


class SendAPI(SubApp):
    """Sending over HTTP under SMTP's policy: an account user (session, token or an API key
    with the ``send`` scope) sends only from the account's allowed sender domains, with a
    header From in the envelope sender's domain, counted against the account's quotas (and
    the configured per-sender, per-IP and relay-wide limits) as SMTP mail is; an admin as
    a trusted client is.  Then DKIM, and the queue."""

    unavailable = "sending is not configured"

    def __init__(self, manager: RelayManager, signer: Signer | None,
                 config: Callable[[], Config], limits: RateLimiter | None = None,
                 accounts: Any = None) -> None:
        self.manager = manager
        self.signer = signer  # DKIM keys, like mail received over SMTP; None: unsigned
        self.config = config  # the configuration in force (hostname, recipient limit)
        self.limits = limits  # relaymail.policy.limits, as at MAIL
        self.accounts = accounts  # relaymail.accounts.view.AccountsView, or None

    def sender_of(self, principal: Principal) -> Credential | None:
        """The account as SMTP's policy sees a login (None: the admin, unbounded)."""
        user = self.accounts.user(principal.user_id) if self.accounts is not None else None
        if user is None:
            return None
        return Credential(name=f"api:{user.username}", password_hash="",
                          enabled=user.enabled, owner=user.username, owner_id=user.id,
                          owner_sender_domains=user.allowed_sender_domains,
                          owner_hourly_quota=user.hourly_quota,
                          owner_daily_quota=user.daily_quota)

    @staticmethod
    def policy_refusal(login: Credential | None, sender: str, data: bytes) -> str | None:
        if login is None:
            return None
        if not sender_allowed(login, sender):
            return f"from: {sender} is not an allowed sender address for this account"
        head = data.partition(b"\r\n\r\n")[0] + b"\r\n"
        problem = header_sender_problem(parse_headers(head), login, sender)
        return None if problem is None else f"headers: {problem.text}"

    @route("post", "/api/send", "Compose (or take a raw message), DKIM-sign and queue; 202 "
           "with the queue ID. Account users: their sender domains and quotas apply",
           Access.USER, body=SEND, scope="send")
    async def send(self, request: IRequest) -> bytes:
        """Compose and queue a message (the console's send form); 202 with the queue ID."""
        config = self.config()
        principal = principal_of(request)
        try:
            sender, rcpts, data = compose(json_body(request), config.hostname,
                                          self.manager.now(), config.smtp.max_recipients,
                                          max_size=config.smtp.max_message_size)
        except ValueError as e:  # ComposeError, or a body that is not JSON
            return json_reply(request, {"error": str(e)}, 400)
        login = self.sender_of(principal)
        refused = self.policy_refusal(login, sender, data)
        if refused is not None:
            return json_reply(request, {"error": refused, "code": "sender_not_allowed",
                                        "params": {"sender": sender}}, 403)
        suppressed = [r for r in rcpts if self.manager.suppressed(r)]
        if suppressed:  # as at RCPT: nothing is queued for an address that bounced for good
            return json_reply(request, {
                "error": f"recipient suppressed: {', '.join(suppressed)}",
                "code": "recipient_suppressed", "params": {"recipients": ", ".join(suppressed)},
                "suppressed": suppressed}, 422)
        reserved = await self.reserve(request, login, sender, len(rcpts))
        if isinstance(reserved, Reply):
            text = f"{reserved.code} {reserved.enhanced} {reserved.text}"
            return json_reply(request, {"error": text, "code": "over_quota",
                                        "params": {"reply": text}}, 429)
        data = await self.manager.spool.run_in_thread(sign_whole, self.signer, data)
        extra: dict[str, Any] = {"source": "api"}
        if login is not None and login.owner:
            extra.update(user=login.owner, user_id=login.owner_id)
        try:
            qid = await self.manager.inject(sender, rcpts, data, extra)
        except Exception as e:
            if reserved is not None and self.limits is not None:
                self.limits.release(reserved)
            return json_reply(request, {"error": f"not queued: {e}"}, 503)
        return json_reply(request, {"queue_id": qid, "sender": sender, "recipients": rcpts,
                                    "size": len(data)}, 202)

    async def reserve(self, request: IRequest, login: Credential | None, sender: str,
                      recipients: int) -> Reservation | Reply | None:
        """The rate limits, as at MAIL (messages) or RCPT (recipients)."""
        if self.limits is None:
            return None
        peer = getattr(request.getClientAddress(), "host", "?")
        amount = recipients if self.limits.config.count == "recipients" else 1
        return await self.limits.reserve(Who(peer, login, sender), amount)  # type: ignore
