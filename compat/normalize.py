"""Normalisation of a run into the comparable ``expected.*`` texts.

Concurrency makes raw order meaningless across VMs, and the world path and
large payloads make raw text unreadable, so:

* stdout lines are grouped by message id (``## id ID``), groups sorted;
* journal entries are grouped by VM in call order, the rest sorted, then
  one entry per file the run created or changed;
* base64 of XML-ish text is shown decoded (exactly reversible), text over
  4 KiB is replaced by its sha256 and length, the world path by {WORLD};
* in the port's own remote kill commands (default mode: the process group of
  a timed-out or cancelled command, killed over a new connection), the group
  id and its start time, which change from run to run, by {PGID} and {START}
  (the Ruby driver sends no such command, so its recordings never hold one).

This must stay byte-for-byte equal to how the recordings were made.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from compat.fakes import common
from compat.world import WORLD_TOKEN, snapshot

SMALL_LIMIT = 4096  # bytes; larger texts are shown as sha256 + length

#: ``ACTION RESULT ID ...`` and ``LOG SEV ID ...``: the id is the group key.
MESSAGE_RE = re.compile(r"^([A-Z_]+) (SUCCESS|FAILURE|[IEWD]|-) (\S+)")


def key_order(key: str) -> Tuple[int, int, str]:
    """Non-numeric keys (``-``...) first, then numeric ones by value."""
    if re.fullmatch(r"-?\d+", key):
        return (1, int(key), key)
    return (0, 0, key)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


# ---------------------------------------------------------------------------
# stdout
# ---------------------------------------------------------------------------
def group_stdout(lines: Iterable[str], world: str) -> Dict[str, List[str]]:
    """Lines by message id, in order; a non-message line joins the group of
    the line before it."""
    groups: Dict[str, List[str]] = {}
    key = "-"
    for raw in lines:
        line = raw.replace(world, WORLD_TOKEN)
        m = MESSAGE_RE.match(line)
        if m:
            key = m.group(3)
        groups.setdefault(key, []).append(line)
    return groups


def normalize_stdout(lines: Iterable[str], world: str) -> str:
    """The ``expected.stdout`` text of the driver's stdout lines."""
    groups = group_stdout(lines, world)
    out: List[str] = []
    for key in sorted(groups, key=key_order):
        out.append(f"## id {key}")
        out.extend(groups[key])
    return "\n".join(out) + "\n" if out else ""


# ---------------------------------------------------------------------------
# journal values
# ---------------------------------------------------------------------------
def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def sized(target: Dict[str, Any], key: str, text: str) -> Dict[str, Any]:
    """Put ``text`` under ``key``, or its sha256/length when over 4 KiB."""
    data = _utf8(text)
    if len(data) > SMALL_LIMIT:
        target[key + "_sha256"] = hashlib.sha256(data).hexdigest()
        target[key + "_len"] = len(data)
    else:
        target[key] = text
    return target


def normalize_value(value: Any, world: str) -> Any:
    """Replace the world path in every string of a JSON value."""
    if isinstance(value, str):
        return value.replace(world, WORLD_TOKEN)
    if isinstance(value, list):
        return [normalize_value(x, world) for x in value]
    if isinstance(value, dict):
        return {k: normalize_value(x, world) for k, x in value.items()}
    return value


def normalize_blob(value: Optional[str], world: str) -> Any:
    """A stdin or argument: decoded base64 (``{"b64": ...}``) or text."""
    if value is None:
        return None
    decoded = common.decode_b64_text(value)
    if decoded:
        blob: Dict[str, Any] = {}
        sized(blob, "b64", decoded.text.replace(world, WORLD_TOKEN))
        if decoded.form != "strict":
            blob["form"] = decoded.form
        if decoded.tail:
            blob["tail"] = decoded.tail
        return blob
    text = value.replace(world, WORLD_TOKEN)
    if len(_utf8(text)) > SMALL_LIMIT:
        return sized({}, "text", text)
    return text


