"""Shared helpers for the boundary tests: Ruby oracles, a fake ONE_LOCATION, waits.

The oracles below are written from the documented Ruby rules (and the C sources of
Ruby's String/pack/File implementations), deliberately in a different style from
``vmm_exec.rubyisms`` (character loops instead of regular expressions), so that the
property tests compare two independent readings of the same rule.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------
# Ruby oracles
# --------------------------------------------------------------------------------------

# rb_isspace: ' ' and '\t'..'\r'; this is also Ruby's regexp \s.
RUBY_WS = frozenset(" \t\n\v\f\r")
# String#strip also removes NUL.
RUBY_STRIP = frozenset("\0\t\n\v\f\r ")
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def oracle_strip(text: str) -> str:
    start, end = 0, len(text)
    while start < end and text[start] in RUBY_STRIP:
        start += 1
    while end > start and text[end - 1] in RUBY_STRIP:
        end -= 1
    return text[start:end]


def oracle_to_i(text: str) -> int:
    """``String#to_i`` (base 10) per ``rb_cstr_to_inum``: whitespace, sign, digits and
    single underscores between digits. (The ``0d`` prefix is tested separately.)"""
    i, n = 0, len(text)
    while i < n and text[i] in RUBY_WS:
        i += 1
    sign = 1
    if i < n and text[i] in "+-":
        sign = -1 if text[i] == "-" else 1
        i += 1
    digits = ""
    while i < n:
        c = text[i]
        if "0" <= c <= "9":
            digits += c
            i += 1
        elif c == "_" and digits and i + 1 < n and "0" <= text[i + 1] <= "9":
            i += 1
        else:
            break
    if not digits:
        return 0
    value = 0
    for c in digits:
        value = value * 10 + (ord(c) - 48)
    return sign * value


def oracle_integer(text: str) -> Optional[int]:
    """``Kernel#Integer`` on a ``\\d+`` string; None where Ruby raises."""
    if not text or any(not ("0" <= c <= "9") for c in text):
        return None
    base = 8 if len(text) > 1 and text[0] == "0" else 10
    value = 0
    for c in text:
        digit = ord(c) - 48
        if digit >= base:
            return None
        value = value * base + digit
    return value


def _fields(text: str) -> List[str]:
    """Split at every run of Ruby whitespace, keeping empty leading/trailing fields."""
    fields, current, in_ws = [], "", False
    for c in text:
        if c in RUBY_WS:
            if not in_ws:
                fields.append(current)
                current = ""
            in_ws = True
        else:
            current += c
            in_ws = False
    fields.append(current)
    return fields


def oracle_split_words(text: str) -> List[str]:
    """``String#split`` (awk mode): no empty fields at all."""
    return [f for f in _fields(text) if f != ""]


def oracle_split_regex_ws(text: str) -> List[str]:
    """``String#split(/\\s+/)``: leading empty field kept, trailing empty fields removed."""
    fields = _fields(text)
    while fields and fields[-1] == "":
        fields.pop()
    return fields


def oracle_each_line(text: str) -> List[str]:
    lines, current = [], ""
    for c in text:
        current += c
        if c == "\n":
            lines.append(current)
            current = ""
    if current:
        lines.append(current)
    return lines


_SHELL_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.,:+/@")


def oracle_shell_escape(text: str) -> str:
    """``Shellwords.escape``: ``''`` for empty, ``'\\n'`` for LF, backslash for the rest."""
    if text == "":
        return "''"
    out = []
    for c in text:
        if c in _SHELL_SAFE:
            out.append(c)
        elif c == "\n":
            out.append("'\n'")
        else:
            out.append("\\" + c)
    return "".join(out)


def oracle_decode64(text: str) -> bytes:
    """``unpack('m')``: skip non-alphabet characters, decode groups of four, a ``=`` in
    the 3rd or 4th position ends decoding, a trailing group of 2/3 yields 1/2 bytes."""
    out = bytearray()
    group: List[int] = []
    for c in text:
        index = B64_ALPHABET.find(c)
        if index < 0:
            if c == "=" and len(group) >= 2:
                break
            continue
        group.append(index)
        if len(group) == 4:
            a, b, cc, d = group
            out += bytes([(a << 2 | b >> 4) & 0xFF, (b << 4 | cc >> 2) & 0xFF,
                          (cc << 6 | d) & 0xFF])
            group = []
    if len(group) >= 2:
        out.append((group[0] << 2 | group[1] >> 4) & 0xFF)
    if len(group) == 3:
        out.append((group[1] << 4 | group[2] >> 2) & 0xFF)
    return bytes(out)


