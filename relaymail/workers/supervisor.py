"""The main process's side of the acceptors: it opens the SMTP listeners, starts
``smtp.workers`` acceptor processes that adopt them, answers their AMP calls, restarts one
that dies, and stops them all at shutdown.

The listening sockets are opened here (so a bad endpoint stops startup with the key named,
as in the single-process relay); the kernel hands each connection to whichever acceptor
calls ``accept`` first.  While no acceptor serves (from startup until the first one says
``Serving``, about a second of imports; after every acceptor died, until one is back), this
process accepts on them itself with the same session code (``serve_here``), so that a
client never waits on an unread backlog.  Each acceptor gets AMP on its descriptors 3
and 4 (see relaymail.workers.acceptor).  A message an acceptor committed but could not
announce before dying is still in ``queue/``: after a death the spool is scanned for
envelopes the relay does not know yet.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure

from relaymail.common.networks import ConnectionTracker
from relaymail.config import Config
from relaymail.logs import Logger, printable
from relaymail.netutil import write_eagerly
from relaymail.workers import logpipe
from relaymail.workers import protocol as p

log = Logger(namespace="relaymail.workers")
FROM_MAIN, TO_MAIN, FIRST_LISTENER_FD = 3, 4, 5
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)  # seconds, by restarts in a row
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 2.0


class PipeTransport:
    """What AMP writes goes to the acceptor's descriptor 3."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self.process.writeToChild(FROM_MAIN, data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.process.closeChildFD(FROM_MAIN)

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None


@dataclass
class Acceptor:
    """One acceptor slot: its process while it runs, and how often it was restarted."""

    index: int
    process: Any = None
    link: amp.AMP | None = None
    restarts: int = 0
    failures_in_row: int = 0
    started_at: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)
    ended: Deferred | None = None
    kill_timer: Any = None  # the KILL after STOP_TIMEOUT, while stopping
    restart_timer: Any = None  # the start after a death, while it waits
    serving: bool = False  # said Serving: its sessions run, the main process's do not

    def public(self) -> dict[str, Any]:
        alive = self.process is not None
        return {"id": self.index, "pid": self.process.pid if alive else None,
                "alive": alive, "serving": alive and self.serving, "restarts": self.restarts,
                "connections": self.status.get("connections", 0) if alive else 0}


class AcceptorProcess(ProcessProtocol):
    """Pipes of one acceptor: AMP on 4, log events on 2 (relaymail.workers.logpipe), stray
    output on 1."""

    def __init__(self, pool: AcceptorPool, slot: Acceptor, locator: amp.CommandLocator
                 ) -> None:
        self.pool = pool
        self.slot = slot
        self.amp = amp.AMP(locator=locator)
        self._log_buffer = b""

    def connectionMade(self) -> None:
        write_eagerly(self.transport.pipes[FROM_MAIN])  # type: ignore[union-attr]
        self.amp.makeConnection(PipeTransport(self.transport))  # type: ignore[arg-type]
        self.slot.link = self.amp

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == TO_MAIN:
            self.amp.dataReceived(data)
        elif fd == 2:
            self._log_events(data)
        else:
            for line in data.decode("utf-8", "replace").splitlines():
                log.info("acceptor {worker}: {line}", worker=self.slot.index,
                         line=printable(line))

    def _log_events(self, data: bytes) -> None:
        """Re-emit the acceptor's log events (relaymail.workers.logpipe) in this process."""
        self._log_buffer += data
        *records, self._log_buffer = self._log_buffer.split(b"\n")
        for record in records:
            text = record.strip(b"\x1e").strip()
            if not text:
                continue
            try:
                event = logpipe.parse(text.decode("utf-8", "replace"))
            except ValueError:
                log.info("acceptor {worker}: {line}", worker=self.slot.index,
                         line=printable(text))
                continue
            event["worker"] = self.slot.index
            globalLogPublisher(event)

    def processEnded(self, reason: Failure) -> None:
        self.amp.connectionLost(reason)
        self.pool.ended(self.slot, reason)


