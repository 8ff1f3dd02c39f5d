"""A duplex byte channel to a remote shell: what the persistent stream runs on.

The stream only needs to send bytes, receive stdout/stderr chunks, learn the
exit status and stop everything. :class:`ProcessChannel` does that over a
local process (the ``ssh`` binary, or a local shell in tests); the paramiko
transport provides the same over an SSH channel.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import struct
import subprocess
import termios
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

from vmm_exec.cancel import CancelScope

CLOSE_GRACE = 2.0
OUT = "out"
ERR = "err"


class Channel(Protocol):
    """What :class:`~vmm_exec.transports.stream.SshStream` needs from a connection."""

    def send(self, data: bytes) -> None:
        """Write all of ``data`` (blocking; called from a writer thread)."""

    def send_now(self, data: bytes) -> bool:
        """Write all of ``data`` if that cannot block, else nothing (False): small
        commands then need no writer thread."""

    def receive(self, timeout: float) -> List[Tuple[str, bytes]]:
        """Chunks as ``(OUT|ERR, data)``; ``data == b""`` means that stream ended."""

    def exit_status(self) -> Optional[int]:
        """The remote shell's (or client's) exit status once it ended, else None."""

    def wait(self, timeout: float) -> Optional[int]:
        """Wait up to ``timeout`` seconds for the exit status."""

    def close_input(self) -> None:
        """No more input (the remote shell sees EOF)."""

    def terminate(self) -> None:
        """Stop the connection and everything it runs, now."""

    def release(self) -> None:
        """Free what is left (pipes, registrations) once the channel is over."""


def _pipe_room(fd: int) -> int:
    """Bytes a write to pipe ``fd`` takes now without blocking (its capacity less
    what waits in it; Linux), 0 where that cannot be told. We are its only writer."""
    try:
        capacity = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        queued: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, AttributeError):
        return 0
    return max(0, capacity - queued)


class ProcessChannel:
    """A channel over a local process started in its own session (e.g. ``ssh HOST bash -s``)."""

    def __init__(self, scope: CancelScope, argv: Sequence[str],
                 env: Optional[Dict[str, str]] = None) -> None:
        self._scope = scope
        self.proc = scope.spawn(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._names = {self.proc.stdout.fileno(): OUT, self.proc.stderr.fileno(): ERR}
        self._selector = selectors.DefaultSelector()
        for fd in self._names:
            os.set_blocking(fd, False)
            self._selector.register(fd, selectors.EVENT_READ)
        self._released = False

    def send(self, data: bytes) -> None:
        stdin = self.proc.stdin
        if stdin is None:
            return
        try:
            stdin.write(data)
            stdin.flush()
        except (OSError, ValueError):
            pass  # the connection is gone; the reader will see it

    def send_now(self, data: bytes) -> bool:
        stdin = self.proc.stdin
        if stdin is None:
            return False
        try:
            # a command or a here-document of a few KiB (a VM's XML) fits if the pipe
            # has room for all of it
            if _pipe_room(stdin.fileno()) < len(data):
                return False
        except ValueError:  # the pipe is closed
            return False
        self.send(data)
        return True

    def receive(self, timeout: float) -> List[Tuple[str, bytes]]:
        if not self._selector.get_map():
            return []
        chunks = []
        for key, _ in self._selector.select(timeout):
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self._selector.unregister(key.fd)
            chunks.append((self._names[key.fd], data))
        return chunks

    def exit_status(self) -> Optional[int]:
        return self._status(self._scope.wait(self.proc, 0))

    def wait(self, timeout: float) -> Optional[int]:
        return self._status(self._scope.wait(self.proc, timeout))

    @staticmethod
    def _status(rc: Optional[int]) -> Optional[int]:
        if rc is None:
            return None
        return 255 if rc < 0 else rc

    def close_input(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass

    def terminate(self) -> None:
        """HUP the whole process group, as the Ruby stream does on timeout."""
        self._scope.signal_group(self.proc, signal.SIGHUP)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.close_input()
        if self.wait(CLOSE_GRACE) is None:
            self._scope.signal_group(self.proc, signal.SIGKILL)
            self.wait(CLOSE_GRACE)
        try:
            self._selector.close()
        except (OSError, ValueError):
            pass
        for pipe in (self.proc.stdout, self.proc.stderr):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
