"""The ``relaymail`` command: ``main`` parses the arguments and runs the subcommand.

main.py (check-config, credentials, hash-password, and the wiring), backup.py (``backup``,
``restore``), queue.py (``queue``:
through the running instance's API, or on the spool files when it is stopped), dkim.py
(``dkim keygen``), oauth2.py (``oauth2 authorize|token``); ``dns-check`` is
relaymail.dnscheck's."""

from relaymail.cli.main import main

__all__ = ["main"]
