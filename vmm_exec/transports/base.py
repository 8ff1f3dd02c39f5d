"""What every transport shares: results, logging hooks, cancellation."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Set

# A transport reports to oned through this: (message, all_lines) → LOG lines,
# i.e. DriverExecHelper#log bound to the action's id.
Logger = Callable[[str, bool], None]


@dataclass
class Execution:
    """Outcome of one command, the fields of Ruby's ``GenericCommand``.

    ``code`` is the exit status (255 for a signal or an internal error, -1 when
    a stream died before the command ran, as in Ruby).
    """

    command: str
    code: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False


class Cancelled(Exception):
    """The action was cancelled (DRIVER_CANCEL or shutdown): unwind without an answer."""


class Tracker:
    """The live process groups of one action, so that they can be killed as a whole.

    Cancelling kills every registered group (TERM, then KILL after a grace
    period) and makes any later spawn raise :class:`Cancelled`; this is what
    makes DRIVER_CANCEL really stop the scripts instead of only the thread.
    """

    GRACE = 2.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: Set[subprocess.Popen] = set()
        self._kill_hooks: List[Callable[[], None]] = []
        self.cancelled = False

    def spawn(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen:
        """Start a process in its own session, registered for cancellation."""
        with self._lock:
            if self.cancelled:
                raise Cancelled()
            proc = subprocess.Popen(argv, start_new_session=True, **kwargs)  # type: ignore[call-overload]
            self._procs.add(proc)
            return proc

    def release(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def on_kill(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` on cancellation (e.g. kill the remote side of a stream)."""
        with self._lock:
            self._kill_hooks.append(hook)

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled()

    def cancel(self) -> None:
        """Stop everything this action started; safe to call from any thread, twice."""
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
            procs = list(self._procs)
            hooks = list(self._kill_hooks)
        for hook in hooks:
            try:
                hook()
            except Exception:  # noqa: BLE001 - best effort, cancellation must finish
                pass
        kill_groups(procs, self.GRACE)


def kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_groups(procs: Sequence[subprocess.Popen], grace: float) -> None:
    """TERM each process group, then KILL what is still alive after ``grace`` seconds."""
    for proc in procs:
        kill_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        # the leader may be gone while children of the group live on
        kill_group(proc, signal.SIGKILL)
        try:
            proc.wait(1.0)
        except subprocess.TimeoutExpired:
            pass


def decode(data: bytes) -> str:
    """Script output as text; undecodable bytes survive the round trip to stdout."""
    return data.decode("utf-8", "surrogateescape")


def encode(text: Optional[str]) -> bytes:
    return (text or "").encode("utf-8", "surrogateescape")