_KILL_COMMAND = "__vmm_f() {"
_GROUP_ID = re.compile(r"(__vmm_f |kill -(?:TERM|KILL|0) -)[0-9]+")
_START_TIME = re.compile(r"(= ')[0-9]+(' \])")


def normalize_command(cmd: str) -> str:
    """A one-shot ssh command, with a remote kill's run-time ids replaced."""
    if not cmd.startswith(_KILL_COMMAND) or "kill -TERM -" not in cmd:
        return cmd
    return _START_TIME.sub(r"\1{START}\2", _GROUP_ID.sub(r"\1{PGID}", cmd))


def normalize_entry(
    entry: Mapping[str, Any], world: str, candidates: Set[str]
) -> Tuple[Optional[str], Dict[str, Any]]:
    """(VM id or None, normalised entry) of one raw journal entry."""
    if "script" in entry:
        vm = common.derive_vm(entry.get("argv"), entry.get("stdin"), candidates)
        return vm, {
            "vm": vm,
            "host": entry["host"],
            "script": entry["script"],
            "argv": [normalize_blob(a, world) for a in entry.get("argv", [])],
            "stdin": normalize_blob(entry.get("stdin"), world),
        }
    if "ssh" in entry:
        vm = common.derive_vm(entry.get("cmd", ""), None, candidates)
        return vm, {
            "vm": vm,
            "host": entry["host"],
            "ssh": entry["ssh"],
            "opts": entry.get("opts", []),  # recorded as is (no {WORLD})
            "cmd": normalize_command(normalize_value(entry.get("cmd", ""), world)),
        }
    other: Dict[str, Any] = {"vm": None}
    other.update(normalize_value(dict(entry), world))
    return None, other


def normalize_entries(
    entries: Iterable[Mapping[str, Any]], world: str, candidates: Set[str]
) -> List[str]:
    """Journal lines: by VM (numeric order, call order inside), then the
    entries of no known VM, sorted."""
    by_vm: Dict[str, List[Dict[str, Any]]] = {}
    unknown: List[Dict[str, Any]] = []
    for entry in entries:
        vm, norm = normalize_entry(entry, world, candidates)
        if vm is None:
            unknown.append(norm)
        else:
            by_vm.setdefault(vm, []).append(norm)
    out: List[str] = []
    for vm in sorted(by_vm, key=key_order):
        out.extend(_dumps(x) for x in by_vm[vm])
    out.extend(sorted(_dumps(x) for x in unknown))
    return out


def file_entries(world: str, before: Mapping[str, str]) -> List[str]:
    """One ``{"file": ...}`` line per world file created or changed."""
    after = snapshot(world)
    out: List[str] = []
    for rel in sorted(after):
        if before.get(rel) == after[rel]:
            continue
        with open(os.path.join(world, rel), "rb") as f:
            data = f.read()
        entry: Dict[str, Any] = {"file": rel.replace(world, WORLD_TOKEN)}
        try:
            sized(entry, "content", data.decode("utf-8").replace(world, WORLD_TOKEN))
        except UnicodeDecodeError:
            entry["content_sha256"] = hashlib.sha256(data).hexdigest()
            entry["content_len"] = len(data)
        out.append(_dumps(entry))
    return out


def read_journal(world: str) -> List[Dict[str, Any]]:
    """The raw journal entries of a world."""
    entries: List[Dict[str, Any]] = []
    with open(os.path.join(world, common.JOURNAL_NAME), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                entries.append(json.loads(line))
    return entries


def normalize_journal(world: str, candidates: Set[str], before: Mapping[str, str]) -> str:
    """The ``expected.journal.jsonl`` text of a finished run."""
    out = normalize_entries(read_journal(world), world, candidates)
    out.extend(file_entries(world, before))
    return "\n".join(out) + "\n" if out else ""
