"""The cancel scope: what it owns, when it lets go, and the order a cancel works in.

Local processes are real; the PID-reuse test hands a finished process's PID to
a new process for real (``ns_last_pid``, root only) and proves it survives.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import List

import pytest
from helpers import can_choose_pids, spawn_with_pid

from vmm_exec.cancel import Cancelled, CancelScope, detach, join_detached


def test_removed_registration_is_not_called() -> None:
    scope = CancelScope()
    calls: List[str] = []
    registration = scope.on_cancel(lambda: calls.append("removed"), "a")
    with scope.on_cancel(lambda: calls.append("scoped"), "b"):
        pass
    kept = scope.on_cancel(lambda: calls.append("kept"), "c")
    registration.remove()
    registration.remove()  # idempotent
    assert scope.live_callbacks == 1 and kept.active
    scope.cancel()
    assert calls == ["kept"]
    assert not kept.active


def test_callback_registered_after_cancel_runs_at_once() -> None:
    scope = CancelScope()
    scope.cancel()
    calls: List[str] = []
    registration = scope.on_cancel(lambda: calls.append("late"))
    assert calls == ["late"] and not registration.active
    with pytest.raises(Cancelled):
        scope.spawn(["true"])


def test_callbacks_run_in_parallel_under_one_deadline() -> None:
    """A callback stuck on an unreachable host neither delays the others nor holds
    the cancel beyond its deadline."""
    scope = CancelScope(deadline=1.0)
    started: List[float] = []
    release = threading.Event()
    scope.on_cancel(lambda: release.wait(30), "stuck host")
    for name in ("host01", "host02"):
        scope.on_cancel(lambda: started.append(time.monotonic()), name)
    begin = time.monotonic()
    scope.cancel()
    took = time.monotonic() - begin
    release.set()
    assert len(started) == 2 and all(t - begin < 0.5 for t in started)
    assert 0.9 <= took < 3.0


def test_local_groups_are_killed_before_callbacks_run() -> None:
    scope = CancelScope()
    proc = scope.spawn(["sleep", "61.5"])
    seen: List[bool] = []
    scope.on_cancel(lambda: seen.append(_got_term(proc.pid)))
    scope.cancel()
    assert proc.returncode is not None or scope.wait(proc, 3) is not None
    assert seen == [True]  # the TERM had been sent when the callback ran


def _got_term(pid: int) -> bool:
    """The process is dying or dead (a TERM was delivered): zombie, or pending TERM."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return True
    if fields.get("State", "").strip().startswith("Z"):
        return True
    pending = (int(fields.get("ShdPnd", "0").strip(), 16)
               | int(fields.get("SigPnd", "0").strip(), 16))
    return bool(pending & (1 << (signal.SIGTERM - 1)))


def test_cancel_kills_term_ignoring_group_after_grace() -> None:
    scope = CancelScope(grace=0.3)
    proc = scope.spawn(["sh", "-c", "trap '' TERM; sleep 62.5 & wait; wait"])
    time.sleep(0.2)
    begin = time.monotonic()
    scope.cancel()
    assert time.monotonic() - begin < 3
    assert scope.wait(proc, 3) is not None


def test_wait_reaps_and_releases() -> None:
    scope = CancelScope()
    proc = scope.spawn(["sh", "-c", "sleep 0.3; exit 3"])
    assert scope.wait(proc, 0) is None
    assert scope.live_processes == 1
    assert scope.wait(proc, 5) == 3
    assert scope.live_processes == 0 and proc.returncode == 3


def test_a_reaped_pid_is_never_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    scope = CancelScope()
    proc = scope.spawn(["true"])
    assert scope.wait(proc, 5) == 0
    signalled: List[int] = []
    real = os.killpg
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: (signalled.append(pgid),
                                                        real(pgid, sig)))
    scope.signal_group(proc, signal.SIGTERM)
    scope.cancel()
    assert signalled == []


@pytest.mark.skipif(not can_choose_pids(), reason="choosing PIDs needs root and ns_last_pid")
def test_cancel_spares_a_process_that_reuses_a_finished_pid() -> None:
    """The real thing: after a command ended, its PID goes to an unrelated process
    (in a session of its own, as a new group leader); cancelling the scope that ran
    the command must not touch it."""
    scope = CancelScope()
    proc = scope.spawn(["true"])
    assert scope.wait(proc, 5) == 0
    foreign = spawn_with_pid(proc.pid, ["sleep", "63.5"])
    try:
        assert os.getpgid(foreign.pid) == proc.pid
        scope.cancel()
        time.sleep(0.3)
        assert foreign.poll() is None, "an unrelated process with a reused PID was killed"
    finally:
        foreign.kill()
        foreign.wait()


def test_shielded_scope_is_not_cancelled_with_another() -> None:
    action = CancelScope("action")
    shield = CancelScope.shielded("kill")
    action.cancel()
    proc = shield.spawn(["sh", "-c", "exit 7"])
    assert shield.wait(proc, 5) == 7 and not shield.cancelled


def test_cancel_twice_and_from_many_threads_runs_callbacks_once() -> None:
    scope = CancelScope()
    calls: List[int] = []
    scope.on_cancel(lambda: calls.append(1))
    threads = [threading.Thread(target=scope.cancel) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    scope.cancel()
    assert calls == [1] and scope.cancelled


def test_detached_work_runs_without_holding_the_caller_and_can_be_joined() -> None:
    release = threading.Event()
    done: List[str] = []
    begin = time.monotonic()
    detach(lambda: (release.wait(5), done.append("killed")), "slow host")
    assert time.monotonic() - begin < 0.5
    assert join_detached(0.2) == 1
    release.set()
    assert join_detached(5) == 0 and done == ["killed"]
