"""Who may relay and send as whom: a login's sender rights and the header From rule.
(Networks and connection counts are relaymail.common.networks'.)"""

from __future__ import annotations

import email.utils
from collections.abc import Sequence

from relaymail.common.replies import Reply
from relaymail.credentials import Credential

SENDER_NOT_ALLOWED = Reply(550, "5.7.1", "Sender address not allowed for this login")
SENDER_NOT_ALLOWED_FOR_ACCOUNT = Reply(550, "5.7.1", "Sender address not allowed for this "
                                                     "account (its allowed sender domains)")


def sender_refusal(credential: Credential | None, sender: str) -> Reply | None:
    """MAIL's refusal of a sender the login may not use, saying whose list refused it."""
    if credential is None or sender_allowed(credential, sender):
        return None
    if listed(credential.allowed_sender_domains, sender):
        return SENDER_NOT_ALLOWED_FOR_ACCOUNT
    return SENDER_NOT_ALLOWED


def sender_allowed(credential: Credential | None, sender: str) -> bool:
    """An authenticated login may be restricted to some sender domains or addresses; a
    login of an account user is bounded by the user's list as well."""
    if credential is None:
        return True
    return listed(credential.allowed_sender_domains, sender) and \
        listed(credential.owner_sender_domains, sender)


def listed(allowed_list: Sequence[str], sender: str) -> bool:
    """Is ``sender`` one of these domains or addresses (``*.example.com``: subdomains)?
    An empty list allows any."""
    if not allowed_list:
        return True
    sender = sender.lower()
    domain = sender.rpartition("@")[2]
    for allowed in allowed_list:
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
    try:
        mailboxes = [address for _, address in email.utils.getaddresses(text)]
    except Exception:  # e.g. RecursionError on "((((...": nothing we can allow
        return HEADER_FROM_MISMATCH
    domain = envelope_sender.rpartition("@")[2].lower()
    for address in mailboxes or [""]:
        mailbox_domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if "@" not in address or mailbox_domain != domain or \
                not sender_allowed(credential, address):
            return HEADER_FROM_MISMATCH
    return None
