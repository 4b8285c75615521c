"""The relay's live configuration: a change made through the API is saved (validated like
startup, the previous file kept as ``.bak``; relaymail.web.relayconfig) and then applied
to the running relay's routing from the next delivery on, without a restart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from relaymail.config import Config
from relaymail.relay.build import apply_routing
from relaymail.relay.manager import RelayManager
from relaymail.web.relayconfig import set_admin_hash, update


class ConfigApplier:
    """Holds the configuration in force; ``config`` is replaced by each applied change."""

    def __init__(self, config: Config, manager: RelayManager, reactor: IReactorTime,
                 run_in_thread: Callable[..., Deferred]) -> None:
        self.config = config
        self.manager = manager
        self.reactor = reactor
        self.run_in_thread = run_in_thread

    def current(self) -> Config:
        return self.config

    async def apply(self, change: Any) -> dict[str, Any]:
        """Save ``change`` (a request's JSON body) and route by it; the new relay view.
        ValueError, with the message for a 400, when it is refused: nothing changed."""
        new_config, view = await self.run_in_thread(update, self.config.path, change,
                                                    self.config)
        apply_routing(self.manager, new_config, self.reactor)
        self.config = new_config
        return view

    async def save_admin_hash(self, digest: str) -> None:
        """First-run setup: ``web.admin_password_hash`` into the config file (validated and
        saved like any change); ValueError when it cannot be saved."""
        self.config = await self.run_in_thread(set_admin_hash, self.config.path, digest)
