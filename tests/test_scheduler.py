"""The scheduler: ActionManager's concurrency limit, VirtualMachineDriver's single-host
mode, DRIVER_CANCEL, FINALIZE and the stop on stdin EOF. Every wait is bounded."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Set

import pytest
from helpers import process_alive, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm_exec.cancel import CancelScope
from vmm_exec.protocol import Request
from vmm_exec.scheduler import Job, Scheduler

WAIT = 5.0


class FakeExecute:
    """An ``execute`` that records start/stop and blocks until released (or cancelled)."""

    def __init__(self, hosts: Dict[str, Optional[str]], spawn: bool = False) -> None:
        self.hosts = hosts
        self.spawn = spawn
        self.lock = threading.Lock()
        self.events: List[tuple] = []
        self.running: Set[str] = set()
        self.max_running = 0
        self.max_per_host: Counter = Counter()
        self.releases: Dict[str, threading.Event] = {}
        self.procs: Dict[str, subprocess.Popen] = {}

    def release_event(self, msg_id: str) -> threading.Event:
        with self.lock:
            return self.releases.setdefault(msg_id, threading.Event())

    def release(self, *msg_ids: object) -> None:
        for msg_id in msg_ids:
            self.release_event(str(msg_id)).set()

    def release_all(self) -> None:
        with self.lock:
            events = list(self.releases.values())
        for event in events:
            event.set()

    def __call__(self, job: Job) -> None:
        event = self.release_event(job.msg_id)
        with self.lock:
            self.events.append(("start", job.msg_id))
            self.running.add(job.msg_id)
            self.max_running = max(self.max_running, len(self.running))
            host = self.hosts.get(job.msg_id)
            if host:
                same = sum(1 for other in self.running if self.hosts.get(other) == host)
                self.max_per_host[host] = max(self.max_per_host[host], same)
        try:
            if self.spawn:
                proc = job.scope.spawn(["sleep", "30"])
                with self.lock:
                    self.procs[job.msg_id] = proc
                if job.scope.wait(proc, WAIT * 2) is None:
                    job.scope.stop(proc, 0)
            else:
                deadline = time.monotonic() + WAIT * 2
                while not event.wait(0.01):
                    if job.scope.cancelled or time.monotonic() > deadline:
                        break
        finally:
            with self.lock:
                self.events.append(("stop", job.msg_id))
                self.running.discard(job.msg_id)

    def started(self) -> List[str]:
        with self.lock:
            return [msg_id for kind, msg_id in self.events if kind == "start"]

    def stopped(self) -> List[str]:
        with self.lock:
            return [msg_id for kind, msg_id in self.events if kind == "stop"]

    def wait_started(self, *msg_ids: object) -> None:
        wanted = {str(m) for m in msg_ids}
        wait_until(lambda: wanted <= set(self.started()), WAIT,
                   what=f"start of {sorted(wanted)} (events {self.events})")

    def wait_stopped(self, *msg_ids: object) -> None:
        wanted = {str(m) for m in msg_ids}
        wait_until(lambda: wanted <= set(self.stopped()), WAIT,
                   what=f"stop of {sorted(wanted)} (events {self.events})")

    def settle(self, seconds: float = 0.2) -> None:
        """Give a wrongly dispatched job the chance to show up."""
        time.sleep(seconds)


def request(msg_id: object, action: str = "POLL") -> Request:
    return Request(action, int(msg_id), str(msg_id), "")


class Harness:
    def __init__(self, concurrency: int, single_host: bool, hosts: Dict[object, Optional[str]],
                 spawn: bool = False, **options: Any) -> None:
        self.hosts = {str(k): v for k, v in hosts.items()}
        self.fake = FakeExecute(self.hosts, spawn=spawn)
        self.scheduler = Scheduler(concurrency, single_host, self.fake, self.host_of, **options)
        self.jobs: Dict[str, Job] = {}

    def host_of(self, r: Request) -> Optional[str]:
        host = self.hosts[r.msg_id]
        if host == "RAISE":
            raise ValueError("unreadable payload")
        return host

    def submit(self, *msg_ids: object) -> List[bool]:
        results = []
        for msg_id in msg_ids:
            j = self.scheduler.submit(request(msg_id))
            if j is not None:
                self.jobs[j.msg_id] = j
            results.append(j is not None)
        return results


@pytest.fixture
def harnesses() -> Iterator[List[Harness]]:
    made: List[Harness] = []
    yield made
    for harness in made:
        harness.scheduler.stop_all(grace=0.5)
        harness.fake.release_all()


@pytest.fixture
def make(harnesses: List[Harness]):  # noqa: ANN201
    def factory(concurrency: int, single_host: bool, hosts: Dict[object, Optional[str]],
                spawn: bool = False, **options: Any) -> Harness:
        harness = Harness(concurrency, single_host, hosts, spawn, **options)
        harnesses.append(harness)
        return harness
    return factory


# --------------------------------------------------------------------------------------
# concurrency and single-host scheduling
# --------------------------------------------------------------------------------------


def test_concurrency_limit(make) -> None:  # noqa: ANN001
    h = make(2, True, {i: f"h{i}" for i in range(1, 7)})
    assert h.submit(1, 2, 3, 4, 5, 6) == [True] * 6
    h.fake.wait_started(1, 2)
    h.fake.settle()
    assert h.fake.started() == ["1", "2"]
    assert h.scheduler.running_count == 2
    h.fake.release(1)
    h.fake.wait_started(3)
    h.fake.settle()
    assert h.fake.started() == ["1", "2", "3"]
    h.fake.release(2, 3, 4, 5, 6)
    h.fake.wait_stopped(1, 2, 3, 4, 5, 6)
    assert h.fake.max_running == 2
    assert sorted(h.fake.started()) == ["1", "2", "3", "4", "5", "6"]


def test_concurrency_below_one_means_one(make) -> None:  # noqa: ANN001
    h = make(0, False, {1: None, 2: None})
    h.submit(1, 2)
    h.fake.wait_started(1)
    h.fake.settle()
    assert h.fake.started() == ["1"]
    h.fake.release(1, 2)
    h.fake.wait_stopped(1, 2)


def test_single_host_never_runs_two_jobs_of_a_host(make) -> None:  # noqa: ANN001
    h = make(10, True, {1: "h1", 2: "h1", 3: "h2", 4: "h1", 5: "h3"})
    h.submit(1, 2, 3, 4, 5)
    h.fake.wait_started(1, 3, 5)
    h.fake.settle()
    assert set(h.fake.started()) == {"1", "3", "5"}
    h.fake.release(1)
    h.fake.wait_started(2)
    h.fake.settle()
    assert "4" not in h.fake.started()
    h.fake.release(2)
    h.fake.wait_started(4)
    h.fake.release(3, 4, 5)
    h.fake.wait_stopped(1, 2, 3, 4, 5)
    assert h.fake.max_per_host["h1"] == 1
    h1_order = [m for m in h.fake.started() if h.hosts[m] == "h1"]
    assert h1_order == ["1", "2", "4"]


def test_free_host_overtakes_blocked_job(make) -> None:  # noqa: ANN001
    h = make(2, True, {1: "h1", 2: "h1", 3: "h2"})
    h.submit(1, 2, 3)
    h.fake.wait_started(1, 3)
    h.fake.settle()
    assert h.fake.started() == ["1", "3"]
    h.fake.release(1, 2, 3)
    h.fake.wait_stopped(1, 2, 3)
    assert h.fake.started() == ["1", "3", "2"]


def test_order_kept_otherwise(make) -> None:  # noqa: ANN001
    h = make(1, True, {1: "a", 2: None, 3: "b", 4: "RAISE", 5: "c", 6: ""})
    h.submit(1, 2, 3, 4, 5, 6)
    for msg_id in ("1", "2", "3", "4", "5", "6"):
        h.fake.wait_started(msg_id)
        h.fake.release(msg_id)
    h.fake.wait_stopped(1, 2, 3, 4, 5, 6)
    assert h.fake.started() == ["1", "2", "3", "4", "5", "6"]
    assert h.fake.max_running == 1


def test_jobs_without_a_readable_host_are_unconstrained(make) -> None:  # noqa: ANN001
    h = make(10, True, {1: None, 2: None, 3: "RAISE", 4: "RAISE", 5: ""})
    h.submit(1, 2, 3, 4, 5)
    h.fake.wait_started(1, 2, 3, 4, 5)
    h.fake.release(1, 2, 3, 4, 5)
    h.fake.wait_stopped(1, 2, 3, 4, 5)


def test_jobs_tell_whether_the_host_lookup_answered(make) -> None:  # noqa: ANN001
    """``host_read``: the lookup returned (a host or None) rather than raised; the
    driver's lookup returns only for a well-formed payload."""
    h = make(10, True, {1: "h1", 2: None, 3: "RAISE"})
    h.submit(1, 2, 3)
    assert [h.jobs[m].host_read for m in ("1", "2", "3")] == [True, True, False]
    assert [h.jobs[m].host for m in ("1", "2", "3")] == ["h1", None, None]
    parallel = make(10, False, {4: "h1"})
    parallel.submit(4)
    assert parallel.jobs["4"].host_read is False  # no lookup in parallel mode
    h.fake.release(1, 2, 3)
    parallel.fake.release(4)
    h.fake.wait_stopped(1, 2, 3)
    parallel.fake.wait_stopped(4)


