"""Acceptor processes: SMTP sessions in several processes sharing the listening sockets.

The main process opens the listeners and starts ``smtp.workers`` acceptors
(``supervisor.AcceptorPool``); each adopts the sockets and runs the SMTP side
(``acceptor``), committing into the one spool.  They talk AMP over two inherited pipes
(``protocol``): a committed message goes to the main process's relay manager, counter
operations (rate limits, quotas, AUTH lockouts) go to the main process's counters unless
Redis is shared (``remote``), and the main process polls each acceptor's status.
"""
