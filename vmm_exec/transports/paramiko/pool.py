"""The connection pool: SSH connections per host, shared by every action and thread.

An SSH connection multiplexes channels, but sshd allows only ``MaxSessions``
of them per connection (10 by default, sometimes 1). That limit is not
announced; it is learned: a refused channel open, or an open accepted and its
exec/subsystem request refused (sshd may count sessions only then), on a
connection holding N of our channels means "this connection is full at N". The
limit is then used for every connection to that host, and the refused channel
is tried again on another connection (an existing one with room, or a new one)
instead of failing the action. A refusal on a connection that never held
another channel is genuine and reported.

Channels are opened one at a time per connection, so that a refusal is
attributable: every earlier open on that connection has been answered, and
the channels it holds are exactly the ones counted. sshd frees a session's slot
only after it has seen our CLOSE, so a refusal right after one of our channels
on that connection ended is retried once before it teaches anything.

At most :data:`MAX_CONNECTIONS` pooled connections per host (one being set up
at a time): beyond that, callers wait for a free slot, within their deadline;
without one, :data:`CAP_WAIT` seconds, and then the cap yields rather than
fail an action (actions may hold one channel while asking for another).
Remote kills skip the cap: they must not wait behind what they kill.

Over all hosts, the pool keeps at most ``max_connections`` connections (the
driver sets it from ``--max-connections``, default ``-t``): a new connection
beyond that first closes the least recently used idle one (of any host); with
none idle it waits :data:`FULL_WAIT` for one and then goes over (an action may
hold a channel while asking for another), and the excess is closed as soon as
it is idle. Idle connections are closed after ``idle_timeout`` seconds. At most
``max_handshakes`` connections are being set up at once (a burst after oned
restarts must not start thousands of key exchanges); the others wait their
turn within their deadline. So the connections (one paramiko thread each; the
keepalives share one thread) are bounded by ``-t``, not by the number of hosts,
and a host without traffic costs nothing but a small record of what was
learned about it (kept only while it says something).

The hosts holding a pooled connection that takes new channels are published
as :attr:`Pool.warm_hosts`:
the scheduler prefers their queued actions a little (an action there needs no
key exchange), so that more hosts than pooled connections do not mean a
handshake per action.

Every wait is bounded: the action's deadline when it has one, else
:data:`OPEN_TIMEOUT` for a channel open or a request's answer; a connection
that leaves either unanswered is retired (no new channels, closed once idle)
and the host is marked unresponsive until a request succeeds again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Optional, Set, Tuple

import paramiko

import vmm_exec.transports.paramiko.alarms as alarms
from vmm_exec.cancel import Cancelled, CancelScope
from vmm_exec.transports.paramiko.config import HostSettings
from vmm_exec.transports.paramiko.connect import (
    ConnectFailure,
    Deadline,
    TimedOut,
    close_quietly,
    line,
)
from vmm_exec.transports.paramiko.keepalive import Keepalive
from vmm_exec.transports.paramiko.session import (
    ACCEPTED,
    LOST,
    NO_ANSWER,
    REFUSED,
    Requests,
)

# channels per connection until the host's limit is learned (sshd's default is 10)
MAX_CHANNELS = 8
# pooled connections per host; beyond, callers wait for a free slot
MAX_CONNECTIONS = 8
# without a deadline, how long to wait for a free slot before going over the cap
CAP_WAIT = 30.0
# a channel open, or the answer to an exec/subsystem request, unless the deadline is sooner
OPEN_TIMEOUT = 30.0
# a refusal this soon after one of our channels on the connection ended may be that
# channel's slot, not yet freed by sshd
SETTLE = 1.0
# refused channels retried elsewhere, and connections lost under a new channel, per start
MAX_REFUSALS = 8
MAX_LOSSES = 3
POLL = 0.2
# pooled connections over all hosts; the driver passes --max-connections (default -t)
MAX_POOLED = 15
# connections being set up (key exchanges) at once, over all hosts
MAX_HANDSHAKES = 4
# an idle pooled connection is closed after this many seconds
IDLE_TIMEOUT = 60.0
# with the pool full and nothing idle to close, how long to wait before going over
FULL_WAIT = 1.0
# how long a connection closed to make room may take to be gone (its thread ended)
EVICT_WAIT = 0.5


class Connection:
    """One SSH connection and this process's channels on it."""

    def __init__(self, client: paramiko.SSHClient, settings: HostSettings) -> None:
        self.client = client
        self.settings = settings
        self.host = settings.alias     # the pool's key (set by the pool)
        self.reserved = 0              # slots taken: channels open or being opened
        self.open = 0                  # channels open on it now
        self.opened_ever = 0           # channels ever opened on it
        self.capacity: Optional[int] = None   # learned: full at this many channels of ours
        self.retired = False           # no new channels; closed once idle
        self.released_at = 0.0         # when one of our channels on it last ended
        self.open_lock = threading.Lock()
        self.keepalive = Keepalive(client, settings)
        self.keepalive.start()

    @property
    def transport(self) -> Optional[paramiko.Transport]:
        return self.client.get_transport()

    def alive(self) -> bool:
        transport = self.transport
        return transport is not None and transport.is_active()

    def loss_message(self) -> str:
        """What the ssh binary prints when its connection ends under a command."""
        if self.keepalive.timed_out:
            return line(f"Timeout, server {self.settings.hostname} not responding.")
        return line(f"Connection to {self.settings.hostname} closed by remote host.")

    def close(self, wait: float = 0.0) -> None:
        """Close the connection; ``wait``: also wait that long at most for paramiko's
        thread to end (it notices within its 0.1 s read timeout), so that a
        connection closed to make room is gone before its successor starts."""
        transport = self.transport
        self.keepalive.stop()
        close_quietly(self.client)
        if wait > 0 and transport is not None and transport is not threading.current_thread():
            transport.join(wait)