def oracle_encode64(data: bytes) -> str:
    """``pack('m')``: 45 input bytes (60 characters) per line, each line ends in LF."""
    return "".join(base64.b64encode(data[i:i + 45]).decode("ascii") + "\n"
                   for i in range(0, len(data), 45))


def oracle_parse_actions_list(text: str) -> Dict[str, Optional[str]]:
    """``OpenNebulaDriver.parse_actions_list``: split at commas (whitespace around them
    and at the ends stripped), then the first run of non-``=`` characters is the action,
    and what follows its ``=`` (up to a newline, as ``.`` stops there) the script."""
    actions: Dict[str, Optional[str]] = {}
    for item in text.split(","):
        item = oracle_strip(item)
        start = 0
        while start < len(item) and item[start] == "=":
            start += 1
        if start == len(item):
            continue
        end = item.find("=", start)
        if end < 0:
            actions[item[start:].upper()] = None
            continue
        rest = item[end + 1:]
        newline = rest.find("\n")
        script = rest if newline < 0 else rest[:newline]
        actions[item[start:end].upper()] = oracle_strip(script)
    return actions


def oracle_dirname(path: str) -> str:
    """``File.dirname`` as in Ruby's file.c (non-DOSISH): skip the root slashes (keep one
    if there are several), cut at the last separator run that is followed by a name."""
    n = len(path)
    root = 0
    while root < n and path[root] == "/":
        root += 1
    name = root - 1 if root > 1 else 0
    last = None
    j = root
    while j < n:
        if path[j] == "/":
            run_start = j
            while j < n and path[j] == "/":
                j += 1
            if j >= n:
                break
            last = run_start
        else:
            j += 1
    p = root if last is None else last
    if p == name:
        return "."
    return path[name:p]


def oracle_first_byte_signed(char: str) -> int:
    byte = char.encode("utf-8", "surrogateescape")[0]
    return byte if byte < 128 else byte - 256


# --------------------------------------------------------------------------------------
# Protocol lines
# --------------------------------------------------------------------------------------

# Everything the driver may write: ACTION RESULT ID INFO, or LOG SEVERITY ID TEXT.
PROTOCOL_LINE = re.compile(
    r"(?:[A-Z][A-Z0-9_]* (?:SUCCESS|FAILURE) \S+ .*|LOG [EIWD] \S+ .*)", re.DOTALL)


def non_protocol_lines(lines: Sequence[str]) -> List[str]:
    return [line for line in lines if not PROTOCOL_LINE.fullmatch(line)]


# --------------------------------------------------------------------------------------
# Waiting
# --------------------------------------------------------------------------------------


def b64(text: str) -> str:
    """Strict base64 of UTF-8 text, as oned writes payloads."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02,
               what: str = "condition") -> None:
    """Poll ``predicate`` until true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s")
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2:].split()[0] != b"Z"


