#!/usr/bin/env python3
"""Driver throughput and footprint: POLL requests answered per second.

    python3 benchmarks/throughput.py [--requests 500] [--hosts 20] [--threads 15]

Runs the real driver through the simulated oned with `-l poll` (the poll
script is a trivial local shell script, so the figure is the driver's own
overhead: protocol, scheduling, base64/XML, process spawning), then prints
requests/s, the median and 95th percentile latency and the driver's peak RSS.
Also times the XML work of one action (decode + vnm view + serialisation)
on a recorded payload. Reproducible: no network, no randomness.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmm_exec import message  # noqa: E402
from vmm_exec.testing.simoned import SimulatedOned  # noqa: E402


def make_world(root: Path) -> dict:
    one = root / "one"
    (one / "var").mkdir(parents=True)
    (one / "var" / "config").write_text("SCRIPTS_REMOTE_DIR=/var/tmp/one\n")
    script = one / "var" / "remotes" / "vmm" / "kvm" / "poll"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho STATE=a CPU=1.0\n")
    script.chmod(0o755)
    return dict(os.environ, ONE_LOCATION=str(one), PRIORITY="0")


def poll_xml(vm: int, host: str) -> str:
    return (f"<VMM_DRIVER_ACTION_DATA><HOST>{host}</HOST><DEPLOY_ID>one-{vm}</DEPLOY_ID>"
            f"<VM><ID>{vm}</ID></VM></VMM_DRIVER_ACTION_DATA>")


def peak_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def driver_throughput(requests: int, hosts: int, threads: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = make_world(Path(tmp))
        args = ["-t", str(threads), "-l", "poll", "kvm"]
        with SimulatedOned(args, env=env, cwd=tmp).start() as oned:
            sent = {}
            start = time.monotonic()
            for vm in range(requests):
                sent[vm] = time.monotonic()
                oned.send_action("POLL", vm, poll_xml(vm, f"host{vm % hosts:02d}"))
            latencies = []
            for vm in range(requests):
                answer = oned.wait_answer(vm, timeout=120)
                assert answer.success, answer
                latencies.append(time.monotonic() - sent[vm])
            elapsed = time.monotonic() - start
            rss = peak_rss_kib(oned.pid) if hasattr(oned, "pid") else -1
            code = oned.finalize(timeout=30)
    latencies.sort()
    print(f"driver: {requests} POLL on {hosts} hosts, -t {threads}: "
          f"{requests / elapsed:.0f} requests/s, "
          f"median {statistics.median(latencies) * 1000:.0f} ms, "
          f"p95 {latencies[int(len(latencies) * 0.95) - 1] * 1000:.0f} ms, "
          f"peak RSS {rss / 1024:.1f} MiB, exit {code}")


def xml_work(rounds: int) -> None:
    sample = ROOT / "compat" / "scenarios" / "migrate_basic" / "msg.xml"
    xml = sample.read_text().replace("{WORLD}", "/w")
    payload = base64.b64encode(xml.encode()).decode()
    start = time.perf_counter()
    for _ in range(rounds):
        msg = message.decode(payload)
        msg.vnm_view()
        msg.xml()
        msg.element_xml("VM")
    per = (time.perf_counter() - start) / rounds
    print(f"xml: decode + vnm view + serialisation of a {len(xml)}-byte request: "
          f"{per * 1000:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--xml-rounds", type=int, default=200)
    args = parser.parse_args()
    xml_work(args.xml_rounds)
    driver_throughput(args.requests, args.hosts, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
