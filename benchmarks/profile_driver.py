"""Run the driver (``python -m vmm_exec ARGS``) under cProfile, every thread, CPU time.

    VMM_PROFILE_OUT=driver.prof python3 benchmarks/profile_driver.py -t 15 kvm

cProfile profiles only the thread that enables it, and the driver works in
its action threads; this wraps ``threading.Thread.run`` so that each thread
gets a profiler timed by ``time.thread_time`` (CPU, not wall clock: waiting
on a host costs nothing), and merges the finished threads' profiles with the
main thread's into one pstats file when the driver calls ``os._exit``.
``benchmarks/storm.py --cprofile DIR`` uses it.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import runpy
import sys
import threading
import time
from typing import Any, List, NoReturn

_DONE: List[cProfile.Profile] = []
_LOCK = threading.Condition()
_LIVE = [0]  # profiled threads still running
_run = threading.Thread.run
# the scheduler's workers wait this long for more work before they end; short here,
# so that their profiles are finished (and merged) when the driver exits
WORKER_IDLE_EXIT = 0.05


def _profiled_run(self: threading.Thread) -> None:
    profile = cProfile.Profile(time.thread_time)
    with _LOCK:
        _LIVE[0] += 1
    profile.enable()
    try:
        _run(self)
    finally:
        profile.disable()
        with _LOCK:
            _DONE.append(profile)
            _LIVE[0] -= 1
            _LOCK.notify_all()


def _dump(main: cProfile.Profile, path: str) -> None:
    main.disable()
    with _LOCK:
        # idle workers end within WORKER_IDLE_EXIT; others (readers of ended
        # commands) within moments; what still runs after a second is left out
        _LOCK.wait_for(lambda: _LIVE[0] <= 0, 1.0)
        profiles = [main, *_DONE]
    stats = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        stats.add(profile)
    stats.dump_stats(path)


def main() -> None:
    path = os.environ.get("VMM_PROFILE_OUT", "driver.prof")
    threading.Thread.run = _profiled_run  # type: ignore[method-assign]
    import vmm_exec.scheduler

    vmm_exec.scheduler.IDLE_EXIT = WORKER_IDLE_EXIT
    profile = cProfile.Profile(time.thread_time)
    real_exit = os._exit

    def exit_after_dump(code: int) -> NoReturn:
        try:
            _dump(profile, path)
        finally:
            real_exit(code)

    os._exit = exit_after_dump  # type: ignore[assignment]
    sys.argv = ["vmm_exec", *sys.argv[1:]]
    profile.enable()
    try:
        runpy.run_module("vmm_exec", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        _dump(profile, path)
        code: Any = exc.code
        raise SystemExit(code) from None


if __name__ == "__main__":
    main()