def test_parallel_mode_only_the_limit_applies(make) -> None:  # noqa: ANN001
    h = make(3, False, {i: "h1" for i in range(1, 6)})
    h.submit(1, 2, 3, 4, 5)
    h.fake.wait_started(1, 2, 3)
    h.fake.settle()
    assert h.fake.started() == ["1", "2", "3"]
    h.fake.release(2)
    h.fake.wait_started(4)
    h.fake.release(1, 3, 4, 5)
    h.fake.wait_stopped(1, 2, 3, 4, 5)
    assert h.fake.max_running == 3
    assert h.fake.max_per_host["h1"] == 3


# --------------------------------------------------------------------------------------
# cancel
# --------------------------------------------------------------------------------------


def test_cancel_queued_job_removes_it(make) -> None:  # noqa: ANN001
    h = make(1, True, {1: "h1", 2: "h2", 3: "h3"})
    h.submit(1, 2, 3)
    h.fake.wait_started(1)
    cancelled = h.scheduler.cancel(2)
    assert cancelled is h.jobs["2"]
    assert not cancelled.gate.open
    assert not cancelled.scope.cancelled
    assert h.scheduler.cancel(99) is None
    h.fake.release(1)
    h.fake.wait_started(3)
    h.fake.release(3)
    h.fake.wait_stopped(1, 3)
    h.fake.settle()
    assert "2" not in h.fake.started()
    assert h.jobs["2"].thread is None and not h.jobs["2"].dispatched


