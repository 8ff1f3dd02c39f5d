"""oned's driver line protocol: parsing requests and writing answers.

Parsing follows ``OpenNebulaDriver#loop`` and ``ActionManager#trigger_action``
of the Ruby driver; writing follows ``DriverExecHelper#send_message`` and
``#log``. Nothing here knows about SSH or about what an action does.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import BinaryIO, List, Optional, Tuple, Union

from vmm_exec import rubyisms

RESULT_SUCCESS = "SUCCESS"
RESULT_FAILURE = "FAILURE"


@dataclass(frozen=True)
class Empty:
    """A blank line: ignored silently, like the Ruby driver."""


@dataclass(frozen=True)
class Malformed:
    """A line starting with whitespace: Ruby reports it on stderr and ignores it."""

    line: str


@dataclass(frozen=True)
class Init:
    args: Tuple[str, ...]


@dataclass(frozen=True)
class Finalize:
    pass


@dataclass(frozen=True)
class DriverCancel:
    action_id: int


@dataclass(frozen=True)
class ActionLine:
    """``ACTION <status> <id> <payload>`` once split: ``args`` are the fields after the name.

    The empty status field of oned's messages disappears in the split, so a
    well-formed VMM request has exactly two args: the id as written and the
    base64 payload. ``action_id`` is the id as Ruby's ``to_i`` reads it and is
    what scheduling and DRIVER_CANCEL use.
    """

    action: str
    action_id: int
    args: Tuple[str, ...]


Command = Union[Empty, Malformed, Init, Finalize, DriverCancel, ActionLine]


@dataclass(frozen=True)
class Request:
    """An accepted action request, as the scheduler queues it and the engine carries it out.

    Only text: the payload is decoded when the action runs, so a long queue
    costs no more than its lines.
    """

    action: str
    action_id: int
    msg_id: str
    payload: str


def parse_line(line: str) -> Command:
    """Classify one request line exactly as ``OpenNebulaDriver#loop`` does."""
    fields = rubyisms.split_regex_ws(line)
    if not fields:
        return Empty()
    if fields[0] == "":
        return Malformed(line)
    name = fields[0].upper()
    args = tuple(fields[1:])
    action_id = rubyisms.to_i(args[0]) if args else 0
    if name == "DRIVER_CANCEL":
        return DriverCancel(action_id)
    if name == "FINALIZE":
        return Finalize()
    if name == "INIT":
        return Init(args)
    return ActionLine(name, action_id, args)


_LOG_PREFIX = re.compile(r"(ERROR|DEBUG|INFO):(.*)")
_SEVERITY = {"ERROR": "E", "INFO": "I", "WARN": "W", "DEBUG": "D"}


def format_message(action: str, result: str, msg_id: object, info: Optional[str]) -> str:
    """``send_message``'s line: Ruby ``puts`` adds a newline unless one is there."""
    shown = rubyisms.decimal(msg_id) if isinstance(msg_id, int) else msg_id
    text = f"{action} {result} {shown} {'' if info is None else info}"
    return text if text.endswith("\n") else text + "\n"


class Writer:
    """The single, thread-safe writer of protocol lines to oned.

    Each message is written whole and flushed. Once oned has closed the pipe,
    writes are dropped (``closed`` becomes true) instead of raising, so a late
    LOG line can never crash an action.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.closed = False

    def send(self, action: str, result: str, msg_id: object = "-", info: Optional[str] = "-",
             gate: Optional[Gate] = None) -> None:
        self._write(format_message(action, result, msg_id, info), gate)

    def log_line(self, severity: str, msg_id: object, text: str,
                 gate: Optional[Gate] = None) -> None:
        self._write(format_message("LOG", severity, msg_id, text), gate)

    def log(self, msg_id: object, message: str, all_lines: bool = True,
            gate: Optional[Gate] = None) -> None:
        """``DriverExecHelper#log``: one LOG line per line of ``message``.

        ``ERROR:``/``INFO:``/``DEBUG:`` prefixes set the severity (and are
        removed); other lines are ``I`` when ``all_lines`` is true, else dropped.
        """
        for raw in rubyisms.each_line(rubyisms.strip(message)):
            m = _LOG_PREFIX.match(raw)
            if m:
                severity: Optional[str] = _SEVERITY[m.group(1)]
                raw = m.group(2)
            else:
                severity = "I" if all_lines else None
            if severity:
                self.log_line(severity, msg_id, rubyisms.strip(raw), gate)

    def _write(self, text: str, gate: Optional[Gate]) -> None:
        data = text.encode("utf-8", "surrogateescape")
        with self._lock:
            if self.closed or (gate is not None and not gate.open):
                return
            try:
                self._stream.write(data)
                self._stream.flush()
            except (OSError, ValueError):
                self.closed = True


class Gate:
    """Lets an action's lines through until it is cancelled.

    oned does not expect anything from a cancelled action (it has already sent
    the next request for that VM), so once the gate shuts, nothing more of that
    action reaches stdout. Checked under the writer lock, so no line slips out
    after ``shut`` returns.
    """

    def __init__(self) -> None:
        self.open = True

    def shut(self) -> None:
        self.open = False


_STDERR_LOG = re.compile(r"(ERROR|INFO|WARN|DEBUG):[ \t\r\n\f\v]+([0-9]+)?[ \t\r\n\f\v]*(.*)")


def split_stderr(stderr: str) -> Tuple[List[Tuple[str, str, str]], str]:
    """Split script stderr like the Ruby ``get_info_from_execution``.

    Returns ``(log_lines, err_info)``: ``log_lines`` are ``(severity, id, text)``
    for each ``LEVEL: [id] text`` line (the id as Ruby's ``Integer()`` reads
    it, ``-1`` when absent or unreadable), and ``err_info`` is every other
    line, stripped and concatenated without separator (sic).
    """
    logs: List[Tuple[str, str, str]] = []
    err: List[str] = []
    for line in rubyisms.each_line(stderr):
        line = rubyisms.strip(line)
        m = _STDERR_LOG.fullmatch(line)
        if not m:
            err.append(line)
            continue
        value = rubyisms.integer(m.group(2)) if m.group(2) is not None else None
        logs.append((_SEVERITY[m.group(1)], "-1" if value is None else rubyisms.decimal(value),
                     rubyisms.strip(m.group(3))))
    return logs, rubyisms.strip("".join(err).replace("\n", " "))
