"""The REQUEST arguments of ``one-vmm-exec simulate``: ``ACTION=FILE``, ``cancel=ID``,
``sleep=SECS``, read and checked before the driver is started (a file that cannot be
sent is a usage error, not a surprise halfway through a run)."""

from __future__ import annotations

import base64
import binascii
import re
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from vmm_exec.testing.simoned import Answer

PROG = "one-vmm-exec simulate"

_ACTION_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_VM_ID = re.compile(r"-?[0-9]+")


class UsageError(Exception):
    """A command line or input file we cannot use: exit status 2, nothing started."""


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


def known_actions() -> Sequence[str]:
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
