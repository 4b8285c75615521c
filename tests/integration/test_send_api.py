"""POST /api/send on a running relay: the composed message is queued, DKIM-signed like SMTP
mail, relayed, and arrives well-formed (UTF-8 subject and text, HTML alternative); header
injection and bad addresses are refused with 400 naming the field."""

from __future__ import annotations

import email
import email.policy
import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from tests.helpers import free_port
from tests.integration.test_dkim_signing import DkimHelpers
from tests.integration.test_relay import plain, smarthost
from tests.upstreams import wait_until


class SendAPITests(DkimHelpers):
    async def start(self, **sections: Any) -> tuple[Any, Any, str, str]:
        upstream = await self.scripted()
        web = free_port()
        relay = await self.relay(web={"enabled": True,
                                      "endpoint": f"tcp:{web}:interface=127.0.0.1"},
                                 **smarthost(plain(upstream.port)), **sections)
        token = relay.service.getServiceNamed("spool").control_token
        return relay, upstream, f"http://127.0.0.1:{web}/api/send", token

    async def post(self, url: str, token: str, body: Any) -> tuple[int, Any]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.post(url, data=json.dumps(body).encode(), pool=pool,
                                   headers={"Authorization": [f"Bearer {token}"]})
        return response.code, json.loads(await response.content())

    async def test_send_form_is_signed_relayed_and_well_formed(self) -> None:
        entries = [self.keygen("send1", "rsa")]
        relay, upstream, url, token = await self.start(dkim=entries)
        code, answer = await self.post(url, token, {
            "from": "app@example.com", "from_name": "应用 App", "to": "a@dest.test, b@dest.test",
            "subject": "测试 test ✓", "text": "你好, world\n第二行", "html": "<p>你好</p>"})
        self.assertEqual(code, 202, answer)
        self.assertEqual(answer["recipients"], ["a@dest.test", "b@dest.test"])
        await wait_until(lambda: upstream.messages, what="delivery")
        await self.drained(relay)
        got = upstream.messages[0]
        self.assertEqual((got.mail_from, sorted(got.rcpt_tos)),
                         ("app@example.com", ["a@dest.test", "b@dest.test"]))
        self.assertTrue(got.content.startswith(b"DKIM-Signature:"))
        self.assertTrue(await self.verify(got.content, self.publish(entries)))
        parsed = email.message_from_bytes(got.content, policy=email.policy.default)
        self.assertEqual(parsed["Subject"], "测试 test ✓")
        self.assertEqual(parsed["From"].addresses[0].display_name, "应用 App")
        self.assertIn("你好, world", parsed.get_body(("plain",)).get_content())
        self.assertIn("<p>你好</p>", parsed.get_body(("html",)).get_content())
        self.assertTrue(parsed["Message-ID"].endswith("@relay.test>"))
        self.assertNotIn(b"\n", got.content.replace(b"\r\n", b""))  # CRLF only

    async def test_bad_forms_get_400_and_queue_nothing(self) -> None:
        relay, _, url, token = await self.start()
        for form, words in (({"from": "a@x.test", "to": "b@y.test", "subject": "hi\r\nBcc: c@z"},
                             "subject: must be a single line"),
                            ({"from": "not an address", "to": "b@y.test"}, "from:"),
                            ({"from": "a@x.test", "to": []}, "to:"),
                            ({"from": "a@x.test", "to": "b@y.test\r\nRCPT TO:<c@z>"}, "to:"),
                            ({"from": "a@x.test", "to": ["ok@y.test", 5]}, "to:"),
                            ([1], "JSON object")):
            code, answer = await self.post(url, token, form)
            self.assertEqual(code, 400, form)
            self.assertIn(words, answer["error"])
        self.assertEqual(relay.spool.count("queue"), 0)
        code, _ = await self.post(url, "wrong", {"from": "a@x.test", "to": "b@y.test"})
        self.assertEqual(code, 401)
