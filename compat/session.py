"""Playing a scenario's input to a driver process, the way oned would.

INIT first (waiting up to 10 s for the first output line), then the input
lines and directives, then - once the expected answers arrived and the world
is quiet - FINALIZE with stdin kept open.  A driver that does not exit is
sent EOF after ``finalize_wait`` and killed 5 s later; orphaned work gets
15 s to finish before it is killed.  Every wait is bounded.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import IO, List, Mapping, Optional, Set

from compat import procs
from compat.fakes import common
from compat.judge import count_answers
from compat.scenario import Scenario
from compat.world import encode_input_line

QUIET_RECORD = 2.0  # seconds of silence meaning "all answered" (recording)
QUIET_CHECK = 1.0  # same, once the expected number of answers arrived
INIT_WAIT = 10.0  # for the answer to INIT
EOF_GRACE = 5.0  # between closing stdin and killing the driver
ORPHAN_WAIT = 15.0  # for work the driver left behind
SEND_MIN_WAIT = 2.0  # a write may block at least this long, even late
POLL = 0.1
NO_NEWLINE = "\\ no newline at end"


@dataclass
class Step:
    """One input item: a line to send or a ``#!`` directive."""

    kind: str  # "send", "sleep", "quiesce", "eof", "nofinalize"
    text: str = ""
    seconds: float = 0.0


@dataclass
class Plan:
    """The parsed input of a scenario."""

    init: bool
    steps: List[Step]


def parse_input(lines: List[str]) -> Plan:
    """Parse input lines; ``#!noinit`` is honoured on the first line only.

    Directives are validated before the driver starts, so that a bad
    scenario never leaves a driver behind.
    """
    init = not (lines and lines[0].strip() == "#!noinit")
    steps: List[Step] = []
    for line in lines[0 if init else 1:]:
        if not line.startswith("#!"):
            steps.append(Step("send", text=line))
            continue
        words = line[2:].split()
        if not words:
            continue
        if words[0] == "sleep" and len(words) >= 2:
            steps.append(Step("sleep", seconds=float(words[1])))
        elif words[0] in ("quiesce", "eof", "nofinalize"):
            steps.append(Step(words[0]))
        else:
            raise ValueError(f"unknown directive {line!r}")
    return Plan(init=init, steps=steps)