def test_cancel_queued_job_of_a_blocked_host(make) -> None:  # noqa: ANN001
    h = make(5, True, {1: "h1", 2: "h1", 3: "h1"})
    h.submit(1, 2, 3)
    h.fake.wait_started(1)
    assert h.scheduler.cancel(2) is h.jobs["2"]
    h.fake.release(1)
    h.fake.wait_started(3)
    h.fake.release(3)
    h.fake.wait_stopped(1, 3)
    assert h.fake.started() == ["1", "3"]


def test_cancel_running_job_cancels_its_scope_and_shuts_its_gate(make) -> None:  # noqa: ANN001
    h = make(5, True, {1: "h1", 2: "h1"}, spawn=True)
    h.submit(1, 2)
    h.fake.wait_started(1)
    wait_until(lambda: "1" in h.fake.procs, WAIT, what="sleep spawned")
    proc = h.fake.procs["1"]
    j1 = h.jobs["1"]
    assert isinstance(j1.scope, CancelScope)
    start = time.monotonic()
    assert h.scheduler.cancel(1) is j1
    assert time.monotonic() - start < 1.0  # the request loop is never held up
    assert not j1.gate.open
    wait_until(lambda: j1.scope.cancelled, WAIT, what="scope cancelled")
    wait_until(lambda: proc.poll() is not None, WAIT, what="sleep killed")
    assert not process_alive(proc.pid)
    # the host is free again: job 2 runs (and is released by its own cancel)
    h.fake.wait_started(2)
    assert h.jobs["2"].gate.open and not h.jobs["2"].scope.cancelled
    h.scheduler.cancel(2)
    h.fake.wait_stopped(1, 2)


