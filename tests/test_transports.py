"""Unit tests of the command executors in ``vmm_exec/transports``.

Everything here runs real processes with real timeouts; nothing is mocked.
The persistent stream is driven through an opener that starts a *local*
shell instead of ``ssh`` (the stream only needs a process that reads commands
on its stdin), and the one-shot remote commands go through a fake ``ssh`` /
``scp`` put first on ``PATH`` (tiny Python scripts that journal their argv and
run the remote command with ``bash -c`` locally).

Every wait is bounded. Processes the commands leave behind on purpose are
killed at teardown by pid, after checking that the pid is still the process
the test started.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmm_exec.cancel import Cancelled, CancelScope
from vmm_exec.transports import local
from vmm_exec.transports.base import (
    WATCHDOG_REPORT,
    WATCHDOG_START,
    Execution,
    RemoteGroup,
    decode,
    encode,
)
from vmm_exec.transports.channel import ProcessChannel
from vmm_exec.transports.local import capture, run_local
from vmm_exec.transports.stream import SshStream, StreamCommand

PY = sys.executable
MB = 1024 * 1024

# --------------------------------------------------------------------------
# process helpers
# --------------------------------------------------------------------------


def _stat_fields(pid: int) -> Optional[List[str]]:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data.rsplit(b")", 1)[1].decode().split()


def pid_alive(pid: int) -> bool:
    """A live (non-zombie) process with this pid exists."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> List[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def read_int(path: Path, timeout: float = 5.0) -> int:
    """An integer a command wrote to ``path`` (waits for it to appear)."""
    def ready() -> bool:
        try:
            return path.read_text().strip() != ""
        except FileNotFoundError:
            return False

    assert wait_until(ready, timeout), f"{path} never written"
    return int(path.read_text().split()[0])


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return b""


