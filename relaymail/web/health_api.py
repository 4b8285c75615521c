"""``/health`` and ``/metrics`` over relaymail.web.monitor: open to loopback clients when
``web.open_metrics_to_loopback``, else they need the token like the rest of the API."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.web.iweb import IRequest

from relaymail.web.http import json_reply, str_arg
from relaymail.web.monitor import Monitor
from relaymail.web.routing import Access, SubApp, query, route


class HealthAPI(SubApp):
    unavailable = "monitoring is not configured"

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    @route("get", "/health", "Health: 200 ok/degraded, 503 error (spool not writable, disk "
           "low)", Access.LOCAL_OR_ADMIN)
    async def health(self, request: IRequest) -> bytes:
        code, body = await self.monitor.health()
        return json_reply(request, body, code)

    @route("get", "/metrics", "Prometheus text; ?format=json for the simple JSON shape",
           Access.LOCAL_OR_ADMIN,
           query=[query("format", "json for {total_emails, successful_emails, failed_emails, "
                                  "total_recipients, avg_processing_time_ms}")])
    async def metrics(self, request: IRequest) -> bytes:
        if str_arg(request, "format") == "json":
            return json_reply(request, self.monitor.metrics_json())
        text = await self.monitor.metrics_text()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return text
