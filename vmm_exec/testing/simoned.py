"""A simulated oned: start a VMM driver and talk to it over its stdin/stdout protocol.

Protocol tests need to see the driver exactly as oned does, so the child is started
the way ``Driver<MSG>::start_driver`` in oned starts it: ``execlp(cmd, cmd, ARGUMENTS)``
with *all* arguments in one argv element, stdin/stdout as pipes and file descriptor 2
closed. A driver that assumes a usable stderr, splits its arguments wrongly or forgets to
flush stdout fails here the same way it would fail under oned.

Everything is bounded: every wait has a timeout, writes to a stuck driver time out, the
reader thread is a daemon that ``stop()`` wakes, and the child runs in its own session so
``stop()`` can kill it together with every script it started.

The module is standard library only and independent of the driver's own protocol code,
so it is a second, independent reading of the protocol.
"""

from __future__ import annotations

import atexit
import base64
import errno
import functools
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

__all__ = [
    "DEFAULT_ARGS",
    "Answer",
    "DriverGoneError",
    "DriverInitError",
    "LogLine",
    "SimulatedOned",
    "parse_driver_line",
    "pids_in_group",
]

DEFAULT_ARGS: tuple[str, ...] = ("-t", "15", "-r", "0", "kvm")

# oned gives the driver 10 s to answer INIT (select() timeout in start_driver).
ONED_INIT_TIMEOUT = 10.0

# Error messages quote at most this much of the conversation, so a failing test shows the
# relevant tail instead of megabytes of base64.
_DESCRIBE_EVENTS = 200
_DESCRIBE_LINE_LENGTH = 400
_DESCRIBE_STDERR_CHARS = 4000

# How long the reader sleeps in poll() before it re-checks the stop flag; only a safety
# net, stop() normally wakes it at once through a pipe.
_READER_POLL_MS = 500


# --------------------------------------------------------------------------------------
# Messages from the driver
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A result line ``ACTION SUCCESS|FAILURE ID INFO`` (``INIT SUCCESS - -`` included).

    ``info`` is everything after the single space that follows the id, byte for byte
    (oned itself would skip further leading blanks); continuation lines are appended to
    it joined with ``"\\n"``. ``raw`` is the complete text as received, continuation
    lines included.
    """

    action: str
    result: str
    vm_id: str
    info: str
    raw: str

    @property
    def success(self) -> bool:
        """True for ``SUCCESS`` answers, so tests can ``assert answer.success``."""
        return self.result == "SUCCESS"


@dataclass(frozen=True)
class LogLine:
    """A ``LOG <severity> <id> <text>`` line; continuation lines join ``text`` with ``"\\n"``."""

    severity: str
    vm_id: str
    text: str


Message = Union[Answer, LogLine]

# Tokens are separated by one or more spaces, like oned's ``operator>>``; the info/text is
# whatever follows the first space after the id, so leading blanks in it are preserved.
# Action names are upper case (DEPLOY, DISKSNAPSHOTCREATE, ...): requiring that keeps a
# script's output line such as "Disk FAILURE 3 x" a continuation line.
_LOG_RE = re.compile(r"LOG +(\S+) +(\S+)(?: (.*))?", re.DOTALL)
_ANSWER_RE = re.compile(r"([A-Z][A-Z0-9_]*) +(SUCCESS|FAILURE) +(\S+)(?: (.*))?", re.DOTALL)


def parse_driver_line(line: str) -> Optional[Message]:
    """Parse one driver → oned line; ``None`` if it is not a protocol message.

    Pure and total: any string is accepted and nothing raises, because the harness must
    survive whatever a broken driver prints. One trailing ``"\\n"`` is ignored.
    """
    if line.endswith("\n"):
        line = line[:-1]
    match = _LOG_RE.fullmatch(line)
    if match is not None:
        return LogLine(match.group(1), match.group(2), match.group(3) or "")
    match = _ANSWER_RE.fullmatch(line)
    if match is not None:
        return Answer(match.group(1), match.group(2), match.group(3), match.group(4) or "", line)
    return None


class _LineSplitter:
    """Turns arbitrary read() chunks into lines; a line is complete at ``\\n``.

    Kept separate from the reader thread so chunking can be property-tested.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> List[bytes]:
        """Add a chunk and return the lines it completed (without ``\\n``)."""
        self._buffer += data
        if b"\n" not in data:
            return []
        *complete, rest = bytes(self._buffer).split(b"\n")
        self._buffer = bytearray(rest)
        return complete

    def flush(self) -> List[bytes]:
        """At EOF: the last line if it had no final newline (oned would still read it)."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return [rest] if rest else []


def _decode(raw: bytes) -> str:
    """Decode driver output; invalid UTF-8 shows as ``\\xNN`` so transcripts stay printable."""
    return raw.decode("utf-8", "backslashreplace")


class _Collector:
    """Builds the message list from lines, attaching non-protocol lines to the previous one.

    The driver passes multi-line script output through verbatim, so such lines belong to
    the preceding answer (or log line). Lines before the first message are kept in
    ``orphans``. Not thread-safe by itself; SimulatedOned holds its lock around it.
    """

    def __init__(self) -> None:
        self.messages: List[Message] = []
        self.orphans: List[str] = []

    def feed(self, line: str) -> None:
        """Add one decoded line (without ``\\n``)."""
        message = parse_driver_line(line)
        if message is not None:
            self.messages.append(message)
        elif not self.messages:
            self.orphans.append(line)
        else:
            self.messages[-1] = _extend(self.messages[-1], line)


def _extend(message: Message, line: str) -> Message:
    """Return ``message`` with a continuation line appended to its info/text."""
    if isinstance(message, Answer):
        return replace(message, info=f"{message.info}\n{line}", raw=f"{message.raw}\n{line}")
    return replace(message, text=f"{message.text}\n{line}")


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class DriverGoneError(TimeoutError):
    """The awaited output can never come: the driver closed its stdout (usually exited).

    Raised at once instead of after the full timeout; a subclass of TimeoutError so code
    that only expects a timeout still catches it.
    """


class DriverInitError(RuntimeError):
    """The driver answered INIT with something other than ``INIT SUCCESS`` (oned gives up)."""


# --------------------------------------------------------------------------------------
# Process-group helpers
# --------------------------------------------------------------------------------------


def proc_stats() -> Iterator[Tuple[int, str, List[bytes]]]:
    """(pid, command name, the ``stat`` fields after it: state, ppid, pgrp, ...) of
    every process in Linux ``/proc``; nothing where there is no ``/proc``."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses.
        close = stat.rfind(b")")
        fields = stat[close + 2:].split()
        if len(fields) >= 3:
            yield int(name), stat[stat.find(b"(") + 1:close].decode("utf-8", "replace"), fields


