"""The transaction layer of an inbound session: MAIL, RCPT and DATA decisions, rate-limit
reservations, the envelope, DKIM signing and the commit, and our Received header.

Each step returns what to answer (a Reply, the 354 ``Continue``, or a Deferred firing with
one); DATA lines take a synchronous path (``line``) that writes to the spool writer with
no Deferred per line, since that is the hot path.  One transaction is one spool writer,
whatever the number of recipients, and one Received header.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.python.failure import Failure

from relaymail.common import replies
from relaymail.common.addresses import (
    AddressError,
    PathArgument,
    mail_options,
    parse_argument,
    rcpt_options,
)
from relaymail.common.networks import in_networks
from relaymail.common.replies import Continue, Reply
from relaymail.events.model import suppressed as suppressed_event
from relaymail.logs import Logger
from relaymail.policy.dkim import (
    RelaxedBodyHash,
    SigningError,
    from_domain,
    parse_headers,
)
from relaymail.policy.limits import Reservation, Who
from relaymail.policy.senders import (
    HEADER_FROM_MISMATCH,
    header_sender_problem,
    sender_refusal,
)
from relaymail.smtp.body import BodyReader
from relaymail.smtp.state import SessionState
from relaymail.spool import MessageWriter, SpoolError
from relaymail.spool.envelope import Envelope, Recipient

log = Logger(namespace="relaymail.smtp")

Result = Reply | Continue | Deferred | None
GO_AHEAD = Continue(354, b"End data with <CR><LF>.<CR><LF>", "data")


@dataclass
class Transaction:
    """One MAIL ... DATA transaction."""

    sender: PathArgument
    writer: MessageWriter
    declared_size: int | None
    eight_bit: bool
    recipients: list[str] = field(default_factory=list)
    reservations: list[Reservation] = field(default_factory=list)  # rate-limit units taken

    @property
    def queue_id(self) -> str:
        return self.writer.queue_id


class TransactionLayer:
    """MAIL/RCPT/DATA for one session.  ``pressure`` pauses and resumes reading while the
    spool catches up; ``tls_comment`` describes the TLS session for the Received header."""

    __slots__ = ("body", "context", "pressure", "state", "tls_comment", "txn")  # per session

    def __init__(self, state: SessionState, pressure: Callable[[bool], None],
                 tls_comment: Callable[[], str]) -> None:
        self.state = state
        self.context = state.context
        self.pressure = pressure
        self.tls_comment = tls_comment
        self.txn: Transaction | None = None
        self.body: BodyReader | None = None

    # ------------------------------------------------------------------ MAIL

    def mail(self, rest: bytes) -> Result:
        refusal = self.mail_refusal()
        if refusal is not None:
            return refusal
        try:
            sender = parse_argument(b"FROM", rest, allow_null=True)
            declared, eight_bit = mail_options(sender.params, self.context.smtp.max_message_size)
        except AddressError as e:
            return e.reply
        not_allowed = sender_refusal(self.state.login(), sender.address)
        if not_allowed is not None:
            self.log_refused_sender(sender.address, not_allowed)
            return not_allowed
        limits = self.context.limits
        if limits is None or limits.config.count != "messages" \
                or not limits.may_count(self.state.login()):
            return self.open_transaction(sender, declared, eight_bit, Reservation())
        who = Who(self.state.client_ip, self.state.login(), sender.address)
        return ensureDeferred(self.reserve_then(
            who, lambda r: self.open_transaction(sender, declared, eight_bit, r),
            sender.address))

    async def reserve_then(self, who: Who, step: Callable[[Reservation], Reply | None],
                           sender: str) -> Reply | None:
        """Reserve units for ``who``; a refusal (or a broken backend) is the reply."""
        limits = self.context.limits
        assert limits is not None
        try:
            reserved = await limits.reserve(who)
        except Exception:
            log.failure("smtp: rate limit check failed")
            return self.refuse_over_limit(sender, replies.LOCAL_ERROR)
        if not isinstance(reserved, Reservation):
            return self.refuse_over_limit(sender, reserved)
        return step(reserved)

    def open_transaction(self, sender: PathArgument, declared: int | None, eight_bit: bool,
                         reserved: Reservation) -> Reply | None:
        """MAIL's reply, once the rate limits have had their say."""
        if self.state.closed:
            self.release(reserved)
            return None  # nobody to tell
        self.txn = Transaction(sender, self.context.spool.new_message(), declared, eight_bit,
                               reservations=[reserved])
        log.debug("{queue_id}: from=<{sender}> size={size} client={client_ip} "
                  "listener={listener} credential={credential}", queue_id=self.txn.queue_id,
                  sender=sender.address, size=declared, client_ip=self.state.client_ip,
                  listener=self.state.listener.name, credential=self.state.credential)
        return Reply(250, "2.1.0", "Ok")

    def mail_refusal(self) -> Reply | None:
        if self.state.helo is None:
            return replies.BAD_SEQUENCE_HELO
        if self.txn is not None:
            return Reply(503, "5.5.1", "Error: nested MAIL command")
        if self.state.listener.auth == "required" and self.state.credential is None:
            return self.auth_required()
        return None

    def auth_required(self) -> Reply:
        if self.state.can_start_tls and not self.state.started_tls:
            return Reply(530, "5.7.0", "Must issue a STARTTLS command first")
        return replies.AUTH_REQUIRED

    def refuse_over_limit(self, sender: str, reply: Reply) -> Reply:
        self.log_refused_sender(sender, reply)
        return reply

    def release(self, reservation: Reservation) -> None:
        if self.context.limits is not None:
            self.context.limits.release(reservation)

    def release_all(self, txn: Transaction) -> None:
        """The transaction queued nothing: what it counted against the limits is given back."""
        for reservation in txn.reservations:
            self.release(reservation)
        txn.reservations = []

    def log_refused_sender(self, sender: str, reply: Reply) -> None:
        log.info("refused from=<{sender}> client={client_ip} credential={credential} "
                 "reply={reply}", sender=sender, client_ip=self.state.client_ip,
                 credential=self.state.credential, reply=str(reply))

    # ------------------------------------------------------------------ RCPT

    def rcpt(self, rest: bytes) -> Result:
        txn = self.txn
        if txn is None:
            return Reply(503, "5.5.1", "Error: need MAIL command")
        try:
            rcpt = parse_argument(b"TO", rest, allow_null=False)
            rcpt_options(rcpt.params)
        except AddressError as e:
            return e.reply
        refusal = self.rcpt_refusal(txn) or self.suppressed(txn, rcpt.address)
        # Accepted recipients are logged at debug: the queued line counts them and the
        # delivery lines name them; a log line each cost a tenth of the throughput.
        emit = log.info if refusal else log.debug
        emit("{queue_id}: to=<{rcpt}> {outcome} client={client_ip} credential={credential}"
             "{why}", queue_id=txn.queue_id, rcpt=rcpt.address,
             outcome="refused" if refusal else "accepted", client_ip=self.state.client_ip,
             credential=self.state.credential, why=f" reply={refusal}" if refusal else "")
        if refusal is not None:
            return refusal
        limits = self.context.limits
        if limits is None or limits.config.count != "recipients" \
                or not limits.may_count(self.state.login()):
            return self.add_recipient(txn, rcpt.address, Reservation())
        who = Who(self.state.client_ip, self.state.login(), txn.sender.address)
        return ensureDeferred(self.reserve_then(
            who, lambda r: self.add_recipient(txn, rcpt.address, r), txn.sender.address))

    def add_recipient(self, txn: Transaction, address: str, reserved: Reservation
                      ) -> Reply | None:
        if txn is not self.txn:  # the session ended meanwhile: nobody to tell
            self.release(reserved)
            return None
        txn.reservations.append(reserved)
        txn.recipients.append(address)
        return Reply(250, "2.1.5", "Ok")

    def rcpt_refusal(self, txn: Transaction) -> Reply | None:
        if not self.may_relay():
            return self.auth_required()
        if len(txn.recipients) >= self.context.smtp.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        return None

    def suppressed(self, txn: Transaction, address: str) -> Reply | None:
        """``550 5.1.1`` for a recipient on the suppression list, reported as an event."""
        suppression = self.context.suppression
        if suppression is None:
            return None
        refusal: Reply | None = suppression.refusal(address)
        if refusal is not None and self.context.report is not None:
            self.context.report(suppressed_event(self.context.clock(), txn.sender.address,
                                                 address, self.state.credential,
                                                 f"{refusal.code} {refusal.enhanced} "
                                                 f"{refusal.text}", txn.queue_id))
        return refusal

    def may_relay(self) -> bool:
        """Relaymail has no local mailboxes: every recipient is relaying, whatever its form."""
        if self.state.credential is not None:
            return True
        return self.state.listener.auth != "required" and in_networks(
            self.state.client_ip, self.context.smtp.trusted_networks)

    # ------------------------------------------------------------------ DATA

    def data(self, rest: bytes) -> Result:
        txn = self.txn
        if rest.strip():
            return Reply(501, "5.5.4", "Syntax: DATA")
        if txn is None:
            return Reply(503, "5.5.1", "Error: need MAIL command")
        if not txn.recipients:
            return Reply(554, "5.5.1", "Error: no valid recipients")
        smtp = self.context.smtp
        body_hash = RelaxedBodyHash() if self.context.signer is not None else None
        self.body = BodyReader(txn.writer, smtp.max_message_size,
                               reject_bare=smtp.bare_line_endings == "reject",
                               body_hash=body_hash, fold_length=smtp.fold_line_length,
                               max_header_size=smtp.max_header_size,
                               strip=smtp.strip_characters, reject=smtp.reject_characters)
        txn.writer.write(self.received_header(txn))
        txn.writer.on_pressure = self.pressure
        return GO_AHEAD

    def line(self, line: bytes) -> None:
        assert self.body is not None
        self.body.line(line)

    def piece(self, piece: bytes) -> None:
        assert self.body is not None
        self.body.partial(piece)

    def block(self, block: bytes) -> None:
        assert self.body is not None
        self.body.block(block)

    def end(self) -> Result:
        """The final ".": refuse, or sign, commit and answer 250 once durable."""
        txn, body = self.txn, self.body
        assert txn is not None and body is not None
        self.txn, self.body = None, None
        problem = body.problem or self.header_from_problem(txn, body)
        if problem is not None:
            log.info("{queue_id}: refused at end of data reply={reply}", queue_id=txn.queue_id,
                     reply=str(problem))
            txn.writer.discard()
            self.release_all(txn)
            return problem
        envelope = self.envelope_for(txn)
        envelope.body_8bit = envelope.body_8bit or body.eight_bit_seen
        if body.body_hash is not None:  # for a signature made again at relay time
            envelope.extra["body_hash"] = body.body_hash.digest_b64().decode()
        message_id = body.message_id()
        if message_id is not None:
            envelope.extra["message_id"] = message_id
        return ensureDeferred(self.sign_and_commit(txn, body, envelope))

    async def sign_and_commit(self, txn: Transaction, body: BodyReader, envelope: Envelope
                              ) -> Reply:
        """DKIM (once, in a thread), then the durable commit; 250 only after it."""
        note = await self.dkim_sign(txn.writer, body)
        try:
            await self.context.spool.commit(txn.writer, envelope)
        except Exception as e:
            self.release_all(txn)
            log.error("{queue_id}: not queued: {error}", queue_id=envelope.queue_id,
                      error=str(e) or type(e).__name__)
            return replies.STORAGE_FAILED if isinstance(e, SpoolError) else replies.LOCAL_ERROR
        return self.committed(envelope, note)

    def header_from_problem(self, txn: Transaction, body: BodyReader) -> Reply | None:
        """A login may be required to send only with a header From in its sender's domain."""
        credential = self.state.login()
        if credential is None or not credential.checks_header_from:
            return None
        try:
            fields = parse_headers(body.header_block)
        except SigningError:
            return HEADER_FROM_MISMATCH
        return header_sender_problem(fields, credential, txn.sender.address)

    def dkim_sign(self, writer: MessageWriter, body: BodyReader) -> Deferred:
        """Sign once, here (off the reactor thread); fires with the log note ("" when DKIM is
        not configured).  Mail that cannot be signed is still accepted, unsigned."""
        signer = self.context.signer
        if signer is None or body.body_hash is None:
            return succeed("")
        try:
            fields = parse_headers(body.header_block)
        except SigningError:
            return succeed(" dkim=unparsable-header")
        keys = signer.keys_for(from_domain(fields))
        if not keys:
            return succeed(" dkim=none")
        d = self.context.spool.run_in_thread(signer.sign, fields, body.body_hash.digest_b64(),
                                             keys)

        def signed(header: bytes) -> str:
            writer.prepend(header)
            return " dkim=" + ",".join(k.label for k in keys)

        def failed(failure: Failure) -> str:
            log.failure("{queue_id}: dkim signing failed", failure=failure,
                        queue_id=writer.queue_id)
            return " dkim=failed"

        return d.addCallbacks(signed, failed)

    def committed(self, envelope: Envelope, dkim_note: str) -> Reply:
        """The 250; the "queued" log line is written once it is sent (the log's formatting
        and write are a tenth of an accepted message's time, and the client need not wait)."""
        state = self.state
        state.queued += 1

        def log_queued() -> None:
            log.info("{queue_id}: queued from=<{sender}> nrcpt={nrcpt} size={size} "
                     "client={client_ip} listener={listener} credential={credential}{dkim}",
                     dkim=dkim_note, queue_id=envelope.queue_id, sender=envelope.sender,
                     nrcpt=len(envelope.recipients), size=envelope.size,
                     client_ip=state.client_ip, listener=state.listener.name,
                     credential=state.credential)

        return Reply(250, "2.0.0", f"Ok: queued as {envelope.queue_id}", then=log_queued)

    def envelope_for(self, txn: Transaction) -> Envelope:
        now = self.context.clock()
        state = self.state
        login = state.login() if state.credential is not None else None
        extra: dict[str, Any] = {} if login is None or login.owner is None else {
            "user": login.owner, "user_id": login.owner_id}
        return Envelope(
            queue_id=txn.queue_id, sender=txn.sender.address,
            recipients=[Recipient(address=a) for a in txn.recipients], received_at=now,
            client_ip=state.client_ip, helo=state.helo, credential=state.credential,
            listener=state.listener.name, protocol=state.protocol_name(),
            body_8bit=txn.eight_bit, next_attempt=now, extra=extra,
        )

    def discard(self) -> None:
        """Forget the open transaction (RSET, new EHLO, disconnect); nothing was committed."""
        if self.txn is not None:
            self.txn.writer.discard()
            self.release_all(self.txn)
        self.txn, self.body = None, None

    # ------------------------------------------------------------------ Received header

    def received_header(self, txn: Transaction) -> bytes:
        state = self.state
        date = email.utils.formatdate(self.context.clock(), localtime=True)
        tls = self.tls_comment() if state.started_tls else ""
        lines = [
            f"Received: from {sanitize(state.helo or 'unknown')} ([{state.client_ip}])",
            f"\tby {self.context.hostname} (relaymail) with {state.protocol_name()} "
            f"id {txn.queue_id}{tls}",
        ]
        if len(txn.recipients) == 1:
            lines.append(f"\tfor <{txn.recipients[0]}>; {date}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{date}")
        return "\r\n".join(lines).encode("ascii", "replace") + b"\r\n"


def sanitize(text: str) -> str:
    """A HELO name as it may appear inside a header: printable ASCII, no parentheses."""
    return "".join(c if 33 <= ord(c) < 127 and c not in "()" else "?" for c in text)[:255]