def test_cancel_running_job_that_started_nothing(make) -> None:  # noqa: ANN001
    h = make(1, True, {7: "h1", 8: "h2"})
    h.submit(7, 8)
    h.fake.wait_started(7)
    j7 = h.jobs["7"]
    h.scheduler.cancel(7)
    assert not j7.gate.open
    wait_until(lambda: j7.scope.cancelled, WAIT, what="scope cancelled")
    h.fake.wait_stopped(7)
    h.fake.wait_started(8)
    h.fake.release(8)
    h.fake.wait_stopped(8)


def test_cancel_stops_only_the_newest_running_action_of_an_id(make) -> None:  # noqa: ANN001
    """Ruby keeps running actions by id (the newest replaces older ones) and cancels
    only that one; the older action with the same id goes on and answers."""
    h = make(5, False, {})
    old = h.scheduler.submit(Request("POLL", 5, "5", ""))
    h.fake.wait_started(5)
    new = h.scheduler.submit(Request("SHUTDOWN", 5, "5", ""))
    assert old is not None and new is not None
    assert new.dispatched
    assert h.scheduler.cancel(5) is new
    wait_until(lambda: new.scope.cancelled, WAIT, what="newest cancelled")
    assert old.gate.open and not old.scope.cancelled
    h.fake.release(5)
    h.fake.wait_stopped(5)


# --------------------------------------------------------------------------------------
# finalize and stop_all
# --------------------------------------------------------------------------------------


def test_finalize_waits_for_queued_and_running_jobs(make) -> None:  # noqa: ANN001
    h = make(1, True, {1: "h1", 2: "h2", 3: "h3"})
    assert h.scheduler.wait_finished(0.05) is False  # not finalizing yet
    h.submit(1, 2)
    h.fake.wait_started(1)
    h.scheduler.finalize()
    assert h.scheduler.finalizing
    assert h.scheduler.wait_finished(0.2) is False
    assert h.submit(3) == [False]
    h.fake.release(1)
    h.fake.wait_started(2)
    assert h.scheduler.wait_finished(0.2) is False
    h.fake.release(2)
    assert h.scheduler.wait_finished(WAIT) is True
    h.fake.settle(0.1)
    assert h.fake.started() == ["1", "2"]
    assert "3" not in h.jobs


def test_finalize_waits_for_a_cancel_still_killing(make) -> None:  # noqa: ANN001
    """FINALIZE right after DRIVER_CANCEL: the action's thread is gone at once, but
    the driver may not exit while the cancel is still killing its processes."""
    h = make(2, True, {1: "h1"})
    h.submit(1)
    h.fake.wait_started(1)
    killing = threading.Event()
    release = threading.Event()
    h.jobs["1"].scope.on_cancel(lambda: (killing.set(), release.wait(WAIT)), "slow kill")
    h.scheduler.cancel(1)
    h.scheduler.finalize()
    assert killing.wait(WAIT)
    h.fake.wait_stopped(1)
    assert h.scheduler.wait_finished(0.3) is False
    release.set()
    assert h.scheduler.wait_finished(WAIT) is True


def test_finalize_when_idle(make) -> None:  # noqa: ANN001
    h = make(2, True, {})
    h.scheduler.finalize()
    assert h.scheduler.wait_finished(1.0) is True


