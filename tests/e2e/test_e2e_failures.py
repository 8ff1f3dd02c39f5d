"""Failures on real OpenSSH hosts: rollbacks, lost hosts, timeouts, cancellation.

Default mode unless a test says otherwise. Every test ends with FINALIZE (exit 0)
and checks that nothing of it is left running: no sshd session process on any
host, no remote or local script.
"""

from __future__ import annotations

import os
import signal
import time
from typing import List, Tuple

import pytest
from testbed import pid_alive

from vmm_exec.transports.base import RemoteGroup, group_kill_command

from .kit import (
    World,
    act,
    context,
    finalize_clean,
    intervals,
    starts,
    wait_gone,
)

Call = Tuple[str, str]

PREMIGRATE: Call = ("frontend", "tm/ssh/premigrate")
TARGET_PRE: Call = ("host02", "vnm/bridge/pre")
MIGRATE: Call = ("host01", "vmm/kvm/migrate")
SOURCE_CLEAN: Call = ("host01", "vnm/bridge/clean")
TARGET_POST: Call = ("host02", "vnm/bridge/post")
POSTMIGRATE: Call = ("frontend", "tm/ssh/postmigrate")
FAILMIGRATE: Call = ("frontend", "tm/ssh/failmigrate")
TARGET_CLEAN: Call = ("host02", "vnm/bridge/clean")
ALL_STEPS = [PREMIGRATE, TARGET_PRE, MIGRATE, SOURCE_CLEAN, TARGET_POST, POSTMIGRATE]

# (case id, --compat, failing call, answered SUCCESS?, the calls in order)
MIGRATE_CASES: List[Tuple[str, str, Call, bool, List[Call]]] = [
    # before anything reached a host: the stock rollback only
    ("tm-premigrate", "default", PREMIGRATE, False, [PREMIGRATE, FAILMIGRATE]),
    ("tm-premigrate-strict", "strict", PREMIGRATE, False, [PREMIGRATE, FAILMIGRATE]),
    # the target's network: cleaned on the target, then the storage rolled back
    ("vnm-pre", "default", TARGET_PRE, False,
     [PREMIGRATE, TARGET_PRE, TARGET_CLEAN, FAILMIGRATE]),
    # Ruby: nothing at all (the TM pre-migrate is left behind)
    ("vnm-pre-strict", "strict", TARGET_PRE, False, [PREMIGRATE, TARGET_PRE]),
    # the hypervisor's migrate: the target's network cleaned, then tm failmigrate
    ("vmm-migrate", "default", MIGRATE, False,
     [PREMIGRATE, TARGET_PRE, MIGRATE, TARGET_CLEAN, FAILMIGRATE]),
    # Ruby: tm failmigrate only, the target's network is left (OpenNebula #715)
    ("vmm-migrate-strict", "strict", MIGRATE, False,
     [PREMIGRATE, TARGET_PRE, MIGRATE, FAILMIGRATE]),
    # after the move: logged, no rollback, SUCCESS (the VM runs on the target)
    ("vnm-clean-source", "default", SOURCE_CLEAN, True, ALL_STEPS),
    ("vnm-post-target", "default", TARGET_POST, True, ALL_STEPS),
    ("tm-postmigrate", "default", POSTMIGRATE, True, ALL_STEPS),
]


@pytest.mark.parametrize("case, mode, failing, succeeds, expected", MIGRATE_CASES,
                         ids=[case[0] for case in MIGRATE_CASES])
def test_migrate_failing_at_each_step(world: World, case: str, mode: str, failing: Call,
                                      succeeds: bool, expected: List[Call]) -> None:
    host, script = failing
    world.set_faults(f'{host} {script} exit=1 stderr="injected {case} failure"')
    oned = world.start_driver(compat=None if mode == "default" else mode)
    answer = act(oned, "MIGRATE", 42, world.migrate_xml(42, "host01", "host02"))
    why = context(world, oned)
    assert answer.success == succeeds, why
    if not succeeds:
        assert f"injected {case} failure" in answer.info, why
    # exactly these calls, on these hosts, in this order; only the injected one failed
    assert world.calls() == expected, why
    done = intervals(world.journal())
    assert [(i["host"], i["script"], i["rc"]) for i in done] == [
        (h, s, 1 if (h, s) == failing else 0) for h, s in expected], why
    texts = [log.text for log in oned.logs(42)]
    name = {"tm": "transfer manager", "vnm": "network",
            "vmm": "virtualization"}[script.split("/")[0]]
    operation = ("tm_" if script.startswith("tm/") else "") + script.rsplit("/", 1)[1]
    assert f"Failed to execute {name} driver operation: {operation}." in texts, why
    if mode == "default" and not succeeds and case != "tm-premigrate":
        assert "Successfully execute network driver operation: clean." in texts, why
    if not any(h == "host02" for h, _ in expected):
        assert not [r for r in world.journal() if r["host"] == "host02"]
    assert len(oned.answers(42)) == 1
    finalize_clean(world, oned)