class Leftovers:
    """Pids of processes a test expects may survive; killed at teardown if still ours."""

    def __init__(self) -> None:
        self._pids: List[Tuple[int, bytes]] = []

    def add(self, pid: int, marker: bytes) -> None:
        self._pids.append((pid, marker))

    def kill_all(self) -> None:
        for pid, marker in self._pids:
            if pid_alive(pid) and marker in cmdline(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def leftovers() -> Iterator[Leftovers]:
    holder = Leftovers()
    yield holder
    holder.kill_all()


class LogSink:
    """A ``Logger``: records (message, all_lines) calls."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, bool]] = []

    def __call__(self, message: str, all_lines: bool = True) -> None:
        self.calls.append((message, all_lines))

    @property
    def messages(self) -> List[str]:
        return [m for m, _ in self.calls]


def in_thread(fn: Callable[[], object]) -> Tuple[threading.Thread, dict]:
    """Run ``fn`` in a daemon thread; the dict gets ``result`` or ``error``."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc
        box["end"] = time.monotonic()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


# ==========================================================================
# 1. local.capture / run_local
# ==========================================================================


@pytest.mark.parametrize("code", [0, 1, 2, 42, 127, 255])
def test_capture_exit_codes(code: int) -> None:
    result = capture(CancelScope(), f"exit {code}", None, 10)
    assert result.code == code
    assert not result.timed_out


def test_capture_separates_stdout_and_stderr() -> None:
    result = capture(CancelScope(),
                     "echo out1; echo err1 >&2; printf out2; printf err2 >&2; exit 3",
                     None, 10)
    assert result == Execution("echo out1; echo err1 >&2; printf out2; printf err2 >&2; exit 3",
                               3, "out1\nout2", "err1\nerr2", False)


def test_capture_argv_list_runs_without_a_shell() -> None:
    result = capture(CancelScope(), ["printf", "%s|", "a b", "$(x)", "*"], None, 10)
    assert result.code == 0
    assert result.stdout == "a b|$(x)|*|"
    assert result.command == "printf %s| a b $(x) *"


def test_capture_string_goes_through_bin_sh() -> None:
    result = capture(CancelScope(), "x=1; echo $((x + 1)) | cat", None, 10)
    assert result.stdout == "2\n"


def test_capture_env_is_passed() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ONLY_HERE": "v a l"}
    result = capture(CancelScope(), 'printf %s "$ONLY_HERE"', None, 10, env=env)
    assert result.stdout == "v a l"


def test_capture_stdin_delivered() -> None:
    result = capture(CancelScope(), "cat", "line1\nline2 'q' \"d\" $(no)\n", 10)
    assert result.stdout == "line1\nline2 'q' \"d\" $(no)\n"


def test_capture_no_stdin_gives_eof() -> None:
    start = time.monotonic()
    result = capture(CancelScope(), "cat; echo done", None, 10)
    assert result.stdout == "done\n"
    assert time.monotonic() - start < 5


def test_capture_large_stdin_to_slow_reader() -> None:
    data = "".join(f"{i:07d} {'x' * 56}\n" for i in range(2 * MB // 64))
    assert len(data) >= 2 * MB
    slow = (f"{PY} -c 'import sys, time\n"
            "while True:\n"
            "    chunk = sys.stdin.buffer.read(65536)\n"
            "    if not chunk: break\n"
            "    sys.stdout.buffer.write(chunk); time.sleep(0.01)\n'")
    start = time.monotonic()
    result = capture(CancelScope(), slow, data, 30)
    assert result.code == 0
    assert len(result.stdout) == len(data)
    assert result.stdout == data
    assert time.monotonic() - start < 20


def test_capture_large_stdout_and_stderr_at_once_no_deadlock() -> None:
    # the child alternates small writes to both pipes: a parent that drained
    # one pipe at a time would block it forever on the other
    script = (f"{PY} -c 'import os\n"
              "for i in range(400):\n"
              "    os.write(1, b\"o\" * 4096); os.write(2, b\"e\" * 4096)\n'")
    result = capture(CancelScope(), script, None, 30)
    assert result.code == 0
    assert result.stdout == "o" * (400 * 4096)
    assert result.stderr == "e" * (400 * 4096)


def test_capture_large_stdin_and_large_output_at_once() -> None:
    data = "abcdefghijklmno\n" * (2 * MB // 16)
    result = capture(CancelScope(), "tee /dev/stderr", data, 30)
    assert result.code == 0
    assert result.stdout == data
    assert result.stderr == data


def test_capture_command_not_reading_stdin() -> None:
    start = time.monotonic()
    result = capture(CancelScope(), "echo ignored; exit 5", "z" * (3 * MB), 10)
    assert result.code == 5
    assert result.stdout == "ignored\n"
    assert not result.timed_out
    assert time.monotonic() - start < 5


def test_capture_invalid_utf8_survives() -> None:
    raw_out = b"ok \xff\xfe\x80 \xc3( \xed\xa0\x80 end\n"
    raw_err = b"\x80\x81err\xf0\x9f\x98"
    script = f"import os; os.write(1, {raw_out!r}); os.write(2, {raw_err!r})"
    result = capture(CancelScope(), [PY, "-c", script], None, 10)
    assert encode(result.stdout) == raw_out
    assert encode(result.stderr) == raw_err
    assert result.stdout == decode(raw_out)


def test_capture_stdin_with_surrogate_escapes_is_written_raw() -> None:
    raw = b"\xff\xfebin\x80ary\n"
    result = capture(CancelScope(), "cat", decode(raw), 10)
    assert encode(result.stdout) == raw


@pytest.mark.parametrize("sig", ["TERM", "KILL", "SEGV"])
def test_capture_exit_by_signal_is_255(sig: str) -> None:
    result = capture(CancelScope(), f"echo before; kill -{sig} $$; echo after", None, 10)
    assert result.code == 255
    assert result.stdout == "before\n"
    assert not result.timed_out


def test_capture_timeout_kills_the_whole_process_group(tmp_path: Path,
                                                       leftovers: Leftovers) -> None:
    pidfile = tmp_path / "pid"
    command = (f"echo started; sleep 31.5 & echo $! > {pidfile}; "
               f"cut -d' ' -f5 /proc/$$/stat > {tmp_path / 'pgid'}; wait")
    start = time.monotonic()
    result = capture(CancelScope(), command, None, 0.5)
    elapsed = time.monotonic() - start
    grandchild = read_int(pidfile)
    leftovers.add(grandchild, b"31.5")
    pgid = read_int(tmp_path / "pgid")
    assert result.timed_out
    assert result.code == 255
    assert result.stdout == "started\n"
    assert 0.5 <= elapsed < 4
    assert wait_until(lambda: not pid_alive(grandchild), 3), "grandchild sleep survived"
    assert wait_until(lambda: not group_members(pgid), 3)


def test_capture_timeout_escalates_to_kill(tmp_path: Path, leftovers: Leftovers,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # the whole group ignores TERM: after TERM_GRACE it gets KILL
    monkeypatch.setattr(local, "TERM_GRACE", 0.3)
    pidfile = tmp_path / "pid"
    command = f"trap '' TERM; sleep 32.5 & echo $! > {pidfile}; wait; wait"
    start = time.monotonic()
    result = capture(CancelScope(), command, None, 0.3)
    elapsed = time.monotonic() - start
    grandchild = read_int(pidfile)
    leftovers.add(grandchild, b"32.5")
    assert result.timed_out
    assert result.code == 255
    assert elapsed < 4
    assert wait_until(lambda: not pid_alive(grandchild), 3)


def test_capture_timeout_kills_term_ignoring_grandchild(tmp_path: Path,
                                                        leftovers: Leftovers) -> None:
    pidfile = tmp_path / "pid"
    command = f"(trap '' TERM; exec sleep 33.5) & echo $! > {pidfile}; wait"
    result = capture(CancelScope(), command, None, 0.3)
    grandchild = read_int(pidfile)
    leftovers.add(grandchild, b"33.5")
    assert result.timed_out
    # the leader died of TERM; the group member ignoring TERM should get KILL
    # like kill_groups() does for a cancellation
    assert wait_until(lambda: not pid_alive(grandchild), 2)


def test_capture_background_child_holding_stdout_returns_promptly(
        tmp_path: Path, leftovers: Leftovers) -> None:
    pidfile = tmp_path / "pid"
    command = f"sleep 34.5 & echo $! > {pidfile}; echo done; echo warn >&2; exit 4"
    start = time.monotonic()
    result = capture(CancelScope(), command, None, 20)
    elapsed = time.monotonic() - start
    child = read_int(pidfile)
    leftovers.add(child, b"34.5")
    assert result.code == 4
    assert result.stdout == "done\n"
    assert result.stderr == "warn\n"
    assert not result.timed_out
    # DRAIN_GRACE per pipe, nowhere near the child's 34.5 s
    assert elapsed < 2 * local.DRAIN_GRACE + 2


def test_capture_output_of_background_child_within_grace_is_kept() -> None:
    result = capture(CancelScope(), "(sleep 0.1; echo late) & echo early", None, 10)
    assert result.stdout == "early\nlate\n"


def test_run_local_success_logs_nothing() -> None:
    log = LogSink()
    result = run_local(CancelScope(), "echo fine; echo note >&2", log)
    assert result.code == 0
    assert result.stdout == "fine\n"
    assert result.stderr == "note\n"
    assert log.calls == []


def test_run_local_failure_logs_command_then_stderr() -> None:
    log = LogSink()
    command = "echo some; echo 'ERROR: broken' >&2; echo second >&2; exit 7"
    result = run_local(CancelScope(), command, log, None, 10)
    assert result.code == 7
    assert log.calls == [
        (f"Command execution failed (exit code: 7): {command}", True),
        ("ERROR: broken\nsecond\n", True),
    ]


def test_run_local_failure_with_empty_stderr_still_logs_it() -> None:
    log = LogSink()
    run_local(CancelScope(), "exit 1", log)
    assert log.calls == [("Command execution failed (exit code: 1): exit 1", True), ("", True)]


def test_run_local_passes_stdin() -> None:
    log = LogSink()
    result = run_local(CancelScope(), "wc -c", log, "12345")
    assert result.stdout.strip() == "5"


def test_run_local_timeout_logs_and_reports_like_ruby() -> None:
    log = LogSink()
    command = "echo partial; sleep 35.5"
    start = time.monotonic()
    result = run_local(CancelScope(), command, log, None, 0.4)
    assert time.monotonic() - start < 4
    assert log.calls == [(f"Timeout executing {command}", True)]
    assert result.code == 255
    assert result.timed_out
    assert result.stderr == f"Timeout executing {command}"
    assert result.stdout == ""


def test_capture_missing_program_is_a_failed_execution() -> None:
    result = capture(CancelScope(), ["/nonexistent/dir/ssh", "-n", "h", "true"], None, 5)
    assert result.code in (127, 255)


def test_capture_releases_its_process() -> None:
    scope = CancelScope()
    capture(scope, "true", None, 10)
    capture(scope, "sleep 36.5", None, 0.2)
    # a registration kept after exit could make a later cancel() signal a recycled pid
    assert scope.live_processes == 0 and scope.live_callbacks == 0


# ==========================================================================
# 2. CancelScope
# ==========================================================================


def test_cancel_stops_running_capture_in_other_thread(tmp_path: Path,
                                                      leftovers: Leftovers) -> None:
    scope = CancelScope()
    pidfile = tmp_path / "pid"
    thread, box = in_thread(lambda: capture(
        scope, f"sleep 37.5 & echo $! > {pidfile}; wait", None, None))
    grandchild = read_int(pidfile)
    leftovers.add(grandchild, b"37.5")
    start = time.monotonic()
    scope.cancel()
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(box.get("error"), Cancelled)
    assert box["end"] - start < 3
    assert wait_until(lambda: not pid_alive(grandchild), 3)


def test_cancel_kills_every_registered_group(tmp_path: Path, leftovers: Leftovers) -> None:
    scope = CancelScope()
    threads = []
    for i in range(4):
        pidfile = tmp_path / f"pid{i}"
        threads.append(in_thread(lambda p=pidfile: capture(
            scope, f"sleep 38.5 & echo $! > {p}; wait", None, 30)))
    pids = [read_int(tmp_path / f"pid{i}") for i in range(4)]
    for pid in pids:
        leftovers.add(pid, b"38.5")
    scope.cancel()
    for thread, box in threads:
        thread.join(5)
        assert not thread.is_alive()
        assert isinstance(box.get("error"), Cancelled)
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 3)


def test_cancel_escalates_to_kill_for_term_ignoring_processes(tmp_path: Path,
                                                              leftovers: Leftovers) -> None:
    scope = CancelScope()
    scope.grace = 0.3
    pidfile = tmp_path / "pid"
    thread, box = in_thread(lambda: capture(
        scope, f"trap '' TERM; (exec sleep 39.5) & echo $! > {pidfile}; wait; wait", None,
        None))
    grandchild = read_int(pidfile)
    leftovers.add(grandchild, b"39.5")
    start = time.monotonic()
    scope.cancel()
    assert time.monotonic() - start < 3
    thread.join(5)
    assert isinstance(box.get("error"), Cancelled)
    assert wait_until(lambda: not pid_alive(grandchild), 3)


def test_spawn_after_cancel_raises() -> None:
    scope = CancelScope()
    scope.cancel()
    with pytest.raises(Cancelled):
        scope.spawn(["true"])
    with pytest.raises(Cancelled):
        capture(scope, "true", None, 5)
    with pytest.raises(Cancelled):
        scope.check()


def test_check_before_cancel_passes() -> None:
    CancelScope().check()


def test_cancel_is_idempotent_and_thread_safe() -> None:
    scope = CancelScope()
    hook_calls: List[int] = []
    scope.on_cancel(lambda: hook_calls.append(1))
    barrier = threading.Barrier(8)

    def cancel() -> None:
        barrier.wait(5)
        scope.cancel()

    threads = [threading.Thread(target=cancel, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    scope.cancel()
    assert scope.cancelled
    assert hook_calls == [1]


def test_cancel_runs_hooks_even_if_one_fails(tmp_path: Path, leftovers: Leftovers) -> None:
    scope = CancelScope()
    seen: List[str] = []

    def bad() -> None:
        raise RuntimeError("boom")

    scope.on_cancel(bad)
    scope.on_cancel(lambda: seen.append("second"))
    pidfile = tmp_path / "pid"
    thread, box = in_thread(lambda: capture(scope, f"echo $$ > {pidfile}; exec sleep 40.5",
                                            None, None))
    pid = read_int(pidfile)
    leftovers.add(pid, b"40.5")
    scope.cancel()
    thread.join(5)
    assert seen == ["second"]
    assert isinstance(box.get("error"), Cancelled)
    assert wait_until(lambda: not pid_alive(pid), 3)


def test_cancel_racing_with_many_spawns_leaves_nothing(tmp_path: Path,
                                                       leftovers: Leftovers) -> None:
    for round_ in range(5):
        scope = CancelScope()
        outcomes: List[str] = []
        lock = threading.Lock()

        def worker(i: int, scope: CancelScope = scope, round_: int = round_,
                   outcomes: List[str] = outcomes, lock: threading.Lock = lock) -> None:
            pidfile = tmp_path / f"r{round_}w{i}"
            try:
                capture(scope, f"echo $$ > {pidfile}; exec sleep 41.5", None, 20)
                outcome = "finished"
            except Cancelled:
                outcome = "cancelled"
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(0.01 * round_)
        scope.cancel()
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive()
        assert outcomes == ["cancelled"] * 6
        for pidfile in tmp_path.glob(f"r{round_}w*"):
            try:
                pid = int(pidfile.read_text().split()[0])
            except (ValueError, IndexError):
                continue
            leftovers.add(pid, b"41.5")
            assert wait_until(lambda p=pid: not pid_alive(p), 3)


# ==========================================================================
# 3. SshStream / StreamCommand
# ==========================================================================


def local_opener(host: str, shell: str, forward: bool) -> List[str]:
    """A stream connection that is a local shell instead of ``ssh HOST SHELL -s``."""
    return ["bash", "-c", f"exec {shell} -s"]


def process_opener(scope: CancelScope, argv_of: Callable[[str, str, bool], List[str]]
                   ) -> Callable[[str, str, bool], ProcessChannel]:
    """An opener running a local process (the argv ``argv_of`` gives) as the channel."""
    return lambda host, shell, forward: ProcessChannel(scope, argv_of(host, shell, forward))


@dataclass
class Rig:
    command: StreamCommand
    scope: CancelScope
    log: LogSink
    updates: List[str] = field(default_factory=list)

    @property
    def stream(self) -> SshStream:
        return self.command.stream

    def run(self, command: str, stdin: Optional[str] = None, base_cmd: Optional[str] = None,
            timeout: Optional[float] = None, **kwargs: object) -> Execution:
        return self.command.run(command, stdin, base_cmd, timeout, **kwargs)  # type: ignore[arg-type]


MakeRig = Callable[..., Rig]


@pytest.fixture
def make_rig() -> Iterator[MakeRig]:
    rigs: List[Rig] = []

    def make(opener: Callable[[str, str, bool], List[str]] = local_opener, shell: str = "bash",
             host: str = "h", reconnect: bool = False, forward: bool = False,
             on_update: Optional[Callable[[], None]] = None,
             remote_killer: Optional[Callable[[RemoteGroup], None]] = None,
             merge_check: bool = False) -> Rig:
        scope = CancelScope()
        log = LogSink()
        channel_opener = process_opener(scope, opener)
        if remote_killer is None:
            stream = SshStream(host, shell, channel_opener, scope, forward=forward)
        else:
            stream = SshStream(host, shell, channel_opener, scope, forward=forward,
                               remote_killer=remote_killer)
        updates: List[str] = []

        def update() -> None:
            updates.append(host)
            if on_update is not None:
                on_update()

        rig = Rig(StreamCommand(stream, "/remote/dir", log, update, reconnect=reconnect,
                                merge_check=merge_check),
                  scope, log, updates)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        try:
            rig.command.close()
        except Exception:  # noqa: BLE001 - teardown must go on
            pass
        if not rig.scope.cancelled:
            rig.scope.cancel()


def shell_pid(rig: Rig) -> int:
    result = rig.run("echo $$")
    assert result.code == 0
    return int(result.stdout)


def test_stream_several_commands_same_process(make_rig: MakeRig) -> None:
    rig = make_rig()
    first = shell_pid(rig)
    assert rig.run("echo a; echo b >&2; exit 3").code == 3
    assert shell_pid(rig) == first
    assert pid_alive(first)


def test_stream_output_and_code_per_command(make_rig: MakeRig) -> None:
    rig = make_rig()
    r1 = rig.run("echo out1; echo err1 >&2; exit 3")
    r2 = rig.run("echo out2")
    r3 = rig.run("echo err3 >&2; false")
    assert (r1.code, r1.stdout, r1.stderr) == (3, "out1\n", "err1\nExitCode: 3")
    assert (r2.code, r2.stdout, r2.stderr) == (0, "out2\n", "ExitCode: 0")
    assert (r3.code, r3.stdout, r3.stderr) == (1, "", "err3\nExitCode: 1")
    assert r1.command == "echo out1; echo err1 >&2; exit 3"
    assert not any(r.timed_out for r in (r1, r2, r3))


def test_stream_stdout_without_final_newline(make_rig: MakeRig) -> None:
    rig = make_rig()
    result = rig.run("printf 'no newline'")
    assert (result.code, result.stdout, result.stderr) == (0, "no newline", "ExitCode: 0")


def test_stream_logs_like_ruby(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.run("echo fine >&2")
    rig.run("echo 'ERROR: bad' >&2; exit 9")
    assert rig.log.calls == [
        ("fine\nExitCode: 0", True),
        ("Command execution fail (exit code: 9): echo 'ERROR: bad' >&2; exit 9", True),
        ("ERROR: bad\nExitCode: 9", True),
    ]


def test_stream_each_command_runs_in_a_subshell(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.run("cd /; X=1; exit 0")
    result = rig.run('echo "${X:-unset}"')
    assert result.stdout == "unset\n"


HEREDOC_BODY = "\n".join([
    "first line",
    "EOT",
    "  EOT  ",
    "'single' \"double\" `echo backtick` $(echo dollar) ${HOME} $HOME \\ \\n",
    "\tEOT",
    "EOF_OUT",
    "ExitCode: 0 EOF_ERR",
    "last line without newline",
])


def test_stream_heredoc_stdin_reaches_script_byte_exact(make_rig: MakeRig,
                                                        tmp_path: Path) -> None:
    rig = make_rig()
    target = tmp_path / "got"
    result = rig.run(f"cat > {target}; echo stored", HEREDOC_BODY)
    assert result.code == 0
    assert result.stdout == "stored\n"
    # a here-document always ends with a newline
    assert target.read_bytes() == HEREDOC_BODY.encode() + b"\n"
    # the body has a line "EOT": another delimiter is chosen
    assert result.command == f"cat << 'EOT_0' | cat > {target}; echo stored"
    assert rig.log.calls == [("ExitCode: 0", True)]


def test_stream_heredoc_uses_eot_for_ordinary_body(make_rig: MakeRig) -> None:
    rig = make_rig()
    result = rig.run("wc -c", "PGRhdGE+PC9kYXRhPg==")
    assert result.command == "cat << 'EOT' | wc -c"
    assert result.stdout.strip() == "21"


def test_stream_heredoc_skips_every_taken_delimiter(make_rig: MakeRig, tmp_path: Path) -> None:
    rig = make_rig()
    body = "EOT\nEOT_0\nEOT_1\nx"
    target = tmp_path / "got"
    result = rig.run(f"cat > {target}", body)
    assert result.command.startswith("cat << 'EOT_2' | ")
    assert target.read_text() == body + "\n"


def test_stream_heredoc_does_not_execute_body(make_rig: MakeRig, tmp_path: Path) -> None:
    rig = make_rig()
    marker = tmp_path / "pwned"
    body = f"$(touch {marker})\n`touch {marker}`\nEOT\ntouch {marker}\n"
    result = rig.run("cat >/dev/null", body)
    assert result.code == 0
    assert not marker.exists()
    # and the stream still works afterwards
    assert rig.run("echo alive").stdout == "alive\n"


def test_stream_heredoc_invalid_utf8(make_rig: MakeRig, tmp_path: Path) -> None:
    rig = make_rig()
    raw = b"bin\xff\xfe\x80ary\nline2"
    target = tmp_path / "got"
    result = rig.run(f"cat > {target}", decode(raw))
    assert result.code == 0
    assert target.read_bytes() == raw + b"\n"


def test_stream_empty_stdin(make_rig: MakeRig) -> None:
    rig = make_rig()
    result = rig.run("od -c | head -1", "")
    assert result.command == "cat << 'EOT' | od -c | head -1"
    assert "\\n" in result.stdout


def _script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(mode)
    return path


MERGED = pytest.mark.parametrize("merge_check", [False, True], ids=["ruby-check", "merged"])


@MERGED
def test_stream_check_missing_script_calls_update(make_rig: MakeRig, tmp_path: Path,
                                                  merge_check: bool) -> None:
    script = tmp_path / "remotes" / "vmm" / "deploy"
    got = tmp_path / "stdin"

    def update() -> None:  # what a remotes update does: the script is there afterwards
        script.parent.mkdir(parents=True)
        _script(script, f'echo "deployed $*"; cat >{got}')

    rig = make_rig(on_update=update, merge_check=merge_check)
    command = f"{script} 'a b' c"
    payload = f"touch {tmp_path}/ran-by-the-shell\n$(touch {tmp_path}/expanded)"
    result = rig.run(command, payload, command)
    assert rig.updates == ["h"]
    assert result.code == 0
    assert result.stdout == "deployed a b c\n"
    # the check's own exit status (or marker) does not leak into the command's stderr
    assert result.stderr == "ExitCode: 0"
    # the here-document skipped with the command was read as one, never run
    assert got.read_text() == payload + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["remotes", "stdin"]
    assert rig.run("echo in sync").stdout == "in sync\n"


@MERGED
def test_stream_check_existing_script_does_not_update(make_rig: MakeRig, tmp_path: Path,
                                                      merge_check: bool) -> None:
    script = _script(tmp_path / "poll", "echo polled")
    rig = make_rig(merge_check=merge_check)
    result = rig.run(f"{script} 1 h", None, f"{script} 1 h")
    assert rig.updates == []
    assert (result.code, result.stdout) == (0, "polled\n")


@MERGED
def test_stream_check_not_executable_script_updates(make_rig: MakeRig, tmp_path: Path,
                                                    merge_check: bool) -> None:
    script = _script(tmp_path / "poll", "echo polled", mode=0o644)
    rig = make_rig(merge_check=merge_check)
    result = rig.run(f"{script}", None, f"{script}")
    assert rig.updates == ["h"]
    assert result.code == 126  # bash: permission denied
    assert result.stderr.endswith("Permission denied\nExitCode: 126")
    assert "MISSING" not in result.stderr


def test_stream_merged_check_finds_its_marker_after_other_stderr(make_rig: MakeRig) -> None:
    """Something the shell printed before the marker (a background job's message)
    does not hide the missing script, and stays in the command's stderr."""
    rig = make_rig(merge_check=True)
    stream = rig.stream
    stream.open()
    stream.exec("echo ran", unless_missing='"/nonexistent/x"')
    code = stream.wait_for_command(5)
    assert code == 42 and stream.out == b""  # the command did not run
    stream.err = b"noise\n" + stream.err  # white-box: as if the shell wrote it first
    assert stream.missing(code)
    assert stream.err == b"noise\nExitCode: 42"
    assert not stream.missing(code)  # taken out once


@MERGED
def test_stream_check_a_script_exiting_42_is_not_missing(make_rig: MakeRig, tmp_path: Path,
                                                         merge_check: bool) -> None:
    script = _script(tmp_path / "deploy", "echo MISSING >&2; exit 42")
    rig = make_rig(merge_check=merge_check)
    result = rig.run(f"{script} 1", "x", f"{script} 1")
    assert rig.updates == []
    assert (result.code, result.stderr) == (42, "MISSING\nExitCode: 42")


def test_stream_check_wire_text(make_rig: MakeRig, tmp_path: Path) -> None:
    """Strict mode sends Ruby's text: the check as a command of its own. Default mode:
    the check rides with the command (one round trip); a missing script skips the
    command, which is sent again, unchanged, after the update. The watchdog comes
    first either way (invisible: its output is consumed)."""
    for merge_check in (False, True):
        wire = tmp_path / f"wire-{merge_check}"

        def tee_opener(host: str, shell: str, forward: bool, wire: Path = wire) -> List[str]:
            return ["bash", "-c", f"tee -a {wire} | {shell} -s"]

        rig = make_rig(opener=tee_opener, merge_check=merge_check)
        result = rig.run("/x/s a", "body", "/x/s a b")
        assert result.code == 127
        assert rig.updates == ["h"]
        nonce = rig.stream._nonce  # white-box: the per-stream marker suffix
        tail = f'; echo "ExitCode: $? EOF_ERR_{nonce}" 1>&2; echo "EOF_OUT_{nonce}"\n'
        command = f"(cat << 'EOT' | /x/s a){tail}body\nEOT\n"
        if merge_check:
            guard = f'if [ ! -x "/x/s" ]; then echo MISSING_{nonce} 1>&2; exit 42; fi; '
            sent = f"({guard}{command[1:]}{command}"
        else:
            ruby_check = ('if [ ! -x "/x/s" ]; ' + " " * 26 + "then exit 42 1>&2; "
                          + " " * 24 + "fi")
            sent = f"({ruby_check}){tail}{command}"
        assert wire.read_text() == f"{WATCHDOG_START}({WATCHDOG_REPORT}){tail}{sent}"


def test_stream_fake_end_markers_do_not_end_command(make_rig: MakeRig) -> None:
    rig = make_rig()
    command = ("echo EOF_OUT; echo 'ExitCode: 0 EOF_ERR' >&2; "
               'echo "ExitCode: 0 EOF_ERR_"; echo \'ExitCode: 0 EOF_ERR_x\' >&2; '
               "sleep 0.3; echo after; echo after-err >&2; exit 5")
    result = rig.run(command, None, None, 10)
    assert result.code == 5
    assert result.stdout == "EOF_OUT\nExitCode: 0 EOF_ERR_\nafter\n"
    assert result.stderr == "ExitCode: 0 EOF_ERR\nExitCode: 0 EOF_ERR_x\nafter-err\nExitCode: 5"
    # the stream is still in sync
    assert rig.run("echo next").stdout == "next\n"


def test_stream_stderr_without_final_newline_detected_at_once(make_rig: MakeRig) -> None:
    rig = make_rig()
    start = time.monotonic()
    result = rig.run("printf oops >&2; exit 4", None, None, 20)
    assert time.monotonic() - start < 3
    assert result.code == 4
    assert result.stderr == "oops\nExitCode: 4"
    assert not result.timed_out
    assert rig.log.messages[-1] == "oops\nExitCode: 4"
    assert rig.run("printf more >&2").stderr == "more\nExitCode: 0"


def test_stream_large_stdout_and_stderr(make_rig: MakeRig) -> None:
    rig = make_rig()
    script = (f"{PY} -c 'import os\n"
              "for i in range(300):\n"
              "    os.write(1, b\"o\" * 4096); os.write(2, b\"e\" * 4096)\n'")
    result = rig.run(script, None, None, 30)
    assert result.code == 0
    assert result.stdout == "o" * (300 * 4096)
    assert result.stderr == "e" * (300 * 4096) + "\nExitCode: 0"


def test_stream_large_heredoc_to_chatty_script(make_rig: MakeRig) -> None:
    rig = make_rig()
    body = "".join(f"{i:07d} {'y' * 56}" + "\n" for i in range(MB // 64))
    body = body.rstrip("\n")
    # the script floods stdout and stderr before reading its stdin
    chatty = (f"{PY} -c 'import os, sys, hashlib\n"
              "for i in range(256): os.write(1, b\"o\" * 4096); os.write(2, b\"e\" * 4096)\n"
              "data = sys.stdin.buffer.read()\n"
              "digest = hashlib.sha256(data).hexdigest().encode()\n"
              "os.write(1, b\"\\n%d %s\\n\" % (len(data), digest))'")
    start = time.monotonic()
    result = rig.run(chatty, body, None, 40)
    assert time.monotonic() - start < 30
    assert result.code == 0
    expected = (body + "\n").encode()
    summary = result.stdout[256 * 4096:]
    assert result.stdout[:256 * 4096] == "o" * (256 * 4096)
    assert summary == f"\n{len(expected)} {hashlib.sha256(expected).hexdigest()}\n"
    assert result.stderr == "e" * (256 * 4096) + "\nExitCode: 0"


def _pgid_of_shell(tmp_path: Path) -> str:
    return f"cut -d' ' -f5 /proc/$$/stat > {tmp_path / 'pgid'}"


def test_stream_timeout_kills_group(make_rig: MakeRig, tmp_path: Path,
                                    leftovers: Leftovers) -> None:
    rig = make_rig()
    pidfile = tmp_path / "pid"
    command = f"{_pgid_of_shell(tmp_path)}; echo started; sleep 42.5 & echo $! > {pidfile}; wait"
    start = time.monotonic()
    result = rig.run(command, None, None, 1)
    elapsed = time.monotonic() - start
    sleeper = read_int(pidfile)
    leftovers.add(sleeper, b"42.5")
    pgid = read_int(tmp_path / "pgid")
    assert 1 <= elapsed < 1 + 2.5
    assert result.code == -1
    assert result.stdout == "started\n"
    assert result.stderr.endswith("\nTimeout Error")
    assert result.timed_out
    assert rig.log.calls == [(f"Command execution fail (exit code: -1): {command}", True),
                             ("\nTimeout Error", True)]
    assert wait_until(lambda: not group_members(pgid), 3), "stream process group survived"
    assert not pid_alive(sleeper)
    assert not rig.stream.alive


def test_stream_timeout_with_heredoc(make_rig: MakeRig) -> None:
    rig = make_rig()
    start = time.monotonic()
    result = rig.run("cat >/dev/null; sleep 43.5", "some input", None, 0.5)
    assert time.monotonic() - start < 3
    assert result.timed_out
    assert result.command == "cat << 'EOT' | cat >/dev/null; sleep 43.5"


def test_stream_dead_after_timeout_without_reconnect(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.run("echo started; sleep 44.5", None, None, 0.5)
    rig.log.calls.clear()
    for stdin in (None, "data"):
        start = time.monotonic()
        result = rig.run("echo again", stdin, "/bin/echo")
        assert time.monotonic() - start < 0.5
        assert result.code == -1
        assert rig.updates == []
        # as in Ruby: nothing ran, what is reported is the previous command's output
        assert "again" not in result.stdout
    assert rig.log.messages[0].startswith("Command execution fail (exit code: -1): ")


def test_stream_reconnect_after_timeout(make_rig: MakeRig) -> None:
    rig = make_rig(reconnect=True)
    first = shell_pid(rig)
    assert rig.run("sleep 45.5", None, None, 0.5).timed_out
    start = time.monotonic()
    result = rig.run("echo again; echo e >&2", "ignored", "/bin/echo")
    assert time.monotonic() - start < 3
    assert (result.code, result.stdout, result.stderr) == (0, "again\n", "e\nExitCode: 0")
    assert shell_pid(rig) != first
    assert not pid_alive(first)


def test_stream_timeout_sticks_to_the_stream(make_rig: MakeRig) -> None:
    rig = make_rig(reconnect=True)
    assert rig.run("echo quick", None, None, 0.6).code == 0
    start = time.monotonic()
    result = rig.run("sleep 46.5")  # no timeout given: the earlier one applies
    assert result.timed_out
    assert time.monotonic() - start < 3


def test_stream_connection_dies_mid_command(make_rig: MakeRig) -> None:
    def opener(host: str, shell: str, forward: bool) -> List[str]:
        # like `ssh HOST bash -s`: the client's exit status is what counts
        return ["bash", "-c", f"{shell} -s; echo 'Connection to {host} closed.' >&2; exit 7"]

    rig = make_rig(opener=opener, host="node7")
    assert rig.run("echo warmup").code == 0
    rig.log.calls.clear()
    start = time.monotonic()
    result = rig.run("echo partial; echo perr >&2; kill -9 $$", None, None, 20)
    assert time.monotonic() - start < 3
    assert result.code == 7
    assert result.stdout == "partial\n"
    assert result.stderr.startswith("perr\n")
    assert "Connection to node7 closed.\n" in result.stderr
    assert result.stderr.endswith("\nExitSSHCode: 7\nError connecting to node7")
    assert not result.timed_out
    assert rig.log.messages[0] == ("Command execution fail (exit code: 7): "
                                   "echo partial; echo perr >&2; kill -9 $$")
    # the stream is dead: the next command does not run
    start = time.monotonic()
    assert rig.run("echo x").code == -1
    assert time.monotonic() - start < 0.5


def test_stream_shell_killed_by_signal_gives_255(make_rig: MakeRig) -> None:
    rig = make_rig(host="hostX")
    result = rig.run("printf 'no newline' >&2; kill $$", None, None, 20)
    assert result.code == 255
    assert result.stderr == "no newline\nExitSSHCode: 255\nError connecting to hostX"


def test_stream_exit_in_command_only_ends_its_subshell(make_rig: MakeRig) -> None:
    rig = make_rig(host="hostY")
    # `exit` inside the framing's subshell only ends the subshell; a shell that
    # reads `exit` at its top level really ends the connection
    assert rig.run("exit 3").code == 3
    # (KILL: a HUP or TERM is ignored by a shell whose parent ignored it, as under nohup)
    result = rig.run("echo fine; kill -KILL $$", None, None, 20)
    assert result.code == 255
    assert result.stdout == "fine\n"
    assert result.stderr.endswith("ExitSSHCode: 255\nError connecting to hostY")


def test_stream_connection_lost_while_child_holds_pipes(make_rig: MakeRig, tmp_path: Path,
                                                       leftovers: Leftovers) -> None:
    rig = make_rig(host="hz")
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    result = rig.run(f"sleep 48.5 & echo $! > {pidfile}; kill -9 $$", None, None, 20)
    leftovers.add(read_int(pidfile), b"48.5")
    # the pipes stay open in the child: the exit status of the client decides
    assert time.monotonic() - start < 4
    assert result.code == 255
    assert result.stderr.endswith("ExitSSHCode: 255\nError connecting to hz")
    start = time.monotonic()
    assert rig.run("echo x", "in").code == -1
    assert time.monotonic() - start < 0.5


def test_stream_connection_error_text_from_a_script_is_just_text(make_rig: MakeRig) -> None:
    # Ruby parsed `ExitSSHCode: N` out of stderr; the port watches the process
    rig = make_rig(host="hq")
    result = rig.run("echo 'ExitSSHCode: 5' >&2; echo 'Error connecting to hq' >&2; exit 1")
    assert result.code == 1
    assert result.stderr == "ExitSSHCode: 5\nError connecting to hq\nExitCode: 1"
    assert rig.run("echo still").stdout == "still\n"


def test_stream_reconnect_after_connection_lost(make_rig: MakeRig) -> None:
    attempts: List[int] = []

    def flaky(host: str, shell: str, forward: bool) -> List[str]:
        attempts.append(1)
        if len(attempts) == 1:
            return ["sh", "-c", "echo 'ssh: connect to host hr port 22: Connection refused' >&2;"
                    " exit 255"]
        return local_opener(host, shell, forward)

    rig = make_rig(opener=flaky, host="hr", reconnect=True)
    first = rig.run("echo one", "x", "/bin/echo")
    assert first.code == -1  # the check saw the error; the command never ran
    assert first.stderr.endswith("ExitSSHCode: 255\nError connecting to hr")
    second = rig.run("echo two", "x", "/bin/echo")
    assert (second.code, second.stdout, second.stderr) == (0, "two\n", "ExitCode: 0")
    assert len(attempts) == 2


def test_stream_unreachable_host_like_ruby(make_rig: MakeRig) -> None:
    def unreachable(host: str, shell: str, forward: bool) -> List[str]:
        return ["sh", "-c",
                f"echo 'ssh: connect to host {host} port 22: No route to host' >&2; exit 255"]

    rig = make_rig(opener=unreachable, host="host09")
    stale = ("ssh: connect to host host09 port 22: No route to host\n"
             "ExitSSHCode: 255\nError connecting to host09")
    start = time.monotonic()
    # the -x check gets the connection error (255, not 42: no update) ...
    result = rig.run("var/tmp/one/vnm/bridge/pre", "PFZNPjwvVk0+",
                     "var/tmp/one/vnm/bridge/pre")
    assert time.monotonic() - start < 3
    assert rig.updates == []
    # ... and the command itself never runs: -1 with the check's stale stderr
    assert result.code == -1
    assert result.stdout == ""
    assert result.stderr == stale
    assert rig.log.calls == [
        ("Command execution fail (exit code: -1): cat << 'EOT' | var/tmp/one/vnm/bridge/pre",
         True),
        (stale, True),
    ]


def test_stream_unreachable_host_without_check(make_rig: MakeRig) -> None:
    def unreachable(host: str, shell: str, forward: bool) -> List[str]:
        return ["sh", "-c", "echo 'ssh: Could not resolve hostname' >&2; exit 255"]

    rig = make_rig(opener=unreachable, host="nowhere")
    result = rig.run("echo hi")
    assert result.code == 255
    assert result.stderr == ("ssh: Could not resolve hostname\nExitSSHCode: 255\n"
                             "Error connecting to nowhere")


def test_stream_unreachable_host_with_check_reads_the_same_both_ways(make_rig: MakeRig) -> None:
    """Ruby's check takes the connection's end (255) and its command gets -1, with the
    connection error as its stderr: the merged check must not change that text."""
    def unreachable(host: str, shell: str, forward: bool) -> List[str]:
        return ["sh", "-c", "echo 'ssh: connect to host nowhere port 22: No route' >&2; exit 255"]

    results = []
    for merge_check in (False, True):
        rig = make_rig(opener=unreachable, host="nowhere", merge_check=merge_check)
        result = rig.run("/x/s a", "body", "/x/s a")
        results.append((result.code, result.stderr, rig.updates))
    assert results[0] == results[1]
    assert results[0] == (-1, "ssh: connect to host nowhere port 22: No route\n"
                              "ExitSSHCode: 255\nError connecting to nowhere", [])


def test_stream_opener_program_missing_is_a_connection_error(make_rig: MakeRig) -> None:
    rig = make_rig(opener=lambda host, shell, fwd: ["/nonexistent/dir/ssh", host, f"{shell} -s"],
                   host="hm")
    result = rig.run("echo hi", "x", "/bin/echo")
    assert result.code != 0
    assert result.stderr.endswith("Error connecting to hm")


def test_stream_command_with_quoted_newlines(make_rig: MakeRig) -> None:
    rig = make_rig()
    result = rig.run("{ printf '%s|' 'a\nb' '#c'; echo; cat; }", "body\nEOT_x", None, 10)
    assert result.code == 0
    assert result.stdout == "a\nb|#c|\nbody\nEOT_x\n"


def test_stream_opener_gets_host_shell_forward(make_rig: MakeRig) -> None:
    seen: List[Tuple[str, str, bool]] = []

    def opener(host: str, shell: str, forward: bool) -> List[str]:
        seen.append((host, shell, forward))
        return local_opener(host, shell, forward)

    rig = make_rig(opener=opener, host="hf", shell="sh", forward=True)
    rig.run("echo 1")
    rig.run("echo 2")
    assert seen == [("hf", "sh", True)]  # opened once, lazily


def test_stream_with_sh_shell(make_rig: MakeRig, tmp_path: Path) -> None:
    rig = make_rig(shell="sh")
    target = tmp_path / "got"
    result = rig.run(f"cat > {target}; echo x >&2; exit 2", HEREDOC_BODY, "/bin/cat")
    assert (result.code, result.stderr) == (2, "x\nExitCode: 2")
    assert target.read_bytes() == HEREDOC_BODY.encode() + b"\n"
    assert rig.updates == []


def test_stream_not_opened_until_first_run(make_rig: MakeRig) -> None:
    calls: List[str] = []

    def opener(host: str, shell: str, forward: bool) -> List[str]:
        calls.append(host)
        return local_opener(host, shell, forward)

    rig = make_rig(opener=opener)
    assert calls == [] and not rig.stream.opened
    rig.command.close()  # closing a never-opened stream is a no-op
    assert calls == []


def test_stream_close_leaves_no_process(make_rig: MakeRig, tmp_path: Path) -> None:
    rig = make_rig()
    rig.run(_pgid_of_shell(tmp_path))
    pgid = read_int(tmp_path / "pgid")
    pid = shell_pid(rig)
    assert group_members(pgid)
    start = time.monotonic()
    rig.command.close()
    assert time.monotonic() - start < 3
    assert not pid_alive(pid)
    assert wait_until(lambda: not group_members(pgid), 3)
    assert not rig.stream.alive
    rig.command.close()  # twice is fine
    assert not rig.scope._procs  # white-box: the registration is gone


def test_stream_close_after_timeout_and_after_loss(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.run("sleep 49.5", None, None, 0.3)
    rig.command.close()
    rig2 = make_rig()
    rig2.run("kill -9 $$")
    rig2.command.close()
    assert not rig.scope._procs and not rig2.scope._procs  # white-box


def test_stream_close_of_a_busy_shell(make_rig: MakeRig, tmp_path: Path,
                                      leftovers: Leftovers) -> None:
    # the shell is busy and never reads the `exit`: close() kills it after a grace
    rig = make_rig()
    pidfile = tmp_path / "pid"
    rig.stream.open()
    rig.stream.exec(f"{_pgid_of_shell(tmp_path)}; echo $$ > {pidfile}; sleep 50.5")
    pid = read_int(pidfile)
    leftovers.add(pid, b"bash")
    pgid = read_int(tmp_path / "pgid")
    start = time.monotonic()
    rig.command.close()
    assert time.monotonic() - start < 2 * 2.0 + 2
    assert wait_until(lambda: not group_members(pgid), 3)
    assert not pid_alive(pid)


def test_stream_cancel_during_command(make_rig: MakeRig, tmp_path: Path,
                                      leftovers: Leftovers) -> None:
    rig = make_rig()
    pidfile = tmp_path / "pid"
    command = f"{_pgid_of_shell(tmp_path)}; sleep 51.5 & echo $! > {pidfile}; wait"
    thread, box = in_thread(lambda: rig.run(command, "stdin", None, 30))
    sleeper = read_int(pidfile)
    leftovers.add(sleeper, b"51.5")
    pgid = read_int(tmp_path / "pgid")
    start = time.monotonic()
    rig.scope.cancel()
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(box.get("error"), Cancelled)
    assert box["end"] - start < 3
    assert wait_until(lambda: not group_members(pgid), 3)
    assert not pid_alive(sleeper)


def test_stream_run_after_cancel_raises(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.scope.cancel()
    with pytest.raises(Cancelled):
        rig.run("echo never")


def test_stream_cancel_between_commands(make_rig: MakeRig) -> None:
    rig = make_rig()
    pid = shell_pid(rig)
    rig.scope.cancel()
    assert wait_until(lambda: not pid_alive(pid), 3)
    start = time.monotonic()
    with pytest.raises(Cancelled):
        rig.run("echo never")
    assert time.monotonic() - start < 1


def test_stream_exec_and_wait(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.stream.open()
    assert rig.stream.exec_and_wait("echo x; exit 6") == 6
    assert rig.stream.out == b"x\n"
    assert rig.stream.err == b"ExitCode: 6"


# -- the remote process group killer (default mode) --------------------------


class LocalKiller:
    """A ``remote_killer`` for the local "remote" shell: records the pgid and KILLs it."""

    def __init__(self) -> None:
        self.calls: List[int] = []

    def __call__(self, group: RemoteGroup) -> None:
        self.calls.append(group.pgid)
        try:
            os.killpg(group.pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_stream_identify_is_invisible(make_rig: MakeRig, tmp_path: Path) -> None:
    killer = LocalKiller()
    rig = make_rig(remote_killer=killer)
    result = rig.run(f"{_pgid_of_shell(tmp_path)}; echo first; echo e >&2", "in", "/bin/cat")
    assert (result.code, result.stdout, result.stderr) == (0, "first\n", "e\nExitCode: 0")
    assert rig.log.calls == [("e\nExitCode: 0", True)]
    assert rig.stream.remote_group is not None
    assert rig.stream.remote_group.pgid == read_int(tmp_path / "pgid")
    assert killer.calls == []


def test_stream_timeout_without_killer_leaves_hup_ignoring_child(
        make_rig: MakeRig, tmp_path: Path, leftovers: Leftovers) -> None:
    # strict mode / Ruby: the timed-out stream's group only gets HUP
    rig = make_rig()
    pidfile = tmp_path / "pid"
    rig.run(f"nohup sleep 53.5 >/dev/null 2>&1 & echo $! > {pidfile}; wait", None, None, 0.5)
    child = read_int(pidfile)
    leftovers.add(child, b"53.5")
    time.sleep(0.2)
    assert pid_alive(child)


def test_stream_timeout_calls_remote_killer_once(make_rig: MakeRig, tmp_path: Path,
                                                 leftovers: Leftovers) -> None:
    killer = LocalKiller()
    rig = make_rig(remote_killer=killer)
    pidfile = tmp_path / "pid"
    command = (f"{_pgid_of_shell(tmp_path)}; nohup sleep 54.5 >/dev/null 2>&1 & "
               f"echo $! > {pidfile}; wait")
    start = time.monotonic()
    result = rig.run(command, None, None, 0.5)
    assert time.monotonic() - start < 3
    child = read_int(pidfile)
    leftovers.add(child, b"54.5")
    assert result.timed_out
    # the remote kill runs detached: the timed-out command is answered at once
    expected = [read_int(tmp_path / "pgid")]
    assert wait_until(lambda: killer.calls == expected, 3), killer.calls
    assert wait_until(lambda: not pid_alive(child), 3)
    rig.scope.cancel()
    assert len(killer.calls) == 1


def test_stream_cancel_calls_remote_killer(make_rig: MakeRig, tmp_path: Path,
                                           leftovers: Leftovers) -> None:
    killer = LocalKiller()
    rig = make_rig(remote_killer=killer)
    pidfile = tmp_path / "pid"
    command = f"{_pgid_of_shell(tmp_path)}; sleep 55.5 & echo $! > {pidfile}; wait"
    thread, box = in_thread(lambda: rig.run(command, None, None, 30))
    child = read_int(pidfile)
    leftovers.add(child, b"55.5")
    rig.scope.cancel()
    thread.join(5)
    assert isinstance(box.get("error"), Cancelled)
    assert killer.calls == [read_int(tmp_path / "pgid")]
    assert wait_until(lambda: not pid_alive(child), 3)


def test_stream_reconnect_identifies_the_new_shell(make_rig: MakeRig, tmp_path: Path) -> None:
    killer = LocalKiller()
    rig = make_rig(remote_killer=killer, reconnect=True)
    first = shell_pid(rig)
    assert rig.run("sleep 56.5", None, None, 0.4).timed_out
    second = shell_pid(rig)
    assert second != first
    rig.scope.cancel()
    # the local opener execs the shell in a new session: pgid == pid (the first
    # shell's kill ran detached when its command timed out)
    assert wait_until(lambda: sorted(killer.calls) == sorted([first, second]), 3), killer.calls


def test_stream_unreachable_host_with_killer_like_ruby(make_rig: MakeRig) -> None:
    killer = LocalKiller()

    def unreachable(host: str, shell: str, forward: bool) -> List[str]:
        return ["sh", "-c",
                f"echo 'ssh: connect to host {host} port 22: No route to host' >&2; exit 255"]

    rig = make_rig(opener=unreachable, host="host09", remote_killer=killer)
    result = rig.run("var/tmp/one/vnm/bridge/pre", "PFZNPjwvVk0+", "var/tmp/one/vnm/bridge/pre")
    stale = ("ssh: connect to host host09 port 22: No route to host\n"
             "ExitSSHCode: 255\nError connecting to host09")
    assert (result.code, result.stderr) == (-1, stale)
    assert rig.updates == []
    assert rig.log.calls == [
        ("Command execution fail (exit code: -1): cat << 'EOT' | var/tmp/one/vnm/bridge/pre",
         True),
        (stale, True),
    ]
    rig.scope.cancel()
    assert killer.calls == []


def test_stream_unresponsive_connection_bounded_by_check_timeout(make_rig: MakeRig) -> None:
    rig = make_rig(opener=lambda host, shell, fwd: ["sh", "-c", "exec sleep 58.5"])
    start = time.monotonic()
    result = rig.run("echo hi", None, "/bin/echo", 1, check_timeout=1)
    assert time.monotonic() - start < 1 + 2
    assert result.code == -1
    assert result.stderr == "\nTimeout Error"
    assert rig.updates == []


def test_stream_identify_is_bounded_by_the_timeout(make_rig: MakeRig) -> None:
    rig = make_rig(opener=lambda host, shell, fwd: ["sh", "-c", "exec sleep 57.5"],
                   remote_killer=LocalKiller())
    thread, box = in_thread(lambda: rig.run("echo hi", None, "/bin/echo", 1, check_timeout=1))
    thread.join(1 + 3)
    finished = not thread.is_alive()
    rig.scope.cancel()  # unblocks a hung run (Cancelled) before asserting
    thread.join(5)
    assert finished, "StreamCommand.run still blocked 3 s after its 1 s timeout"
    assert box["result"].code == -1


def test_stream_close_forgets_the_remote_group(make_rig: MakeRig) -> None:
    killer = LocalKiller()
    rig = make_rig(remote_killer=killer)
    shell_pid(rig)
    rig.command.close()
    rig.scope.cancel()
    assert killer.calls == []


# -- property: the framing gives back exactly what the command wrote --------

FRAGMENTS = [b"EOF_OUT\n", b"EOF_OUT", b"ExitCode: 0 EOF_ERR\n", b"ExitCode: ", b" EOF_ERR",
             b"EOF_ERR_", b"\n", b"\r\n", b"\r", b"EOT\n", b"\xff", b"\x00", b"\xc3", b"'\"`$"]
payloads = st.lists(st.one_of(st.binary(max_size=300), st.sampled_from(FRAGMENTS)),
                    max_size=8).map(b"".join)


@dataclass
class SharedStream:
    rig: Rig
    work: Path


@pytest.fixture(scope="module")
def shared_stream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedStream]:
    scope = CancelScope()
    stream = SshStream("hp", "bash", process_opener(scope, local_opener), scope)
    rig = Rig(StreamCommand(stream, "/d", LogSink(), lambda: None, reconnect=True), scope,
              LogSink())
    yield SharedStream(rig, tmp_path_factory.mktemp("framing"))
    rig.command.close()
    scope.cancel()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(out=payloads, err=payloads, code=st.integers(0, 255))
def test_stream_framing_roundtrip(shared_stream: SharedStream, out: bytes, err: bytes,
                                  code: int) -> None:
    work = shared_stream.work
    (work / "out").write_bytes(out)
    (work / "err").write_bytes(err)
    result = shared_stream.rig.run(f"cat {work}/out; cat {work}/err >&2; exit {code}",
                                   None, None, 20)
    assert result.code == code
    assert encode(result.stdout) == out
    newline = b"\n" if err and not err.endswith(b"\n") else b""
    assert encode(result.stderr) == err + newline + b"ExitCode: %d" % code


body_text = st.lists(
    st.one_of(st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b"")),
              st.sampled_from([b"EOT", b"EOT_0", b"\n", b"EOT\n", b"\nEOT\n", b"'", b"\\",
                               b"$(", b"`", b"\xff"])),
    max_size=8).map(lambda parts: decode(b"".join(parts)))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stdin=body_text)
def test_stream_heredoc_roundtrip(shared_stream: SharedStream, stdin: str) -> None:
    target = shared_stream.work / "stdin"
    result = shared_stream.rig.run(f"cat > {target}", stdin, None, 20)
    assert result.code == 0
    assert target.read_bytes() == encode(stdin) + b"\n"


@settings(max_examples=25, deadline=None)
@given(out=payloads, err=payloads, code=st.integers(0, 255))
def test_capture_roundtrip(out: bytes, err: bytes, code: int) -> None:
    script = f"import os, sys; os.write(1, {out!r}); os.write(2, {err!r}); sys.exit({code})"
    result = capture(CancelScope(), [PY, "-c", script], None, 20)
    assert (encode(result.stdout), encode(result.stderr), result.code) == (out, err, code)


# ==========================================================================
# 4. remote: RemotesCommand text, ssh argv, retries and remotes update
# ==========================================================================


def _remote():  # imported lazily: the module's API is still moving
    from vmm_exec.transports import remote

    return remote


RUBY_ELSE_GAP = " " * 30


def ruby_remotes_command(command: str) -> str:
    """Ruby: ``"'if [ -x \\"#{cmd_file}\\" ]; then #{command}; else\\`` + newline +
    30 spaces + ``exit #{MAGIC_RC}; fi'"``, cmd_file = ``command.split(' ')[0]``
    (Ruby's awk-style split: leading blanks and any run of whitespace ignored);
    without the outer single quotes, which only protect it from the local shell."""
    words = command.split()
    cmd_file = words[0] if words else ""
    return f'if [ -x "{cmd_file}" ]; then {command}; else{RUBY_ELSE_GAP}exit 42; fi'


@pytest.mark.parametrize("command", [
    "/var/tmp/one/vmm/kvm/deploy '/var/lib/one//datastores/0/42/deployment.0' 'node1' 42 node1",
    "/var/tmp/one/vmm/kvm/poll one-42 42 node1",
    "var/tmp/one/im/run_probes kvm",
    "/x/script",
    "/x/script  two  spaces",
    "",
])
def test_remote_script_command_is_rubys(command: str) -> None:
    text = _remote().remote_script_command(command)
    assert text == ruby_remotes_command(command)
    assert f"; else{' ' * 30}exit 42; fi" in text


@pytest.mark.parametrize("command", [" /x/script arg", "/x/script\targ"])
def test_remote_script_command_ruby_split_semantics(command: str) -> None:
    assert _remote().remote_script_command(command) == ruby_remotes_command(command)


def test_ssh_argv_shapes() -> None:
    remote = _remote()
    if hasattr(remote, "ssh_argv"):
        ssh_argv = remote.ssh_argv
    else:  # pragma: no cover - moved with the transport refactoring
        from vmm_exec.transports.openssh import ssh_argv
    forward = ["-o", "ForwardAgent=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none"]
    assert ssh_argv("h1", "ls -l") == ["ssh", "h1", "ls -l"]
    assert ssh_argv("h1", "ls", no_stdin=True) == ["ssh", "-n", "h1", "ls"]
    assert ssh_argv("h1", "bash -s", forward=True) == ["ssh", *forward, "h1", "bash -s"]
    assert ssh_argv("h1", "x", no_stdin=True, forward=True) == ["ssh", "-n", *forward, "h1", "x"]
    assert ssh_argv("h1") == ["ssh", "h1"]


FAKE_SSH = r'''#!{py}
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_JOURNAL"], "a") as f:
    f.write(json.dumps(["ssh"] + args) + "\n")
no_stdin, i = False, 0
while i < len(args) and args[i].startswith("-"):
    if args[i] == "-n":
        no_stdin = True
    elif args[i] == "-o":
        i += 1
    i += 1
host = args[i]
if host in os.environ.get("FAKE_UNREACHABLE", "").split():
    sys.stderr.write("ssh: connect to host %s port 22: No route to host\n" % host)
    sys.exit(255)
stdin = subprocess.DEVNULL if no_stdin else None
sys.exit(subprocess.call(["bash", "-c", " ".join(args[i + 1:])], stdin=stdin))
'''

FAKE_SCP = r'''#!{py}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_JOURNAL"], "a") as f:
    f.write(json.dumps(["scp"] + args) + "\n")
sources = [a for a in args[:-1] if not a.startswith("-")]
dest = args[-1].split(":", 1)[1]
for src in sources:
    target = os.path.join(dest, os.path.basename(src))
    if os.path.isdir(src):
        shutil.copytree(src, target, dirs_exist_ok=True)
    else:
        shutil.copy2(src, target)
'''


@dataclass
class FakeHost:
    journal: Path
    local_remotes: Path
    remote_dir: Path

    def calls(self) -> List[List[str]]:
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text().splitlines()]


@pytest.fixture
def fake_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("ssh", FAKE_SSH), ("scp", FAKE_SCP)):
        path = bindir / name
        path.write_text(text.replace("{py}", PY))
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_JOURNAL", str(journal))
    local_remotes = tmp_path / "front end remotes"  # a blank: the glob must still expand
    (local_remotes / "vmm" / "kvm").mkdir(parents=True)
    _script(local_remotes / "vmm" / "kvm" / "poll",
            'echo "polled $*"; if [ -t 0 ]; then :; else cat; fi; echo note >&2')
    (local_remotes / "README").write_text("remotes\n")
    return FakeHost(journal, local_remotes, tmp_path / "host" / "var" / "tmp" / "one")


def run_remotes(scope: CancelScope, command: str, host: str, remote_dir: str, local_remotes: str,
                log: LogSink, stdin: Optional[str], retries: int,
                timeout: Optional[float]) -> Execution:
    """``run_remotes_command`` with the OpenSSH binaries as strict mode uses them:
    the remote command text exactly the Ruby driver's (no process-group marker)."""
    from vmm_exec.transports.openssh import OpenSSHTransport

    return _remote().run_remotes_command(OpenSSHTransport(kill_remote=False), scope, command,
                                         host, remote_dir, local_remotes, log, stdin, retries,
                                         timeout)


def test_remotes_missing_no_retry(fake_host: FakeHost) -> None:
    log = LogSink()
    command = f"{fake_host.remote_dir}/vmm/kvm/poll one-1 1 node1"
    result = run_remotes(CancelScope(), command, "node1", str(fake_host.remote_dir),
                         str(fake_host.local_remotes), log, None, 0, 10)
    assert result.code == 42
    remote = ruby_remotes_command(command)
    assert fake_host.calls() == [["ssh", "-n", "node1", remote]]
    assert log.calls == [(f"Command execution failed (exit code: 42): '{remote}'", True),
                         ("", True)]
    assert not fake_host.remote_dir.exists()


def test_remotes_missing_updated_and_retried(fake_host: FakeHost) -> None:
    log = LogSink()
    command = f"{fake_host.remote_dir}/vmm/kvm/poll one-1 1 node1"
    start = time.monotonic()
    result = run_remotes(CancelScope(), command, "node1", str(fake_host.remote_dir),
                         str(fake_host.local_remotes), log, None, 1, 10)
    assert time.monotonic() - start >= 1  # Ruby sleeps a second before retrying
    assert result.code == 0
    assert result.stdout == "polled one-1 1 node1\n"
    assert result.stderr == "note\n"
    remote = ruby_remotes_command(command)
    calls = fake_host.calls()
    assert calls[0] == ["ssh", "-n", "node1", remote]
    assert calls[1][:3] == ["ssh", "-n", "node1"]
    assert " ".join(calls[1][3:]) == f"mkdir -p {fake_host.remote_dir}"
    lr = fake_host.local_remotes
    assert calls[2] == ["scp", "-rp", f"{lr}/README", f"{lr}/vmm", f"node1:{fake_host.remote_dir}"]
    assert calls[3] == ["ssh", "-n", "node1", remote]
    assert len(calls) == 4
    assert (fake_host.remote_dir / "vmm" / "kvm" / "poll").exists()
    assert log.calls == [(f"Command execution failed (exit code: 42): '{remote}'", True),
                         ("", True),
                         ("Remote worker node files not found", True),
                         ("Updating remotes", True)]


def test_remotes_retry_resends_stdin(fake_host: FakeHost) -> None:
    log = LogSink()
    command = f"{fake_host.remote_dir}/vmm/kvm/poll one-2"
    result = run_remotes(CancelScope(), command, "node2", str(fake_host.remote_dir),
                         str(fake_host.local_remotes), log, "STDIN-DATA\n", 1, 10)
    assert result.code == 0
    assert result.stdout == "polled one-2\nSTDIN-DATA\n"
    ssh_calls = [c for c in fake_host.calls() if c[0] == "ssh"]
    # with stdin: `ssh HOST CMD` (no -n); the mkdir of the update has no stdin
    assert ssh_calls[0][:2] == ["ssh", "node2"]
    assert ssh_calls[1][:2] == ["ssh", "-n"]
    assert ssh_calls[2][:2] == ["ssh", "node2"]


def test_remotes_other_failure_retried_without_update(fake_host: FakeHost) -> None:
    fake_host.remote_dir.mkdir(parents=True)
    flag = fake_host.remote_dir / "failed-once"
    _script(fake_host.remote_dir / "flaky",
            f'if [ -e "{flag}" ]; then echo ok; else touch "{flag}"; echo oops >&2; exit 3; fi')
    log = LogSink()
    command = f"{fake_host.remote_dir}/flaky a"
    result = run_remotes(CancelScope(), command, "node3", str(fake_host.remote_dir),
                         str(fake_host.local_remotes), log, None, 2, 10)
    assert (result.code, result.stdout) == (0, "ok\n")
    assert [c[0] for c in fake_host.calls()] == ["ssh", "ssh"]
    assert "Updating remotes" not in log.messages
    assert log.messages[1] == "oops\n"


def test_remotes_unreachable_host(fake_host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UNREACHABLE", "down")
    log = LogSink()
    command = "/x/vmm/kvm/poll one-4"
    result = run_remotes(CancelScope(), command, "down", "/x", str(fake_host.local_remotes), log,
                         None, 0, 10)
    assert result.code == 255
    assert result.stderr == "ssh: connect to host down port 22: No route to host\n"
    assert log.messages == [
        f"Command execution failed (exit code: 255): '{ruby_remotes_command(command)}'",
        "ssh: connect to host down port 22: No route to host\n"]


def test_remotes_timeout(fake_host: FakeHost) -> None:
    fake_host.remote_dir.mkdir(parents=True)
    _script(fake_host.remote_dir / "hang", "sleep 52.5")
    log = LogSink()
    command = f"{fake_host.remote_dir}/hang"
    start = time.monotonic()
    result = run_remotes(CancelScope(), command, "node5", str(fake_host.remote_dir),
                         str(fake_host.local_remotes), log, None, 0, 0.5)
    assert time.monotonic() - start < 4
    assert result.code == 255
    assert result.timed_out
    shown = f"'{ruby_remotes_command(command)}'"
    assert log.calls == [(f"Timeout executing {shown}", True)]


def test_remotes_cancel_during_retry_sleep(fake_host: FakeHost) -> None:
    scope = CancelScope()
    log = LogSink()
    command = f"{fake_host.remote_dir}/vmm/kvm/poll one-6"
    thread, box = in_thread(lambda: run_remotes(
        scope, command, "node6", str(fake_host.remote_dir), str(fake_host.local_remotes),
        log, None, 3, 10))
    assert wait_until(lambda: "Updating remotes" in log.messages, 10)
    scope.cancel()
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(box.get("error"), Cancelled)
    # no retry ran after the cancellation
    assert sum(1 for c in fake_host.calls() if c[0] == "ssh" and "if [ -x" in c[-1]) == 1


def test_check_timeout_bounds_the_check_only(make_rig: MakeRig) -> None:
    """The ``-x`` check's bound (``-w`` in strict mode too) must not become the
    stream's timeout: a network script with no timeout of its own runs to the end."""
    rig = make_rig()
    result = rig.run("sleep 1; echo done", None, "/bin/sleep", None, check_timeout=0.3)
    assert (result.code, result.stdout, result.timed_out) == (0, "done\n", False)
    assert rig.stream.timeout is None
