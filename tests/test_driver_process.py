"""The real driver process, started like oned starts it (one argv element, fd 2 closed),
in a temporary ONE_LOCATION whose POLL script runs locally (-l poll) and journals.

The POLL script (tests/helpers.py, GATED_SCRIPT) writes its pid, a "start" line, waits
until the test creates go.<ID> (bounded), writes a "stop" line and prints STATE=a. So
overlap, order and killing are read from the journal, not guessed from timings.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, List, Optional, Sequence

import pytest
from helpers import (
    Journal,
    driver_env,
    make_one_location,
    non_protocol_lines,
    poll_xml,
    process_alive,
    process_group,
    wait_until,
)

from vmm_exec.testing.simoned import SimulatedOned, pids_in_group

ANSWER_TIMEOUT = 10.0
# how long a wrongly scheduled action is given to show up before we conclude it did not
SETTLE = 0.5


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SimpleNamespace]:
    ctrl = tmp_path / "ctrl"
    journal = Journal(ctrl)
    one = make_one_location(tmp_path)
    drivers: List[SimulatedOned] = []

    def start(args: Sequence[str], command: Optional[List[str]] = None,
              one_location: Optional[Path] = None) -> SimulatedOned:
        driver = SimulatedOned(list(args), command=command,
                               env=driver_env(one_location or one, ctrl), cwd=tmp_path)
        drivers.append(driver)
        return driver.start()

    yield SimpleNamespace(tmp=tmp_path, ctrl=ctrl, journal=journal, one=one, start=start)
    journal.release_all()
    for driver in drivers:
        driver.stop()


def assert_protocol_only(driver: SimulatedOned) -> None:
    bad = non_protocol_lines(driver.lines)
    assert not bad, f"non-protocol output: {bad!r}\n{driver.transcript(200)}"


def send_poll(driver: SimulatedOned, vmid: int, host: Optional[str]) -> None:
    driver.send_action("POLL", vmid, poll_xml(vmid, host))


def wait_log(driver: SimulatedOned, text: str, timeout: float = ANSWER_TIMEOUT) -> None:
    driver.wait_lines(lambda lines: text in lines, timeout)


def script_gone(pid: int, pgid: Optional[int]) -> bool:
    if process_alive(pid):
        return False
    return pgid is None or not pids_in_group(pgid)


# --------------------------------------------------------------------------------------
# start-up
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["python -m vmm_exec", "one-vmm-exec"])
def test_init_success_when_started_like_oned(world: SimpleNamespace, entry: str) -> None:
    command = None
    if entry == "one-vmm-exec":
        script = shutil.which("one-vmm-exec")
        assert script is not None, "one-vmm-exec console script not installed"
        command = [script]
    started = time.monotonic()
    driver = world.start(["-t", "2", "kvm"], command=command)  # start() does INIT (≤ 10 s)
    assert time.monotonic() - started < 10
    assert driver.lines == ["INIT SUCCESS - -"]
    assert driver.argv[-1] == "-t 2 kvm"
    with open(f"/proc/{driver.pid}/cmdline", "rb") as handle:
        cmdline = handle.read().split(b"\0")[:-1]
    assert cmdline[-1] == b"-t 2 kvm"  # one argv element, as oned passes it
    # fd 2 was closed at start; the driver gave itself a harmless one (not stdout)
    assert os.readlink(f"/proc/{driver.pid}/fd/2") == "/dev/null"
    assert driver.finalize(timeout=10) == 0
    assert_protocol_only(driver)


def test_init_is_answered_while_all_threads_are_busy(world: SimpleNamespace) -> None:
    driver = world.start(["-t", "1", "-l", "poll", "kvm"])
    send_poll(driver, 1, "h1")
    world.journal.wait_started([1])
    driver.send_raw("init")
    driver.wait_lines(lambda lines: lines.count("INIT SUCCESS - -") == 2, 5)
    world.journal.release(1)
    assert driver.wait_answer(1, timeout=ANSWER_TIMEOUT).success
    assert_protocol_only(driver)
    assert driver.finalize(timeout=10) == 0


# --------------------------------------------------------------------------------------
# robustness of the request loop
# --------------------------------------------------------------------------------------


def test_junk_lines_are_ignored(world: SimpleNamespace) -> None:
    driver = world.start(["-t", "15", "-l", "poll", "kvm"])
    valid = base64.b64encode(poll_xml(1, "h1").encode()).decode()
    for line in [
        "",
        "   ",
        "\t\t",
        f" POLL  1 {valid}",                 # leading whitespace: malformed
        f"\tPOLL  2 {valid}",
        f"NOSUCHACTION  3 {valid}",          # unknown action
        "POLL",                               # wrong argument counts
        "POLL  4",
        f"POLL  5 {valid} extra",
        "INIT unexpected-argument",
        "\udcff\udcfe\x00\x01\x7f binary \udc80\udcc3( garbage",
        "POLL  6 \udcff\udcfe",
        "JUNK  7 " + "A" * (1 << 20),        # a 1 MB line
        "\x00" * 100,
        "\r",
    ]:
        driver.send_raw(line)
    world.journal.release(10)
    driver.send_raw(f"poll  10 {base64.b64encode(poll_xml(10, 'h1').encode()).decode()}")
    answer = driver.wait_answer(10, timeout=ANSWER_TIMEOUT)
    assert answer.success and answer.info == "STATE=a"
    time.sleep(SETTLE)
    answers = driver.answers()
    assert [(a.vm_id, a.result) for a in answers if a.vm_id != "6"] == [("10", "SUCCESS")]
    # "POLL  6 <garbage>" is a well-formed request with an undecodable payload
    assert [a.result for a in driver.answers(6)] == ["FAILURE"]
    assert world.journal.started() == {"10"}
    assert driver.lines[0] == "INIT SUCCESS - -"
    assert driver.lines.count("INIT SUCCESS - -") == 1
    assert_protocol_only(driver)
    assert driver.finalize(timeout=10) == 0


@pytest.mark.parametrize("vmid, payload, reason_words", [
    (5, "!!!not-base64!!!", ["POLL"]),
    (6, base64.b64encode(b"this is not xml").decode(), ["POLL"]),
    (7, base64.b64encode(b"<VMM_DRIVER_ACTION_DATA><DEPLOY_ID>one-7</DEPLOY_ID>"
                         b"<VM><ID>7</ID></VM></VMM_DRIVER_ACTION_DATA>").decode(),
     ["POLL", "HOST"]),
    (8, base64.b64encode(b"<VMM_DRIVER_ACTION_DATA><HOST>h1</HOST>").decode(), ["POLL"]),
    (9, base64.b64encode("<VMM_DRIVER_ACTION_DATA><HOST>h1</HOST>\udcff".encode(
        "utf-8", "surrogateescape")).decode(), ["POLL"]),
])
def test_bad_payload_is_answered_failure_once(world: SimpleNamespace, vmid: int, payload: str,
                                              reason_words: List[str]) -> None:
    driver = world.start(["-t", "15", "-l", "poll", "kvm"])
    driver.send_raw(f"POLL  {vmid} {payload}")
    answer = driver.wait_answer(vmid, timeout=ANSWER_TIMEOUT)
    assert answer.action == "POLL"
    assert answer.result == "FAILURE"
    reason = answer.info
    assert reason.strip() and reason != "-" and "\n" not in reason
    assert reason.isprintable()
    for word in reason_words:
        assert word in reason, reason
    assert "Traceback" not in reason
    # the driver is still fine, and the failure is not repeated
    world.journal.release(100)
    send_poll(driver, 100, "h1")
    assert driver.wait_answer(100, timeout=ANSWER_TIMEOUT).success
    time.sleep(0.2)
    assert len(driver.answers(vmid)) == 1
    assert world.journal.started() == {"100"}
    assert_protocol_only(driver)
    assert driver.finalize(timeout=10) == 0


def test_failing_script_output_stays_protocol(world: SimpleNamespace) -> None:
    """A script that fails and writes multi-line stderr/stdout: LOG lines and one
    single-line FAILURE answer, nothing else on stdout."""
    one = make_one_location(world.tmp / "other", scripts={"poll": (
        "#!/bin/sh\necho 'garbage on stdout'\necho 'more garbage'\n"
        "printf 'ERROR: %s boom\\nplain reason\\nWARN: 3 careful\\n' \"$3\" >&2\nexit 1\n")})
    driver = world.start(["-l", "poll", "kvm"], one_location=one)
    send_poll(driver, 3, "h1")
    answer = driver.wait_answer(3, timeout=ANSWER_TIMEOUT)
    assert answer.result == "FAILURE"
    assert answer.info == "plain reason"
    logs = [(log.severity, log.text) for log in driver.logs(3)]
    assert ("E", "boom") in logs
    assert ("W", "careful") in logs
    assert_protocol_only(driver)
    assert driver.finalize(timeout=10) == 0


# --------------------------------------------------------------------------------------
# scheduling
# --------------------------------------------------------------------------------------


def test_actions_of_one_host_never_overlap(world: SimpleNamespace) -> None:
    journal = world.journal
    driver = world.start(["-t", "15", "-l", "poll", "kvm"])
    for vmid, host in ((1, "h1"), (2, "h1"), (3, "h1"), (4, "h2"), (5, "h2")):
        send_poll(driver, vmid, host)
    journal.wait_started([1, 4])
    time.sleep(SETTLE)
    assert journal.started() == {"1", "4"}  # another host runs concurrently
    journal.release(1)
    journal.wait_started([2])
    time.sleep(SETTLE)
    assert journal.started() == {"1", "2", "4"}  # FIFO on h1: 2 before 3
    journal.release(4)
    journal.wait_started([5])
    journal.release(2)
    journal.wait_started([3])
    journal.release(3)
    journal.release(5)
    for vmid in range(1, 6):
        assert driver.wait_answer(vmid, timeout=ANSWER_TIMEOUT).info == "STATE=a"
    assert journal.max_concurrency("h1") == 1
    assert journal.max_concurrency("h2") == 1
    assert journal.max_concurrency() == 2
    h1 = [vmid for event, vmid, host, _ in journal.events() if event == "start" and host == "h1"]
    assert h1 == ["1", "2", "3"]
    assert_protocol_only(driver)
    assert driver.finalize(timeout=10) == 0


def test_parallel_option_allows_overlap_on_a_host(world: SimpleNamespace) -> None:
    journal = world.journal
    driver = world.start(["-t", "15", "-l", "poll", "kvm", "-p"])
    for vmid in (1, 2, 3):
        send_poll(driver, vmid, "h1")
    journal.wait_started([1, 2, 3])
    assert journal.running() == {"1", "2", "3"}
    journal.release_all()
    for vmid in (1, 2, 3):
        assert driver.wait_answer(vmid, timeout=ANSWER_TIMEOUT).success
    assert journal.max_concurrency("h1") == 3
    assert_protocol_only(driver)
    assert driver.finalize(timeout=10) == 0


def test_threads_option_limits_concurrency(world: SimpleNamespace) -> None:
    journal = world.journal
    driver = world.start(["-t", "2", "-l", "poll", "kvm"])
    for vmid in (1, 2, 3, 4):
        send_poll(driver, vmid, f"h{vmid}")
    journal.wait_started([1, 2])
    time.sleep(SETTLE)
    assert journal.started() == {"1", "2"}
    journal.release(1)
    journal.wait_started([3])
    time.sleep(SETTLE)
    assert journal.started() == {"1", "2", "3"}
    journal.release_all()
    for vmid in (1, 2, 3, 4):
        assert driver.wait_answer(vmid, timeout=ANSWER_TIMEOUT).success
    assert journal.max_concurrency() == 2
    assert_protocol_only(driver)
    assert driver.finalize(timeout=10) == 0


# --------------------------------------------------------------------------------------
# DRIVER_CANCEL
# --------------------------------------------------------------------------------------


def test_cancel_of_a_queued_action(world: SimpleNamespace) -> None:
    journal = world.journal
    driver = world.start(["-t", "15", "-l", "poll", "kvm"])
    for vmid in (1, 2, 3):
        send_poll(driver, vmid, "h1")
    journal.wait_started([1])
    driver.cancel(2)
    wait_log(driver, "LOG I 2 Driver command for 2 cancelled")
    journal.release(2)  # if it ever ran, it would finish and answer
    journal.release(3)
    journal.release(1)
    assert driver.wait_answer(1, timeout=ANSWER_TIMEOUT).success
    assert driver.wait_answer(3, timeout=ANSWER_TIMEOUT).success
    time.sleep(SETTLE)
    assert driver.answers(2) == []
    assert "2" not in journal.started()
    assert [line for line in driver.lines if " 2 " in line] == [
        "LOG I 2 Driver command for 2 cancelled"]
    assert_protocol_only(driver)
    assert driver.finalize(timeout=10) == 0


def test_cancel_of_a_running_action_kills_its_script(world: SimpleNamespace) -> None:
    journal = world.journal
    driver = world.start(["-t", "15", "-l", "poll", "kvm"])
    send_poll(driver, 1, "h1")
    journal.wait_started([1])
    wait_until(lambda: journal.pid(1) is not None, 5, what="script pid")
    pid = journal.pid(1)
    assert pid is not None and process_alive(pid)
    pgid = process_group(pid)
    driver.cancel(1)
    wait_log(driver, "LOG I 1 Driver command for 1 cancelled")
    wait_until(lambda: script_gone(pid, pgid), 8,
               what=f"death of script {pid} (group {pgid}: "
                    f"{pids_in_group(pgid) if pgid else None})")
    # the host is free for the next action
    journal.release(2)
    send_poll(driver, 2, "h1")
    assert driver.wait_answer(2, timeout=ANSWER_TIMEOUT).success
    time.sleep(0.2)
    assert "1" not in journal.stopped()
    assert driver.answers(1) == []
    assert [line for line in driver.lines if " 1 " in line] == [
        "LOG I 1 Driver command for 1 cancelled"]
    assert_protocol_only(driver)
    assert driver.finalize(timeout=10) == 0


def test_cancel_uses_the_numeric_id(world: SimpleNamespace) -> None:
    """"POLL  007 ..." is cancelled by "DRIVER_CANCEL 7" (Ruby's to_i on both)."""
    journal = world.journal
    driver = world.start(["-t", "15", "-l", "poll", "kvm"])
    send_poll(driver, 1, "h1")
    driver.send_action("POLL", "007", poll_xml(7, "h1"))
    journal.wait_started([1])
    driver.cancel(7)
    wait_log(driver, "LOG I 7 Driver command for 7 cancelled")
    journal.release("007")
    journal.release(1)
    assert driver.wait_answer(1, timeout=ANSWER_TIMEOUT).success
    time.sleep(SETTLE)
    assert driver.answers("007") == [] and driver.answers(7) == []
    assert not journal.started() & {"7", "007"}
    assert_protocol_only(driver)
    assert driver.finalize(timeout=10) == 0


def test_answer_keeps_the_id_as_written(world: SimpleNamespace) -> None:
    world.journal.release("009")  # the script gets the id as written: "009"
    driver = world.start(["-l", "poll", "kvm"])
    driver.send_action("POLL", "009", poll_xml(9, "h1"))
    answer = driver.wait_answer("009", timeout=ANSWER_TIMEOUT)
    assert answer.raw == "POLL SUCCESS 009 STATE=a"
    assert driver.finalize(timeout=10) == 0


def test_cancel_of_an_unknown_id_only_logs(world: SimpleNamespace) -> None:
    driver = world.start(["-l", "poll", "kvm"])
    driver.cancel(77)
    driver.send_raw("DRIVER_CANCEL")
    wait_log(driver, "LOG I 77 Driver command for 77 cancelled")
    wait_log(driver, "LOG I 0 Driver command for 0 cancelled")
    assert driver.answers() == []
    assert_protocol_only(driver)
    assert driver.finalize(timeout=10) == 0


# --------------------------------------------------------------------------------------
# the end: FINALIZE, stdin EOF, SIGTERM
# --------------------------------------------------------------------------------------


def test_finalize_lets_work_in_flight_finish(world: SimpleNamespace) -> None:
    journal = world.journal
    driver = world.start(["-t", "15", "-l", "poll", "kvm"])
    send_poll(driver, 1, "h1")
    send_poll(driver, 3, "h1")  # queued behind 1 (same host)
    journal.wait_started([1])
    driver.send_raw("FINALIZE")
    send_poll(driver, 2, "h2")  # after FINALIZE: ignored
    driver.send_raw("INIT")
    time.sleep(SETTLE)
    assert driver.returncode is None
    assert "2" not in journal.started()
    journal.release(1)
    journal.release(2)
    journal.release(3)
    assert driver.wait_answer(1, timeout=ANSWER_TIMEOUT).success
    assert driver.wait_answer(3, timeout=ANSWER_TIMEOUT).success
    driver.wait_exit(ANSWER_TIMEOUT)  # the exit status: see the next test
    assert driver.answers(2) == []
    assert "2" not in journal.started()
    assert driver.lines.count("INIT SUCCESS - -") == 1
    assert_protocol_only(driver)


# Regression: the driver used to die by SIGABRT at interpreter shutdown while its
# reader thread was blocked in stdin.readline() (after FINALIZE or SIGTERM).


def test_finalize_with_work_in_flight_exits_0(world: SimpleNamespace) -> None:
    journal = world.journal
    driver = world.start(["-t", "15", "-l", "poll", "kvm"])
    send_poll(driver, 1, "h1")
    journal.wait_started([1])
    driver.send_raw("FINALIZE")
    time.sleep(0.2)
    journal.release(1)
    assert driver.wait_answer(1, timeout=ANSWER_TIMEOUT).success
    assert driver.wait_exit(ANSWER_TIMEOUT) == 0


def test_stdin_eof_stops_everything(world: SimpleNamespace) -> None:
    journal = world.journal
    driver = world.start(["-t", "15", "-l", "poll", "kvm"])
    send_poll(driver, 1, "h1")
    send_poll(driver, 2, "h1")  # queued
    journal.wait_started([1])
    wait_until(lambda: journal.pid(1) is not None, 5, what="script pid")
    pid = journal.pid(1)
    assert pid is not None
    pgid = process_group(pid)
    started = time.monotonic()
    driver.close_stdin()
    code = driver.wait_exit(ANSWER_TIMEOUT)
    assert time.monotonic() - started < 5
    assert code == 255
    wait_until(lambda: script_gone(pid, pgid), 5, what=f"death of script {pid}")
    assert "1" not in journal.stopped()
    assert "2" not in journal.started()
    assert driver.answers() == []
    assert_protocol_only(driver)


def test_stdin_eof_when_idle_exits_255(world: SimpleNamespace) -> None:
    driver = world.start(["-l", "poll", "kvm"])
    driver.close_stdin()
    assert driver.wait_exit(ANSWER_TIMEOUT) == 255
    assert driver.lines == ["INIT SUCCESS - -"]


def test_sigterm_stops_everything(world: SimpleNamespace) -> None:
    journal = world.journal
    driver = world.start(["-t", "15", "-l", "poll", "kvm"])
    send_poll(driver, 1, "h1")
    journal.wait_started([1])
    wait_until(lambda: journal.pid(1) is not None, 5, what="script pid")
    pid = journal.pid(1)
    assert pid is not None
    pgid = process_group(pid)
    started = time.monotonic()
    assert driver.pid is not None
    os.kill(driver.pid, signal.SIGTERM)
    code = driver.wait_exit(ANSWER_TIMEOUT)
    assert time.monotonic() - started < 5
    assert code != 0
    wait_until(lambda: script_gone(pid, pgid), 5, what=f"death of script {pid}")
    assert "1" not in journal.stopped()
    assert driver.answers() == []
    assert_protocol_only(driver)


def test_sigterm_exit_status_is_a_clean_term(world: SimpleNamespace) -> None:
    driver = world.start(["-t", "15", "-l", "poll", "kvm"])
    assert driver.pid is not None
    os.kill(driver.pid, signal.SIGTERM)
    assert driver.wait_exit(ANSWER_TIMEOUT) in (143, -signal.SIGTERM)


# oned blocks every signal before creating its threads and its drivers inherit the mask
BLOCKED_START = [sys.executable, "-c",
                 "import os, signal, sys; "
                 "signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals)); "
                 "os.execv(sys.executable, [sys.executable, '-m', 'vmm_exec'] + sys.argv[1:])"]


def blocked_signals(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk for {pid}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM])
def test_stop_signals_stop_everything_like_stdin_eof(world: SimpleNamespace,
                                                     signum: int) -> None:
    """SIGINT, SIGHUP and SIGTERM end the driver cleanly (128 + signal), scripts
    included, even when it was started with every signal blocked (as under oned):
    the driver clears the mask, so its scripts get a clean one too."""
    journal = world.journal
    driver = world.start(["-t", "15", "-l", "poll", "kvm"],
                         command=BLOCKED_START)
    assert driver.pid is not None
    send_poll(driver, 1, "h1")
    journal.wait_started([1])
    wait_until(lambda: journal.pid(1) is not None, 5, what="script pid")
    pid = journal.pid(1)
    assert pid is not None
    assert blocked_signals(driver.pid) == 0, "the driver kept oned's blocked signals"
    assert blocked_signals(pid) == 0, "the script inherited blocked signals"
    pgid = process_group(pid)
    os.kill(driver.pid, signum)
    code = driver.wait_exit(ANSWER_TIMEOUT)
    assert code == 128 + signum
    wait_until(lambda: script_gone(pid, pgid), 5, what=f"death of script {pid}")
    assert driver.answers() == []
    assert "Fatal Python error" not in driver.transcript(50)
    assert_protocol_only(driver)
