"""The AMP commands between the main process and its acceptor processes.

Acceptor -> main: ``Committed`` (a message is durable in the spool; its envelope as JSON),
``Report`` (an event for the webhooks) and the counter operations of
relaymail.policy.counters, so that a limit of 3 per hour admits 3 whichever acceptors the
sessions land on.  Main -> acceptor: ``Status``.
"""

from __future__ import annotations

from twisted.protocols import amp


class Committed(amp.Command):
    """Sent without waiting for an answer: the message is durable already, and one lost
    with a dying acceptor is found by the scan after its death."""

    arguments = [(b"envelope", amp.Unicode())]
    requiresAnswer = False
    response = []  # type: ignore[var-annotated]


class Report(amp.Command):
    """An event document (JSON) for the main process's event hub: a recipient refused
    because it is suppressed.  Not waited for: events are best effort until the hub has
    them, like the log line the acceptor writes with it."""

    arguments = [(b"event", amp.Unicode())]
    requiresAnswer = False
    response = []  # type: ignore[var-annotated]


class Reserve(amp.Command):
    """All or nothing: answers the index of the first full bucket, or -1 (reserved)."""

    arguments = [(b"buckets", amp.AmpList([(b"key", amp.Unicode()), (b"limit", amp.Integer()),
                                           (b"ttl", amp.Float())])),
                 (b"amount", amp.Integer())]
    response = [(b"index", amp.Integer())]


class Release(amp.Command):
    arguments = [(b"keys", amp.ListOf(amp.Unicode())), (b"amount", amp.Integer())]
    response = []  # type: ignore[var-annotated]


class Incr(amp.Command):
    arguments = [(b"key", amp.Unicode()), (b"ttl", amp.Float())]
    response = [(b"value", amp.Integer())]


class Get(amp.Command):
    arguments = [(b"key", amp.Unicode())]
    response = [(b"value", amp.Integer())]


class Put(amp.Command):
    arguments = [(b"key", amp.Unicode()), (b"value", amp.Integer()), (b"ttl", amp.Float())]
    response = []  # type: ignore[var-annotated]


class TimeToLive(amp.Command):
    arguments = [(b"key", amp.Unicode())]
    response = [(b"seconds", amp.Float())]


class Delete(amp.Command):
    arguments = [(b"key", amp.Unicode())]
    response = []  # type: ignore[var-annotated]


class AccountsChanged(amp.Command):
    """Main to acceptor: the accounts changed here; reload them now (answered when done),
    so a login made, reset or disabled over the API holds in every acceptor at once."""

    arguments = []  # type: ignore[var-annotated]
    response = []  # type: ignore[var-annotated]


class Serving(amp.Command):
    """Acceptor to main: the listening sockets are adopted, sessions run here now (the
    main process stops accepting in its place: relaymail.workers.supervisor)."""

    arguments = []  # type: ignore[var-annotated]
    response = []  # type: ignore[var-annotated]


class Status(amp.Command):
    """An acceptor's open sessions by listener, and its policy counters (JSON)."""

    arguments = []  # type: ignore[var-annotated]
    response = [(b"status", amp.Unicode())]