@dataclass
class Session:
    """A channel whose exec/subsystem request was accepted: its command runs."""

    conn: Connection
    chan: paramiko.Channel
    requests: Requests
    pooled: bool = True


class Unstarted(Exception):
    """The request was sent but not answered, or the connection ended meanwhile:
    the command may run on the host all the same. ``message``: ssh's words."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Refused(Exception):
    def __init__(self, text: str, others: int) -> None:
        super().__init__(text)
        self.text = text
        self.others = others


class _Lost(Exception):
    pass


class _NoAnswer(Exception):
    pass


@dataclass
class _Host:
    connections: List[Connection] = field(default_factory=list)
    limit: int = MAX_CHANNELS
    connecting: bool = False
    waiting: int = 0
    # the last failed connection attempt: (when, the failure)
    failure: Optional[Tuple[float, ConnectFailure]] = None
    unresponsive: bool = False


# Opens a new connection to a host, bounded by the deadline, interruptible by the scope.
Connector = Callable[[str, Deadline, CancelScope], Connection]


class Pool:
    """Pooled connections per host (see the module doc)."""

    def __init__(self, connector: Connector, max_connections: int = MAX_POOLED,
                 max_handshakes: int = MAX_HANDSHAKES,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self._connector = connector
        self.max_connections = max(1, max_connections)
        self.max_handshakes = max(1, max_handshakes)
        self.idle_timeout = idle_timeout
        self._cond = threading.Condition()
        self._hosts: Dict[str, _Host] = {}
        # idle pooled connections, least recently used first: connection -> idle since
        self._idle: OrderedDict[Connection, float] = OrderedDict()
        self._total = 0        # pooled connections, set up or being set up
        # the hosts with a pooled connection that takes new channels, as a set the
        # scheduler reads without taking this pool's lock (replaced, never changed)
        self.warm_hosts: FrozenSet[str] = frozenset()
        self._handshakes = 0   # connections being set up now
        self._sweep_alarm: Optional[alarms.Alarm] = None
        self._closed = False

    # -- counting (lock held) --------------------------------------------------
    def _append(self, state: _Host, conn: Connection) -> None:
        state.connections.append(conn)
        self._total += 1
        self._publish(conn.host, state)

    def _remove(self, state: _Host, conn: Connection) -> None:
        state.connections.remove(conn)
        self._idle.pop(conn, None)
        self._total -= 1
        self._publish(conn.host, state)

    def _publish(self, host: str, state: _Host) -> None:
        """Keep ``warm_hosts`` right for ``host`` (a new set only when it changes)."""
        warm = any(not c.retired for c in state.connections)
        if warm != (host in self.warm_hosts):
            self.warm_hosts = (self.warm_hosts | {host}) if warm else (self.warm_hosts - {host})

    def _mark_idle(self, conn: Connection) -> None:
        if conn.reserved == 0 and not conn.retired:
            self._idle[conn] = time.monotonic()
            self._idle.move_to_end(conn)
            if self._sweep_alarm is None and not self._closed:
                self._sweep_alarm = alarms.schedule(self.idle_timeout, self._sweep)

    def _evict(self, keep: int) -> List[Connection]:
        """Take idle connections out, least recently used first, until at most ``keep``
        pooled connections are left (or none is idle): to close."""
        doomed: List[Connection] = []
        while self._total > keep and self._idle:
            conn, _since = self._idle.popitem(last=False)
            state = self._hosts.get(conn.host)
            if state is not None and conn in state.connections:
                self._remove(state, conn)
                self._forget_if_empty(conn.host, state)
            doomed.append(conn)
        return doomed

    def _forget_if_empty(self, host: str, state: _Host) -> None:
        """Drop the record of a host that holds nothing worth remembering."""
        if (not state.connections and not state.connecting and state.waiting == 0
                and state.limit == MAX_CHANNELS and state.failure is None
                and not state.unresponsive and self._hosts.get(host) is state):
            del self._hosts[host]

    def _sweep(self) -> None:
        """Close the connections idle for ``idle_timeout`` (an alarm: no thread of its
        own, and none at all while nothing is idle); again when the next one is due."""
        doomed: List[Connection] = []
        with self._cond:
            self._sweep_alarm = None
            now = time.monotonic()
            while self._idle:
                conn, since = next(iter(self._idle.items()))
                if now - since < self.idle_timeout:
                    break
                self._idle.popitem(last=False)
                state = self._hosts.get(conn.host)
                if state is not None and conn in state.connections:
                    self._remove(state, conn)
                    self._forget_if_empty(conn.host, state)
                doomed.append(conn)
            if self._idle and not self._closed:
                due = self.idle_timeout - (now - next(iter(self._idle.values())))
                self._sweep_alarm = alarms.schedule(max(0.05, due), self._sweep)
            self._cond.notify_all()
        for conn in doomed:
            conn.close()

    def counts(self) -> Tuple[int, int, int]:
        """(pooled connections, idle ones, handshakes in progress), for tests and logs."""
        with self._cond:
            return self._total, len(self._idle), self._handshakes

    def hosts_known(self) -> int:
        """How many hosts the pool keeps a record of."""
        with self._cond:
            return len(self._hosts)

    # -- looking ---------------------------------------------------------------
    def connections(self, host: str) -> List[Connection]:
        with self._cond:
            state = self._hosts.get(host)
            return list(state.connections) if state is not None else []

    def limit(self, host: str) -> int:
        """The learned (or assumed) number of channels per connection to ``host``."""
        with self._cond:
            state = self._hosts.get(host)
            return state.limit if state is not None else MAX_CHANNELS

    def responsive(self, host: str) -> bool:
        """False while a request to ``host`` is known to have gone unanswered."""
        with self._cond:
            state = self._hosts.get(host)
            return state is None or not state.unresponsive

    # -- slots -----------------------------------------------------------------
    def reserve(self, host: str, deadline: Deadline, scope: CancelScope,
                priority: bool = False) -> Connection:
        """A live connection with room for one more channel (the slot is counted).

        Callers that queued for the host while a connection attempt failed share
        that failure instead of each waiting for a connect timeout in turn.
        """
        asked = time.monotonic()
        waited_since: Optional[float] = None
        full_since: Optional[float] = None
        doomed: List[Connection] = []
        found: Optional[Connection] = None
        try:
            with self._cond:
                while True:
                    state = self._hosts.setdefault(host, _Host())
                    if scope.cancelled:
                        self._forget_if_empty(host, state)
                        raise Cancelled()
                    failed = state.failure
                    if failed is not None and failed[0] >= asked:
                        raise ConnectFailure(failed[1].message)
                    doomed += self._prune(state)
                    found = self._pick(state)
                    if found is not None:
                        found.reserved += 1
                        self._idle.pop(found, None)
                        return found
                    if not state.connecting:
                        over = (deadline.at is None and waited_since is not None
                                and time.monotonic() - waited_since >= CAP_WAIT)
                        if len(state.connections) < MAX_CONNECTIONS or priority or over:
                            if priority:
                                break
                            if self._handshakes < self.max_handshakes:
                                doomed += self._evict(self.max_connections - 1)
                                if self._total < self.max_connections:
                                    break
                                # full, nothing idle: wait a little for a slot, then go over
                                full_since = full_since or time.monotonic()
                                if time.monotonic() - full_since >= FULL_WAIT:
                                    break
                    if deadline.expired:
                        self._forget_if_empty(host, state)
                        raise TimedOut()
                    if waited_since is None:
                        waited_since = time.monotonic()
                    state.waiting += 1
                    try:
                        self._cond.wait(deadline.bound(POLL))
                    finally:
                        state.waiting -= 1
                state.connecting = True
                self._handshakes += 1
                self._total += 1  # counted from now: others see the pool as it will be
        finally:
            for conn in doomed:
                try:
                    conn.close(wait=EVICT_WAIT)
                except Exception:  # noqa: BLE001 - the slot counted above must reach _add
                    pass
        return self._add(host, state, deadline, scope)

    def _add(self, host: str, state: _Host, deadline: Deadline,
             scope: CancelScope) -> Connection:
        try:
            conn = self._connector(host, deadline, scope)
        except ConnectFailure as exc:
            with self._cond:
                self._handshakes -= 1
                self._total -= 1
                state.connecting = False
                state.failure = (time.monotonic(), exc)
                self._cond.notify_all()
            raise
        except BaseException:
            with self._cond:
                self._handshakes -= 1
                self._total -= 1
                state.connecting = False
                self._forget_if_empty(host, state)
                self._cond.notify_all()
            raise
        with self._cond:
            self._handshakes -= 1
            self._total -= 1
            conn.host = host
            state.connecting = False
            state.failure = None
            conn.reserved = 1
            if self._hosts.get(host) is not state:  # closed meanwhile
                self._hosts.setdefault(host, state)
            self._append(state, conn)
            self._cond.notify_all()
        return conn

    @staticmethod
    def _pick(state: _Host) -> Optional[Connection]:
        for conn in state.connections:
            if conn.retired or not conn.alive():
                continue
            room = state.limit if conn.capacity is None else min(state.limit, conn.capacity)
            if conn.reserved < room:
                return conn
        return None

    def _prune(self, state: _Host) -> List[Connection]:
        """Take idle connections that are dead or retired out of the pool (to close)."""
        doomed = [c for c in state.connections
                  if c.reserved == 0 and (c.retired or not c.alive())]
        for conn in doomed:
            self._remove(state, conn)
        return doomed

    def release(self, conn: Connection, opened: bool) -> None:
        """Give a slot back (``opened``: its channel had been opened). Extra connections
        (opened when the first was full) go once idle, unless someone waits for a slot."""
        doomed: List[Connection] = []
        with self._cond:
            conn.reserved = max(0, conn.reserved - 1)
            if opened:
                conn.open = max(0, conn.open - 1)
                conn.released_at = time.monotonic()
            state = self._hosts.get(conn.host)
            if state is not None and conn in state.connections:
                doomed = self._prune(state)
                if state.waiting == 0:
                    extra = [c for c in state.connections[1:] if c.reserved == 0]
                    for idle in extra:
                        self._remove(state, idle)
                    doomed += extra
                if conn in state.connections:
                    self._mark_idle(conn)
                # over the limit after a burst: the excess goes as soon as it is idle
                doomed += self._evict(self.max_connections)
                self._forget_if_empty(conn.host, state)
            elif conn.reserved == 0 and (conn.retired or not conn.alive()):
                doomed = [conn]
            self._cond.notify_all()
        for idle in doomed:
            idle.close()

    def retire(self, conn: Connection) -> None:
        """``conn`` left a request or an open unanswered: no new channels on it, and its
        host counts as unresponsive until a request succeeds again."""
        with self._cond:
            conn.retired = True
            self._idle.pop(conn, None)
            state = self._hosts.get(conn.host)
            if state is not None:
                state.unresponsive = True
                self._publish(conn.host, state)
            self._cond.notify_all()

    def _learn(self, conn: Connection, others: int, earlier: int, excused: Set[int]) -> bool:
        """A channel refused on ``conn`` while it held ``others`` of ours (``earlier``: how
        many it had ever held before): note what that says about the host's limit.
        False: the refusal is genuine (report it)."""
        with self._cond:
            if time.monotonic() - conn.released_at < SETTLE and id(conn) not in excused:
                excused.add(id(conn))  # maybe the slot of a channel that just ended
                return True
            if others >= 1:
                conn.capacity = others
                state = self._hosts.get(conn.host)
                if state is not None:
                    state.limit = others
                self._cond.notify_all()
                return True
            if earlier > 0:
                # sessions of channels we already closed still count on the server
                conn.retired = True
                self._idle.pop(conn, None)
                state = self._hosts.get(conn.host)
                if state is not None:
                    self._publish(conn.host, state)
                return True
            return False

    # -- channels ----------------------------------------------------------------
    def _open_channel(self, conn: Connection, deadline: Deadline) -> paramiko.Channel:
        if not conn.open_lock.acquire(timeout=deadline.bound(OPEN_TIMEOUT)):
            if deadline.expired:
                raise TimedOut()
            raise _NoAnswer("another channel open on this connection is unanswered")
        try:
            transport = conn.transport
            if transport is None or not transport.is_active():
                raise _Lost("not connected")
            if conn.retired:
                raise _Lost("connection retired")
            started = time.monotonic()
            bound = deadline.bound(OPEN_TIMEOUT)
            try:
                chan = transport.open_session(timeout=bound)
            except paramiko.ChannelException as exc:
                raise _Refused(exc.text, conn.open) from None
            except paramiko.SSHException as exc:
                if not transport.is_active():
                    raise _Lost(str(exc)) from None
                if "Timeout" in str(exc) or time.monotonic() - started >= bound:
                    raise _NoAnswer(str(exc)) from None
                raise _Refused(str(exc), conn.open) from None
            except (OSError, EOFError) as exc:
                raise _Lost(str(exc)) from None
            with self._cond:
                conn.open += 1
                conn.opened_ever += 1
            return chan
        finally:
            conn.open_lock.release()

    def start(self, host: str, deadline: Deadline, scope: CancelScope, kind: str,
              fields: Tuple[str, ...], priority: bool = False) -> Session:
        """A channel on a pooled connection whose ``kind`` request (exec, subsystem) was
        accepted. Refused channels are retried elsewhere, learning the host's limit.

        Raises :class:`ConnectFailure` (ssh's message), :class:`TimedOut` (the deadline
        passed before the request was sent), :class:`Unstarted` (sent, but no answer:
        the command may run), :class:`~vmm_exec.cancel.Cancelled`.
        """
        refusals = losses = 0
        excused: Set[int] = set()
        failure = ""
        while True:
            if losses >= MAX_LOSSES or refusals > MAX_REFUSALS:
                raise ConnectFailure(line(failure))
            if deadline.expired:
                raise TimedOut()
            conn = self.reserve(host, deadline, scope, priority)
            try:
                chan = self._open_channel(conn, deadline)
            except TimedOut:
                self.release(conn, opened=False)
                raise
            except _Refused as exc:
                self.release(conn, opened=False)
                refusals += 1
                # (numbered as the ssh binary numbers its only channel)
                failure = f"channel 0: open failed: {exc.text}"
                if not self._learn(conn, exc.others, conn.opened_ever, excused):
                    raise ConnectFailure(line(failure)) from None
                continue
            except _NoAnswer:
                self.retire(conn)
                self.release(conn, opened=False)
                if deadline.expired:
                    raise TimedOut() from None
                losses += 1
                failure = f"Timeout, server {conn.settings.hostname} not responding."
                continue
            except _Lost as exc:
                self.release(conn, opened=False)
                losses += 1
                failure = f"Connection to {conn.settings.hostname} closed: {exc}"
                continue
            except BaseException:
                self.release(conn, opened=False)
                raise
            requests = Requests(chan)
            if scope.cancelled:  # nothing started yet: start nothing
                requests.close()
                self.release(conn, opened=True)
                raise Cancelled()
            answer = requests.request(kind, *fields, timeout=deadline.bound(OPEN_TIMEOUT),
                                      scope=scope)
            if answer == ACCEPTED:
                with self._cond:
                    state = self._hosts.get(host)
                    if state is not None:
                        state.unresponsive = False
                return Session(conn, chan, requests)
            with self._cond:
                others = max(0, conn.open - 1)
                earlier = conn.opened_ever - 1
            requests.close()
            if answer == NO_ANSWER and not scope.cancelled:
                self.retire(conn)
            self.release(conn, opened=True)
            if answer == NO_ANSWER:
                raise Unstarted(line(f"Timeout, server {conn.settings.hostname} "
                                     "not responding."))
            if answer == LOST:
                raise Unstarted(conn.loss_message())
            refusals += 1
            failure = f"{kind} request failed on channel 0"
            if answer == REFUSED and not self._learn(conn, others, earlier, excused):
                raise ConnectFailure(line(failure))
            scope.check()

    def close(self) -> None:
        """Close every pooled connection (their channels end; callers see it)."""
        with self._cond:
            conns = [c for state in self._hosts.values() for c in state.connections]
            self._hosts.clear()
            self._idle.clear()
            self._total = 0
            self.warm_hosts = frozenset()
            self._closed = True
            if self._sweep_alarm is not None:
                self._sweep_alarm.cancel()
                self._sweep_alarm = None
            self._cond.notify_all()
        for conn in conns:
            conn.close()
