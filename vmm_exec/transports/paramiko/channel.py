"""The persistent stream's :class:`~vmm_exec.transports.channel.Channel` over an SSH
session channel, the reader both it and ``run`` use, and the channel of a stream
whose connection could not be made."""

from __future__ import annotations

import threading
from typing import List, Optional, Protocol, Set, Tuple

import paramiko
from paramiko.agent import AgentRequestHandler

import vmm_exec.transports.paramiko._private as _private
from vmm_exec.cancel import Registration
from vmm_exec.transports.base import encode
from vmm_exec.transports.channel import ERR, OUT
from vmm_exec.transports.paramiko.connect import close_quietly
from vmm_exec.transports.paramiko.kill import KILL_GRACE, Stopper
from vmm_exec.transports.paramiko.pool import Session
from vmm_exec.transports.paramiko.session import lost, status, wait_closed

READ_SIZE = 65536
# a write this small goes out at once (no writer thread) when the window allows it
SEND_NOW_LIMIT = 16384
# how long release() lets the remote shell exit after EOF before killing it
CLOSE_GRACE = 2.0


class Reader:
    """Non-blocking reads of a channel's stdout and stderr, woken by paramiko's buffers.

    Both buffers share one event that paramiko sets when data (or the end)
    arrives, so waiting costs nothing and never spins.
    """

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self.ready = threading.Event()
        _private.wake_on_input(chan, self.ready)
        self.ended: Set[str] = set()

    @property
    def done(self) -> bool:
        return len(self.ended) == 2

    def poll(self, timeout: float) -> List[Tuple[str, bytes]]:
        if self.done:
            return []
        chunks = self._available()
        if chunks:
            return chunks
        self.ready.wait(timeout)
        return self._available()

    def _pending(self) -> bool:
        return self.chan.recv_ready() or self.chan.recv_stderr_ready()

    def _available(self) -> List[Tuple[str, bytes]]:
        chan = self.chan
        # seen before reading: whatever came before the end is in the buffers now
        ended = _private.eof_received(chan) or chan.closed
        chunks: List[Tuple[str, bytes]] = []
        for _ in range(32):
            got = False
            if chan.recv_ready():
                data = chan.recv(READ_SIZE)
                if data:
                    chunks.append((OUT, data))
                    got = True
            if chan.recv_stderr_ready():
                data = chan.recv_stderr(READ_SIZE)
                if data:
                    chunks.append((ERR, data))
                    got = True
            if not got:
                break
        if ended and not self._pending():
            for name in (OUT, ERR):
                if name not in self.ended:
                    self.ended.add(name)
                    chunks.append((name, b""))
        return chunks


def shutdown_write(chan: paramiko.Channel) -> None:
    try:
        chan.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        pass


class Owner(Protocol):
    """What a channel needs from its transport (ParamikoTransport)."""

    mark_commands: bool

    def _stopper(self, session: Session, mark: Optional[str]) -> Stopper: ...

    def _end(self, session: Session) -> None: ...


class ParamikoChannel:
    """A :class:`~vmm_exec.transports.channel.Channel` over an SSH session channel."""

    def __init__(self, owner: Owner, session: Session, mark: str,
                 agent: Optional[AgentRequestHandler] = None) -> None:
        self._owner = owner
        self._session = session
        self.chan = session.chan
        self.mark = mark
        self._agent = agent
        self._reader = Reader(self.chan)
        self._lock = threading.Lock()
        self._terminated = False
        self._released = False
        self._reported_loss = False
        self.registration: Optional[Registration] = None
        self._stopper: Stopper = owner._stopper(session, mark if owner.mark_commands else None)

    @property
    def signalled(self) -> Optional[bool]:
        """Whether sshd took the SSH signal (None: not terminated, or already over)."""
        return self._stopper.signalled

    def send(self, data: bytes) -> None:
        try:
            self.chan.sendall(data)
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the channel is gone; the reader will see it

    def send_now(self, data: bytes) -> bool:
        # within the server's window, and small enough for the socket's buffer
        if len(data) > SEND_NOW_LIMIT or _private.send_window(self.chan) < len(data):
            return False
        self.send(data)
        return True

    def receive(self, timeout: float) -> List[Tuple[str, bytes]]:
        if self._reader.done:
            wait_closed(self.chan, timeout)
            return []
        chunks = self._reader.poll(timeout)
        if self._reader.done and not self._reported_loss and not self._terminated:
            wait_closed(self.chan, 0.2)
            if lost(self.chan):
                # what the ssh binary prints when the server goes away
                self._reported_loss = True
                message = self._session.conn.loss_message()
                chunks.insert(len(chunks) - 1, (ERR, encode(message)))
        return chunks

    def exit_status(self) -> Optional[int]:
        return status(self.chan) if self.chan.closed else None

    def wait(self, timeout: float) -> Optional[int]:
        wait_closed(self.chan, timeout)
        return self.exit_status()

    def close_input(self) -> None:
        shutdown_write(self.chan)

    def terminate(self) -> None:
        """Kill the remote shell's process group (SSH signal, else by its mark), close."""
        with self._lock:
            if self._terminated:
                return
            self._terminated = True
        self._stopper.stop(KILL_GRACE)

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        if self.registration is not None:
            self.registration.remove()
        if not self.chan.closed:
            self.close_input()
            if not wait_closed(self.chan, CLOSE_GRACE):
                self.terminate()
        self._stopper.close()
        if self._agent is not None:
            close_quietly(self._agent)
        self._owner._end(self._session)


class FailedChannel:
    """The stream's view of a connection that could not be made: ssh's message, 255."""

    def __init__(self, message: str) -> None:
        self._pending: List[Tuple[str, bytes]] = [(ERR, encode(message)), (OUT, b""),
                                                   (ERR, b"")]

    def send(self, data: bytes) -> None:
        pass

    def send_now(self, data: bytes) -> bool:
        return True

    def receive(self, timeout: float) -> List[Tuple[str, bytes]]:
        chunks, self._pending = self._pending, []
        return chunks

    def exit_status(self) -> Optional[int]:
        return 255

    def wait(self, timeout: float) -> Optional[int]:
        return 255

    def close_input(self) -> None:
        pass

    def terminate(self) -> None:
        pass

    def release(self) -> None:
        pass