def test_finalize_from_another_thread_wakes_waiter(make) -> None:  # noqa: ANN001
    h = make(2, True, {1: "h1"})
    h.submit(1)
    h.fake.wait_started(1)
    h.scheduler.finalize()
    result: List[bool] = []
    waiter = threading.Thread(target=lambda: result.append(h.scheduler.wait_finished(WAIT)))
    waiter.start()
    time.sleep(0.1)
    h.fake.release(1)
    waiter.join(WAIT + 1)
    assert result == [True]


def test_stop_all_cancels_everything(make) -> None:  # noqa: ANN001
    h = make(2, True, {1: "h1", 2: "h2", 3: "h3", 4: "h1"}, spawn=True)
    h.submit(1, 2, 3, 4)
    h.fake.wait_started(1, 2)
    wait_until(lambda: {"1", "2"} <= set(h.fake.procs), WAIT, what="sleeps spawned")
    start = time.monotonic()
    h.scheduler.stop_all(grace=0.5)
    assert time.monotonic() - start < 4.0
    for msg_id in ("1", "2", "3", "4"):
        assert not h.jobs[msg_id].gate.open
    assert h.jobs["1"].scope.cancelled and h.jobs["2"].scope.cancelled
    for msg_id in ("1", "2"):
        proc = h.fake.procs[msg_id]
        wait_until(lambda p=proc: p.poll() is not None, WAIT, what="sleep killed")
    h.fake.wait_stopped(1, 2)
    assert h.scheduler.wait_finished(WAIT) is True
    assert h.submit(5) == [False]
    h.fake.settle()
    assert sorted(h.fake.started()) == ["1", "2"]


# --------------------------------------------------------------------------------------
# the Ruby rule as a model
# --------------------------------------------------------------------------------------


class Model:
    """ActionManager + get_first_runable_single_host, step by step; with ``warm``
    (hosts with a kept connection), connection affinity as the scheduler's doc
    states it: a warm host's first runnable job may go before the oldest runnable
    job on a cold host, at most ``bypass_limit`` times for the same oldest job."""

    def __init__(self, limit: int, single_host: bool, hosts: Dict[str, Optional[str]],
                 warm: Optional[Set[str]] = None, bypass_limit: int = 0) -> None:
        self.limit = max(1, limit)
        self.single_host = single_host
        self.hosts = hosts
        self.warm = warm
        self.bypass_limit = bypass_limit
        self.passed_over: Dict[str, int] = {}
        self.queue: List[str] = []
        self.running: List[str] = []

    def _busy(self) -> Set[Optional[str]]:
        return {self.hosts[j] for j in self.running if self.hosts[j]}

    def _pick(self) -> Optional[int]:
        runnable = [index for index, candidate in enumerate(self.queue)
                    if not self.single_host or not self.hosts[candidate]
                    or self.hosts[candidate] not in self._busy()]
        if not runnable:
            return None
        oldest = self.queue[runnable[0]]
        host = self.hosts[oldest]
        if self.warm and host and host not in self.warm:
            warm = [i for i in runnable if self.hosts[self.queue[i]] in self.warm]
            if warm and self.passed_over.get(oldest, 0) < self.bypass_limit:
                self.passed_over[oldest] = self.passed_over.get(oldest, 0) + 1
                return warm[0]
        return runnable[0]

    def _dispatch(self) -> None:
        while len(self.running) < self.limit:
            index = self._pick()
            if index is None:
                return
            self.running.append(self.queue.pop(index))

    def submit(self, msg_id: str) -> None:
        self.queue.append(msg_id)
        self._dispatch()

    def finish(self, msg_id: str) -> None:
        self.running.remove(msg_id)
        self._dispatch()


