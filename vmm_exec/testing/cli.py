"""``one-vmm-exec simulate``: run a VMM driver as oned does and send it requests.

The harness add-on authors use to exercise a driver (this package's by default, any
other command with ``--driver``) and their hooks without oned. Everything that talks to
the driver is :class:`~vmm_exec.testing.simoned.SimulatedOned`; this module reads the
command line and the request files, decides what to send when, prints the conversation
and makes sure nothing the driver started outlives the command (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import ctypes
import json
import os
import re
import shlex
import signal
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, NoReturn, Optional, Sequence, TextIO, Tuple

from vmm_exec.testing.simoned import (
    DEFAULT_ARGS,
    ONED_INIT_TIMEOUT,
    Answer,
    DriverGoneError,
    DriverInitError,
    SimulatedOned,
    parse_driver_line,
)

PROG = "one-vmm-exec simulate"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DRIVER = 3

DEFAULT_TIMEOUT = 120.0
# After stdin EOF the real driver stops every child itself (within its own 8 s deadline
# for remote processes); after this long the driver's group is killed anyway.
STOP_GRACE = 5.0
# Bounded clean-up of processes the driver left behind (see _kill_leftovers).
LEFTOVER_ROUNDS = 20
# Sent payloads are shortened in the text output (--json has them whole).
SHOWN_PAYLOAD_CHARS = 48

_ACTION_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_VM_ID = re.compile(r"-?[0-9]+")
_PR_SET_CHILD_SUBREAPER = 36

DESCRIPTION = """\
Run a VMM driver the way oned runs it (all ARGUMENTS in one argv element,
stderr closed, INIT first, FINALIZE last), send it REQUESTs in order and show
the conversation as oned sees it: exercise the driver and add-on hooks
without oned. The driver inherits this environment (ONE_LOCATION included)
plus --env, so it reads its hook files and reaches its hosts as under oned."""

EPILOG = """\
requests (sent in the order given; with none, just INIT and FINALIZE):
  ACTION=FILE   send ACTION (upper case, as in the protocol: DEPLOY, POLL,
                MIGRATE, ...) with FILE as its VMM_DRIVER_ACTION_DATA, either
                the XML or its base64 (as sent on the wire); '-' reads stdin.
                Its id is the XML's VM/ID, else --id. Waits for the answer
                before the next request is sent, unless --no-wait.
  cancel=ID     send DRIVER_CANCEL ID. oned expects no answer, neither to the
                cancel nor to the cancelled action: a request with that id
                still unanswered is reported CANCELLED, not waited for.
                (CANCEL=FILE, upper case, is the VMM action CANCEL.)
  sleep=SECS    pause, showing what the driver writes meanwhile (e.g. to let
                an action start before cancelling it).

output:
  '> ' lines are sent to the driver, '< ' lines come from it, '-- ' lines are
  events (driver exit, timeouts, processes killed). Sent payloads are
  shortened; --json gives the complete transcript as one JSON document. Then
  one line per request, e.g. 'DEPLOY 42: SUCCESS (1.2 s)'.

exit status:
  0    every answer was SUCCESS (cancelled requests need none) and the
       driver exited with 0 after FINALIZE
  1    some answer was FAILURE
  2    usage or input error (the driver was not started)
  3    the driver died, failed INIT, did not exit (or exited non-zero) after
       FINALIZE, or a request timed out; the message says which. Wins over 1.
  130  interrupted by Ctrl-C (128 + signal: 143 for SIGTERM, 129 for SIGHUP).
  In every case the driver and everything it started are stopped before the
  command returns: stdin EOF first (the driver stops its own children, as
  when oned dies), then SIGKILL for whatever is left, scripts that left the
  driver's process group included.

notes:
  one-vmm-exec works in $ONE_LOCATION/var (/var/lib/one), like the Ruby
  driver's wrapper: give absolute paths inside --args, e.g. --hooks-dir
  "$PWD/hooks.d". Scripts of '-l' actions run on this machine; everything
  else goes to the hosts named in the XML, over ssh, as under oned.

