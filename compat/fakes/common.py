"""Helpers shared by the fake hosts and the runner.

Journal writing, the faults file, base64 detection and the derivation of the
VM an entry belongs to.  The runner's normalisation relies on the very same
base64 and VM rules, which is why they live here and not in the runner.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import fnmatch
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set, Union

JOURNAL_NAME = "journal.jsonl"
FAULTS_NAME = "faults"
RUN_DIR_NAME = "run"

#: Keys a fault rule may carry (unknown keys are kept but have no effect).
RULE_KEYS = ("exit", "stdout", "stderr", "sleep", "vm", "nth", "nonl")

#: Host-level fault kinds: ``HOST unreachable`` and ``HOST noremotes``.
HOST_FAULTS = ("unreachable", "noremotes")


class FaultsError(ValueError):
    """A faults file line that cannot be understood."""


# ---------------------------------------------------------------------------
# journal and per-world counters
# ---------------------------------------------------------------------------
def journal_append(world: str, entry: Dict[str, Any]) -> None:
    """Append one JSON line to the world's journal.

    An exclusive lock keeps lines of concurrent processes whole.
    """
    line = json.dumps(entry, ensure_ascii=False) + "\n"
    with open(os.path.join(world, JOURNAL_NAME), "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line)
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def bump_counter(world: str, key: str) -> int:
    """Increment the counter ``key`` of this world and return its new value.

    Counters are files under ``<world>/run/`` (not part of the compared
    snapshot); the lock makes concurrent scripts count each call once.
    """
    run_dir = os.path.join(world, RUN_DIR_NAME)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "counter." + key)
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            raw = f.read().strip()
            value = (int(raw) if raw else 0) + 1
            f.seek(0)
            f.truncate()
            f.write(str(value))
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return value


# ---------------------------------------------------------------------------
# faults
# ---------------------------------------------------------------------------
@dataclass
class FaultRule:
    """``HOST SCRIPT_GLOB key=value...``: how a fake script misbehaves."""

    host: str
    script: str
    line: int
    params: Dict[str, str] = field(default_factory=dict)

    def applies_to(self, host: str, script: str, vm: Optional[str]) -> bool:
        """Host, script glob and ``vm=`` match (``nth=`` is checked apart)."""
        if self.host not in ("*", host):
            return False
        if not fnmatch.fnmatchcase(script, self.script):
            return False
        return "vm" not in self.params or str(vm) == self.params["vm"]


@dataclass
class Faults:
    """A parsed faults file."""

    rules: List[FaultRule] = field(default_factory=list)
    unreachable: Set[str] = field(default_factory=set)
    noremotes: Set[str] = field(default_factory=set)


def unescape(value: str) -> str:
    r"""Expand ``\n``, ``\t`` and ``\\``; any other backslash stays as is."""
    out: List[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value) and value[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[value[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _text_lines(text: str) -> List[str]:
    """Lines as a text-mode file yields them (universal newlines)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse_faults(text: str, origin: str = FAULTS_NAME) -> Faults:
    """Parse faults text; line numbers identify rules (``nth=`` counters).

    Blank lines and ``#`` lines are ignored; values use shell-like quoting
    and ``stdout``/``stderr`` values get ``\\n``/``\\t`` expanded.
    """
    faults = Faults()
    for lineno, raw in enumerate(_text_lines(text), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        try:
            toks = shlex.split(s, posix=True)
        except ValueError as e:
            raise FaultsError(f"{origin}:{lineno}: {e}") from None
        if len(toks) == 2 and toks[1] in HOST_FAULTS:
            getattr(faults, toks[1]).add(toks[0])
            continue
        if len(toks) < 2:
            raise FaultsError(f"{origin}:{lineno}: bad fault line")
        rule = FaultRule(host=toks[0], script=toks[1], line=lineno)
        for kv in toks[2:]:
            if "=" not in kv:
                raise FaultsError(f"{origin}:{lineno}: bad key {kv!r}")
            key, value = kv.split("=", 1)
            rule.params[key] = unescape(value) if key in ("stdout", "stderr") else value
        faults.rules.append(rule)
    return faults


def load_faults(world: str) -> Faults:
    """The world's faults (an absent file means no faults)."""
    path = os.path.join(world, FAULTS_NAME)
    if not os.path.exists(path):
        return Faults()
    with open(path, encoding="utf-8") as f:
        return parse_faults(f.read(), path)


def select_rule(
    faults: Faults, host: str, script: str, vm: Optional[str], world: str
) -> Optional[FaultRule]:
    """The first rule that matches, honouring ``nth=``.

    The ``nth`` counter of a rule advances on every call that matches the
    rest of the rule, whether or not it is the N-th one.
    """
    for rule in faults.rules:
        if not rule.applies_to(host, script, vm):
            continue
        if "nth" in rule.params:
            if bump_counter(world, f"rule{rule.line}") != int(rule.params["nth"]):
                continue
        return rule
    return None


# ---------------------------------------------------------------------------
# base64 of XML-ish text
# ---------------------------------------------------------------------------
_B64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
WRAP = 60  # Ruby's Base64.encode64 line length


@dataclass(frozen=True)
class B64Text:
    """Decoded base64: ``encode_b64_text(text, form, tail)`` gives it back."""

    text: str
    form: str  # "strict" (one line) or "wrap60" (Ruby encode64)
    tail: str  # newlines after the encoding


def wrap60(encoded: str) -> str:
    """Ruby ``encode64`` layout: 60 columns, every line newline-terminated."""
    return "".join(encoded[i:i + WRAP] + "\n" for i in range(0, len(encoded), WRAP))


def encode_b64_text(text: str, form: str = "strict", tail: str = "") -> str:
    """Inverse of :func:`decode_b64_text`."""
    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return (wrap60(encoded) if form == "wrap60" else encoded) + tail


def _decode_utf8(encoded: str) -> Optional[tuple]:
    """(raw bytes, text) of canonical base64 of UTF-8, else None."""
    if not _B64_RE.match(encoded) or len(encoded) % 4:
        return None
    try:
        raw = base64.b64decode(encoded, validate=True)
        return raw, raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def _looks_xmlish(text: str) -> bool:
    return text.lstrip().startswith("<")


def decode_b64_text(value: Any) -> Optional[B64Text]:
    """Recognise base64 of XML-ish UTF-8 text, strict or 60-column wrapped.

    Only exact encodings count (re-encoding must give the same characters),
    so the journal can show the text without losing the original bytes.
    """
    if not isinstance(value, str) or len(value) < 8:
        return None
    core = value.rstrip("\n")
    tail = value[len(core):]
    if not core:
        return None
    wrapped = "\n" in core
    decoded = _decode_utf8(core.replace("\n", "") if wrapped else core)
    if decoded is None:
        return None
    raw, text = decoded
    canonical = base64.b64encode(raw).decode("ascii")
    if wrapped:
        if wrap60(canonical) != core + "\n":
            return None
    elif canonical != core:
        return None
    if not _looks_xmlish(text):
        return None
    if wrapped:
        # the final newline of the wrapped form belongs to the encoding
        return B64Text(text, "wrap60", tail[1:])
    return B64Text(text, "strict", tail)


# ---------------------------------------------------------------------------
# VM of a call
# ---------------------------------------------------------------------------
_VM_ID_RE = re.compile(r"<VM>\s*<ID>\s*(?:<!\[CDATA\[)?\s*(\d+)")
_TOKEN_SPLIT_RE = re.compile(r"[\s/:'\"=]+")


def derive_vm(
    args: Union[str, Iterable[str], None], stdin: Optional[str], candidates: Set[str]
) -> Optional[str]:
    """The VM a call belongs to.

    ``VM/ID`` of the (possibly base64) stdin XML, else the one scenario VM
    id that appears as a token of the arguments or command, else None.
    """
    if stdin:
        decoded = decode_b64_text(stdin)
        text = decoded.text if decoded else stdin
        m = _VM_ID_RE.search(text)
        if m:
            return m.group(1)
    joined = args if isinstance(args, str) else " ".join(args or [])
    found = {tok for tok in _TOKEN_SPLIT_RE.split(joined) if tok in candidates}
    return found.pop() if len(found) == 1 else None


def world_from_env() -> str:
    """The world directory of the current fake process."""
    return os.environ["COMPAT_WORLD"]


def vm_candidates_from_env() -> Set[str]:
    """The scenario's VM ids, as exported by the runner."""
    return set(os.environ.get("COMPAT_VM_IDS", "").split())