# --------------------------------------------------------------------------------------
# lost hosts
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["openssh", "paramiko"])
def test_unreachable_host_fails_deploy_quickly(world: World, transport: str) -> None:
    world.testbed.stop_host("host03")
    oned = world.start_driver(transport=transport)
    started = time.monotonic()
    answer = act(oned, "DEPLOY", 60, world.deploy_xml(60, "host03"), timeout=30)
    elapsed = time.monotonic() - started
    why = context(world, oned)
    assert not answer.success, why
    assert "Connection refused" in answer.info and "host03" in answer.info, why
    assert elapsed < 10, f"DEPLOY to a stopped sshd answered after {elapsed:.1f}s" + why
    # only the front-end's step ran; nothing reached host03
    assert world.calls(60) == [("frontend", "tm/ssh/context")], why
    finalize_clean(world, oned)


def test_unreachable_migration_target(world: World) -> None:
    """The target's sshd is down: its network cannot be set up; the storage is rolled
    back on the front-end, nothing ran on the source."""
    world.testbed.stop_host("host02")
    oned = world.start_driver()
    answer = act(oned, "MIGRATE", 59, world.migrate_xml(59, "host01", "host02"))
    why = context(world, oned)
    assert not answer.success and "Error connecting to host02" in answer.info, why
    assert world.calls(59) == [PREMIGRATE, FAILMIGRATE], why
    finalize_clean(world, oned)


@pytest.mark.parametrize("transport", ["openssh", "paramiko"])
def test_sshd_killed_mid_action(world: World, transport: str) -> None:
    world.set_faults("host03 vmm/kvm/deploy sleep=60")
    oned = world.start_driver(transport=transport)
    oned.send_action("DEPLOY", 61, world.deploy_xml(61, "host03"))
    deploy = world.wait_started("host03", "vmm/kvm/deploy", 61)
    killed = time.monotonic()
    world.testbed.kill_host("host03")
    answer = oned.wait_answer(61, timeout=30, action="DEPLOY")
    elapsed = time.monotonic() - killed
    why = context(world, oned)
    assert not answer.success, why
    assert "host03" in answer.info, why
    assert elapsed < 10, f"answered {elapsed:.1f}s after the host died" + why
    assert not pid_alive(deploy["pid"])
    world.testbed.start_host("host03")
    finalize_clean(world, oned)


# --------------------------------------------------------------------------------------
# -w timeouts and DRIVER_CANCEL: the remote script must die too
# --------------------------------------------------------------------------------------

TRANSPORTS = ["openssh", "paramiko"]


def _host_group(world: World, host: str) -> RemoteGroup:
    """A ``sleep`` leading its own process group on ``host``, identified as the driver does."""
    started = world.ssh(host, "setsid sh -c 'echo \"$$ $(sed \"s/.*) //\" /proc/$$/stat | "
                              "cut -d\\  -f20)\"; exec sleep 30 >/dev/null' "
                              "</dev/null 2>/dev/null & sleep 0.2")
    pid, start = started.stdout.split()
    return RemoteGroup(int(pid), start)


def test_remote_kill_command_works_in_a_posix_login_shell(world: World) -> None:
    """The transports' kill command, exactly, through ``ssh host01 CMD``: the host
    user's login shell runs it (dash here, whose ``kill`` rejects ``--``), on a process
    group sleeping on host01. (Found failing with ``kill -TERM -- -PGID``.)"""
    group = _host_group(world, "host01")
    try:
        assert pid_alive(group.pgid)
        killed = world.ssh("host01", group_kill_command(group))
        assert killed.returncode == 0
        shell_said = world.ssh("host01", f"kill -TERM -- -{group.pgid}").stderr.strip()
        wait_gone(group.pgid, 2, f"the process group {group.pgid} on host01 (the host's "
                                 f"shell, given the same kill without 2>/dev/null, says "
                                 f"{shell_said!r})")
    finally:
        if pid_alive(group.pgid):
            os.kill(group.pgid, signal.SIGKILL)


