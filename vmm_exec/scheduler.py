"""When actions run: Ruby's ``ActionManager`` with ``VirtualMachineDriver``'s single-host mode.

At most ``concurrency`` actions run at once. In single-host mode (the
default) an action waits while another action for the same HOST runs, and
the first queued action whose host is free goes next, so queued actions keep
their order otherwise. Cancelling a queued action drops it; cancelling a
running one kills its processes (the Ruby driver only killed its thread).
The scheduler knows nothing about what an action does.

Queued jobs wait in one FIFO per host; a heap of the heads whose host is free
finds the next job without scanning the queue (a storm of 2,000 requests on
busy hosts made every submit scan all of them). Actions run on worker threads
that take the next runnable job when they finish and leave after
``IDLE_EXIT`` seconds without work: no thread is started per action under load,
none is kept when the driver is idle.

Connection affinity: when the transport keeps connections (paramiko's pool),
a runnable job whose host has one may go before the oldest runnable job whose
host has none, at most ``bypass_limit`` times (default: the concurrency) for
the same oldest job, which then goes next. With more hosts than pooled
connections, strict arrival order made nearly every action pay a key exchange
(on the front-end and the host) and evict another host's connection; this way
a connection serves its host's queue, one cold host is let in per
``bypass_limit`` starts, and no job waits behind more than that many
overtakers while it is the oldest. Without a transport that keeps connections
the order is Ruby's.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AbstractSet, Callable, Deque, Dict, List, Optional, Tuple

from vmm_exec.cancel import CancelScope
from vmm_exec.protocol import Gate, Request

# how long shutdown waits for all cancelled actions together
STOP_DEADLINE = 8.0
_DONE_LOCK = threading.Lock()
# how long a worker thread without work waits for the next job before it ends
IDLE_EXIT = 5.0


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
    # ``dispatched`` once it has a place among the running (a worker takes it at once);
    # ``done`` once it has finished and left the scheduler's books (its worker, in
    # ``thread``, may go on with other jobs)
    dispatched: bool = False
    # whether ``host_of`` answered for it (it may raise on an unreadable payload)
    host_read: bool = False
    thread: Optional[threading.Thread] = None
    seq: int = 0
    # made when first asked for: an Event is about 1 KiB, and thousands of jobs
    # may wait in the queue (the queue's memory target is 1.5 x the raw lines)
    _done: Optional[threading.Event] = field(default=None, repr=False)
    _finished: bool = field(default=False, repr=False)

    @property
    def done(self) -> threading.Event:
        with _DONE_LOCK:
            if self._done is None:
                self._done = threading.Event()
                if self._finished:
                    self._done.set()
            return self._done

    def finish(self) -> None:
        """It has left the scheduler's books: ``done`` is (or will be made) set."""
        with _DONE_LOCK:
            self._finished = True
            if self._done is not None:
                self._done.set()

    @property
    def action_id(self) -> int:
        return self.request.action_id

    @property
    def msg_id(self) -> str:
        return self.request.msg_id


