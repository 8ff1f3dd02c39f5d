"""One session channel: its channel requests, one at a time, and its state.

SSH answers the requests of a channel in order, and paramiko keeps a single
flag for the answer. So every request expecting a reply (exec, subsystem,
signal: whoever sends it, the action thread or a cancel) goes through the
channel's :class:`Requests`, which sends one at a time; once a request went
unanswered no other is sent, since its late answer could not be told from the
next one's. Our CLOSE goes through it as well: no request can follow it.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

import paramiko

import vmm_exec.transports.paramiko._private as _private
from vmm_exec.cancel import CancelScope
from vmm_exec.transports.paramiko.connect import close_quietly

# what became of a request
ACCEPTED = "accepted"
REFUSED = "refused"       # the server said no (paramiko then closes the channel)
NOT_SENT = "not sent"     # the channel was closed, or an earlier request is unanswered
NO_ANSWER = "no answer"   # none within the bound: the request may still take effect
LOST = "lost"             # the connection ended

# once the action is cancelled, how much longer an exec/subsystem answer is awaited
# (an accepted command must be known to be killed)
CANCEL_REPLY_WAIT = 3.0
POLL = 0.1


class Requests:
    """The requests expecting a reply on one channel, sent one at a time (see module doc)."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self._lock = threading.Lock()
        self._stale = False

    @property
    def stale(self) -> bool:
        """A request went unanswered: no more requests on this channel."""
        return self._stale

    def request(self, kind: str, *fields: str, timeout: float,
                scope: Optional[CancelScope] = None) -> str:
        """Send a request and wait up to ``timeout`` s for the answer.

        With a ``scope``, a cancel shortens the wait to :data:`CANCEL_REPLY_WAIT`.
        """
        with self._lock:
            if self._stale:
                return NOT_SENT
            try:
                sent = _private.send_request(self.chan, kind, fields, want_reply=True)
            except (OSError, EOFError, paramiko.SSHException):
                return LOST
            if not sent:
                return NOT_SENT if self._alive() else LOST
            answer = self._wait(timeout, scope)
            if answer is None:
                self._stale = True
                return NO_ANSWER
            if answer:
                return ACCEPTED
            return REFUSED if self._alive() else LOST

    def _wait(self, timeout: float, scope: Optional[CancelScope]) -> Optional[bool]:
        until = time.monotonic() + timeout
        if scope is None:
            return _private.reply(self.chan, timeout)
        cut = False
        while True:
            left = until - time.monotonic()
            answer = _private.reply(self.chan, min(POLL, max(0.0, left)))
            if answer is not None or left <= 0:
                return answer
            if scope.cancelled and not cut:
                cut = True
                until = min(until, time.monotonic() + CANCEL_REPLY_WAIT)

    def _alive(self) -> bool:
        transport = self.chan.get_transport()
        return transport is not None and transport.is_active()

    def close(self) -> None:
        """Close the channel (after any request in flight)."""
        with self._lock:
            close_quietly(self.chan)


def wait_closed(chan: paramiko.Channel, timeout: float) -> bool:
    """Wait until the channel is closed (command over, output drained, or connection gone)."""
    deadline = time.monotonic() + timeout
    pause = 0.001  # the close usually follows within a millisecond or two: look soon
    while not chan.closed:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, pause))
        pause = min(pause * 2, 0.05)
    return True


def lost(chan: paramiko.Channel) -> bool:
    """The connection died under the channel (no EOF: sshd always sends one)."""
    return chan.closed and not _private.eof_received(chan)


def status(chan: paramiko.Channel) -> int:
    """The ssh binary's exit status: the command's, or 255 (signal, lost connection).

    Only once ``chan.exit_status_ready()``: it does not wait then.
    """
    code = chan.recv_exit_status()
    return code if code >= 0 else 255