class ModelRun:
    """The scheduler and the model driven side by side, compared after every step."""

    def __init__(self, limit: int, single_host: bool, warm: Optional[Set[str]] = None,
                 bypass_limit: int = 0) -> None:
        self.hosts: Dict[str, Optional[str]] = {}
        self.fake = FakeExecute(self.hosts)
        options: Dict[str, Any] = {}
        if warm is not None:
            options = {"warm": lambda: frozenset(warm), "bypass_limit": bypass_limit}
        self.scheduler = Scheduler(limit, single_host, self.fake,
                                   lambda r: self.hosts[r.msg_id], **options)
        self.model = Model(limit, single_host, self.hosts, warm, bypass_limit)
        self.jobs: Dict[str, Job] = {}
        self.finished: Set[str] = set()

    def submit(self, msg_id: str, host: Optional[str]) -> None:
        self.hosts[msg_id] = host
        submitted = self.scheduler.submit(request(msg_id))
        assert submitted is not None
        self.jobs[msg_id] = submitted
        self.model.submit(msg_id)

    def finish(self, msg_id: str) -> None:
        self.fake.release(msg_id)
        assert self.jobs[msg_id].done.wait(WAIT)
        with self.scheduler._lock:  # white-box: the worker's follow-up dispatch is over
            pass
        self.finished.add(msg_id)
        self.model.finish(msg_id)

    def check(self) -> None:
        dispatched = {m for m, j in self.jobs.items() if j.dispatched} - self.finished
        assert dispatched == set(self.model.running)
        assert len(self.model.running) <= self.model.limit

    def drain(self) -> None:
        while self.model.running:
            self.finish(self.model.running[0])
            self.check()
        assert not self.model.queue
        self.scheduler.finalize()
        assert self.scheduler.wait_finished(WAIT)

    def close(self) -> None:
        self.scheduler.stop_all(grace=0.2)
        self.fake.release_all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.booleans(), st.data())
def test_scheduler_follows_the_ruby_model(limit: int, single_host: bool,
                                          data: st.DataObject) -> None:
    run = ModelRun(limit, single_host)
    try:
        for step in range(data.draw(st.integers(1, 20))):
            if run.model.running and data.draw(st.booleans()):
                run.finish(data.draw(st.sampled_from(sorted(run.model.running))))
            else:
                run.submit(str(step), data.draw(st.sampled_from(["h1", "h2", "h3", None])))
            run.check()
        run.drain()
    finally:
        run.close()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(0, 3), st.data())
def test_scheduler_follows_the_affinity_model(limit: int, bypass_limit: int,
                                              data: st.DataObject) -> None:
    """With a transport that keeps connections, the order is the model's, whatever
    the warm hosts do between steps; no job is passed over more than the limit."""
    warm: Set[str] = set()
    run = ModelRun(limit, True, warm, bypass_limit)
    try:
        for step in range(data.draw(st.integers(1, 30))):
            choice = data.draw(st.integers(0, 2))
            if choice == 0:
                changed = data.draw(st.sets(st.sampled_from(["h1", "h2", "h3", "h4"])))
                warm.clear()
                warm.update(changed)
            elif choice == 1 and run.model.running:
                run.finish(data.draw(st.sampled_from(sorted(run.model.running))))
            else:
                run.submit(str(step), data.draw(st.sampled_from(["h1", "h2", "h3", "h4", None])))
            run.check()
        run.drain()
        assert max(run.model.passed_over.values(), default=0) <= bypass_limit
    finally:
        run.close()


def test_a_warm_host_goes_first_at_most_bypass_limit_times(make) -> None:  # noqa: ANN001
    """Job 1's host has no connection, host w has one: w's jobs 2 and 3 overtake
    job 1 (limit 2), then job 1 goes before w's next ones."""
    hosts = {0: "x", 1: "cold", 2: "w", 3: "w", 4: "w", 5: "w"}
    h = make(1, True, hosts, warm=lambda: {"w"}, bypass_limit=2)
    h.submit(0, 1, 2, 3, 4, 5)
    for msg_id in (0, 2, 3, 1, 4, 5):
        h.fake.wait_started(msg_id)
        h.fake.release(msg_id)
    h.fake.wait_stopped(0, 1, 2, 3, 4, 5)
    assert h.fake.started() == ["0", "2", "3", "1", "4", "5"]