class Scheduler:
    """Queue, concurrency limit, one action per host, cancel and finalize."""

    def __init__(self, concurrency: int, single_host: bool, execute: Callable[[Job], None],
                 host_of: Callable[[Request], Optional[str]],
                 warm: Optional[Callable[[], AbstractSet[str]]] = None,
                 bypass_limit: Optional[int] = None) -> None:
        self._concurrency = max(1, concurrency)
        self._single_host = single_host
        self._execute = execute
        self._host_of = host_of
        # the hosts with a kept connection (called under the lock: must not take
        # a lock of its own that is held while calling the scheduler)
        self._warm = warm
        self._bypass_limit = self._concurrency if bypass_limit is None else max(0, bypass_limit)
        # (seq of the oldest runnable job, how often a warm host's job went first)
        self._passed_over: Tuple[int, int] = (-1, 0)
        books = threading.RLock()
        self._lock = threading.Condition(books)
        self._work = threading.Condition(books)  # idle workers wait here
        self._waiting: Dict[Optional[str], Deque[Job]] = {}  # per host, None: any
        self._ready: List[Tuple[int, Optional[str]]] = []  # (seq, host) of free heads
        self._queued = 0
        self._seq = itertools.count()
        self._handoff: Deque[Job] = deque()  # dispatched, for an idle worker
        self._idle_workers = 0
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
        host, read = self._lookup_host(request) if self._single_host else (None, False)
        job = Job(request, host, host_read=read)
        job.scope.name = f"{request.action}-{request.msg_id}"
        with self._lock:
            if self.finalizing:
                return None
            job.seq = next(self._seq)
            self._enqueue(job)
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
                queued = self._first_queued(action_id)
                if queued is not None:
                    self._dequeue(queued)
                    queued.gate.shut()
                    queued.finish()
                    self._lock.notify_all()
                return queued
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
                lambda: (self.finalizing and not self._queued and self._num_running == 0
                         and self._cancelling == 0),
                timeout)

    def stop_all(self, grace: float = 1.0, deadline: float = STOP_DEADLINE) -> None:
        """oned is gone (stdin EOF) or the driver is told to stop: kill everything now.

        Every running action is cancelled at once, in parallel; this returns
        when all are stopped or ``deadline`` seconds have passed.
        """
        with self._lock:
            self.finalizing = True
            for waiting in self._waiting.values():
                for job in waiting:
                    job.gate.shut()
                    job.finish()
            self._waiting.clear()
            self._ready.clear()
            self._queued = 0
            self._work.notify_all()  # idle workers leave
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
    def _lookup_host(self, request: Request) -> Tuple[Optional[str], bool]:
        try:
            return self._host_of(request), True
        except Exception:  # noqa: BLE001 - an unreadable payload runs unconstrained
            return None, False

    def _runnable(self, host: Optional[str]) -> bool:
        return host is None or host not in self._busy_hosts

    def _offer(self, host: Optional[str]) -> None:
        """Put ``host``'s first queued job among the runnable heads if its host is free
        (an entry that goes stale meanwhile is skipped by :meth:`_next_runnable`)."""
        waiting = self._waiting.get(host)
        if waiting and self._runnable(host):
            heapq.heappush(self._ready, (waiting[0].seq, host))

    def _enqueue(self, job: Job) -> None:
        host = job.host or None
        waiting = self._waiting.get(host)
        if waiting is None:
            waiting = self._waiting[host] = deque()
        waiting.append(job)
        self._queued += 1
        if len(waiting) == 1:  # a new head
            self._offer(host)

    def _dequeue(self, job: Job) -> None:
        """Take a queued job out (a cancel); its host's next job may become a head."""
        host = job.host or None
        waiting = self._waiting[host]
        waiting.remove(job)
        self._queued -= 1
        if not waiting:
            del self._waiting[host]
        else:
            self._offer(host)

    def _first_queued(self, action_id: int) -> Optional[Job]:
        found: Optional[Job] = None
        for waiting in self._waiting.values():
            for job in waiting:
                if job.action_id == action_id and (found is None or job.seq < found.seq):
                    found = job
                    break
        return found

    def _next_runnable(self) -> Optional[Job]:
        """The first queued job (in arrival order) whose host is free, or one that may
        overtake it (connection affinity), taken off the queue.

        Heap entries go stale when their job left (cancelled, run) or its host got
        busy; they are dropped here instead of being searched for."""
        ready = self._ready
        while ready:
            seq, host = ready[0]
            waiting = self._waiting.get(host)
            if not waiting or waiting[0].seq != seq or not self._runnable(host):
                heapq.heappop(ready)
                continue
            overtaker = self._overtaker(seq, host)
            if overtaker is not None:
                return self._take(overtaker)  # its heap entry goes stale
            heapq.heappop(ready)
            return self._take(host)
        return None

    def _overtaker(self, oldest_seq: int, oldest_host: Optional[str]) -> Optional[str]:
        """A host with a kept connection whose first job may start before the oldest
        runnable one (on a host without), within the bypass limit."""
        if self._warm is None or oldest_host is None:
            return None
        warm = self._warm()
        if not warm or oldest_host in warm:
            return None
        best: Optional[Tuple[int, str]] = None
        for host in warm:
            waiting = self._waiting.get(host)
            if waiting and self._runnable(host) and (best is None or waiting[0].seq < best[0]):
                best = (waiting[0].seq, host)
        if best is None:
            return None
        passed_seq, times = self._passed_over
        if passed_seq != oldest_seq:
            times = 0
        if times >= self._bypass_limit:
            return None
        self._passed_over = (oldest_seq, times + 1)
        return best[1]

    def _take(self, host: Optional[str]) -> Job:
        """Take ``host``'s first queued job off the queue."""
        waiting = self._waiting[host]
        job = waiting.popleft()
        self._queued -= 1
        if not waiting:
            del self._waiting[host]
        elif host is None:  # unconstrained jobs: the next one is runnable too
            self._offer(None)
        return job

    def _dispatch(self) -> None:
        """Start queued jobs while there is room: on an idle worker, else a new one."""
        while self._num_running < self._concurrency:
            job = self._next_runnable()
            if job is None:
                return
            self._book(job)
            if self._idle_workers > len(self._handoff):
                self._handoff.append(job)
                self._work.notify()
            else:
                thread = threading.Thread(target=self._worker, args=(job,), daemon=True,
                                          name=job.scope.name)
                job.thread = thread
                thread.start()

    def _book(self, job: Job) -> None:
        job.dispatched = True
        self._num_running += 1
        host = job.host
        if host:
            self._busy_hosts[host] = self._busy_hosts.get(host, 0) + 1
        self._running.setdefault(job.action_id, []).append(job)

    def _unbook(self, job: Job) -> None:
        self._num_running -= 1
        host = job.host
        if host:
            self._busy_hosts[host] -= 1
            if not self._busy_hosts[host]:
                del self._busy_hosts[host]
                self._offer(host)
        jobs = self._running.get(job.action_id, [])
        if job in jobs:
            jobs.remove(job)
        if not jobs:
            self._running.pop(job.action_id, None)

    def _worker(self, job: Job) -> None:
        me = threading.current_thread()
        while True:
            job.thread = me
            me.name = job.scope.name
            follow: Optional[Job] = None
            returned = False
            try:
                self._execute(job)
                returned = True
            finally:
                with self._lock:
                    self._unbook(job)
                    job.finish()
                    # this worker goes on with the next job itself (a new thread
                    # for it while this one idles would double the threads); one
                    # that is raising leaves the next job to a new thread
                    if returned and self._num_running < self._concurrency:
                        follow = self._next_runnable()
                        if follow is not None:
                            self._book(follow)
                    self._dispatch()
                    self._lock.notify_all()
            if follow is not None:
                job = follow
                continue
            with self._lock:
                self._idle_workers += 1
                try:
                    self._work.wait_for(lambda: self._handoff or self.finalizing, IDLE_EXIT)
                    if not self._handoff:
                        return
                    job = self._handoff.popleft()
                finally:
                    self._idle_workers -= 1