def pids_in_group(pgid: int, *, include_zombies: bool = False) -> List[int]:
    """PIDs whose process group is ``pgid`` (Linux ``/proc``), to check for leftovers.

    Zombies are left out by default: they run nothing, and in a container without a
    reaping init an orphan may stay a zombie for a while.
    """
    return sorted(pid for pid, _, fields in proc_stats()
                  if int(fields[2]) == pgid and (include_zombies or fields[0] != b"Z"))


_LIVE: set[SimulatedOned] = set()
_LIVE_LOCK = threading.Lock()


def _stop_all_at_exit() -> None:
    """Kill drivers a test forgot to stop, so no process outlives the test run."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for driver in live:
        try:
            driver.stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


atexit.register(_stop_all_at_exit)


# --------------------------------------------------------------------------------------
# The simulated oned
# --------------------------------------------------------------------------------------


class SimulatedOned:
    """Runs one driver process and speaks oned's side of the protocol.

    ``args`` are the driver's ARGUMENTS (a sequence or a string). With ``as_oned=True``
    (the default) they are passed as ONE argv element and the child starts with fd 2
    closed, exactly like oned does; with ``as_oned=False`` they are separate argv
    elements and stderr is captured (see ``stderr_text()``) for debugging.

    ``command`` defaults to ``[sys.executable, "-m", "vmm_exec"]``, run with this
    checkout's ``vmm_exec`` first on PYTHONPATH. ``continuation_grace`` is how long
    ``wait_answer`` waits for continuation lines of a multi-line info when the answer is
    the newest output; ``write_timeout`` bounds every write to the driver's stdin.
    """

    def __init__(
        self,
        args: Union[Sequence[str], str] = DEFAULT_ARGS,
        *,
        command: Optional[Sequence[str]] = None,
        env: Optional[dict[str, str]] = None,
        cwd: Union[str, os.PathLike[str], None] = None,
        as_oned: bool = True,
        continuation_grace: float = 0.05,
        write_timeout: float = 10.0,
    ) -> None:
        self.as_oned = as_oned
        self.continuation_grace = continuation_grace
        self.write_timeout = write_timeout
        self._cwd = None if cwd is None else os.fspath(cwd)
        self._env = self._build_env(env, default_command=command is None)
        self._command = list(command) if command is not None else self._default_command()
        self.argv: List[str] = self._build_argv(args)

        self._cond = threading.Condition(threading.RLock())
        self._write_lock = threading.Lock()
        self._lines: List[str] = []
        self._sent: List[str] = []
        self._events: List[tuple[float, str, str]] = []
        self._collector = _Collector()
        self._consumed: set[int] = set()
        self._eof = False
        self._exit_noted = False
        self._stdin_closed = False
        self._stopped = False
        self._t0 = time.monotonic()

        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._reader: Optional[threading.Thread] = None
        self._wake_r = -1
        self._wake_w = -1
        self._stderr_file: Optional[IO[bytes]] = None
        self._stderr_cache = ""

    # ---------------------------------------------------------------- construction

    @staticmethod
    def _default_command() -> List[str]:
        return [sys.executable, "-m", "vmm_exec"]

    @staticmethod
    def _build_env(env: Optional[dict[str, str]], default_command: bool) -> dict[str, str]:
        """Copy the environment; for the default command make this checkout importable."""
        result = dict(os.environ if env is None else env)
        if default_command:
            root = str(Path(__file__).resolve().parents[2])
            old = result.get("PYTHONPATH")
            result["PYTHONPATH"] = root if not old else f"{root}{os.pathsep}{old}"
        return result

    def _build_argv(self, args: Union[Sequence[str], str]) -> List[str]:
        """The exact argv to execute; oned passes ARGUMENTS unsplit, even when empty."""
        if self.as_oned:
            joined = args if isinstance(args, str) else " ".join(args)
            # `exec 2>&- cmd` closes fd 2 and replaces the shell: the driver gets the same
            # pid, argv[0] = command[0] and fd 2 closed, as after oned's close(2); execlp.
            return ["/bin/sh", "-c", 'exec 2>&- "$@"', "sh", *self._command, joined]
        split = shlex.split(args) if isinstance(args, str) else list(args)
        return [*self._command, *split]

    def _check_executable(self) -> None:
        """Fail with FileNotFoundError up front; behind the sh wrapper it would be exit 127."""
        exe = self._command[0]
        if os.sep in exe:
            path = exe if os.path.isabs(exe) else os.path.join(self._cwd or os.getcwd(), exe)
            if not os.access(path, os.X_OK):
                raise FileNotFoundError(errno.ENOENT, "driver executable not found", path)
        elif shutil.which(exe, path=self._env.get("PATH")) is None:
            raise FileNotFoundError(errno.ENOENT, "driver executable not found in PATH", exe)

    # ---------------------------------------------------------------- lifecycle

    def start(self, init: bool = True, init_timeout: float = ONED_INIT_TIMEOUT) -> SimulatedOned:
        """Start the driver and, if ``init``, do the INIT handshake; returns ``self``.

        On any failure the process is stopped before the exception propagates, because
        ``with SimulatedOned(...).start() as d:`` never reaches ``__exit__`` then.
        """
        if self._proc is not None:
            raise RuntimeError("driver already started")
        self._check_executable()
        if not self.as_oned:
            self._stderr_file = tempfile.TemporaryFile(prefix="simoned-stderr-")
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,  # None: inherited, then closed by the sh wrapper
            cwd=self._cwd,
            env=self._env,
            bufsize=0,
            close_fds=True,
            start_new_session=True,
        )
        with _LIVE_LOCK:
            _LIVE.add(self)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        os.set_blocking(self._proc.stdin.fileno(), False)
        self._wake_r, self._wake_w = os.pipe()
        self._t0 = time.monotonic()
        self._record("--", f"started pid {self._proc.pid}: {self.argv!r}")
        self._reader = threading.Thread(
            target=self._read_loop,
            args=(self._proc.stdout.fileno(), self._wake_r),
            name=f"simoned-reader-{self._proc.pid}",
            daemon=True,
        )
        self._reader.start()
        if init:
            try:
                self.handshake(init_timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def handshake(self, timeout: float = ONED_INIT_TIMEOUT) -> Answer:
        """Send INIT and require ``INIT SUCCESS`` as the driver's first output, like oned.

        oned reads the first bytes after INIT and gives up unless they start with
        ``INIT SUCCESS``, so a LOG line (or anything) before it is an error here too.
        """
        self.send_raw("INIT")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                first = next((line for line in self._lines if line.strip()), None)
                if first is not None:
                    break
                if self._eof:
                    raise DriverInitError("driver closed stdout before INIT SUCCESS\n"
                                          + self._describe())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no INIT SUCCESS within {timeout:g}s\n" + self._describe())
                self._cond.wait(remaining)
            if first.split()[:2] != ["INIT", "SUCCESS"]:
                raise DriverInitError(f"driver answered INIT with {first!r}\n" + self._describe())
            message = parse_driver_line(first)
        return message if isinstance(message, Answer) else Answer("INIT", "SUCCESS", "", "", first)

    def stop(self) -> None:
        """Kill the driver's whole process group, reap it and release everything.

        Idempotent. The group is killed even if the driver already exited, so scripts it
        left behind die with it.
        """
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
        proc = self._proc
        if proc is not None:
            self._kill_group()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:  # unkillable (D state); do not hang the tests
                self._record("!!", "driver did not die within 5s after SIGKILL")
            self._note_exit()
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"x")
                except OSError:
                    pass
            if self._reader is not None:
                self._reader.join(timeout=2.0)
            self._stderr_cache = self.stderr_text()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
            if self._stderr_file is not None:
                self._stderr_file.close()
                self._stderr_file = None
        with self._cond:
            self._stdin_closed = True
            self._eof = True
            self._cond.notify_all()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> SimulatedOned:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = None if self._proc is None else self._proc.pid
        return f"<SimulatedOned pid={pid} returncode={self.returncode} argv={self.argv!r}>"

    # ---------------------------------------------------------------- process state

    @property
    def pid(self) -> Optional[int]:
        """The driver's pid (also its process group and session id)."""
        return None if self._proc is None else self._proc.pid

    pgid = pid

    @property
    def returncode(self) -> Optional[int]:
        """Exit status once the driver has exited (negative: killed by that signal)."""
        if self._proc is None:
            return None
        code = self._proc.poll()
        if code is not None:
            self._note_exit()
        return code

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the driver to exit without asking it to; TimeoutError if it does not.

        Also waits (briefly) for stdout EOF, so ``lines`` is complete afterwards.
        """
        proc = self._require_proc()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"driver did not exit within {timeout:g}s\n"
                               + self._describe()) from None
        self._note_exit()
        self._wait_eof(2.0)
        return code

    def finalize(self, timeout: float = 30.0, kill_grace: float = 5.0) -> int:
        """Send FINALIZE (stdin stays open) and return the exit code.

        If the driver does not exit in ``timeout``: close stdin, wait ``kill_grace``
        seconds, SIGKILL the process group and raise TimeoutError.
        """
        proc = self._require_proc()
        self.send_raw("FINALIZE")
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close_stdin()
            try:
                after_eof: Optional[int] = proc.wait(timeout=kill_grace)
            except subprocess.TimeoutExpired:
                after_eof = None
            self._kill_group()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
            self._note_exit()
            how = ("killed it" if after_eof is None
                   else f"it exited with {after_eof} after stdin was closed")
            raise TimeoutError(f"driver did not exit within {timeout:g}s after FINALIZE; {how}\n"
                               + self._describe()) from None
        self._note_exit()
        self._wait_eof(2.0)
        return code

    def close_stdin(self) -> None:
        """Close the driver's stdin (it sees EOF, as when oned dies)."""
        proc = self._require_proc()
        with self._write_lock:
            if self._stdin_closed:
                return
            self._stdin_closed = True
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        self._record("--", "closed driver stdin")

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("driver not started; call start() first")
        return self._proc

    def _kill_group(self) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._record("--", f"SIGKILL process group {self._proc.pid}")
        except (ProcessLookupError, PermissionError):
            pass

    def _note_exit(self) -> None:
        """Put the exit status into the transcript once."""
        if self._proc is None or self._proc.returncode is None:
            return
        with self._cond:
            if self._exit_noted:
                return
            self._exit_noted = True
        self._record("--", f"driver exited with {self._proc.returncode}")

    def _wait_eof(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._eof, timeout=timeout)

    # ---------------------------------------------------------------- sending

    def send_raw(self, line: str) -> None:
        """Write one line to the driver (``\\n`` appended if missing) and record it.

        Raises BrokenPipeError if the driver no longer reads its stdin, TimeoutError if
        it stops reading for ``write_timeout`` seconds (a full pipe would block forever).
        """
        proc = self._require_proc()
        if not line.endswith("\n"):
            line += "\n"
        data = line.encode("utf-8", "surrogateescape")
        with self._write_lock:
            if self._stdin_closed or proc.stdin is None:
                raise RuntimeError("driver stdin already closed")
            with self._cond:
                self._sent.append(line[:-1])
            self._record(">>", line[:-1])
            try:
                self._write_all(proc.stdin.fileno(), data)
            except BrokenPipeError:
                self._record("!!", "write failed: broken pipe (driver gone?)")
                raise BrokenPipeError(errno.EPIPE, "driver no longer reads its stdin\n"
                                      + self._describe()) from None

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + self.write_timeout
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                written = 0
            view = view[written:]
            if not view:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._record("!!", f"write timed out after {self.write_timeout:g}s")
                raise TimeoutError(f"driver did not read its stdin for {self.write_timeout:g}s\n"
                                   + self._describe())
            poller.poll(max(1, int(remaining * 1000)))

    def send_action(self, action: str, vm_id: Union[int, str], xml: Union[str, bytes]) -> None:
        """Send ``ACTION  ID BASE64`` (empty status, hence two spaces) as oned does."""
        payload = xml.encode("utf-8") if isinstance(xml, str) else xml
        encoded = base64.b64encode(payload).decode("ascii")
        self.send_raw(f"{action}  {vm_id} {encoded}")

    def cancel(self, vm_id: Union[int, str]) -> None:
        """Send ``DRIVER_CANCEL ID``."""
        self.send_raw(f"DRIVER_CANCEL {vm_id}")

    # ---------------------------------------------------------------- receiving

    def _read_loop(self, fd: int, wake_fd: int) -> None:
        """Reader thread: whole chunks are split and published under one lock, so the
        continuation lines of a single write are attached before any waiter wakes."""
        splitter = _LineSplitter()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        poller.register(wake_fd, select.POLLIN)
        try:
            while not self._stopped:
                ready = {ready_fd for ready_fd, _ in poller.poll(_READER_POLL_MS)}
                if wake_fd in ready:
                    break
                if fd not in ready:
                    continue
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                self._publish(splitter.feed(data))
        finally:
            self._publish(splitter.flush())
            with self._cond:
                self._eof = True
                self._record("--", "driver stdout closed")
                self._cond.notify_all()

    def _publish(self, raw_lines: Iterable[bytes]) -> None:
        lines = [_decode(raw) for raw in raw_lines]
        if not lines:
            return
        with self._cond:
            for line in lines:
                self._lines.append(line)
                self._record("<<", line)
                self._collector.feed(line)
            self._cond.notify_all()

    @property
    def lines(self) -> List[str]:
        """Every stdout line so far (a snapshot copy)."""
        with self._cond:
            return list(self._lines)

    @property
    def sent(self) -> List[str]:
        """Every line sent to the driver so far, without the newline (a snapshot copy)."""
        with self._cond:
            return list(self._sent)

    @property
    def orphan_lines(self) -> List[str]:
        """Non-protocol lines that arrived before any protocol message."""
        with self._cond:
            return list(self._collector.orphans)

    def answers(self, vm_id: Union[int, str, None] = None) -> List[Answer]:
        """All answers so far (INIT excluded), optionally for one id, in arrival order."""
        wanted = None if vm_id is None else str(vm_id)
        with self._cond:
            return [m for m in self._collector.messages
                    if isinstance(m, Answer) and m.action != "INIT"
                    and (wanted is None or m.vm_id == wanted)]

    def logs(self, vm_id: Union[int, str, None] = None) -> List[LogLine]:
        """All LOG lines so far, optionally for one id, in arrival order."""
        wanted = None if vm_id is None else str(vm_id)
        with self._cond:
            return [m for m in self._collector.messages
                    if isinstance(m, LogLine) and (wanted is None or m.vm_id == wanted)]

    def wait_answer(
        self, vm_id: Union[int, str], timeout: float = 30.0, action: Optional[str] = None
    ) -> Answer:
        """Return the oldest not-yet-returned answer for ``vm_id`` (and ``action``).

        Raises TimeoutError (with the transcript) after ``timeout``, DriverGoneError at
        once if the driver's stdout is closed and no such answer exists.
        """
        wanted = str(vm_id)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                index = self._find_answer(wanted, action)
                if index is not None:
                    break
                what = f"answer for id {wanted}" + (f" (action {action})" if action else "")
                if self._eof:
                    raise DriverGoneError(f"driver stdout closed, no {what}\n" + self._describe())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {what} within {timeout:g}s\n" + self._describe())
                self._cond.wait(remaining)
            self._consumed.add(index)
            self._settle(index, deadline)
            message = self._collector.messages[index]
        assert isinstance(message, Answer)
        return message

    def _find_answer(self, vm_id: str, action: Optional[str]) -> Optional[int]:
        for index, message in enumerate(self._collector.messages):
            if (isinstance(message, Answer) and message.action != "INIT"
                    and message.vm_id == vm_id and index not in self._consumed
                    and (action is None or message.action == action)):
                return index
        return None

    def _settle(self, index: int, deadline: float) -> None:
        """While the answer is the newest message, give continuation lines a moment to
        arrive (a multi-line info written in several pieces). Called with the lock held."""
        while (index == len(self._collector.messages) - 1 and not self._eof
               and self.continuation_grace > 0):
            seen = len(self._lines)
            wait = min(self.continuation_grace, deadline - time.monotonic())
            if wait <= 0:
                return
            if not self._cond.wait_for(functools.partial(self._output_since, seen), wait):
                return

    def _output_since(self, count: int) -> bool:
        """True once more than ``count`` lines arrived or stdout closed (lock held)."""
        return len(self._lines) > count or self._eof

    def wait_lines(self, predicate: Callable[[List[str]], bool], timeout: float) -> List[str]:
        """Wait until ``predicate(lines)`` is true for the stdout lines so far; return them.

        The predicate sees the whole snapshot, e.g. ``lambda ls: "x" in ls``. It may call
        this object's accessors (the lock is re-entrant). TimeoutError on timeout,
        DriverGoneError once stdout is closed and the predicate is still false.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snapshot = list(self._lines)
                if predicate(snapshot):
                    return snapshot
                if self._eof:
                    raise DriverGoneError("driver stdout closed before the expected lines\n"
                                          + self._describe())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"expected lines not seen within {timeout:g}s\n"
                                       + self._describe())
                self._cond.wait(remaining)

    # ---------------------------------------------------------------- diagnostics

    def _record(self, direction: str, text: str) -> None:
        with self._cond:
            self._events.append((time.monotonic() - self._t0, direction, text))

    def transcript(self, max_line_length: Optional[int] = None, last: Optional[int] = None) -> str:
        """The conversation: ``>>`` sent to the driver, ``<<`` received, ``--`` events.

        ``max_line_length`` shortens long lines (base64 payloads), ``last`` keeps only the
        newest events; error messages use both.
        """
        with self._cond:
            events = list(self._events)
        skipped = 0
        if last is not None and len(events) > last:
            skipped = len(events) - last
            events = events[skipped:]
        out = [f"[... {skipped} earlier events ...]"] if skipped else []
        for stamp, direction, text in events:
            if max_line_length is not None and len(text) > max_line_length:
                text = f"{text[:max_line_length]}...[{len(text)} chars]"
            out.append(f"[{stamp:8.3f}] {direction} {text}")
        return "\n".join(out)

    def stderr_text(self) -> str:
        """Captured stderr (``as_oned=False`` only; under oned there is no stderr)."""
        handle = self._stderr_file
        if handle is None:
            return self._stderr_cache
        try:
            size = os.fstat(handle.fileno()).st_size
            return _decode(os.pread(handle.fileno(), size, 0))
        except (OSError, ValueError):
            return self._stderr_cache

    def _describe(self) -> str:
        """Context for error messages: argv, exit status, transcript tail, stderr tail."""
        code = None
        if self._proc is not None:
            code = self._proc.poll()
            if code is None and self._eof:  # stdout closed: the exit status is due soon
                try:
                    code = self._proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
        parts = [
            f"driver argv: {self.argv!r}",
            f"driver exit status: {'running' if code is None else code}",
            f"transcript (newest {_DESCRIBE_EVENTS} events):",
            self.transcript(max_line_length=_DESCRIBE_LINE_LENGTH, last=_DESCRIBE_EVENTS),
        ]
        if not self.as_oned:
            stderr = self.stderr_text()
            parts.append(f"driver stderr (last {_DESCRIBE_STDERR_CHARS} chars):")
            parts.append(stderr[-_DESCRIBE_STDERR_CHARS:] or "(empty)")
        return "\n".join(parts)
