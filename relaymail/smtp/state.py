"""What every layer of one inbound session shares: the process-wide context and the
session's own facts (who the client is, what it said in HELO, whether TLS is on, who
logged in)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relaymail.common.networks import ConnectionTracker
from relaymail.config import ListenerConfig, SMTPConfig
from relaymail.credentials import Credential, CredentialSource
from relaymail.policy.dkim import Signer
from relaymail.policy.limits import RateLimiter
from relaymail.policy.lockout import AuthLockout
from relaymail.smtp.idle import IdleSweeper
from relaymail.spool import Spool
from relaymail.stats import RelayStats


@dataclass
class ServerContext:
    """What every session needs, shared by all listeners of one relaymail process."""

    hostname: str
    smtp: SMTPConfig
    spool: Spool
    clock: Callable[[], float]
    checker: Any = None  # ICredentialsChecker, or None when AUTH is not configured
    credentials: CredentialSource | None = None  # the file's, then the accounts' logins
    tls_options: Any = None  # IOpenSSLServerConnectionCreator for STARTTLS
    connections: ConnectionTracker = field(default_factory=ConnectionTracker)
    stats: RelayStats = field(default_factory=RelayStats)
    signer: Signer | None = None  # DKIM, when keys are configured
    limits: RateLimiter | None = None  # rate limits and quotas, when configured
    lockout: AuthLockout | None = None  # AUTH brute-force protection
    policy: Any = None  # relaymail.policy.build.Policy: the above and their counters
    sessions: set[Any] = field(default_factory=set)  # live sessions, closed at shutdown
    suppression: Any = None  # relaymail.events.suppression.SuppressionList, when enabled
    # Event documents for the main process's hub (webhooks): called in place there, sent
    # over AMP from an acceptor.
    report: Callable[[dict[str, Any]], None] | None = None
    idle: IdleSweeper = field(init=False)  # the sessions' idle timeouts, one timer

    def __post_init__(self) -> None:
        self.idle = IdleSweeper(self.sessions, self.clock)

    def close_sessions(self) -> None:
        """Shutdown: abort every session still open (one we said goodbye to included: a
        TLS peer may never answer our close_notify)."""
        for session in list(self.sessions):
            session.forget_abort()
            session.transport.abortConnection()


@dataclass(slots=True)
class SessionState:
    """One session's facts, read and set by the wire, AUTH and transaction layers (slots:
    one per open session, idle ones included)."""

    context: ServerContext
    listener: ListenerConfig
    client_ip: str = "?"
    helo: str | None = None
    esmtp: bool = False
    started_tls: bool = False
    can_start_tls: bool = False  # STARTTLS configured on this listener and not yet used
    credential: str | None = None  # the authenticated login's name
    closed: bool = False  # the connection is gone
    queued: int = 0  # messages accepted in this session

    def login(self) -> Credential | None:
        """The authenticated login's settings (quotas, sender rights); None without AUTH."""
        if self.credential is None or self.context.credentials is None:
            return None
        return self.context.credentials.get(self.credential)

    def protocol_name(self) -> str:
        """RFC 3848 protocol type: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
        if not self.esmtp:
            return "SMTP"
        return "ESMTP" + ("S" if self.started_tls else "") + ("A" if self.credential else "")