def test_remote_kill_spares_a_process_that_reuses_the_pid(world: World) -> None:
    """The kill names the group's leader by PID *and* start time: a process that now
    has that PID (another start time) is not signalled."""
    group = _host_group(world, "host01")
    try:
        reused = RemoteGroup(group.pgid, str(int(group.start) + 1))
        assert world.ssh("host01", group_kill_command(reused)).returncode == 0
        time.sleep(0.5)
        assert pid_alive(group.pgid), "a process that is not the identified one was killed"
    finally:
        if pid_alive(group.pgid):
            os.kill(group.pgid, signal.SIGKILL)


def host_process_gone(world: World, host: str, pid: int) -> bool:
    """Asked on the host: ``ps`` knows no such process, or only its zombie (PID 1 of a
    container may not reap orphans)."""
    probe = world.ssh(host, f"ps -o stat= -p {pid} || true")
    assert probe.returncode == 0, probe
    state = probe.stdout.strip()
    return state == "" or state.startswith("Z")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hanging_script_times_out_and_is_killed_on_the_host(world: World,
                                                            transport: str) -> None:
    world.set_faults("host01 vmm/kvm/deploy sleep=60")
    oned = world.start_driver("-w 2 -t 15 -r 0 kvm", transport=transport)
    started = time.monotonic()
    oned.send_action("DEPLOY", 62, world.deploy_xml(62, "host01"))
    deploy = world.wait_started("host01", "vmm/kvm/deploy", 62)
    answer = oned.wait_answer(62, timeout=30, action="DEPLOY")
    elapsed = time.monotonic() - started
    why = context(world, oned)
    assert not answer.success and "Timeout" in answer.info, why
    assert elapsed < 15, f"answered after {elapsed:.1f}s with -w 2" + why
    # it never finished; the default-mode rollback reached host01 over a new stream
    records = [i for i in intervals(world.journal()) if i["vm"] == "62"]
    assert [(i["host"], i["script"]) for i in records] == [
        ("frontend", "tm/ssh/context"), ("host01", "vnm/bridge/pre"),
        ("host01", "vmm/kvm/deploy"), ("host01", "vnm/bridge/clean")], why
    assert records[2]["rc"] is None
    # the script itself is gone from host01 (checked in /proc and on the host)
    pid = deploy["pid"]
    wait_gone(pid, 8, "the timed-out deploy script on host01")
    assert host_process_gone(world, "host01", pid)
    finalize_clean(world, oned)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cancel_running_action_kills_the_remote_script(world: World, transport: str) -> None:
    world.set_faults("host01 vmm/kvm/deploy sleep=60 vm=63")
    oned = world.start_driver(transport=transport)
    oned.send_action("DEPLOY", 63, world.deploy_xml(63, "host01"))
    deploy = world.wait_started("host01", "vmm/kvm/deploy", 63)
    oned.cancel(63)
    oned.wait_lines(lambda lines: "LOG I 63 Driver command for 63 cancelled" in lines, 10)
    # no answer (oned does not wait for one), and nothing ran after the cancel
    time.sleep(1.0)
    why = context(world, oned)
    assert oned.answers(63) == [], why
    assert world.calls(63)[-1] == ("host01", "vmm/kvm/deploy"), why
    wait_gone(deploy["pid"], 8, "the cancelled deploy script on host01")
    assert host_process_gone(world, "host01", deploy["pid"])
    # host01 is free again: the next action on it runs at once
    answer = act(oned, "POLL", 163, world.poll_xml(163, "host01"), timeout=10)
    assert answer.success, context(world, oned)
    finalize_clean(world, oned)
    assert oned.answers(63) == [], why


