"""The console and JSON API: one Klein app over the sub-apps, each route behind the one
access check.

Each area is a sub-app (relaymail.web.routing.SubApp) holding only what it needs: the
console's pages and logins, the queue, the relay's settings and status, the delivery
history, SMTP credentials, sending, webhooks, the suppression list, the archive, accounts
(their logins, the admin's users page, API keys), health and metrics, and this API's own
description.
``ControlAPI`` builds the ones its collaborators allow and mounts all their routes into its
Klein ``app``; a route whose sub-app was not built answers 404.  Shapes follow DESIGN.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

import relaymail
from relaymail.accounts.service import Accounts
from relaymail.config import Config
from relaymail.events.archive import Archive
from relaymail.events.hub import EventHub
from relaymail.history import History
from relaymail.policy.counters import Counters, MemoryCounters
from relaymail.policy.dkim import Signer
from relaymail.policy.limits import RateLimiter
from relaymail.relay.manager import RelayManager
from relaymail.web.access import AccessGate
from relaymail.web.applier import ConfigApplier
from relaymail.web.archive_api import ArchiveAPI
from relaymail.web.auth_api import AuthAPI
from relaymail.web.credentials_api import CredentialsAPI
from relaymail.web.events_api import SuppressionsAPI, WebhooksAPI
from relaymail.web.guard import reached_over_tls
from relaymail.web.health_api import HealthAPI
from relaymail.web.history_api import MailLogsAPI
from relaymail.web.keys_api import ApiKeysAPI
from relaymail.web.login import ConsoleLogin
from relaymail.web.monitor import Monitor
from relaymail.web.openapi import ApiDocs
from relaymail.web.pages import ConsolePages
from relaymail.web.queue_api import QueueAPI
from relaymail.web.relay_api import RelayConfigAPI, RelayStatusAPI
from relaymail.web.routing import Access, SubApp, mount
from relaymail.web.send_api import SendAPI
from relaymail.web.session import WebAuth
from relaymail.web.setup import FirstRunSetup, console_url
from relaymail.web.users_api import UsersAPI

SUBAPPS: tuple[type[SubApp], ...] = (
    HealthAPI, RelayConfigAPI, RelayStatusAPI, QueueAPI, CredentialsAPI, MailLogsAPI,
    SendAPI, WebhooksAPI, SuppressionsAPI, ArchiveAPI, AuthAPI, UsersAPI, ApiKeysAPI,
    FirstRunSetup, ConsoleLogin, ConsolePages, ApiDocs)
# Console pages of areas a process may be built without: their nav entries are hidden then.
OPTIONAL_PAGES: dict[str, type[SubApp]] = {
    "archive": ArchiveAPI, "webhooks": WebhooksAPI, "suppressions": SuppressionsAPI}


def tls_check(config: Callable[[], Config] | None) -> Callable[[IRequest], bool]:
    """Does the browser reach us over HTTPS (here, or through a TLS proxy we believe)?"""
    if config is None:
        return lambda request: bool(request.isSecure())

    def over_tls(request: IRequest) -> bool:
        web = config().web
        return reached_over_tls(request, web.behind_tls_proxy, web.trusted_proxies)

    return over_tls


class ControlAPI:
    """The sub-apps over one running relay.  Only ``manager`` and ``token`` are needed;
    each further collaborator brings the sub-apps that need it (the service gives all)."""

    app = Klein()
    routes = mount(app, SUBAPPS)

    def __init__(self, manager: RelayManager, token: Callable[[], str],
                 policy: Callable[[], dict[str, Any]] = dict, monitor: Monitor | None = None,
                 open_to_loopback: bool = True, config: Config | None = None,
                 reactor: IReactorTime | None = None,
                 credentials: CredentialsAPI | None = None, signer: Signer | None = None,
                 history: History | None = None, auth: WebAuth | None = None,
                 events: EventHub | None = None, archive: Archive | None = None,
                 accounts: Accounts | None = None, counters: Counters | None = None,
                 limits: RateLimiter | None = None) -> None:
        view = accounts.view if accounts is not None else None
        self.gate = AccessGate(token, auth, open_to_loopback, view)
        built: list[SubApp] = [QueueAPI(manager), RelayStatusAPI(manager, policy),
                               ApiDocs(relaymail.__version__, self.routes)]
        current: Callable[[], Config] | None = None
        applier: ConfigApplier | None = None
        if config is not None and reactor is not None:
            applier = ConfigApplier(config, manager, reactor, manager.spool.run_in_thread)
            current = applier.current
            built += [RelayConfigAPI(applier, reactor),
                      SendAPI(manager, signer, current, limits, view)]
        elif config is not None:
            current = lambda: config  # noqa: E731  (no reactor: nothing to apply it to)
        if monitor is not None:
            built.append(HealthAPI(monitor))
        if credentials is not None:
            built.append(credentials)
        if history is not None:
            built.append(MailLogsAPI(history, manager.now, view))
        if events is not None and events.outbox is not None:
            built.append(WebhooksAPI(events))
        if events is not None and events.suppression is not None:
            built.append(SuppressionsAPI(events.suppression))
        if archive is not None:
            built.append(ArchiveAPI(archive, manager.spool.run_in_thread))
        if accounts is not None:
            built += [UsersAPI(accounts), ApiKeysAPI(accounts)]
            if auth is not None:
                auth.accounts = view
                built.append(AuthAPI(accounts, auth, counters or MemoryCounters(
                    accounts.clock), manager.spool.run_in_thread))
        if auth is not None:
            setup: FirstRunSetup | None = None
            if applier is not None and config is not None:
                setup = FirstRunSetup(auth, applier.save_admin_hash, manager.spool.run_in_thread,
                                      tls_check(current))
                built.append(setup)
                setup.announce(console_url(config))  # twistd shows it once logging starts
            kinds = {type(s) for s in built}
            absent = frozenset(p for p, kind in OPTIONAL_PAGES.items() if kind not in kinds)
            mode = accounts.config.registration if accounts is not None else "off"
            shortest = accounts.config.min_password_length if accounts is not None else 10
            built += [ConsolePages(auth, lambda: setup is not None and setup.pending, current,
                                   absent, registration=lambda: mode,
                                   min_password_length=lambda: shortest),
                      ConsoleLogin(auth, tls_check(current))]
        self.subapps: dict[type[SubApp], SubApp] = {type(s): s for s in built}

    # relaymail.web.routing.Mount
    def refusal(self, access: Access, request: IRequest, scope: str | None = None
                ) -> bytes | None:
        return self.gate.refusal(access, request, scope)

    def subapp(self, kind: type[SubApp]) -> SubApp | None:
        return self.subapps.get(kind)

    def may_send_body(self, request: IRequest) -> bool:
        """For relaymail.web.guard: may this request send a large body?"""
        return self.gate.may_send_body(request)