def process_group(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return int(data[data.rfind(b")") + 2:].split()[2])


# --------------------------------------------------------------------------------------
# A self-contained ONE_LOCATION with journaling local VMM scripts
# --------------------------------------------------------------------------------------

# The POLL script (run locally thanks to -l poll). Arguments: DEPLOY_ID HOST ID HOST.
# It records its pid, journals "start"/"stop" lines and waits until the test creates
# go.<ID> (or go.all) in the control directory; bounded, so nothing can hang forever.
GATED_SCRIPT = r"""#!/bin/sh
ctrl="$VMM_TEST_CTRL"
vmid="$3"
echo "$$" > "$ctrl/pid.$vmid"
echo "start $vmid $2 $$" >> "$ctrl/journal"
i=0
while [ ! -e "$ctrl/go.$vmid" ] && [ ! -e "$ctrl/go.all" ] && [ "$i" -lt 750 ]; do
    i=$((i + 1))
    sleep 0.02
done
echo "stop $vmid $2 $$" >> "$ctrl/journal"
echo "STATE=a${VMM_TEST_EXTRA:+ }${VMM_TEST_EXTRA}"
"""


def make_one_location(base: Path, scripts: Optional[Dict[str, str]] = None,
                      config: str = "SCRIPTS_REMOTE_DIR=/var/tmp/one\n",
                      vmm_execrc: Optional[str] = None) -> Path:
    """Create ``base/one`` with ``var/config``, ``var/remotes/vmm/kvm/<scripts>`` and an
    optional ``etc/vmm_exec/vmm_execrc``; returns the ONE_LOCATION path."""
    one = base / "one"
    kvm = one / "var" / "remotes" / "vmm" / "kvm"
    kvm.mkdir(parents=True)
    (one / "etc" / "vmm_exec").mkdir(parents=True)
    (one / "var" / "config").write_text(config)
    if vmm_execrc is not None:
        (one / "etc" / "vmm_exec" / "vmm_execrc").write_text(vmm_execrc)
    for name, body in (scripts if scripts is not None else {"poll": GATED_SCRIPT}).items():
        path = kvm / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return one


def driver_env(one: Path, ctrl: Path, **extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    for name in ("ONE_MAD_DEBUG", "LIVE_DISK_SNAPSHOTS", "VNMAD_LOCAL_ACTIONS"):
        env.pop(name, None)
    env.update(ONE_LOCATION=str(one), PRIORITY="0", VMM_TEST_CTRL=str(ctrl))
    env.update(extra)
    return env


def poll_xml(vmid: int, host: Optional[str], deploy_id: Optional[str] = None) -> str:
    host_xml = "" if host is None else f"<HOST>{host}</HOST>"
    return (f"<VMM_DRIVER_ACTION_DATA>{host_xml}"
            f"<DEPLOY_ID>{deploy_id or f'one-{vmid}'}</DEPLOY_ID>"
            f"<VM><ID>{vmid}</ID></VM></VMM_DRIVER_ACTION_DATA>")


class Journal:
    """The scripts' journal and control files in one directory."""

    def __init__(self, ctrl: Path) -> None:
        self.ctrl = ctrl
        ctrl.mkdir(parents=True, exist_ok=True)

    def events(self) -> List[Tuple[str, str, str, int]]:
        """(event, vmid, host, pid) in the order they happened."""
        try:
            text = (self.ctrl / "journal").read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 4:
                out.append((parts[0], parts[1], parts[2], int(parts[3])))
        return out

    def started(self) -> Set[str]:
        return {vmid for event, vmid, _, _ in self.events() if event == "start"}

    def stopped(self) -> Set[str]:
        return {vmid for event, vmid, _, _ in self.events() if event == "stop"}

    def running(self) -> Set[str]:
        return self.started() - self.stopped()

    def release(self, vmid: object) -> None:
        (self.ctrl / f"go.{vmid}").touch()

    def release_all(self) -> None:
        (self.ctrl / "go.all").touch()

    def pid(self, vmid: object) -> Optional[int]:
        try:
            return int((self.ctrl / f"pid.{vmid}").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def wait_started(self, vmids: Sequence[object], timeout: float = 10.0) -> None:
        wanted = {str(v) for v in vmids}
        wait_until(lambda: wanted <= self.started(), timeout,
                   what=f"start of {sorted(wanted)} (journal: {self.events()})")

    def max_concurrency(self, host: Optional[str] = None) -> int:
        active: Set[str] = set()
        best = 0
        for event, vmid, h, _ in self.events():
            if host is not None and h != host:
                continue
            if event == "start":
                active.add(vmid)
                best = max(best, len(active))
            else:
                active.discard(vmid)
        return best

    def overlapping_pairs(self) -> Set[Tuple[str, str]]:
        """Pairs of VM ids whose script runs overlapped in time."""
        active: Set[str] = set()
        pairs: Set[Tuple[str, str]] = set()
        for event, vmid, _, _ in self.events():
            if event == "start":
                for other in active:
                    pairs.add((min(other, vmid), max(other, vmid)))
                active.add(vmid)
            else:
                active.discard(vmid)
        return pairs


# --------------------------------------------------------------------------------------
# PID reuse, for real
# --------------------------------------------------------------------------------------

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def can_choose_pids() -> bool:
    """Root with a writable ``ns_last_pid`` (Linux ≥ 3.3, CAP_SYS_ADMIN): the next PID
    the kernel hands out can be chosen."""
    return os.geteuid() == 0 and os.access(NS_LAST_PID, os.W_OK)


def spawn_with_pid(pid: int, argv: Sequence[str], user: Optional[str] = None,
                   attempts: int = 200) -> subprocess.Popen[bytes]:
    """Start ``argv`` as the leader of a new session whose PID is exactly ``pid``.

    This is how a cloud host reuses the PID of a process group that has ended.
    Another process may take the number first: then that attempt is undone and
    retried. Raises RuntimeError when no attempt got the PID.
    """
    for _ in range(attempts):
        NS_LAST_PID.write_text(str(pid - 1))
        proc = subprocess.Popen(list(argv), start_new_session=True, user=user,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    raise RuntimeError(f"could not start a process with PID {pid}")
