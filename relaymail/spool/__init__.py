"""The durable queue on disk.

Layout under ``spool_dir``::

    incoming/  envelopes being committed or rewritten; wiped at startup
    data/      messages (<id>.eml): the body, CRLF line ends, exactly as it will be sent,
               then the envelope record (relaymail.spool.record) that completes the file;
               written in place while received, removed at startup if never completed
    queue/     envelopes (<id>.json) of messages ready or deferred
    hold/      envelopes kept back by an operator
    failed/    envelopes of messages that failed for good, kept for inspection and retry
    spare/     files of delivered bodies kept for later messages (relaymail.spool.spares)
    quarantine/ malformed envelopes and their bodies, for an operator

The commit is one durable write per message: the body file gets its envelope record and
is fsync'd; one ``data/`` fsync per batch makes the directory entries durable; then the
envelope is renamed into ``queue/`` without an fsync of its own, because startup rebuilds
a lost or torn envelope file from the record.  Later changes of an envelope (attempts,
hold, failed) are written durably.  Commits of concurrent sessions are grouped: one thread
commits everything that queued up while the previous batch was being written, so journal
commits and the directory fsync are shared.  Bodies from before the record (no footer)
are read as they are.
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
