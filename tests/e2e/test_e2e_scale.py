"""Fifty VMs on four real hosts at once, with the default ``-t 15``.

Every VM gets exactly one answer (all SUCCESS); one host never runs two actions at a
time (the journal's script intervals of the VMs of one host never overlap), while
different hosts do work at the same time.
"""

from __future__ import annotations

import time
from typing import Dict, List, Tuple

import pytest

from .kit import World, context, finalize_clean, intervals

HOSTS = ("host01", "host02", "host03", "host04")
VMS = range(100, 150)
BUDGET = 45.0  # seconds for all fifty answers

# action: (the script that sleeps a little, the calls of one VM)
ACTIONS = {
    "REBOOT": ("vmm/kvm/reboot", 1),
    "DEPLOY": ("vmm/kvm/deploy", 4),
}


def host_of(vmid: int) -> str:
    return HOSTS[vmid % len(HOSTS)]


def spans(world: World) -> Dict[str, Tuple[float, float]]:
    """Per VM: from the start of its first script to the end of its last one."""
    result: Dict[str, Tuple[float, float]] = {}
    for item in intervals(world.journal()):
        assert item["t_end"] is not None, f"unfinished call {item}"
        t0, t1 = result.get(item["vm"], (item["t"], item["t_end"]))
        result[item["vm"]] = (min(t0, item["t"]), max(t1, item["t_end"]))
    return result


def max_concurrency(periods: List[Tuple[float, float]]) -> int:
    events = sorted([(t0, 1) for t0, _ in periods] + [(t1, -1) for _, t1 in periods])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("action, transport", [("DEPLOY", "openssh"), ("REBOOT", "openssh"),
                                               ("REBOOT", "paramiko")])
def test_fifty_vms_on_four_hosts(world: World, action: str, transport: str) -> None:
    script, calls_per_vm = ACTIONS[action]
    world.set_faults(f"* {script} sleep=0.1")
    payloads = {vmid: (world.deploy_xml(vmid, host_of(vmid)) if action == "DEPLOY"
                       else world.reboot_xml(vmid, host_of(vmid))) for vmid in VMS}
    oned = world.start_driver(transport=transport)  # -t 15 -r 0 kvm
    started = time.monotonic()
    for vmid in VMS:
        oned.send_action(action, vmid, payloads[vmid])
    deadline = started + BUDGET
    for vmid in VMS:
        answer = oned.wait_answer(vmid, timeout=max(0.1, deadline - time.monotonic()),
                                  action=action)
        assert answer.success, context(world, oned)
    elapsed = time.monotonic() - started
    print(f"\n{len(VMS)} {action} on {len(HOSTS)} hosts ({transport}) answered in "
          f"{elapsed:.1f}s")
    finalize_clean(world, oned)
    why = context(world, oned)

    # exactly one answer per VM, all SUCCESS, nothing else
    answers = oned.answers()
    assert sorted(int(a.vm_id) for a in answers) == list(VMS), why
    assert {(a.action, a.result) for a in answers} == {(action, "SUCCESS")}, why
    # every VM's scripts ran on its own host, each once
    journal = world.journal()
    for vmid in VMS:
        calls = world.calls(vmid)
        assert len(calls) == calls_per_vm, why
        assert {h for h, _ in calls} <= {host_of(vmid), "frontend"}, why
        assert (host_of(vmid), script) in calls, why
    assert all(r["rc"] == 0 for r in journal if r["ev"] == "end")

    # one action per host at a time: a host's VMs never overlap ...
    by_vm = spans(world)
    for host in HOSTS:
        periods = sorted(by_vm[str(vmid)] for vmid in VMS if host_of(vmid) == host)
        for (_, end), (start, _) in zip(periods, periods[1:]):
            assert start >= end, f"two actions at once on {host}: {periods}" + why
    # ... while the hosts work in parallel
    peak = max_concurrency(list(by_vm.values()))
    print(f"at most {peak} VMs' scripts at once")
    assert 2 <= peak <= len(HOSTS), f"peak of {peak} VMs at once" + why
