"""Keepalives for every connection from one thread (``ServerAlive*`` of ssh_config).

Every ``interval`` seconds a connection gets a request the server must answer;
no answer within ``interval * count`` closes it, which ends every wait on it.
paramiko's own keepalive asks for no answer, so it never notices a host that
stopped (a frozen sshd leaves the TCP connection up for ever).

One service thread watches every connection, instead of a thread (and a
timer thread per probe) per connection: with thousands of hosts that was
thousands of threads. Sending may block (a key exchange, a socket full
towards a frozen host), so each probe is sent by a short-lived thread of its
own; the expiry is decided here, whether or not the send returned.
"""

from __future__ import annotations

import threading
import time
from typing import Optional, Set

import paramiko

import vmm_exec.transports.paramiko._private as _private
from vmm_exec.transports.paramiko.config import HostSettings
from vmm_exec.transports.paramiko.connect import close_quietly

# how often the service looks at its connections (at most)
TICK = 0.25


class Keepalive:
    """The keepalive of one connection (registered with the service by :meth:`start`)."""

    def __init__(self, client: paramiko.SSHClient, settings: HostSettings) -> None:
        self._client = client
        self.interval = settings.alive_interval
        self.count = settings.alive_count
        self.timed_out = False
        self.stopped = False
        self._next = 0.0
        self._sent: Optional[threading.Event] = None
        self._sent_at = 0.0

    def start(self) -> None:
        self._next = time.monotonic() + self.interval
        _SERVICE.add(self)

    def stop(self) -> None:
        self.stopped = True
        _SERVICE.discard(self)

    def tick(self, now: float) -> bool:
        """Probe when due, expire when unanswered; False once there is nothing to watch."""
        if self.stopped:
            return False
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            return False
        if self._sent is not None:
            if self._sent.is_set():
                self._sent = None
                self._next = now + self.interval
            elif now - self._sent_at >= self.interval * self.count:
                self.timed_out = True
                close_quietly(self._client)
                return False
            return True
        if now >= self._next:
            answered = threading.Event()
            self._sent, self._sent_at = answered, now
            threading.Thread(target=_probe, args=(transport, answered), daemon=True,
                             name="keepalive probe").start()
        return True


def _probe(transport: paramiko.Transport, answered: threading.Event) -> None:
    try:
        reply = _private.send_keepalive(transport)
    except Exception:  # noqa: BLE001 - a broken connection: its reader ends it
        return
    # forward the reply to this probe's event (a later probe replaces the transport's)
    while not answered.is_set() and transport.is_active():
        if reply.wait(1.0):
            answered.set()
            return


class _Service:
    """The one thread that ticks every registered :class:`Keepalive`; it runs only
    while there is something to watch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: Set[Keepalive] = set()
        self._thread: Optional[threading.Thread] = None

    def add(self, item: Keepalive) -> None:
        with self._lock:
            self._items.add(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="keepalives")
                self._thread.start()

    def discard(self, item: Keepalive) -> None:
        with self._lock:
            self._items.discard(item)

    def watched(self) -> int:
        with self._lock:
            return len(self._items)

    def _run(self) -> None:
        while True:
            time.sleep(TICK)
            with self._lock:
                items = list(self._items)
            now = time.monotonic()
            ended = [item for item in items if not item.tick(now)]
            with self._lock:
                self._items.difference_update(ended)
                if not self._items:
                    self._thread = None
                    return


_SERVICE = _Service()


def watched() -> int:
    """How many connections the keepalive service watches (for tests)."""
    return _SERVICE.watched()
