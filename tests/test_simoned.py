"""Tests for the simulated oned (vmm_exec/simoned.py), run against tests/stub_driver.py.

The harness is what every protocol test relies on, so it is tested on its own, with a
stub driver whose behaviour is known, before the real driver is trusted to it.
"""

from __future__ import annotations

import base64
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmm_exec.testing.simoned import (
    DEFAULT_ARGS,
    Answer,
    DriverGoneError,
    DriverInitError,
    LogLine,
    SimulatedOned,
    _Collector,
    _LineSplitter,
    parse_driver_line,
    pids_in_group,
)

STUB = str(Path(__file__).resolve().with_name("stub_driver.py"))
STUB_COMMAND = [sys.executable, STUB]
ONED_ARGS = ("-t", "15", "-r", "0", "kvm", "-p")


def stub(args=ONED_ARGS, *, env: Optional[dict] = None, **kwargs) -> SimulatedOned:
    """A harness for the stub driver; ``env`` entries are added to os.environ."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return SimulatedOned(args, command=STUB_COMMAND, env=full_env, **kwargs)


@pytest.fixture
def driver() -> Iterator[SimulatedOned]:
    with stub().start() as running:
        yield running


def startup_logs(driver: SimulatedOned) -> List[str]:
    """The stub's two LOG lines after INIT SUCCESS (ARGV, FD2); they may arrive later."""
    driver.wait_lines(lambda _: len(driver.logs(-1)) >= 2, timeout=10)
    return [log.text for log in driver.logs(-1)]


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    """Poll (bounded) until ``pid`` is gone; a killed orphan is reaped asynchronously."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


# --------------------------------------------------------------------------------------
# parse_driver_line
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("INIT SUCCESS - -", Answer("INIT", "SUCCESS", "-", "-", "INIT SUCCESS - -")),
        ("DEPLOY SUCCESS 42 one-42\n", Answer("DEPLOY", "SUCCESS", "42", "one-42",
                                              "DEPLOY SUCCESS 42 one-42")),
        # info keeps its leading blank (recorded Ruby output has such lines)
        ("SHUTDOWN FAILURE 42  bridge: x", Answer("SHUTDOWN", "FAILURE", "42", " bridge: x",
                                                  "SHUTDOWN FAILURE 42  bridge: x")),
        ("SNAPSHOTREVERT SUCCESS 42 ", Answer("SNAPSHOTREVERT", "SUCCESS", "42", "",
                                              "SNAPSHOTREVERT SUCCESS 42 ")),
        ("POLL SUCCESS abc STATE=a", Answer("POLL", "SUCCESS", "abc", "STATE=a",
                                            "POLL SUCCESS abc STATE=a")),
        ("DEPLOY  SUCCESS  7 x", Answer("DEPLOY", "SUCCESS", "7", "x", "DEPLOY  SUCCESS  7 x")),
        ("LOG I 42 ExitCode: 0", LogLine("I", "42", "ExitCode: 0")),
        ("LOG I -1 cleaning", LogLine("I", "-1", "cleaning")),
        ("LOG I 43 43   spaced", LogLine("I", "43", "43   spaced")),
        ("LOG E 42", LogLine("E", "42", "")),
        ("fine", None),
        ("", None),
        ("LOG I", None),
        ("deploy SUCCESS 1 x", None),
        ("DEPLOY OK 1 x", None),
        ("Disk FAILURE 3 x", None),
        (" DEPLOY SUCCESS 1 x", None),
        ("DEPLOY SUCCESS", None),
    ],
)
def test_parse_driver_line_examples(line: str, expected: object) -> None:
    assert parse_driver_line(line) == expected


@given(st.text())
def test_parse_driver_line_never_raises(line: str) -> None:
    result = parse_driver_line(line)
    assert result is None or isinstance(result, (Answer, LogLine))


TOKEN = st.from_regex(r"\S+", fullmatch=True)
NO_NEWLINE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")
)
ACTIONS = st.from_regex(r"[A-Z][A-Z0-9_]*", fullmatch=True).filter(lambda a: a != "LOG")


@given(ACTIONS, st.sampled_from(["SUCCESS", "FAILURE"]), TOKEN, NO_NEWLINE)
def test_formatted_answer_parses_back(action: str, result: str, vm_id: str, info: str) -> None:
    line = f"{action} {result} {vm_id} {info}"
    assert parse_driver_line(line) == Answer(action, result, vm_id, info, line)
    assert parse_driver_line(line + "\n") == Answer(action, result, vm_id, info, line)


@given(st.one_of(st.sampled_from("IEWD"), TOKEN), TOKEN, NO_NEWLINE)
def test_formatted_log_parses_back(severity: str, vm_id: str, text: str) -> None:
    assert parse_driver_line(f"LOG {severity} {vm_id} {text}") == LogLine(severity, vm_id, text)


# --------------------------------------------------------------------------------------
# Line splitting and continuation lines (pure parts of the reader)
# --------------------------------------------------------------------------------------


def split_lines(data: bytes, cuts: List[int]) -> List[bytes]:
    splitter = _LineSplitter()
    out: List[bytes] = []
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for start, end in zip(bounds, bounds[1:]):
        out += splitter.feed(data[start:end])
    return out + splitter.flush()


@given(st.binary(), st.lists(st.integers(min_value=0, max_value=10_000)))
def test_line_splitter_is_independent_of_chunking(data: bytes, cuts: List[int]) -> None:
    expected = data.split(b"\n")
    if expected[-1] == b"":  # a final newline ends the last line, it starts no new one
        expected.pop()
    assert split_lines(data, cuts) == expected


CONTINUATION = NO_NEWLINE.filter(lambda line: parse_driver_line(line) is None)
MESSAGES = st.one_of(
    st.builds(lambda a, r, i, info: Answer(a, r, i, info, ""), ACTIONS,
              st.sampled_from(["SUCCESS", "FAILURE"]), TOKEN, NO_NEWLINE),
    st.builds(LogLine, st.sampled_from("IEWD"), TOKEN, NO_NEWLINE),
)


@given(st.lists(st.tuples(MESSAGES, st.lists(CONTINUATION, max_size=3)), max_size=8),
       st.lists(st.integers(min_value=0, max_value=10_000)))
def test_collector_attaches_continuation_lines(messages, cuts: List[int]) -> None:
    text_lines: List[str] = []
    expected: List[object] = []
    for message, continuation in messages:
        if isinstance(message, Answer):
            first = f"{message.action} {message.result} {message.vm_id} {message.info}"
            info = "\n".join([message.info, *continuation])
            raw = "\n".join([first, *continuation])
            expected.append(Answer(message.action, message.result, message.vm_id, info, raw))
        else:
            first = f"LOG {message.severity} {message.vm_id} {message.text}"
            text = "\n".join([message.text, *continuation])
            expected.append(LogLine(message.severity, message.vm_id, text))
        text_lines += [first, *continuation]
    data = "".join(f"{line}\n" for line in text_lines).encode("utf-8", "surrogateescape")
    collector = _Collector()
    for raw_line in split_lines(data, cuts):
        collector.feed(raw_line.decode("utf-8", "surrogateescape"))
    assert collector.messages == expected
    assert collector.orphans == []


def test_collector_keeps_lines_before_first_message() -> None:
    collector = _Collector()
    for line in ["noise", "INIT SUCCESS - -", "tail"]:
        collector.feed(line)
    assert collector.orphans == ["noise"]
    assert collector.messages == [
        Answer("INIT", "SUCCESS", "-", "-\ntail", "INIT SUCCESS - -\ntail")
    ]


# --------------------------------------------------------------------------------------
# Starting the driver like oned does
# --------------------------------------------------------------------------------------


def test_default_command_is_this_checkouts_vmm_exec() -> None:
    harness = SimulatedOned()
    assert harness.argv == ["/bin/sh", "-c", 'exec 2>&- "$@"', "sh",
                            sys.executable, "-m", "vmm_exec", " ".join(DEFAULT_ARGS)]
    root = str(Path(__file__).resolve().parent.parent)
    assert harness._env["PYTHONPATH"].split(os.pathsep)[0] == root


def test_init_handshake(driver: SimulatedOned) -> None:
    assert driver.sent[0] == "INIT"
    assert driver.lines[0] == "INIT SUCCESS - -"
    assert driver.answers() == []  # INIT is not an action answer
    assert driver.returncode is None
    assert ">> INIT" in driver.transcript()
    assert "<< INIT SUCCESS - -" in driver.transcript()


def test_as_oned_passes_one_argv_element_and_closes_fd2() -> None:
    with stub(ONED_ARGS).start() as driver:
        logs = startup_logs(driver)
        assert logs == ['ARGV ["-t 15 -r 0 kvm -p"]', "FD2 closed"]
        assert driver.stderr_text() == ""


def test_as_oned_string_args_are_passed_unsplit() -> None:
    with stub("-t 15  -r 0 kvm").start() as driver:
        assert startup_logs(driver)[0] == 'ARGV ["-t 15  -r 0 kvm"]'


def test_as_oned_empty_args_still_pass_one_empty_element() -> None:
    # oned calls execlp(cmd, cmd, arg.c_str(), NULL) even when ARGUMENTS is empty
    with stub(()).start() as driver:
        assert startup_logs(driver)[0] == 'ARGV [""]'


def test_not_as_oned_passes_separate_args_and_captures_stderr() -> None:
    with stub(ONED_ARGS, as_oned=False).start() as driver:
        logs = startup_logs(driver)
        assert logs == ['ARGV ["-t", "15", "-r", "0", "kvm", "-p"]', "FD2 open"]
        assert driver.stderr_text() == "stub stderr: hello\n"
    assert driver.stderr_text() == "stub stderr: hello\n"  # still readable after stop()


def test_not_as_oned_splits_string_args_like_a_shell() -> None:
    with stub("-t 15 'a b'", as_oned=False).start() as driver:
        assert startup_logs(driver)[0] == 'ARGV ["-t", "15", "a b"]'


def test_child_runs_in_its_own_session(driver: SimulatedOned) -> None:
    assert driver.pid is not None
    assert os.getpgid(driver.pid) == driver.pid
    assert os.getsid(driver.pid) == driver.pid
    assert os.getpgid(driver.pid) != os.getpgid(0)


def test_missing_executable_raises_before_spawning() -> None:
    with pytest.raises(FileNotFoundError):
        SimulatedOned(command=["/nonexistent/one_vmm_exec"]).start()
    with pytest.raises(FileNotFoundError):
        SimulatedOned(command=["no-such-driver-binary-xyz"]).start()


def test_init_failure_raises_and_cleans_up() -> None:
    harness = stub(env={"STUB_INIT": "fail"})
    with pytest.raises(DriverInitError, match="INIT FAILURE - stub refuses"):
        harness.start()
    assert harness.returncode is not None  # stopped, not left running


def test_output_before_init_success_is_an_init_failure() -> None:
    # oned reads the first bytes after INIT and fails unless they start with INIT SUCCESS
    with pytest.raises(DriverInitError, match="hello from a chatty driver"):
        stub(env={"STUB_INIT": "garbage"}).start()


def test_init_timeout_is_quick_and_shows_transcript() -> None:
    harness = stub(env={"STUB_INIT": "none"})
    began = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        harness.start(init_timeout=0.5)
    assert time.monotonic() - began < 3.0
    assert ">> INIT" in str(raised.value)
    assert harness.returncode is not None


def test_slow_init_within_timeout_is_fine() -> None:
    with stub(env={"STUB_INIT": "delay:0.3"}).start(init_timeout=5.0) as driver:
        assert driver.lines[0] == "INIT SUCCESS - -"


def test_start_without_init_then_handshake() -> None:
    with stub().start(init=False) as driver:
        assert driver.sent == []
        assert driver.handshake(5.0) == Answer("INIT", "SUCCESS", "-", "-", "INIT SUCCESS - -")


# --------------------------------------------------------------------------------------
# Actions, answers and logs
# --------------------------------------------------------------------------------------


def test_send_action_format_and_answer(driver: SimulatedOned) -> None:
    xml = "<VMM_DRIVER_ACTION_DATA><VM><ID>42</ID></VM></VMM_DRIVER_ACTION_DATA>" * 50
    driver.send_action("DEPLOY", 42, xml)
    encoded = base64.b64encode(xml.encode()).decode()
    assert driver.sent[-1] == f"DEPLOY  42 {encoded}"
    assert "\n" not in encoded
    answer = driver.wait_answer(42, timeout=10)
    assert answer == Answer("DEPLOY", "SUCCESS", "42", str(len(xml)),
                            f"DEPLOY SUCCESS 42 {len(xml)}")
    assert answer.success
    assert driver.logs(42) == [LogLine("I", "42", "DEPLOY received")]


def test_send_action_utf8_payload(driver: SimulatedOned) -> None:
    driver.send_action("ECHO", 7, "<NAME>vm é ✓</NAME>")
    assert driver.wait_answer(7, timeout=10).info == "<NAME>vm é ✓</NAME>"


def test_answers_per_vm_in_order(driver: SimulatedOned) -> None:
    for vm_id, size in [(1, 10), (2, 20), (1, 11), (2, 21), (3, 30)]:
        driver.send_action("DEPLOY", vm_id, "x" * size)
    assert [driver.wait_answer(1, timeout=10).info for _ in range(2)] == ["10", "11"]
    assert [driver.wait_answer(2, timeout=10).info for _ in range(2)] == ["20", "21"]
    assert driver.wait_answer("3", timeout=10).info == "30"  # ids compare as strings
    assert [a.info for a in driver.answers(1)] == ["10", "11"]
    assert [a.vm_id for a in driver.answers()] == ["1", "2", "1", "2", "3"]
    with pytest.raises(TimeoutError):  # both answers for 1 are consumed
        driver.wait_answer(1, timeout=0.2)


def test_wait_answer_by_action(driver: SimulatedOned) -> None:
    driver.send_action("SLEEP", 5, "0.3")
    driver.send_action("DEPLOY", 5, "abc")
    slept = driver.wait_answer(5, timeout=10, action="SLEEP")
    assert slept.action == "SLEEP"
    # the DEPLOY answer came first but was not consumed by the SLEEP wait
    assert [a.action for a in driver.answers(5)] == ["DEPLOY", "SLEEP"]
    assert driver.wait_answer(5, timeout=10).action == "DEPLOY"


def test_failure_answer(driver: SimulatedOned) -> None:
    driver.send_action("FAIL", 9, "Error deploying: no space")
    answer = driver.wait_answer(9, timeout=10)
    assert (answer.result, answer.info, answer.success) == ("FAILURE",
                                                            "Error deploying: no space", False)


def test_multi_line_info_is_attached(driver: SimulatedOned) -> None:
    driver.send_action("MULTI", 43, "")
    driver.send_action("DEPLOY", 44, "zz")
    answer = driver.wait_answer(43, timeout=10)
    assert answer.info == "first\nsecond\nthird"
    assert answer.raw == "MULTI SUCCESS 43 first\nsecond\nthird"
    assert driver.wait_answer(44, timeout=10).info == "2"
    start = driver.lines.index("MULTI SUCCESS 43 first")
    assert driver.lines[start : start + 3] == ["MULTI SUCCESS 43 first", "second", "third"]


def test_continuation_written_later_is_awaited_within_grace() -> None:
    with stub(continuation_grace=1.0).start() as driver:
        driver.send_action("SPLIT", 8, "0.2")
        assert driver.wait_answer(8, timeout=10).info == "first\nsecond"


def test_answers_list_gets_late_continuation_lines() -> None:
    with stub(continuation_grace=0.0).start() as driver:
        driver.send_action("SPLIT", 8, "0.3")
        driver.wait_lines(lambda lines: "second" in lines, timeout=10)
        assert driver.answers(8)[0].info == "first\nsecond"


def test_cancel_is_sent(driver: SimulatedOned) -> None:
    driver.cancel(99)
    assert driver.sent[-1] == "DRIVER_CANCEL 99"
    driver.wait_lines(lambda _: bool(driver.logs(99)), timeout=10)
    assert driver.logs(99) == [LogLine("I", "99", "Driver command for 99 cancelled")]


def test_raw_output_invalid_utf8_and_last_line_without_newline(driver: SimulatedOned) -> None:
    driver.send_raw("RAW  1 " + base64.b64encode(b"bad \xff byte\ntail-no-newline").decode())
    driver.send_action("EXIT", 1, "3")
    assert driver.wait_exit(10) == 3
    assert driver.lines[-2:] == ["bad \\xff byte", "tail-no-newline"]


def test_concurrent_waiters(driver: SimulatedOned) -> None:
    results: dict = {}

    def waiter(vm_id: int) -> None:
        results[vm_id] = driver.wait_answer(vm_id, timeout=10).info

    threads = [threading.Thread(target=waiter, args=(i,)) for i in (11, 12, 13)]
    for thread in threads:
        thread.start()
    for vm_id, secs in ((11, "0.3"), (12, "0.1"), (13, "0.2")):
        driver.send_action("SLEEP", vm_id, secs)
    for thread in threads:
        thread.join(timeout=15)
    assert results == {11: "0.3", 12: "0.1", 13: "0.2"}


# --------------------------------------------------------------------------------------
# Timeouts
# --------------------------------------------------------------------------------------


def test_wait_answer_timeout_is_quick_shows_transcript_and_does_not_spin(
    driver: SimulatedOned,
) -> None:
    driver.send_action("DEPLOY", 1, "x")
    cpu_before, began = time.process_time(), time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        driver.wait_answer(77, timeout=1.0)
    elapsed = time.monotonic() - began
    assert 1.0 <= elapsed < 2.0
    assert time.process_time() - cpu_before < 0.3  # a Condition wait, not a busy loop
    message = str(raised.value)
    assert "no answer for id 77" in message
    assert ">> INIT" in message and "<< INIT SUCCESS - -" in message
    assert ">> DEPLOY  1 " in message
    assert not isinstance(raised.value, DriverGoneError)


def test_wait_lines_timeout(driver: SimulatedOned) -> None:
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="<< INIT SUCCESS"):
        driver.wait_lines(lambda lines: "never" in lines, timeout=0.3)
    assert time.monotonic() - began < 1.5


def test_wait_after_driver_exit_fails_at_once(driver: SimulatedOned) -> None:
    driver.send_action("EXIT", 1, "4")
    began = time.monotonic()
    with pytest.raises(DriverGoneError, match="driver exit status: 4|stdout closed"):
        driver.wait_answer(1, timeout=30)
    with pytest.raises(DriverGoneError):
        driver.wait_lines(lambda lines: False, timeout=30)
    assert time.monotonic() - began < 5


def test_long_lines_are_shortened_in_error_messages(driver: SimulatedOned) -> None:
    driver.send_action("DEPLOY", 1, "y" * 10_000)
    with pytest.raises(TimeoutError) as raised:
        driver.wait_answer(2, timeout=0.1)
    assert "chars]" in str(raised.value)
    assert len(str(raised.value)) < 10_000


# --------------------------------------------------------------------------------------
# Shutdown: FINALIZE, stdin EOF, stop()
# --------------------------------------------------------------------------------------


def test_finalize_returns_exit_code(driver: SimulatedOned) -> None:
    assert driver.finalize(timeout=10) == 0
    assert driver.returncode == 0
    assert driver.sent[-1] == "FINALIZE"
    assert "driver exited with 0" in driver.transcript()


def test_finalize_returns_nonzero_exit_code() -> None:
    with stub(env={"STUB_FINALIZE_CODE": "7"}).start() as driver:
        assert driver.finalize(timeout=10) == 7


def test_stdin_eof_exit_code(driver: SimulatedOned) -> None:
    driver.close_stdin()
    driver.close_stdin()  # idempotent
    assert driver.wait_exit(10) == 255
    with pytest.raises(RuntimeError):
        driver.send_raw("INIT")


def test_send_to_exited_driver_raises_broken_pipe(driver: SimulatedOned) -> None:
    driver.send_action("EXIT", 1, "0")
    driver.wait_exit(10)
    with pytest.raises(BrokenPipeError):
        for _ in range(3):  # the first write may still land in the pipe buffer
            driver.send_action("DEPLOY", 2, "x" * 100_000)


def test_wait_exit_timeout(driver: SimulatedOned) -> None:
    with pytest.raises(TimeoutError, match="did not exit"):
        driver.wait_exit(0.2)
    assert driver.returncode is None


def test_finalize_timeout_kills_when_driver_ignores_finalize_and_eof() -> None:
    with stub(env={"STUB_FINALIZE": "ignore", "STUB_EOF": "ignore"}).start() as driver:
        began = time.monotonic()
        with pytest.raises(TimeoutError, match="killed it"):
            driver.finalize(timeout=0.5, kill_grace=0.5)
        assert time.monotonic() - began < 5
        assert driver.returncode == -signal.SIGKILL


def test_finalize_timeout_reports_exit_after_stdin_eof() -> None:
    with stub(env={"STUB_FINALIZE": "ignore"}).start() as driver:
        with pytest.raises(TimeoutError, match="exited with 255 after stdin was closed"):
            driver.finalize(timeout=0.3, kill_grace=5.0)


def test_stop_kills_hung_driver_and_its_process_group() -> None:
    harness = stub(env={"STUB_FINALIZE": "ignore", "STUB_EOF": "ignore"})
    with harness.start() as driver:
        driver.send_action("SPAWN", 1, "")
        grandchild = int(driver.wait_answer(1, timeout=10).info)
        assert driver.pgid is not None
        group = driver.pgid
        assert set(pids_in_group(group)) == {driver.pid, grandchild}
        began = time.monotonic()
        driver.stop()
        assert time.monotonic() - began < 3
        assert driver.returncode == -signal.SIGKILL
        assert wait_dead(grandchild)
        assert pids_in_group(group) == []
        driver.stop()  # idempotent
    assert harness.returncode == -signal.SIGKILL


def test_stop_after_finalize_kills_leftover_scripts(driver: SimulatedOned) -> None:
    driver.send_action("SPAWN", 1, "")
    grandchild = int(driver.wait_answer(1, timeout=10).info)
    assert driver.finalize(timeout=10) == 0
    assert alive(grandchild)  # the stub leaves it behind: visible before stop()
    driver.stop()
    assert wait_dead(grandchild)


def test_stop_does_not_hang_when_an_escaped_process_holds_stdout(driver: SimulatedOned) -> None:
    driver.send_action("SPAWN_ESCAPE", 1, "")
    escaped = int(driver.wait_answer(1, timeout=10).info)
    try:
        began = time.monotonic()
        driver.stop()
        assert time.monotonic() - began < 5
        with pytest.raises(DriverGoneError):
            driver.wait_answer(1, timeout=10)
    finally:
        os.kill(escaped, signal.SIGKILL)  # a process this test started, outside the group
        wait_dead(escaped)


def test_stop_before_start_and_twice() -> None:
    harness = stub()
    harness.stop()
    harness.stop()
    assert harness.returncode is None


def test_context_manager_stops_on_exception() -> None:
    with pytest.raises(ZeroDivisionError):
        with stub().start() as driver:
            pid = driver.pid
            1 / 0  # noqa: B018
    assert pid is not None and wait_dead(pid)
    assert driver.returncode == -signal.SIGKILL


def test_reader_thread_ends_after_stop(driver: SimulatedOned) -> None:
    reader = driver._reader
    assert reader is not None and reader.daemon
    driver.stop()
    assert not reader.is_alive()


# --------------------------------------------------------------------------------------
# The real driver, once it exists
# --------------------------------------------------------------------------------------


def test_real_driver_init_and_finalize_smoke() -> None:
    pytest.importorskip("vmm_exec.driver")
    with SimulatedOned().start() as driver:
        assert driver.lines[0] == "INIT SUCCESS - -"
        assert driver.finalize(timeout=30) == 0