def test_no_warm_hosts_keeps_arrival_order(make) -> None:  # noqa: ANN001
    hosts = {0: "x", 1: "cold", 2: "w", 3: "w"}
    h = make(1, True, hosts, warm=frozenset, bypass_limit=5)
    h.submit(0, 1, 2, 3)
    for msg_id in (0, 1, 2, 3):
        h.fake.wait_started(msg_id)
        h.fake.release(msg_id)
    h.fake.wait_stopped(0, 1, 2, 3)
    assert h.fake.started() == ["0", "1", "2", "3"]


def test_queued_requests_cost_about_their_text() -> None:
    """The queue keeps each request's text, not its decoded tree (10,000 queued POLLs
    once took 661 MB): 300 queued 8 KB requests stay within 1.5 × their bytes."""
    import base64
    import tracemalloc

    from vmm_exec.driver import host_of

    release = threading.Event()
    scheduler = Scheduler(1, True, lambda job: release.wait(WAIT), host_of)
    filler = "<DISK><SOURCE>/var/lib/one/datastores/1/abcdef</SOURCE></DISK>" * 90
    payloads = [base64.b64encode(
        f"<VMM_DRIVER_ACTION_DATA><HOST>h1</HOST><VM><ID>{i}</ID><TEMPLATE>{filler}"
        f"</TEMPLATE></VM></VMM_DRIVER_ACTION_DATA>".encode()).decode() for i in range(301)]
    try:
        scheduler.submit(Request("POLL", 0, "0", payloads[0]))  # runs, and blocks h1
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1, 301):
            scheduler.submit(Request("POLL", i, str(i), payloads[i]))
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    finally:
        release.set()
        scheduler.stop_all(grace=0.2)
    raw = sum(len(p) for p in payloads[1:])
    # the payload strings exist before they are queued: what the queue adds per
    # request is bookkeeping only
    assert grown < 0.5 * raw, f"queueing {raw} bytes of requests allocated {grown} bytes"


def test_workers_are_reused_and_leave_when_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load an action runs on a worker that finished another one (no thread per
    action); once there is no work, the workers end."""
    from vmm_exec import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "IDLE_EXIT", 0.3)
    threads: List[threading.Thread] = []  # the objects: a thread id can be reused
    lock = threading.Lock()

    def execute(job: Job) -> None:
        with lock:
            if not any(t is threading.current_thread() for t in threads):
                threads.append(threading.current_thread())
        time.sleep(0.002)

    hosts = [f"h{i}" for i in range(7)]
    scheduler = Scheduler(3, True, execute, lambda r: hosts[int(r.msg_id) % len(hosts)])
    jobs = [scheduler.submit(request(i)) for i in range(120)]
    try:
        for job in jobs:
            assert job is not None and job.done.wait(WAIT)
        assert 1 <= len(threads) <= 3 * 2, threads  # 120 actions, a handful of threads
        wait_until(lambda: not any(t.is_alive() for t in threads), WAIT,
                   what="idle workers to end")
        # and a new request after that still runs
        later = scheduler.submit(request(999))
        assert later is not None and later.done.wait(WAIT)
    finally:
        scheduler.stop_all(grace=0.2)


def test_a_raising_action_does_not_strand_the_next_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """``execute`` is not supposed to raise (the driver answers every failure); if it
    does, the worker's books are kept and the queued job still runs."""
    ran: List[str] = []
    raised: List[object] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_type))

    def execute(job: Job) -> None:
        ran.append(job.msg_id)
        if job.msg_id == "1":
            raise RuntimeError("boom")

    scheduler = Scheduler(1, True, execute, lambda r: "h1")
    try:
        first, second = scheduler.submit(request(1)), scheduler.submit(request(2))
        assert first is not None and second is not None
        assert first.done.wait(WAIT) and second.done.wait(WAIT)
        assert ran == ["1", "2"] and scheduler.running_count == 0
        wait_until(lambda: raised == [RuntimeError], WAIT, what="the worker's exception")
    finally:
        scheduler.stop_all(grace=0.2)