examples:
  one-vmm-exec simulate --args "-t 15 -r 0 -l poll kvm" POLL=poll.xml
  one-vmm-exec simulate --args "-t 15 -r 0 --hooks-dir $PWD/hooks.d kvm" \\
      MIGRATE=migrate.xml
  one-vmm-exec simulate --no-wait DEPLOY=deploy.xml sleep=2 cancel=42
  one-vmm-exec simulate --json SHUTDOWN=- < shutdown.b64 | jq .requests
  one-vmm-exec simulate --driver /usr/lib/one/mads/one_vmm_exec POLL=poll.xml
"""


class UsageError(Exception):
    """A command line or input file we cannot use: exit status 2, nothing started."""


class _Stop(Exception):
    """The run cannot go on (driver gone, timeout): exit status 3 with this message."""


class _Interrupted(Exception):
    """SIGINT (Ctrl-C), SIGTERM or SIGHUP while running."""

    def __init__(self, signum: int) -> None:
        super().__init__(_signal_name(signum))
        self.signum = signum


# --------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------


@dataclass
class Request:
    """One REQUEST argument, and what became of it."""

    text: str
    kind: str  # "action" | "cancel" | "sleep"
    action: str = ""
    vm_id: str = ""
    payload: bytes = b""
    seconds: float = 0.0
    # progress
    status: str = "NOT SENT"  # PENDING, SUCCESS, FAILURE, CANCELLED, TIMEOUT, NO ANSWER, SENT
    cancelled: bool = False
    sent_at: Optional[float] = None
    answer: Optional[Answer] = None
    elapsed: Optional[float] = None
    note: str = ""
    logs: List[Tuple[str, str]] = field(default_factory=list)
    log_start: int = 0

    @property
    def label(self) -> str:
        if self.kind == "cancel":
            return f"DRIVER_CANCEL {self.vm_id}"
        if self.kind == "sleep":
            return f"sleep {self.seconds:g}"
        return f"{self.action} {self.vm_id}"

    @property
    def key(self) -> Tuple[str, str]:
        return (self.action, self.vm_id)


def _known_actions() -> Sequence[str]:
    from vmm_exec.actions import ACTIONS

    return sorted(ACTIONS)


def parse_request(text: str, *, default_id: int, raw: bool, stdin_state: Dict[str, bool],
                  known: Sequence[str]) -> Request:
    """Turn one REQUEST argument into a :class:`Request`; UsageError if it is unusable."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UsageError(f"request {text!r} is not ACTION=FILE, cancel=ID or sleep=SECS")
    if name == "cancel":
        if not _VM_ID.fullmatch(value):
            raise UsageError(f"{text}: cancel needs a numeric VM id")
        return Request(text, "cancel", vm_id=value)
    if name == "sleep":
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= 3600:
            raise UsageError(f"{text}: sleep needs SECS between 0 and 3600")
        return Request(text, "sleep", seconds=seconds)
    if not _ACTION_NAME.fullmatch(name):
        hint = f" (did you mean {name.upper()}?)" if name.upper() in known else ""
        raise UsageError(f"{text}: {name!r} is not an action name{hint}")
    if name not in known and not raw:
        raise UsageError(f"{text}: unknown action {name} (known: {', '.join(known)}; "
                         f"--raw sends any name)")
    if not value:
        raise UsageError(f"{text}: no FILE after '='")
    payload, vm_id = load_payload(value, raw=raw, stdin_state=stdin_state)
    return Request(text, "action", action=name, payload=payload,
                   vm_id=vm_id if vm_id is not None else str(default_id))


