"""twistd entry point: ``twistd -n relaymail --config etc/relay.json``."""

from __future__ import annotations

import sys

from twisted.application.service import IService
from twisted.python import usage

from relaymail.config import ConfigError, load_config


class Options(usage.Options):
    """Command line of ``twistd relaymail``: only the config path."""

    optParameters = [["config", "c", "etc/relay.json", "Path to the JSON config file."]]


def makeService(options: Options) -> IService:
    """Load the config and build the service; a bad config exits with its message, no traceback."""
    from twisted.internet import reactor

    from relaymail.accounts.database import DatabaseError
    from relaymail.service import build_service

    try:
        config = load_config(options["config"])
        return build_service(config, reactor)
    except ConfigError as e:
        sys.stderr.write(f"relaymail: configuration error: {e}\n")
        raise SystemExit(2) from None
    except DatabaseError as e:  # accounts.database cannot be opened or migrated
        sys.stderr.write(f"relaymail: {config.path}: accounts.database: {e}\n")
        raise SystemExit(2) from None
