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
_LOCK = threading.Lock()
_run = threading.Thread.run


def _profiled_run(self: threading.Thread) -> None:
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        _run(self)
    finally:
        profile.disable()
        with _LOCK:
            _DONE.append(profile)


def _dump(main: cProfile.Profile, path: str) -> None:
    main.disable()
    with _LOCK:
        profiles = [main, *_DONE]
    stats = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        stats.add(profile)
    stats.dump_stats(path)


def main() -> None:
    path = os.environ.get("VMM_PROFILE_OUT", "driver.prof")
    threading.Thread.run = _profiled_run  # type: ignore[method-assign]
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
