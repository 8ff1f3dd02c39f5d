"""The port under a real oned (OpenNebula 7.5.80, the ``../shared/oned`` kit).

Every other test drives the driver with the simulated oned; these let oned itself
start it (``execlp`` with ARGUMENTS as one word, fd 2 closed, every signal blocked),
talk to it and act on its answers, on sshd test hosts with journaling stand-in
remote scripts. For each transport (OpenSSH, paramiko) and mode (strict, default):

- a story — deploy, live migrate, a live migration failing at each point
  (premigrate, the target's network ``pre``, the hypervisor's ``migrate``, after
  the move), terminate, deploy, terminate-hard — checked through oned's API (VM
  states) and the journal (every script call: host, order, argv, exit code),
  against the same story run with the stock Ruby driver: equal in strict mode,
  equal plus the documented rollbacks of the target in default mode;
- terminate-hard while a terminate runs and a VM deleted while its deploy runs
  (oned's DRIVER_CANCEL), a host that is
  down, the inherited signal mask, ONE_MAD_DEBUG from ``etc/defaultrc``, SIGTERM
  to the driver, and oned stopped and then killed in the middle of a deploy.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
from e2e.kit import wait_until
from oned_kit import Call, OnedInstance, Unavailable, ensure_kit

pytestmark = pytest.mark.oned

COMBOS = [("openssh", "default"), ("openssh", "strict"),
          ("paramiko", "default"), ("paramiko", "strict")]
MIGRATE_FAULTS = ("tm/local/premigrate", "vnm/dummy/pre", "vmm/kvm/migrate")
FAILED_LIVE_MIGRATE = "Fail to live migrate VM. Assuming that the VM is still RUNNING."

Story = Dict[str, List[Call]]


@pytest.fixture(scope="session")
def oned_kit() -> Path:
    try:
        return ensure_kit()
    except Unavailable as exc:
        pytest.skip(f"no real oned here: {exc}")


def _started(tmp: Path, index: int, transport: str, mode: str, ruby: bool = False
             ) -> OnedInstance:
    instance = OnedInstance(tmp, index, transport, mode, ruby=ruby)
    instance.start()
    return instance


def _normalised(instance: OnedInstance, calls: List[Call]) -> List[Call]:
    work = str(instance.work)
    return [Call(c.host, c.script, c.rc, c.argv.replace(work, "<work>")) for c in calls]


def run_story(o: OnedInstance) -> Story:
    """The lifecycle and the migration failure points, on a fresh oned: VM 0 is
    deployed to one-h1, migrated to one-h2, fails to migrate back three times
    (one fault each), migrates back with a failing network ``post`` (no_fail:
    the migration stands), is terminated; VM 1 is deployed to one-h2 and
    terminated hard. Returns the script calls of each step."""
    story: Story = {}
    o.host_id("one-h1")
    o.host_id("one-h2")
    vm = o.new_vm("story")
    assert vm == 0, "the story needs a fresh oned (VM ids are compared)"

    mark = o.mark()
    o.deploy(vm, "one-h1")
    assert o.wait_vm(vm, "ACTIVE", "RUNNING", "one-h1")["deploy_id"] == f"one-{vm}"
    story["deploy"] = o.calls(mark)

    mark = o.mark()
    o.migrate_live(vm, "one-h2")
    o.wait_vm(vm, "ACTIVE", "RUNNING", "one-h2")
    story["migrate"] = o.calls(mark)

    for count, script in enumerate(MIGRATE_FAULTS, start=1):
        o.fault(script, f"injected: {script} failed")
        mark = o.mark()
        o.migrate_live(vm, "one-h1")
        wait_until(lambda n=count: o.vm_log(vm).count(FAILED_LIVE_MIGRATE) == n, 60,
                 f"oned to log the failed migration #{count}")
        got = o.wait_vm(vm, "ACTIVE", "RUNNING", "one-h2")
        assert f"injected: {script} failed" in (got["error"] or ""), got
        story[f"fail {script}"] = o.calls(mark)
        o.clear_faults()

    o.fault("vnm/dummy/post", "injected: post failed")
    mark = o.mark()
    o.migrate_live(vm, "one-h1")
    o.wait_vm(vm, "ACTIVE", "RUNNING", "one-h1")
    story["fail vnm/dummy/post"] = o.calls(mark)
    o.clear_faults()

    mark = o.mark()
    o.one("one.vm.action", "terminate", vm)
    o.wait_vm(vm, "DONE")
    story["terminate"] = o.calls(mark)

    other = o.new_vm("story-hard")
    mark = o.mark()
    o.deploy(other, "one-h2")
    o.wait_vm(other, "ACTIVE", "RUNNING", "one-h2")
    o.one("one.vm.action", "terminate-hard", other)
    o.wait_vm(other, "DONE")
    story["deploy, terminate-hard"] = o.calls(mark)
    return {step: _normalised(o, calls) for step, calls in story.items()}


@pytest.fixture(scope="session")
def ruby_story(oned_kit: Path, tmp_path_factory: pytest.TempPathFactory) -> Story:
    """The story as the stock Ruby driver (the kit's ``one_vmm_exec``) plays it."""
    instance = _started(tmp_path_factory.mktemp("oned-ruby"), 0, "openssh", "ruby", ruby=True)
    try:
        return run_story(instance)
    finally:
        instance.stop()


@pytest.fixture(scope="module", params=COMBOS, ids=[f"{t}-{m}" for t, m in COMBOS])
def oned(request: pytest.FixtureRequest, oned_kit: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnedInstance]:
    """A real oned whose VM_MAD is the port (transport, mode); stopped afterwards."""
    transport, mode = request.param
    index = 1 + COMBOS.index(request.param)
    instance = _started(tmp_path_factory.mktemp(f"oned-{transport}-{mode}"), index,
                        transport, mode)
    try:
        yield instance
    finally:
        instance.stop()


def with_target_rollback(story: Story) -> Story:
    """What default mode adds to the Ruby story: a live migration that fails once the
    target's network ``pre`` ran also cleans the target's network (``vnm clean`` on
    the target, like the source's clean after a successful move), and a failing
    ``pre`` gets the front-end's ``failmigrate`` too."""
    expected = {step: list(calls) for step, calls in story.items()}
    for step in ("fail vnm/dummy/pre", "fail vmm/kvm/migrate"):
        calls = expected[step]
        premigrate = calls[0]
        assert premigrate.script == "tm/local/premigrate", calls
        source, target = premigrate.argv.split(" ")[:2]
        failed = next(i for i, c in enumerate(calls) if c.rc != 0)
        calls.insert(failed + 1, Call(target.strip("'"), "vnm/dummy/clean", 0, source))
        if step == "fail vnm/dummy/pre":
            calls.append(Call("frontend", "tm/local/failmigrate", 0, premigrate.argv))
    return expected


# --------------------------------------------------------------------------------------


def test_story_matches_the_ruby_driver(oned: OnedInstance, ruby_story: Story) -> None:
    """Same script calls on the same hosts in the same order with the same argv and
    exit codes as the Ruby driver under the same oned; oned ends every step in the
    same state (run_story checks the states as it goes)."""
    story = run_story(oned)
    expected = ruby_story if oned.mode == "strict" else with_target_rollback(ruby_story)
    assert list(story) == list(expected)
    for step in expected:
        assert story[step] == expected[step], step
    # the shape that makes this meaningful: the failing call, then the rollbacks
    fail = story["fail vmm/kvm/migrate"]
    assert [(c.host, c.script, c.rc) for c in fail][:3] == [
        ("frontend", "tm/local/premigrate", 0), ("one-h1", "vnm/dummy/pre", 0),
        ("one-h2", "vmm/kvm/migrate", 1)]
    assert fail[-1].script == "tm/local/failmigrate"


def test_deploy_cancelled_by_oned(oned: OnedInstance) -> None:
    """Deleting a VM whose deploy still runs (7.5 refuses terminate-hard in BOOT; the
    operator's way is ``onevm recover --delete``): oned sends DRIVER_CANCEL, then
    CLEANUP (no deploy id yet: nothing to cancel on the host). The deploy script is
    ended on the host (not left running) and the VM is DONE. While
    the deploy runs, no process of the driver has a signal blocked (oned's mask is
    cleared at start, before any thread or child exists)."""
    o = oned
    vm = o.new_vm("cancelled-deploy")
    o.sleep("vmm/kvm/deploy", 120)
    try:
        mark = o.mark()
        o.deploy(vm, "one-h1")
        wait_until(lambda: any("vmm/kvm/deploy sleeping" in line
                             for line in o.journal_lines()[mark:]), 30, "the deploy to run")
        driver = o.driver()
        procs = [driver] + o.descendants(driver.pid)
        masks = {p.cmdline: p.status("SigBlk") for p in procs}
        assert all(int(mask, 16) == 0 for mask in masks.values() if mask), masks
        o.one("one.vm.recover", vm, 3)  # delete
        o.wait_vm(vm, "DONE", timeout=60)
        wait_until(lambda: any("vmm/kvm/deploy got SIG" in line
                             for line in o.journal_lines()[mark:]), 20,
                 "the deploy to be ended on one-h1")
        wait_until(lambda: not [p for p in o.host_side("one-h1") if "deploy" in p.cmdline],
                 15, "no deploy left on one-h1")
    finally:
        o.clear_faults()


def test_terminate_hard_during_terminate(oned: OnedInstance) -> None:
    """terminate-hard while a terminate's ``shutdown`` script still runs: oned sends
    DRIVER_CANCEL for the SHUTDOWN, then CANCEL. The shutdown script is ended on the
    host, ``cancel`` runs there and the VM is DONE."""
    o = oned
    vm = o.new_vm("hard-after-soft")
    o.deploy(vm, "one-h2")
    o.wait_vm(vm, "ACTIVE", "RUNNING", "one-h2")
    o.sleep("vmm/kvm/shutdown", 120)
    try:
        mark = o.mark()
        o.one("one.vm.action", "terminate", vm)
        wait_until(lambda: any("vmm/kvm/shutdown sleeping" in line
                             for line in o.journal_lines()[mark:]), 30,
                 "the shutdown to run")
        o.one("one.vm.action", "terminate-hard", vm)
        o.wait_vm(vm, "DONE", timeout=60)
        wait_until(lambda: any("vmm/kvm/shutdown got SIG" in line
                             for line in o.journal_lines()[mark:]), 20,
                 "the shutdown to be ended on one-h2")
        calls = [(c.host, c.script) for c in o.calls(mark)]
        assert calls.index(("one-h2", "vmm/kvm/cancel")) > calls.index(
            ("one-h2", "vmm/kvm/shutdown")), calls
        wait_until(lambda: not [p for p in o.host_side("one-h2") if "shutdown" in p.cmdline],
                 15, "no shutdown left on one-h2")
    finally:
        o.clear_faults()


def test_host_down(oned: OnedInstance) -> None:
    """A deploy to a host whose sshd is gone is answered FAILURE at once: oned puts
    the VM in BOOT_FAILURE with a message that names the host; the driver goes on."""
    o = oned
    o.host_id("one-h3")
    o.stop_host("one-h3")
    vm = o.new_vm("host-down")
    o.deploy(vm, "one-h3")
    got = o.wait_lcm(vm, "BOOT_FAILURE", timeout=60)
    error = got["error"] or ""
    assert "one-h3" in error or "127.0.1." in error, got
    assert "refused" in error.lower() or "could not" in error.lower(), got
    # the driver is still there and still works
    other = o.new_vm("after-host-down")
    o.deploy(other, "one-h1")
    o.wait_vm(other, "ACTIVE", "RUNNING", "one-h1")
    o.one("one.vm.action", "terminate-hard", other)
    o.wait_vm(other, "DONE")


def test_debug_log_from_defaultrc(oned: OnedInstance) -> None:
    """``ONE_MAD_DEBUG=1`` set the stock way (``etc/defaultrc``, not oned's
    environment) gives the driver's debug log, as the bash wrapper would."""
    o = oned
    assert "ONE_MAD_DEBUG=1" in (o.work / "etc" / "defaultrc").read_text()
    driver = o.driver()
    assert b"ONE_MAD_DEBUG" not in driver.environ
    log = o.work / "var" / "one_vmm_exec_kvm.log"
    assert log.is_file()
    assert os.readlink(f"/proc/{driver.pid}/fd/2") == str(log)


def test_sigterm_reaches_the_driver(oned: OnedInstance) -> None:
    """SIGTERM ends the driver started by oned (its mask is cleared); oned restarts
    it, and the new one serves the next request."""
    o = oned
    driver = o.driver()
    assert int(driver.status("SigBlk"), 16) == 0
    os.kill(driver.pid, signal.SIGTERM)
    wait_until(lambda: driver.pid not in [p.pid for p in o.drivers()], 10,
             "the driver to exit on SIGTERM")
    again = wait_until(lambda: [p for p in o.drivers() if p.pid != driver.pid], 30,
                     "oned to restart its driver")
    assert len(again) == 1
    vm = o.new_vm("after-sigterm")
    o.deploy(vm, "one-h2")
    o.wait_vm(vm, "ACTIVE", "RUNNING", "one-h2")
    o.one("one.vm.action", "terminate-hard", vm)
    o.wait_vm(vm, "DONE")


def _ours(leftovers: List[Tuple[int, str]]) -> List[Tuple[int, str]]:
    """What ``oned-run stop`` had to kill that came from the VMM driver (not oned's
    other, Ruby drivers, which leave on their own after an oned SIGKILL)."""
    return [(pid, cmd) for pid, cmd in leftovers
            if "ruby" not in cmd and "/lib/mads/" not in cmd]


def _im_started(o: OnedInstance) -> None:
    """Wait for the dummy IM's control scripts to end (each lives 10 s after a host's
    monitoring starts; run as ./monitord-client_control.sh, oned-run does not know
    them as the IM's and would report them as left behind; they are not ours)."""
    wait_until(lambda: not any("monitord-client_control.sh" in p.cmdline
                               for p in o.tagged()), 15, "the dummy IM's start-up to end")


def _deploy_sleeping(o: OnedInstance, name: str, host: str) -> int:
    vm = o.new_vm(name)
    o.sleep("vmm/kvm/deploy", 120)
    mark = o.mark()
    o.deploy(vm, host)
    wait_until(lambda: any("vmm/kvm/deploy sleeping" in line
                         for line in o.journal_lines()[mark:]), 30, "the deploy to run")
    return mark


def test_oned_stopped_then_killed_during_deploy(oned: OnedInstance) -> None:
    """oned stopped (SIGTERM: FINALIZE, then its pipes close) and, after a restart,
    killed (SIGKILL: the driver only sees EOF) while a deploy sleeps on a host: the
    driver exits and ends the deploy on the host; ``oned-run stop`` finds nothing of
    ours left. (The Ruby driver leaves 7 processes: ``sh -c ssh``, ``ssh``, the
    host's sshd session, two ``bash -s``, the script and its ``sleep``.)"""
    o = oned
    mark = _deploy_sleeping(o, "stopped-oned", "one-h1")
    _im_started(o)
    left = _ours(o.stop())
    assert left == [], left
    assert any("vmm/kvm/deploy got SIG" in line for line in o.journal_lines()[mark:])

    o.start(clean=False)
    o.one.wait_host(o.host_id("one-h2"), timeout=60)
    o.clear_faults()
    mark = _deploy_sleeping(o, "killed-oned", "one-h2")
    driver = o.driver()
    o.kill_oned()
    wait_until(lambda: not os.path.exists(f"/proc/{driver.pid}"), 20,
             "the driver to exit on stdin EOF")
    wait_until(lambda: any("vmm/kvm/deploy got SIG" in line
                         for line in o.journal_lines()[mark:]), 20,
             "the deploy to be ended on one-h2")
    # the deploy got TERM from the stream's watchdog, which KILLs what is left of the
    # group, itself included, 2 s later: by then nothing of the session runs
    wait_until(lambda: not o.host_side("one-h2"), 8,
               "the watchdog to finish on one-h2 (TERM, 2 s, KILL)")
    _im_started(o)
    left = _ours(o.stop())
    assert left == [], left