def load_payload(name: str, *, raw: bool, stdin_state: Dict[str, bool]
                 ) -> Tuple[bytes, Optional[str]]:
    """The bytes to send (decoded from base64 if the file holds base64) and the VM/ID."""
    if name == "-":
        if stdin_state.get("used"):
            raise UsageError("'-' (stdin) can be given only once")
        stdin_state["used"] = True
        try:
            data = sys.stdin.buffer.read()
        except (OSError, ValueError, AttributeError) as exc:
            raise UsageError(f"cannot read stdin: {exc}") from None
        where = "stdin"
    else:
        try:
            with open(name, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
        where = name
    stripped = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped and not raw:
        raise UsageError(f"{where}: empty (--raw sends it anyway)")
    if stripped.startswith(b"<"):
        return data, _checked_xml(data, where, raw)
    compact = b"".join(data.split())
    try:
        decoded = base64.b64decode(compact, validate=True) if compact else b""
    except (binascii.Error, ValueError):
        decoded = b""
        compact = b""
    if compact and decoded.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return decoded, _checked_xml(decoded, f"{where} (base64)", raw)
    if raw:
        return (decoded if compact else data), None
    if compact:
        raise UsageError(f"{where}: base64 of something that is not XML (--raw sends it anyway)")
    raise UsageError(f"{where}: neither XML nor base64 (--raw sends it anyway)")


def _checked_xml(data: bytes, where: str, raw: bool) -> Optional[str]:
    """The VM/ID of well-formed XML; UsageError for malformed XML unless ``raw``."""
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        if raw:
            return None
        raise UsageError(f"{where}: not well-formed XML: {exc} (--raw sends it anyway)") from None
    if root.tag != "VMM_DRIVER_ACTION_DATA":
        _warn(f"{where}: the root element is <{root.tag}>, not <VMM_DRIVER_ACTION_DATA>")
    vm_id = (root.findtext("VM/ID") or "").strip()
    return vm_id if _VM_ID.fullmatch(vm_id) else None


def _warn(text: str) -> None:
    print(f"{PROG}: warning: {text}", file=sys.stderr)


# --------------------------------------------------------------------------------------
# Processes the driver left behind
# --------------------------------------------------------------------------------------


def _become_subreaper() -> None:
    """Adopt orphans of the driver's tree (Linux), so that scripts the driver started in
    sessions of their own and left behind can still be found and stopped at the end."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _process_table() -> Dict[int, Tuple[int, str, str]]:
    """pid -> (ppid, state, command name) from /proc; empty where there is no /proc."""
    table: Dict[int, Tuple[int, str, str]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        close = stat.rfind(b")")
        fields = stat[close + 2:].split()
        if len(fields) < 2:
            continue
        comm = stat[stat.find(b"(") + 1:close].decode("utf-8", "replace")
        table[int(name)] = (int(fields[1]), fields[0].decode(), comm)
    return table


def _descendants(root: int) -> Dict[int, str]:
    """Living (non-zombie) descendants of ``root``: pid -> command name."""
    table = _process_table()
    children: Dict[int, List[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: Dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in found or pid == root:
            continue
        _, state, comm = table[pid]
        if state != "Z":
            found[pid] = comm
        todo.extend(children.get(pid, []))
    return found


def _reap_children() -> None:
    """Reap adopted orphans that exited (zombies whose parent is this process)."""
    me = os.getpid()
    for pid, (ppid, state, _) in _process_table().items():
        if ppid == me and state == "Z":
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def _kill_leftovers(known: Dict[int, str], spare: Sequence[int] = ()) -> Dict[int, str]:
    """SIGKILL every process of the driver's tree still alive (bounded); return them.

    ``known`` are the driver's descendants seen while it still ran (found even where
    this process cannot adopt orphans); the rest are found as our own descendants.
    Only called after the driver itself has been reaped, so our remaining descendants
    are processes the driver started, except ``spare`` (those that existed before it).
    """
    killed: Dict[int, str] = {}
    for _ in range(LEFTOVER_ROUNDS):
        alive = _descendants(os.getpid())
        table = _process_table()
        for pid, comm in known.items():
            if pid in table and table[pid][1] != "Z" and table[pid][2] == comm:
                alive.setdefault(pid, comm)
        for pid in spare:
            alive.pop(pid, None)
        if not alive:
            break
        for pid, comm in alive.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed[pid] = comm
        time.sleep(0.05)
        _reap_children()
    _reap_children()
    return killed


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


class Simulation:
    """Sends the requests through a :class:`SimulatedOned` and keeps the record."""

    def __init__(self, oned: SimulatedOned, requests: List[Request], *, timeout: float,
                 wait: bool, out: Optional[TextIO]) -> None:
        self.oned = oned
        self.requests = requests
        self.timeout = timeout
        self.wait = wait
        self.out = out  # None: --json, print nothing while running
        self.conversation: List[Dict[str, Any]] = []
        self.cursor = 0
        self.taken: Counter[Tuple[str, str]] = Counter()
        self.arrivals: Dict[Tuple[str, str], List[float]] = {}
        self.t0 = time.monotonic()
        self.error: Optional[str] = None
        self.driver_exit: Optional[int] = None
        self.leftovers: Dict[int, str] = {}
        self.finalized = False
        self.spare: Sequence[int] = ()  # our descendants before the driver started

    # ------------------------------------------------------------ output

    def emit(self, direction: str, line: str, shown: Optional[str] = None) -> None:
        self.conversation.append({"t": round(time.monotonic() - self.t0, 3),
                                  "dir": direction, "line": line})
        if self.out is None:
            return
        if not _write(self.out, f"{direction} {line if shown is None else shown}\n"):
            self.out = None  # reader gone (e.g. `| head`): keep running, stop printing

    def event(self, text: str) -> None:
        self.emit("--", text)

    def pump(self) -> None:
        """Show every driver line that arrived since the last call."""
        lines = self.oned.lines
        now = time.monotonic()
        for line in lines[self.cursor:]:
            self.emit("<", line)
            message = parse_driver_line(line)
            if isinstance(message, Answer) and message.action != "INIT":
                self.arrivals.setdefault((message.action, message.vm_id), []).append(now)
        self.cursor = len(lines)

    def _wait_output(self, deadline: float) -> bool:
        """Wait until the driver writes something or ``deadline``; False once its stdout
        is closed (nothing more can come)."""
        cursor = self.cursor
        remaining = deadline - time.monotonic()
        if remaining > 0:
            try:
                self.oned.wait_lines(lambda lines: len(lines) > cursor, timeout=remaining)
            except DriverGoneError:
                self.pump()
                return False
            except TimeoutError:
                pass
        self.pump()
        return True

    # ------------------------------------------------------------ answers

    def _available(self, key: Tuple[str, str]) -> int:
        """Answers for (action, id) that arrived and were not yet given to a request."""
        action, vm_id = key
        count = sum(1 for answer in self.oned.answers(vm_id) if answer.action == action)
        return count - self.taken[key]

    def _take(self, request: Request) -> Answer:
        index = self.taken[request.key]
        answer = self.oned.wait_answer(request.vm_id, timeout=5.0, action=request.action)
        self.taken[request.key] += 1
        self.pump()
        arrived = self.arrivals.get(request.key, [])
        when = arrived[index] if index < len(arrived) else time.monotonic()
        request.answer = answer
        request.elapsed = max(0.0, when - (request.sent_at or when))
        self._collect_logs(request)
        return answer

    def _collect_logs(self, request: Request) -> None:
        logs = self.oned.logs(request.vm_id)
        request.logs = [(log.severity, log.text) for log in logs[request.log_start:]]

    def _await(self, request: Request) -> None:
        deadline = (request.sent_at or time.monotonic()) + self.timeout
        while True:
            self.pump()
            if self._available(request.key) > 0:
                answer = self._take(request)
                request.status = answer.result
                return
            if time.monotonic() >= deadline:
                request.status = "TIMEOUT"
                request.note = f"no answer within {self.timeout:g} s"
                self._collect_logs(request)
                raise _Stop(f"{request.label}: no answer within {self.timeout:g} s "
                            f"(--timeout); stopping the driver")
            if not self._wait_output(deadline) and self._available(request.key) <= 0:
                status = self._exit_status()
                request.status = "NO ANSWER"
                request.note = f"driver {status}"
                self._collect_logs(request)
                raise _Stop(f"driver {status} before answering {request.label}")

    def _exit_status(self) -> str:
        """'exited with status N' (or a description) once the driver's stdout closed."""
        try:
            code = self.oned.wait_exit(timeout=2.0)
        except TimeoutError:
            return "closed its stdout (still running)"
        self.driver_exit = code
        if code < 0:
            return f"was killed by {_signal_name(-code)}"
        return f"exited with status {code}"

    # ------------------------------------------------------------ sending

    def _send(self, line: str, shown: Optional[str] = None) -> None:
        self.pump()
        self.emit(">", line, shown)
        try:
            self.oned.send_raw(line)
        except BrokenPipeError:
            raise _Stop(f"driver {self._exit_status()} before {line.split(' ')[0]} "
                        f"could be sent") from None
        except TimeoutError:
            raise _Stop(f"driver stopped reading its stdin ({line.split(' ')[0]} "
                        f"not sent within {self.oned.write_timeout:g} s)") from None

    def _send_action(self, request: Request) -> None:
        encoded = base64.b64encode(request.payload).decode("ascii")
        line = f"{request.action}  {request.vm_id} {encoded}"
        shown = line
        if len(encoded) > SHOWN_PAYLOAD_CHARS:
            shown = (f"{request.action}  {request.vm_id} {encoded[:SHOWN_PAYLOAD_CHARS]}"
                     f"...[{len(encoded)} chars]")
        request.log_start = len(self.oned.logs(request.vm_id))
        request.status = "PENDING"
        request.sent_at = time.monotonic()
        self._send(line, shown)

    def _cancel(self, request: Request) -> None:
        # The requests with this id whose answer has not arrived when DRIVER_CANCEL is
        # written are cancelled: oned expects no answer for them. Answers are matched to
        # requests oldest first.
        self.pump()
        pending: Dict[Tuple[str, str], List[Request]] = {}
        for other in self.requests:
            if (other.kind == "action" and other.vm_id == request.vm_id
                    and other.status == "PENDING" and not other.cancelled):
                pending.setdefault(other.key, []).append(other)
        self._send(f"DRIVER_CANCEL {request.vm_id}")
        request.status = "SENT"
        for key, waiting in pending.items():
            for other in waiting[max(0, self._available(key)):]:
                other.cancelled = True

    def _sleep(self, request: Request) -> None:
        self.event(f"sleep {request.seconds:g} s")
        deadline = time.monotonic() + request.seconds
        while time.monotonic() < deadline:
            if not self._wait_output(deadline):
                raise _Stop(f"driver {self._exit_status()} during {request.text}")
        request.status = "DONE"

    # ------------------------------------------------------------ the whole run

    def run(self) -> None:
        """INIT, the requests, FINALIZE; raises _Stop or _Interrupted."""
        self.oned.start(init=False)
        self.emit(">", "INIT")
        try:
            self.oned.handshake(min(ONED_INIT_TIMEOUT, self.timeout))
        except DriverInitError as exc:
            self.pump()
            raise _Stop(_first_line(exc).replace("driver ", "driver failed INIT: ", 1)
                        ) from None
        except TimeoutError as exc:
            self.pump()
            raise _Stop(f"driver failed INIT: {_first_line(exc)}") from None
        self.pump()
        for request in self.requests:
            if request.kind == "sleep":
                self._sleep(request)
            elif request.kind == "cancel":
                self._cancel(request)
            else:
                self._send_action(request)
                if self.wait:
                    self._await(request)
        for request in self.requests:
            if request.status == "PENDING" and not request.cancelled:
                self._await(request)
        self._finalize()

    def _finalize(self) -> None:
        self.pump()
        self.emit(">", "FINALIZE")
        try:
            code = self.oned.finalize(timeout=self.timeout, kill_grace=STOP_GRACE)
        except BrokenPipeError:
            raise _Stop(f"driver {self._exit_status()} before FINALIZE") from None
        except TimeoutError:
            self.pump()
            raise _Stop(f"driver did not exit within {self.timeout:g} s after FINALIZE "
                        f"(killed)") from None
        self.finalized = True
        self.driver_exit = code
        self.pump()
        if code != 0:
            raise _Stop(f"driver exited with status {code} after FINALIZE (expected 0)")
        self.event("driver exited with status 0")

    def stop(self) -> None:
        """Stop the driver and everything it started; bounded. Safe to call twice."""
        oned = self.oned
        if oned.pid is not None and oned.returncode is None:
            try:
                oned.close_stdin()
                self.event("closed the driver's stdin (as when oned exits)")
                code: Optional[int] = oned.wait_exit(timeout=STOP_GRACE)
            except (TimeoutError, RuntimeError, OSError):
                code = None
            self.pump()
            if code is None:
                self.event(f"driver still running after {STOP_GRACE:g} s: SIGKILL")
            else:
                self.driver_exit = code
                self.event(f"driver exited with status {code}")
        known = _descendants(oned.pid) if oned.pid is not None and oned.returncode is None else {}
        oned.stop()
        if self.driver_exit is None and oned.returncode is not None and not self.finalized:
            self.driver_exit = oned.returncode
        self.leftovers.update(_kill_leftovers(known, self.spare))
        if self.leftovers:
            listed = ", ".join(f"{pid} ({comm})" for pid, comm in sorted(self.leftovers.items()))
            self.event(f"killed {len(self.leftovers)} process(es) the driver left behind: "
                       f"{listed}")

    def settle_cancelled(self) -> None:
        """A cancelled request that got an answer anyway (before FINALIZE) keeps it."""
        for request in self.requests:
            if request.kind != "action" or not request.cancelled:
                continue
            if request.status == "PENDING":
                request.status = "CANCELLED"
                if self._available(request.key) > 0:
                    self._take(request)
                else:
                    self._collect_logs(request)
        for request in self.requests:
            if request.status == "PENDING":
                request.status = "NO ANSWER"
                request.note = "run stopped"
                self._collect_logs(request)

    # ------------------------------------------------------------ results

    def exit_status(self) -> int:
        if self.error is not None:
            return EXIT_DRIVER
        answers = [r.answer for r in self.requests if r.answer is not None]
        return EXIT_FAILURE if any(not a.success for a in answers) else EXIT_OK

    def summary_lines(self) -> List[str]:
        return [_summary(r) for r in self.requests if r.kind != "sleep"]

    def as_json(self, exit_status: int) -> Dict[str, Any]:
        return {
            "driver": {"argv": self.oned.argv, "exit_status": self.driver_exit},
            "conversation": self.conversation,
            "requests": [_request_json(r) for r in self.requests],
            "leftover_processes": [{"pid": pid, "command": comm}
                                   for pid, comm in sorted(self.leftovers.items())],
            "error": self.error,
            "exit_status": exit_status,
        }


