"""The durable queue on disk.

Layout under ``spool_dir``::

    incoming/  envelopes being committed or rewritten; wiped at startup
    data/      message bodies (<id>.eml), CRLF line ends, exactly as they will be sent;
               written in place while received, removed at startup if never committed
    queue/     envelopes (<id>.json) of messages ready or deferred
    hold/      envelopes kept back by an operator
    failed/    envelopes of messages that failed for good, kept for inspection and retry

A message exists once its envelope is renamed into ``queue/``; that happens only after the
body and envelope are fsync'd and the body's directory entry is durable (``data/`` fsync).
Commits of concurrent sessions are grouped: one thread commits everything that queued up
while the previous batch was being written, so journal commits and directory fsyncs are
shared.
"""

from relaymail.spool.envelope import DELIVERED, FAILED, PENDING, Envelope, EnvelopeError, Recipient
from relaymail.spool.store import Spool
from relaymail.spool.writer import (
    DIRS,
    MAX_WAITING_SPILLS,
    SPILL_THRESHOLD,
    STATES,
    MessageWriter,
    RunInThread,
    SpoolError,
    encode_base,
    new_queue_id,
    run_synchronously,
)

__all__ = ["DELIVERED", "DIRS", "FAILED", "MAX_WAITING_SPILLS", "PENDING", "SPILL_THRESHOLD",
           "STATES", "Envelope", "EnvelopeError", "MessageWriter", "Recipient", "RunInThread",
           "Spool", "SpoolError", "encode_base", "new_queue_id", "run_synchronously"]
