#!/usr/bin/env python3
"""How fast an idle driver leaves after FINALIZE, and after stdin EOF.

    python3 benchmarks/idle_exit.py [--runs 20] [--driver 'python3 -m vmm_exec']

oned writes FINALIZE, closes both pipes and gives a driver 10 s (polling once a
second) before SIGKILL; `one stop` and service managers wait too, so an idle
driver should be gone at once. Target: within 100 ms of either event (the Ruby
driver: about 10 ms). The driver is started as oned starts it (ARGUMENTS as one
word), answered INIT, left idle for a moment, then told FINALIZE (or its stdin
is closed); the figure is the time from that write/close to the process's exit.
Reproducible: no network, a throwaway ONE_LOCATION.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent


def one_run(command: List[str], env: dict, finalize: bool) -> float:
    proc = subprocess.Popen(command + ["-t 15 -r 0 kvm -p"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"INIT\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line.startswith(b"INIT SUCCESS"):
        proc.kill()
        raise SystemExit(f"driver answered {line!r} to INIT")
    time.sleep(0.3)  # idle: every thread waiting
    start = time.perf_counter()
    if finalize:
        proc.stdin.write(b"FINALIZE\n")
        proc.stdin.flush()
    proc.stdin.close()  # oned closes both pipes right after FINALIZE
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return float("inf")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--driver", default=f"{sys.executable} -m vmm_exec")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one"
        (one / "var" / "remotes" / "vmm" / "kvm").mkdir(parents=True)
        (one / "var" / "config").write_text("SCRIPTS_REMOTE_DIR=/var/tmp/one\n")
        env = dict(os.environ, ONE_LOCATION=str(one),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                           os.environ.get("PYTHONPATH")])))
        command = shlex.split(options.driver)
        print(f"driver: {options.driver}; {options.runs} runs each; target: < 100 ms")
        for label, finalize in (("FINALIZE + EOF", True), ("stdin EOF only", False)):
            times = sorted(one_run(command, env, finalize) * 1000 for _ in range(options.runs))
            print(f"{label:16} median {statistics.median(times):7.1f} ms   "
                  f"max {times[-1]:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