def _write(out: TextIO, text: str) -> bool:
    """Write and flush; False (and stdout silenced) once the reader has gone away."""
    try:
        out.write(text)
        out.flush()
        return True
    except (BrokenPipeError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            # so that the interpreter's final flush does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return False


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0]


def _seconds(request: Request) -> str:
    if request.elapsed is None:
        return "?"
    return f"{request.elapsed:.2f} s" if request.elapsed < 1 else f"{request.elapsed:.1f} s"


def _summary(request: Request) -> str:
    label = request.label
    if request.kind == "cancel":
        return f"{label}: {'sent' if request.status == 'SENT' else 'NOT SENT'}"
    answer = request.answer
    if request.status == "CANCELLED":
        if answer is None:
            return f"{label}: CANCELLED (no answer, as oned expects)"
        return f"{label}: CANCELLED, yet answered {answer.result} ({_seconds(request)})"
    if answer is not None:
        text = f"{label}: {answer.result} ({_seconds(request)})"
        info = answer.info.split("\n", 1)[0].strip()
        if not answer.success and info and info != "-":
            text += f": {info[:200]}"
        return text
    if request.note:
        return f"{label}: {request.status} ({request.note})"
    return f"{label}: {request.status}"


def _request_json(request: Request) -> Dict[str, Any]:
    answer = request.answer
    return {
        "request": request.text,
        "kind": request.kind,
        "action": request.action or ("DRIVER_CANCEL" if request.kind == "cancel" else None),
        "id": request.vm_id or None,
        "status": request.status,
        "cancelled": request.cancelled,
        "result": None if answer is None else answer.result,
        "info": None if answer is None else answer.info,
        "seconds": None if request.elapsed is None else round(request.elapsed, 3),
        "log": [{"severity": severity, "text": text} for severity, text in request.logs],
        "note": request.note or None,
    }


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _assignment(text: str) -> Tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or "\0" in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [--driver CMD] [--args ARGUMENTS] [--env NAME=VALUE]...\n"
              f"{' ' * 28}[--timeout SECS] [--id N] [--no-wait] [--raw] [--json]\n"
              f"{' ' * 28}[REQUEST ...]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("requests", nargs="*", metavar="REQUEST",
                        help="ACTION=FILE, cancel=ID or sleep=SECS (see below)")
    parser.add_argument("--driver", metavar="CMD",
                        help="the driver command, split like a shell would (default: this "
                             "package's one-vmm-exec, run by this Python)")
    parser.add_argument("--args", metavar="ARGUMENTS", default=" ".join(DEFAULT_ARGS),
                        help="the driver's ARGUMENTS, passed as ONE argv element like oned "
                             "does (default: %(default)r)")
    parser.add_argument("--env", metavar="NAME=VALUE", action="append", default=[],
                        type=_assignment, help="set a variable in the driver's environment "
                                               "(repeatable)")
    parser.add_argument("--timeout", metavar="SECS", type=_positive, default=DEFAULT_TIMEOUT,
                        help="longest wait for each answer, counted from its request, and "
                             "for the driver to exit after FINALIZE (default: %(default)g); "
                             "INIT gets oned's 10 s at most")
    parser.add_argument("--id", metavar="N", type=int, default=0,
                        help="id of requests whose XML has no VM/ID (default: 0)")
    parser.add_argument("--no-wait", action="store_true",
                        help="send every request at once, as a busy oned does, then wait for "
                             "all answers (needed to cancel a running action)")
    parser.add_argument("--raw", action="store_true",
                        help="do not check what is sent: any upper-case ACTION name, and a "
                             "FILE that is neither XML nor base64 is sent as it is (drivers "
                             "with actions of their own; testing bad input)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document at the end (complete transcript, "
                             "requests, answers, LOG lines per request) instead of text")
    return parser


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise _Interrupted(signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``one-vmm-exec simulate ARGS...``; returns the exit status."""
    parser = build_parser()
    try:
        options = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    try:
        command = shlex.split(options.driver) if options.driver is not None else None
        if command is not None and not command:
            raise UsageError("--driver: empty command")
        known = _known_actions()
        stdin_state: Dict[str, bool] = {}
        requests = [parse_request(text, default_id=options.id, raw=options.raw,
                                  stdin_state=stdin_state, known=known)
                    for text in options.requests]
    except (UsageError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE

    env = dict(os.environ)
    env.update(dict(options.env))
    oned = SimulatedOned(options.args, command=command, env=env)
    out = None if options.json else sys.stdout
    sim = Simulation(oned, requests, timeout=options.timeout, wait=not options.no_wait, out=out)
    sim.spare = tuple(_descendants(os.getpid()))
    _become_subreaper()
    interrupted: Optional[int] = None
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in _SIGNALS}
    try:
        try:
            sim.run()
        except FileNotFoundError as exc:
            print(f"{PROG}: cannot run the driver: {exc.strerror}: {exc.filename}",
                  file=sys.stderr)
            return EXIT_USAGE
        except _Stop as exc:
            sim.error = str(exc)
            sim.event(sim.error)
        except _Interrupted as exc:
            interrupted = exc.signum
        except KeyboardInterrupt:
            interrupted = signal.SIGINT
    except (_Interrupted, KeyboardInterrupt):  # a second signal while handling the first
        interrupted = interrupted or signal.SIGINT
    finally:
        # Stopping is bounded; a second Ctrl-C must not cut it short.
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        try:
            if interrupted is not None:
                sim.error = f"interrupted ({_signal_name(interrupted)})"
                sim.event(f"{sim.error}: stopping the driver")
            sim.stop()
            sim.pump()
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
    sim.settle_cancelled()

    status = 128 + interrupted if interrupted is not None else sim.exit_status()
    if options.json:
        _write(sys.stdout, json.dumps(sim.as_json(status), indent=2) + "\n")
    elif sim.out is not None:
        _write(sys.stdout, "".join(line + "\n" for line in sim.summary_lines()))
    if sim.error is not None:
        print(f"{PROG}: {sim.error}", file=sys.stderr)
    return status
