"""``POST /api/send``: the console's send form, composed and DKIM-signed
(relaymail.web.compose) and queued like mail received over SMTP."""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.iweb import IRequest

from relaymail.config import Config
from relaymail.policy.dkim import Signer
from relaymail.relay.manager import RelayManager
from relaymail.web.compose import SEND_SCHEMA, compose, sign_whole
from relaymail.web.http import json_body, json_reply
from relaymail.web.routing import SubApp, route

SEND = SEND_SCHEMA  # the form's fields (relaymail.web.compose)


class SendAPI(SubApp):
    unavailable = "sending is not configured"

    def __init__(self, manager: RelayManager, signer: Signer | None,
                 config: Callable[[], Config]) -> None:
        self.manager = manager
        self.signer = signer  # DKIM keys, like mail received over SMTP; None: unsigned
        self.config = config  # the configuration in force (hostname, recipient limit)

    @route("post", "/api/send", "Compose, DKIM-sign and queue a message; 202 with the queue "
           "ID", body=SEND)
    async def send(self, request: IRequest) -> bytes:
        """Compose and queue a message (the console's send form); 202 with the queue ID."""
        config = self.config()
        try:
            sender, rcpts, data = compose(json_body(request), config.hostname,
                                          self.manager.now(), config.smtp.max_recipients)
        except ValueError as e:  # ComposeError, or a body that is not JSON
            return json_reply(request, {"error": str(e)}, 400)
        suppressed = [r for r in rcpts if self.manager.suppressed(r)]
        if suppressed:  # as at RCPT: nothing is queued for an address that bounced for good
            return json_reply(request, {
                "error": f"recipient suppressed: {', '.join(suppressed)}",
                "code": "recipient_suppressed", "params": {"recipients": ", ".join(suppressed)},
                "suppressed": suppressed}, 422)
        data = await self.manager.spool.run_in_thread(sign_whole, self.signer, data)
        try:
            qid = await self.manager.inject(sender, rcpts, data, {"source": "api"})
        except Exception as e:
            return json_reply(request, {"error": f"not queued: {e}"}, 503)
        return json_reply(request, {"queue_id": qid, "sender": sender, "recipients": rcpts,
                                    "size": len(data)}, 202)