class AcceptorPool(Service):
    """Opens the listeners, runs the acceptor processes, restarts them."""

    def __init__(self, config: Config, reactor: Any, locator: Callable[[], amp.CommandLocator],
                 after_death: Callable[[], Any], executable: str = sys.executable,
                 tracker: ConnectionTracker | None = None,
                 serve_here: Callable[[str], Any] | None = None) -> None:
        self.config = config
        self.serve_here = serve_here  # listener name -> session factory, in this process
        self.bridges: dict[str, Any] = {}  # this process's own ports on the sockets
        self.tracker = tracker  # given the acceptors' session counts after each poll
        self.reactor = reactor
        self.locator = locator
        self.after_death = after_death
        self.executable = executable
        self.count = config.smtp.workers
        self.slots = [Acceptor(i) for i in range(self.count)]
        self.ports: dict[str, Any] = {}
        self.stopping = False
        self._poll = LoopingCall(self.poll)
        self._poll.clock = reactor

    # ------------------------------------------------------------------ listening sockets

    def privilegedStartService(self) -> None:
        """Bind every listener now (a bad endpoint stops startup naming its key)."""
        for i, listener in enumerate(self.config.smtp.listeners):
            self.ports[listener.name] = self._bind(listener.endpoint,
                                                   f"smtp.listeners[{i}].endpoint")
        super().privilegedStartService()

    def _bind(self, endpoint: str, key: str) -> Any:
        ports: list[Any] = []
        failures: list[Failure] = []
        d = serverFromString(self.reactor, endpoint).listen(Factory.forProtocol(Protocol))
        d.addCallbacks(ports.append, failures.append)
        if failures:
            e = failures[0].value
            why = e.socketError if isinstance(e, net_error.CannotListenError) else e
            sys.stderr.write(f"relaymail: cannot listen: {self.config.path}: {key}: {why} "
                             f"(got \"{endpoint}\")\n")
            raise SystemExit(1)
        port = ports[0]
        port.stopReading()  # the acceptors accept; this process never does
        return port

    def listening_port(self, name: str) -> int:
        """The port a listener is bound to (useful when the config says port 0)."""
        return self.ports[name].getHost().port

    # ------------------------------------------------------------------ processes

    def startService(self) -> None:
        super().startService()
        self._open_bridges()
        for slot in self.slots:
            self.spawn(slot)
        self._poll.start(POLL_INTERVAL, now=False)

    def _open_bridges(self) -> None:
        """Accept here too, on a copy of each listening socket (no acceptor serves)."""
        if self.serve_here is None or self.bridges or self.stopping:
            return
        for name, port in self.ports.items():
            self.bridges[name] = self.reactor.adoptStreamPort(
                port.fileno(), port.socket.family, self.serve_here(name))
        log.info("SMTP sessions run in the main process until an acceptor serves")

    def _close_bridges(self) -> Deferred:
        """Stop accepting here (the sessions already here go on to their end)."""
        bridges, self.bridges = list(self.bridges.values()), {}
        return DeferredList([port.stopListening() for port in bridges])

    def serving(self, slot: Acceptor) -> None:
        """An acceptor adopted the sockets and runs sessions."""
        slot.serving = True
        if self.bridges:
            self._close_bridges()
            log.info("acceptor {worker} serves; the main process no longer accepts",
                     worker=slot.index)

    def command(self, slot: Acceptor) -> tuple[list[str], dict[int, Any]]:
        args = [self.executable, "-m", "relaymail.workers.acceptor",
                "--config", self.config.path, "--index", str(slot.index)]
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", FROM_MAIN: "w", TO_MAIN: "r"}
        for offset, (name, port) in enumerate(sorted(self.ports.items())):
            child_fd = FIRST_LISTENER_FD + offset
            fds[child_fd] = port.fileno()
            args.append(f"--listener={name}={child_fd}")
        return args, fds

    def spawn(self, slot: Acceptor) -> None:
        args, fds = self.command(slot)
        env = dict(os.environ)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            [package_root, *filter(None, [env.get("PYTHONPATH")])])
        slot.ended = Deferred()
        slot.started_at = self.reactor.seconds()
        locator = self.locator()
        if hasattr(locator, "on_serving"):
            locator.on_serving = lambda: self.serving(slot)
        protocol = AcceptorProcess(self, slot, locator)
        slot.process = self.reactor.spawnProcess(protocol, self.executable, args, env=env,
                                                 childFDs=fds)
        log.info("acceptor {worker} started (pid {pid})", worker=slot.index,
                 pid=slot.process.pid)

    def ended(self, slot: Acceptor, reason: Failure) -> None:
        """An acceptor exited: recover what it committed, and start another unless we are
        stopping."""
        pid = slot.process.pid if slot.process is not None else None
        slot.process, slot.link, slot.status, slot.serving = None, None, {}, False
        if slot.kill_timer is not None and slot.kill_timer.active():
            slot.kill_timer.cancel()
        slot.kill_timer = None
        done, slot.ended = slot.ended, None
        if done is not None:
            done.callback(None)
        if self.stopping:
            return
        log.error("acceptor {worker} (pid {pid}) ended: {why}; restarting", worker=slot.index,
                  pid=pid, why=reason.getErrorMessage())
        self.after_death()
        if not any(s.serving for s in self.slots):
            self._open_bridges()
        lived = self.reactor.seconds() - slot.started_at
        slot.failures_in_row = 0 if lived > 60 else slot.failures_in_row + 1
        delay = RESTART_DELAYS[min(slot.failures_in_row, len(RESTART_DELAYS) - 1)]
        slot.restarts += 1
        slot.restart_timer = self.reactor.callLater(delay, self._restart, slot)

    def _restart(self, slot: Acceptor) -> None:
        if not self.stopping and slot.process is None:
            self.spawn(slot)

    def stopService(self) -> Deferred:
        """TERM every acceptor (they stop accepting and close their sessions), KILL what
        is still there after STOP_TIMEOUT; then close the listening sockets."""
        super().stopService()
        self.stopping = True
        if self._poll.running:
            self._poll.stop()
        waits = []
        for slot in self.slots:
            if slot.restart_timer is not None and slot.restart_timer.active():
                slot.restart_timer.cancel()
            if slot.process is not None and slot.ended is not None:
                waits.append(slot.ended)
                self._signal(slot, "TERM")
                slot.kill_timer = self.reactor.callLater(STOP_TIMEOUT, self._kill_if_running,
                                                         slot)
        self._close_bridges()
        d = DeferredList(waits) if waits else succeed(None)
        d.addCallback(lambda _: self._close_ports())
        return d

    def _signal(self, slot: Acceptor, signal: str) -> None:
        with contextlib.suppress(net_error.ProcessExitedAlready, AttributeError):
            slot.process.signalProcess(signal)

    def _kill_if_running(self, slot: Acceptor) -> None:
        if slot.process is not None:
            log.warn("acceptor {worker} did not stop in time; killing it", worker=slot.index)
            self._signal(slot, "KILL")

    def _close_ports(self) -> Deferred:
        ports, self.ports = list(self.ports.values()), {}
        return DeferredList([port.stopListening() for port in ports])

    # ------------------------------------------------------------------ status

    def poll(self) -> Deferred:
        """Ask every running acceptor for its sessions and counters (for metrics)."""
        waits = [self._ask(slot) for slot in self.slots if slot.link is not None]
        return DeferredList(waits).addCallback(lambda _: self._publish())

    def _publish(self) -> None:
        if self.tracker is None:
            return
        per_listener = self.connections_by_listener()
        self.tracker.per_listener = Counter(per_listener)
        self.tracker.total = sum(per_listener.values())

    def _ask(self, slot: Acceptor) -> Deferred:
        assert slot.link is not None

        def got(answer: dict[str, str]) -> None:
            slot.status = json.loads(answer["status"])

        return slot.link.callRemote(p.Status).addCallbacks(got, lambda _: None)

    def accounts_changed(self, timeout: float = 5.0) -> Deferred:
        """Every running acceptor reloads its accounts view; fires when all answered (or
        ``timeout``: one that does not answer still reloads by its own poll)."""
        waits = []
        for slot in self.slots:
            if slot.link is not None:
                d = slot.link.callRemote(p.AccountsChanged)
                d.addTimeout(timeout, self.reactor)
                waits.append(d.addErrback(lambda _: None))
        return DeferredList(waits)

    def workers(self) -> list[dict[str, Any]]:
        return [slot.public() for slot in self.slots]

    def connections_by_listener(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for slot in self.slots:
            for name, n in slot.status.get("per_listener", {}).items():
                out[name] = out.get(name, 0) + int(n)
        return out

    def refusals(self) -> Counter[tuple[int, str]]:
        """The acceptors' SMTP refusals by (code, enhanced status), summed; a restarted
        acceptor starts again from zero, as a restarted single process would."""
        out: Counter[tuple[int, str]] = Counter()
        for slot in self.slots:
            for code, enhanced, n in slot.status.get("refusals", []):
                out[(int(code), str(enhanced))] += int(n)
        return out

    def policy_stats(self) -> dict[str, dict[str, int]]:
        """The acceptors' rate-limit and lockout counters, summed."""
        out: dict[str, dict[str, int]] = {"rate_limits": {}, "auth_lockouts": {}}
        for slot in self.slots:
            policy = slot.status.get("policy", {})
            for part, totals in out.items():
                for name, n in policy.get(part, {}).items():
                    totals[name] = totals.get(name, 0) + int(n)
        return out