def test_migrate_timing_out_rolls_back_on_the_target(world: World) -> None:
    """``-w`` hits the hypervisor's migrate on host01: the script dies there, the
    target's network is cleaned over host02's still open stream, then tm failmigrate."""
    world.set_faults("host01 vmm/kvm/migrate sleep=60")
    oned = world.start_driver("-w 2 -t 15 -r 0 kvm")
    oned.send_action("MIGRATE", 58, world.migrate_xml(58, "host01", "host02"))
    migrate = world.wait_started("host01", "vmm/kvm/migrate", 58)
    answer = oned.wait_answer(58, timeout=30, action="MIGRATE")
    why = context(world, oned)
    assert not answer.success and "Timeout" in answer.info, why
    assert world.calls(58) == [PREMIGRATE, TARGET_PRE, MIGRATE, TARGET_CLEAN, FAILMIGRATE], why
    wait_gone(migrate["pid"], 8, "the timed-out migrate script on host01")
    finalize_clean(world, oned)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hanging_one_shot_poll_times_out_and_is_killed_on_the_host(world: World,
                                                                   transport: str) -> None:
    """POLL is a one-shot ``ssh HOST 'if [ -x ...'`` (no stream): its remote side too."""
    world.set_faults("host01 vmm/kvm/poll sleep=60")
    oned = world.start_driver("-w 2 -t 15 -r 0 kvm", transport=transport)
    oned.send_action("POLL", 66, world.poll_xml(66, "host01"))
    poll = world.wait_started("host01", "vmm/kvm/poll", 66)
    answer = oned.wait_answer(66, timeout=30, action="POLL")
    why = context(world, oned)
    assert not answer.success and answer.info.startswith("Timeout executing "), why
    wait_gone(poll["pid"], 8, "the timed-out poll script on host01")
    assert host_process_gone(world, "host01", poll["pid"])
    finalize_clean(world, oned)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cancel_running_one_shot_poll(world: World, transport: str) -> None:
    world.set_faults("host01 vmm/kvm/poll sleep=60")
    oned = world.start_driver(transport=transport)
    oned.send_action("POLL", 67, world.poll_xml(67, "host01"))
    poll = world.wait_started("host01", "vmm/kvm/poll", 67)
    oned.cancel(67)
    oned.wait_lines(lambda lines: "LOG I 67 Driver command for 67 cancelled" in lines, 10)
    wait_gone(poll["pid"], 8, "the cancelled poll script on host01")
    finalize_clean(world, oned)
    assert oned.answers(67) == [], context(world, oned)


@pytest.mark.parametrize("how, code", [("stdin EOF", 255), ("SIGTERM", 143)])
def test_oned_gone_stops_every_script(world: World, how: str, code: int) -> None:
    """oned dies (stdin EOF) or stops the driver (SIGTERM) while a script runs on a
    host: the driver exits (255 / 143) and nothing is left, on the hosts either."""
    world.set_faults("host01 vmm/kvm/deploy sleep=60")
    oned = world.start_driver()
    oned.send_action("DEPLOY", 68, world.deploy_xml(68, "host01"))
    deploy = world.wait_started("host01", "vmm/kvm/deploy", 68)
    if how == "SIGTERM":
        assert oned.pid is not None
        os.kill(oned.pid, signal.SIGTERM)
    else:
        oned.close_stdin()
    assert oned.wait_exit(timeout=20) == code, context(world, oned)
    wait_gone(deploy["pid"], 8, f"the deploy script on host01 after {how}")
    assert oned.answers(68) == []
    world.wait_no_leftovers()


def test_finalize_waits_for_the_running_action(world: World) -> None:
    world.set_faults("host01 vmm/kvm/deploy sleep=1.5")
    oned = world.start_driver()
    oned.send_action("DEPLOY", 69, world.deploy_xml(69, "host01"))
    world.wait_started("host01", "vmm/kvm/deploy", 69)
    finalize_clean(world, oned)
    assert [(a.action, a.result, a.info) for a in oned.answers()] == [
        ("DEPLOY", "SUCCESS", "one-69")], context(world, oned)


def test_cancel_queued_action_never_runs(world: World) -> None:
    world.set_faults("host01 vmm/kvm/reboot sleep=2 vm=64")
    oned = world.start_driver()
    oned.send_action("REBOOT", 64, world.reboot_xml(64, "host01"))
    world.wait_started("host01", "vmm/kvm/reboot", 64)
    # same host: 65 waits behind 64 (one action per host at a time)
    oned.send_action("REBOOT", 65, world.reboot_xml(65, "host01"))
    oned.cancel(65)
    oned.wait_lines(lambda lines: "LOG I 65 Driver command for 65 cancelled" in lines, 10)
    first = oned.wait_answer(64, timeout=20, action="REBOOT")
    assert first.success, context(world, oned)
    time.sleep(1.0)  # 65 would have started by now
    why = context(world, oned)
    assert oned.answers(65) == [] and world.calls(65) == [], why
    finalize_clean(world, oned)
    assert oned.answers(65) == [] and world.calls(65) == [], why
    assert [r["vm"] for r in starts(world.journal())] == ["64"]
