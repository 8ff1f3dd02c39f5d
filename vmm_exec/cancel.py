"""The cancel scope of one action: everything it started, and how to stop exactly that.

DRIVER_CANCEL, a ``-w`` timeout or the driver's shutdown must stop what an
action runs, on the front-end and on the hosts, and never anything else. A
scope therefore knows two kinds of things, each only while it is alive:

* **local process groups** it spawned. A group is signalled only while its
  leader has not been reaped: the scope reaps its processes itself (after
  they exit, under its lock), so a PID the kernel could hand to someone else
  is never signalled;
* **cancel callbacks** (kill the remote side of a command, close a channel).
  :meth:`CancelScope.on_cancel` returns a :class:`Registration`; whoever
  registered removes it the moment the thing it would kill has ended, so a
  late cancel cannot reach a process group that has been reused on a host.

Cancelling kills local groups first (TERM), then runs the callbacks in
parallel, each in a thread of its own, under one deadline, so a host that
does not answer cannot delay the kills on the others; local groups still
alive after the grace period get KILL. A callback registered after the
cancel runs at once. Work that must outlive a cancelled scope (the remote
kill itself) runs in a :meth:`CancelScope.shielded` scope of its own.

The ideas are trio/anyio's cancel scopes and oslo.concurrency's
on_execute/on_completion callbacks, in threads.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

LOG = logging.getLogger(__name__)

# after TERM, how long local process groups get before KILL
LOCAL_GRACE = 2.0
# how long cancel() waits for the cancel callbacks (remote kills) to finish
CALLBACK_DEADLINE = 5.0


class Cancelled(Exception):
    """The action was cancelled (DRIVER_CANCEL or shutdown): unwind without an answer."""


class Registration:
    """A cancel callback's registration; :meth:`remove` once it has nothing left to kill."""

    __slots__ = ("_scope", "callback", "name")

    def __init__(self, scope: Optional[CancelScope], callback: Callable[[], None],
                 name: str) -> None:
        self._scope = scope
        self.callback = callback
        self.name = name

    @property
    def active(self) -> bool:
        return self._scope is not None

    def remove(self) -> None:
        """Unregister (idempotent); a callback already running is not interrupted."""
        scope, self._scope = self._scope, None
        if scope is not None:
            scope._forget(self)

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class CancelScope:
    """The live processes and cancel callbacks of one action."""

    def __init__(self, name: str = "", *, grace: float = LOCAL_GRACE,
                 deadline: float = CALLBACK_DEADLINE) -> None:
        self.name = name
        self.grace = grace
        self.deadline = deadline
        self._lock = threading.Lock()
        self._procs: Dict[int, subprocess.Popen[bytes]] = {}
        self._callbacks: List[Registration] = []
        self._cancelled = False

    @classmethod
    def shielded(cls, name: str = "shielded") -> CancelScope:
        """A scope of its own for work that must run although the caller's scope is
        cancelled (killing a cancelled command's remote side). Bound it by a timeout."""
        return cls(name)

    # -- state --------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def check(self) -> None:
        """Raise :class:`Cancelled` once the scope is cancelled."""
        if self._cancelled:
            raise Cancelled()

    @property
    def live_processes(self) -> int:
        with self._lock:
            return len(self._procs)

    @property
    def live_callbacks(self) -> int:
        with self._lock:
            return len(self._callbacks)

    # -- local processes ----------------------------------------------------
    def spawn(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process as the leader of a new session, owned by this scope.

        Raises :class:`Cancelled` instead of starting anything once cancelled.
        """
        with self._lock:
            if self._cancelled:
                raise Cancelled()
            proc: subprocess.Popen[bytes] = subprocess.Popen(
                list(argv), start_new_session=True, **kwargs)
            self._procs[proc.pid] = proc
            return proc

    def wait(self, proc: subprocess.Popen[bytes], timeout: Optional[float] = None) -> Optional[int]:
        """The exit status of ``proc`` (None if it still runs after ``timeout`` seconds).

        The only place a spawned process is reaped: it leaves the scope under
        the lock first, so a cancel never signals a reaped PID. In a cancelled
        scope, what is left of the group (children ignoring TERM) is killed
        just before the leader is reaped, while its id is certainly ours.
        Negative statuses (killed by a signal) are returned as Popen gives them.
        """
        return self._wait(proc, timeout, kill_rest=False)

    def _wait(self, proc: subprocess.Popen[bytes], timeout: Optional[float],
              kill_rest: bool) -> Optional[int]:
        if proc.returncode is not None:
            return proc.returncode
        if not _wait_exit(proc.pid, timeout):
            return None
        with self._lock:
            if self._procs.pop(proc.pid, None) is proc and (kill_rest or self._cancelled):
                _killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def signal_group(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        """Signal ``proc``'s process group, if ``proc`` is still this scope's and unreaped."""
        with self._lock:
            if self._procs.get(proc.pid) is proc and proc.returncode is None:
                _killpg(proc.pid, sig)

    def stop(self, proc: subprocess.Popen[bytes], grace: float) -> int:
        """TERM the group, KILL it after ``grace`` seconds (or as soon as the leader
        is gone: its children may ignore TERM), and reap the leader."""
        self.signal_group(proc, signal.SIGTERM)
        rc = self._wait(proc, grace, kill_rest=True)
        if rc is None:
            self.signal_group(proc, signal.SIGKILL)
            rc = self._wait(proc, None, kill_rest=True)
        return rc if rc is not None else -signal.SIGKILL

    # -- callbacks ----------------------------------------------------------
    def on_cancel(self, callback: Callable[[], None], name: str = "") -> Registration:
        """Run ``callback`` when the scope is cancelled; at once if it already is.

        Register only once the thing it kills exists, and remove the
        registration when that thing has ended.
        """
        with self._lock:
            if not self._cancelled:
                registration = Registration(self, callback, name)
                self._callbacks.append(registration)
                return registration
        _run_callback(callback, name)
        return Registration(None, callback, name)

    def _forget(self, registration: Registration) -> None:
        with self._lock:
            try:
                self._callbacks.remove(registration)
            except ValueError:
                pass

    # -- cancelling ---------------------------------------------------------
    def cancel(self) -> None:
        """Stop everything this scope owns; safe from any thread, any number of times.

        Returns once the local groups are gone and the callbacks have finished,
        or the callbacks' deadline has passed (they go on in the background,
        each bounded by its own timeout).
        """
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            procs = list(self._procs.values())
            callbacks, self._callbacks = self._callbacks, []
            for proc in procs:
                if proc.returncode is None:
                    _killpg(proc.pid, signal.SIGTERM)
        started = time.monotonic()
        threads = []
        for registration in callbacks:
            registration._scope = None
            thread = threading.Thread(target=_run_callback,
                                      args=(registration.callback, registration.name),
                                      daemon=True, name=f"cancel-{self.name}-{registration.name}")
            thread.start()
            threads.append(thread)
        for proc in procs:
            self._wait(proc, max(0.0, started + self.grace - time.monotonic()), kill_rest=True)
        for proc in procs:
            self.signal_group(proc, signal.SIGKILL)
        for thread in threads:
            thread.join(max(0.0, started + self.deadline - time.monotonic()))
        late = [t.name for t in threads if t.is_alive()]
        if late:
            LOG.warning("scope %s: cancel callbacks still running after %.0f s: %s",
                        self.name, self.deadline, ", ".join(late))


# -- work detached from the action that started it ---------------------------------
_detached: Set[threading.Thread] = set()
_detached_lock = threading.Lock()


def detach(work: Callable[[], None], name: str) -> None:
    """Run ``work`` (a bounded remote kill) without making the action wait for it.

    A timed-out command is answered at once; killing its remote side over a new
    connection may take as long as that host takes to answer. The driver waits
    for detached work (:func:`join_detached`) before it exits.
    """
    def run() -> None:
        try:
            _run_callback(work, name)
        finally:
            with _detached_lock:
                _detached.discard(thread)

    thread = threading.Thread(target=run, daemon=True, name=f"detached-{name}")
    with _detached_lock:
        _detached.add(thread)
    thread.start()


def join_detached(timeout: float) -> int:
    """Wait up to ``timeout`` seconds for detached work; the number still running."""
    deadline = time.monotonic() + timeout
    while True:
        with _detached_lock:
            pending = list(_detached)
        if not pending:
            return 0
        left = deadline - time.monotonic()
        if left <= 0:
            return len(pending)
        pending[0].join(left)


def _run_callback(callback: Callable[[], None], name: str) -> None:
    try:
        callback()
    except Exception:  # noqa: BLE001 - one failing kill must not stop the others
        LOG.exception("cancel callback %s failed", name or callback)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_exit(pid: int, timeout: Optional[float]) -> bool:
    """Wait until child ``pid`` has exited, without reaping it (True: it has)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return _poll_exit(pid, timeout)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if timeout is None:
            while not poller.poll(1000):
                pass
            return True
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(fd)


def _poll_exit(pid: int, timeout: Optional[float]) -> bool:
    """``waitid(WNOWAIT)`` in a loop: where pidfds are missing (Linux < 5.3)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True  # reaped elsewhere
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