class DriverSession:
    """A running driver: its stdin, its collected stdout lines, its world."""

    def __init__(self, command: str, world: str, env: Mapping[str, str]) -> None:
        self.world = world
        self.lines: List[str] = []
        self.exit_code: Optional[str] = None
        self._lock = threading.Lock()
        self._stdin_open = True
        self._driver: Optional[Set[int]] = None
        self._stderr: IO[bytes] = open(os.path.join(world, "driver.stderr"), "wb")
        try:
            self.proc = subprocess.Popen(
                command,
                shell=True,
                cwd=world,
                env=dict(env),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                start_new_session=True,
            )
        except BaseException:
            self._stderr.close()
            raise
        assert self.proc.stdin is not None and self.proc.stdout is not None
        os.set_blocking(self.proc.stdin.fileno(), False)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # -- output --------------------------------------------------------------
    def _read(self) -> None:
        """Collect stdout lines; a final partial line is marked as such."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            *complete, buf = buf.split(b"\n")
            if complete:
                with self._lock:
                    self.lines.extend(x.decode("utf-8", "backslashreplace") for x in complete)
        if buf:
            with self._lock:
                self.lines.append(buf.decode("utf-8", "backslashreplace") + NO_NEWLINE)

    def snapshot_lines(self) -> List[str]:
        with self._lock:
            return list(self.lines)

    def answers(self) -> int:
        return count_answers(self.snapshot_lines())

    # -- input ---------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, text: str, deadline: float) -> bool:
        """Write ``text`` to the driver; False if it cannot take it (gone,
        stdin closed, or not reading until the deadline)."""
        if not self._stdin_open or not self.alive():
            return False
        assert self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        data = text.encode("utf-8")
        limit = max(deadline, time.monotonic() + SEND_MIN_WAIT)
        while data:
            remaining = limit - time.monotonic()
            if remaining <= 0:
                self.close_stdin()  # a half-written line must not linger
                return False
            try:
                _, writable, _ = select.select([], [fd], [], remaining)
                if writable:
                    data = data[os.write(fd, data):]
            except BlockingIOError:
                continue
            except OSError:
                return False
        return True

    def close_stdin(self) -> None:
        if self._stdin_open:
            self._stdin_open = False
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    @property
    def stdin_open(self) -> bool:
        return self._stdin_open

    # -- waiting -------------------------------------------------------------
    def _journal_size(self) -> int:
        try:
            return os.path.getsize(os.path.join(self.world, common.JOURNAL_NAME))
        except OSError:
            return 0

    def busy(self) -> bool:
        """Is any world process other than the driver itself alive?"""
        if self._driver is None:
            self._driver = procs.driver_pids(self.proc.pid)
        return bool(procs.world_procs(self.world, exclude=self._driver))

    def wait_first_line(self, deadline: float) -> None:
        while time.monotonic() < deadline and not self.lines and self.alive():
            time.sleep(0.02)

    def wait_quiet(self, quiet: float, deadline: float, need: Optional[int] = None) -> bool:
        """Wait until ``need`` answers arrived (if given) and nothing ran,
        printed or journaled for ``quiet`` seconds; or the driver exited."""
        signature = None
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            current = (len(self.lines), self._journal_size())
            busy = self.busy()
            now = time.monotonic()
            if busy or current != signature:
                signature = current
                stable_since = now
            enough = need is None or self.answers() >= need
            if enough and now - stable_since >= quiet:
                return True
            time.sleep(POLL)
        return False

    def _wait_exit(self, until: float) -> bool:
        while time.monotonic() < until and self.alive():
            time.sleep(0.05)
        return not self.alive()

    def finish(self, deadline: float, finalize_wait: float) -> str:
        """Let the driver exit (stdin open), then EOF, then kill; reap the
        world's leftovers; return the exit status or ``killed``."""
        killed = False
        if not self._wait_exit(min(deadline, time.monotonic() + finalize_wait)):
            self.close_stdin()
            if not self._wait_exit(time.monotonic() + EOF_GRACE):
                killed = True
                procs.kill_group(self.proc.pid)
                try:
                    self.proc.wait(timeout=EOF_GRACE)
                except subprocess.TimeoutExpired:
                    pass
        self.close_stdin()
        self._reap_orphans()
        self._close_outputs()
        rc = self.proc.returncode
        self.exit_code = "killed" if killed or rc is None else str(rc)
        return self.exit_code

    def _reap_orphans(self) -> None:
        """Give orphaned work time to finish, then kill what is left."""
        until = time.monotonic() + ORPHAN_WAIT
        while time.monotonic() < until and procs.world_procs(self.world):
            time.sleep(POLL)
        procs.kill_pids(procs.world_procs(self.world))
        procs.kill_group(self.proc.pid)

    def _close_outputs(self) -> None:
        self._reader.join(5)
        self._stderr.close()
        if not self._reader.is_alive() and self.proc.stdout is not None:
            self.proc.stdout.close()

    def abort(self) -> None:
        """Emergency stop (runner error): kill everything of this world."""
        self.close_stdin()
        procs.kill_group(self.proc.pid)
        procs.kill_pids(procs.world_procs(self.world))
        try:
            self.proc.wait(timeout=EOF_GRACE)
        except subprocess.TimeoutExpired:
            pass
        self._close_outputs()


def play(
    scenario: Scenario,
    driver: str,
    world: str,
    env: Mapping[str, str],
    need: Optional[int],
) -> DriverSession:
    """Run ``driver`` through a scenario; ``need`` is the number of answers
    to wait for before FINALIZE (None: wait for 2 s of quiet, as recording)."""
    plan = parse_input(scenario.input)
    deadline = time.monotonic() + scenario.timeout
    command = driver + (" " + scenario.args if scenario.args else "")
    session = DriverSession(command, world, env)
    try:
        if plan.init:
            session.send("INIT\n", deadline)
            session.wait_first_line(min(deadline, time.monotonic() + INIT_WAIT))
        finalize = True
        for step in plan.steps:
            if step.kind == "send":
                line = encode_input_line(step.text, scenario.path, world)
                session.send(line + "\n", deadline)
            elif step.kind == "sleep":
                time.sleep(step.seconds)
            elif step.kind == "quiesce":
                session.wait_quiet(QUIET_RECORD, deadline)
            elif step.kind == "eof":
                session.close_stdin()
                finalize = False
            elif step.kind == "nofinalize":
                finalize = False
        if finalize and session.stdin_open:
            if need is None:
                session.wait_quiet(QUIET_RECORD, deadline)
            else:
                session.wait_quiet(QUIET_CHECK, deadline, need)
            session.send("FINALIZE\n", deadline)
        session.finish(deadline, scenario.finalize_wait)
    except BaseException:
        session.abort()
        raise
    return session
