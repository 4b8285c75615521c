"""Who may connect and who may relay: networks, connection counts, sender rights."""

from __future__ import annotations

import email.utils
import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence

from relaymail.config import IPNetwork, SMTPConfig
from relaymail.credentials import Credential
from relaymail.smtp.replies import Reply

BLOCKED = Reply(554, "5.7.1", "Access denied: your network is blocked")
TOO_MANY = Reply(421, "4.7.0", "Too many connections; try again later")
TOO_MANY_FROM_IP = Reply(421, "4.7.0", "Too many connections from your address; try again later")
SENDER_NOT_ALLOWED = Reply(550, "5.7.1", "Sender address not allowed for this login")


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def in_networks(ip: str, networks: Iterable[IPNetwork]) -> bool:
    address = parse_ip(ip)
    return address is not None and any(address in n for n in networks)


def is_loopback(ip: str) -> bool:
    address = parse_ip(ip)
    return address is not None and address.is_loopback


class ConnectionTracker:
    """Counts open SMTP sessions overall and per client IP, across all listeners."""

    def __init__(self) -> None:
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.per_listener: Counter[str] = Counter()  # kept by the sessions, for metrics

    def admit(self, ip: str, config: SMTPConfig) -> Reply | None:
        """Register a session, or say why it must be refused."""
        if in_networks(ip, config.blocked_networks):
            return BLOCKED
        if self.total >= config.max_connections:
            return TOO_MANY
        if self.per_ip[ip] >= config.max_connections_per_ip:
            return TOO_MANY_FROM_IP
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]


def sender_allowed(credential: Credential | None, sender: str) -> bool:
    """An authenticated login may be restricted to some sender domains or addresses."""
    if credential is None or not credential.allowed_sender_domains:
        return True
    sender = sender.lower()
    domain = sender.rpartition("@")[2]
    for allowed in credential.allowed_sender_domains:
        allowed = allowed.lower()
        if sender == allowed or domain == allowed or (
                allowed.startswith("*.") and domain.endswith(allowed[1:])):
            return True
    return False


HEADER_FROM_MISMATCH = Reply(550, "5.7.1", "Header From must be in the envelope sender's "
                                           "domain for this login")
ONE_FROM_ONLY = Reply(550, "5.7.1", "Exactly one From header field is allowed for this login")


def header_sender_problem(fields: Sequence[tuple[bytes, bytes]],
                          credential: Credential, envelope_sender: str) -> Reply | None:
    """``check_header_from``: one From field, and every mailbox in it and in Sender in the
    envelope sender's domain and allowed for the login (``From: a@ok.example,
    ceo@bank.example`` or a second From field used to pass on the first mailbox)."""
    froms = [value for name, value in fields if name.lower() == b"from"]
    if len(froms) != 1:
        return ONE_FROM_ONLY
    values = froms + [value for name, value in fields if name.lower() == b"sender"]
    text = [v.decode("utf-8", "replace").replace("\r\n", "") for v in values]
    mailboxes = [address for _, address in email.utils.getaddresses(text)]
    domain = envelope_sender.rpartition("@")[2].lower()
    for address in mailboxes or [""]:
        mailbox_domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if "@" not in address or mailbox_domain != domain or \
                not sender_allowed(credential, address):
            return HEADER_FROM_MISMATCH
    return None
