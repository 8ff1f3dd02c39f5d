"""A run of ``one-vmm-exec simulate``: INIT, the requests in order, FINALIZE, the
conversation as oned sees it, and the end of everything the driver started."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from vmm_exec.testing.leftovers import descendants, kill_leftovers
from vmm_exec.testing.requests import Request
from vmm_exec.testing.simoned import (
    ONED_INIT_TIMEOUT,
    Answer,
    DriverGoneError,
    DriverInitError,
    SimulatedOned,
    parse_driver_line,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DRIVER = 3

# After stdin EOF the real driver stops every child itself (within its own 8 s deadline
# for remote processes); after this long the driver's group is killed anyway.
STOP_GRACE = 5.0
# Sent payloads are shortened in the text output (--json has them whole).
SHOWN_PAYLOAD_CHARS = 48


class Stop(Exception):
    """The run cannot go on (driver gone, timeout): exit status 3 with this message."""


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
        if not write_text(self.out, f"{direction} {line if shown is None else shown}\n"):
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
                raise Stop(f"{request.label}: no answer within {self.timeout:g} s "
                            f"(--timeout); stopping the driver")
            if not self._wait_output(deadline) and self._available(request.key) <= 0:
                status = self._exit_status()
                request.status = "NO ANSWER"
                request.note = f"driver {status}"
                self._collect_logs(request)
                raise Stop(f"driver {status} before answering {request.label}")

    def _exit_status(self) -> str:
        """'exited with status N' (or a description) once the driver's stdout closed."""
        try:
            code = self.oned.wait_exit(timeout=2.0)
        except TimeoutError:
            return "closed its stdout (still running)"
        self.driver_exit = code
        if code < 0:
            return f"was killed by {signal_name(-code)}"
        return f"exited with status {code}"

    # ------------------------------------------------------------ sending

    def _send(self, line: str, shown: Optional[str] = None) -> None:
        self.pump()
        self.emit(">", line, shown)
        try:
            self.oned.send_raw(line)
        except BrokenPipeError:
            raise Stop(f"driver {self._exit_status()} before {line.split(' ')[0]} "
                        f"could be sent") from None
        except TimeoutError:
            raise Stop(f"driver stopped reading its stdin ({line.split(' ')[0]} "
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
                raise Stop(f"driver {self._exit_status()} during {request.text}")
        request.status = "DONE"

    # ------------------------------------------------------------ the whole run

    def run(self) -> None:
        """INIT, the requests, FINALIZE; raises Stop or _Interrupted."""
        self.oned.start(init=False)
        self.emit(">", "INIT")
        try:
            self.oned.handshake(min(ONED_INIT_TIMEOUT, self.timeout))
        except DriverInitError as exc:
            self.pump()
            raise Stop(first_line(exc).replace("driver ", "driver failed INIT: ", 1)
                        ) from None
        except TimeoutError as exc:
            self.pump()
            raise Stop(f"driver failed INIT: {first_line(exc)}") from None
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
            raise Stop(f"driver {self._exit_status()} before FINALIZE") from None
        except TimeoutError:
            self.pump()
            raise Stop(f"driver did not exit within {self.timeout:g} s after FINALIZE "
                        f"(killed)") from None
        self.finalized = True
        self.driver_exit = code
        self.pump()
        if code != 0:
            raise Stop(f"driver exited with status {code} after FINALIZE (expected 0)")
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
        known = descendants(oned.pid) if oned.pid is not None and oned.returncode is None else {}
        oned.stop()
        if self.driver_exit is None and oned.returncode is not None and not self.finalized:
            self.driver_exit = oned.returncode
        self.leftovers.update(kill_leftovers(known, self.spare))
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


def write_text(out: TextIO, text: str) -> bool:
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


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def first_line(exc: BaseException) -> str:
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
