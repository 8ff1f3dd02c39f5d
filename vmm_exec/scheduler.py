"""When actions run: Ruby's ``ActionManager`` with ``VirtualMachineDriver``'s single-host mode.

At most ``concurrency`` actions run at once. In single-host mode (the
default) an action waits while another action for the same HOST runs, and
the first queued action whose host is free goes next, so queued actions keep
their order otherwise. Cancelling a queued action drops it; cancelling a
running one kills its processes (the Ruby driver only killed its thread).
The scheduler knows nothing about what an action does.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from vmm_exec.cancel import CancelScope
from vmm_exec.protocol import Gate, Request

# how long shutdown waits for all cancelled actions together
STOP_DEADLINE = 8.0


@dataclass
class Job:
    """One accepted request on its way through the scheduler.

    ``host`` is looked up once, when the job is submitted (outside the
    scheduler's lock); the job keeps the request's text, nothing decoded.
    """

    request: Request
    host: Optional[str] = None
    scope: CancelScope = field(default_factory=CancelScope)
    gate: Gate = field(default_factory=Gate)
    thread: Optional[threading.Thread] = None

    @property
    def action_id(self) -> int:
        return self.request.action_id

    @property
    def msg_id(self) -> str:
        return self.request.msg_id


class Scheduler:
    """Queue, concurrency limit, one action per host, cancel and finalize."""

    def __init__(self, concurrency: int, single_host: bool, execute: Callable[[Job], None],
                 host_of: Callable[[Request], Optional[str]]) -> None:
        self._concurrency = max(1, concurrency)
        self._single_host = single_host
        self._execute = execute
        self._host_of = host_of
        self._lock = threading.Condition()
        self._queue: List[Job] = []
        self._running: Dict[int, List[Job]] = {}
        self._busy_hosts: Dict[str, int] = {}
        self._num_running = 0
        # cancels still killing: FINALIZE waits for them too, or the driver could
        # exit while a cancelled action's processes still live
        self._cancelling = 0
        self.finalizing = False

    # -- requests -----------------------------------------------------------
    def submit(self, request: Request) -> Optional[Job]:
        """Queue a request; None once FINALIZE was received (Ruby ignores it then)."""
        host = self._lookup_host(request) if self._single_host else None
        job = Job(request, host)
        job.scope.name = f"{request.action}-{request.msg_id}"
        with self._lock:
            if self.finalizing:
                return None
            self._queue.append(job)
            self._dispatch()
            return job

    def cancel(self, action_id: int) -> Optional[Job]:
        """DRIVER_CANCEL: stop the newest running action of that id, else drop the
        first queued one (Ruby's ``cancel_action``: its running actions are kept
        by id, the newest replacing older ones).

        Killing happens in the background (it may wait a grace period for the
        processes to end), so the request loop is never held up.
        """
        with self._lock:
            running = self._running.get(action_id, [])
            if not running:
                for i, job in enumerate(self._queue):
                    if job.action_id == action_id:
                        del self._queue[i]
                        job.gate.shut()
                        self._lock.notify_all()
                        return job
                return None
            job = running[-1]
            job.gate.shut()
            self._cancelling += 1
        threading.Thread(target=self._cancel, args=(job,), daemon=True,
                         name=f"cancel-{action_id}").start()
        return job

    def _cancel(self, job: Job) -> None:
        try:
            job.scope.cancel()
        finally:
            with self._lock:
                self._cancelling -= 1
                self._lock.notify_all()

    def finalize(self) -> None:
        with self._lock:
            self.finalizing = True
            self._lock.notify_all()

    def wait_finished(self, timeout: Optional[float] = None) -> bool:
        """After FINALIZE: True once nothing is queued, running or still being killed."""
        with self._lock:
            return self._lock.wait_for(
                lambda: (self.finalizing and not self._queue and self._num_running == 0
                         and self._cancelling == 0),
                timeout)

    def stop_all(self, grace: float = 1.0, deadline: float = STOP_DEADLINE) -> None:
        """oned is gone (stdin EOF) or the driver is told to stop: kill everything now.

        Every running action is cancelled at once, in parallel; this returns
        when all are stopped or ``deadline`` seconds have passed.
        """
        with self._lock:
            self.finalizing = True
            for job in self._queue:
                job.gate.shut()
            self._queue.clear()
            jobs = [job for jobs in self._running.values() for job in jobs]
            for job in jobs:
                job.gate.shut()
                job.scope.grace = min(job.scope.grace, grace)
        threads = [threading.Thread(target=job.scope.cancel, daemon=True) for job in jobs]
        for t in threads:
            t.start()
        end = time.monotonic() + deadline
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))

    @property
    def running_count(self) -> int:
        with self._lock:
            return self._num_running

    # -- internals ----------------------------------------------------------
    def _lookup_host(self, request: Request) -> Optional[str]:
        try:
            return self._host_of(request)
        except Exception:  # noqa: BLE001 - an unreadable payload runs unconstrained
            return None

    def _first_runnable(self) -> Optional[int]:
        for index, job in enumerate(self._queue):
            if not job.host or job.host not in self._busy_hosts:
                return index
        return None

    def _dispatch(self) -> None:
        while self._num_running < self._concurrency:
            index = self._first_runnable()
            if index is None:
                return
            job = self._queue.pop(index)
            self._num_running += 1
            host = job.host
            if host:
                self._busy_hosts[host] = self._busy_hosts.get(host, 0) + 1
            self._running.setdefault(job.action_id, []).append(job)
            job.thread = threading.Thread(target=self._run, args=(job, host), daemon=True,
                                          name=job.scope.name)
            job.thread.start()

    def _run(self, job: Job, host: Optional[str]) -> None:
        try:
            self._execute(job)
        finally:
            with self._lock:
                self._num_running -= 1
                if host:
                    self._busy_hosts[host] -= 1
                    if not self._busy_hosts[host]:
                        del self._busy_hosts[host]
                jobs = self._running.get(job.action_id, [])
                if job in jobs:
                    jobs.remove(job)
                if not jobs:
                    self._running.pop(job.action_id, None)
                self._dispatch()
                self._lock.notify_all()
