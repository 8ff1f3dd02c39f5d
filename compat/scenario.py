"""Scenario directories: inputs, metadata, expected files and port rules.

Format (see compat/README.md): ``args``, ``input``, ``faults``, ``*.xml``
payloads, ``files/``, optional ``env``, ``config``, ``meta``, ``port``, and
the recorded ``expected.stdout``, ``expected.journal.jsonl``,
``expected.exit``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

EXPECTED_KINDS = ("stdout", "journal.jsonl", "exit")
DEFAULT_TIMEOUT = 60.0
DEFAULT_FINALIZE_WAIT = 20.0


def read_lines(path: str) -> List[str]:
    """Lines of a text file without the final newline ([] if absent)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        data = f.read()
    if data.endswith("\n"):
        data = data[:-1]
    return data.split("\n") if data else []


def read_kv(path: str) -> Dict[str, str]:
    """``KEY=VALUE`` lines; ``#`` comments; one pair of quotes is removed."""
    out: Dict[str, str] = {}
    for line in read_lines(path):
        s = line.strip()
        if not s or s.startswith("#") or "=" not in s:
            continue
        key, value = s.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip()] = value
    return out


class PortRuleError(ValueError):
    """A ``port`` file line that is not a known rule."""


@dataclass
class PortRules:
    """Where a correct port must differ from the recording (DIVERGENCES.md).

    ``answers``: VM id -> action the Ruby driver never answered; the port
    answers ``ACTION FAILURE ID <message>`` exactly once.  ``exit``: ``any``
    or ``nonzero`` when the recorded status is a Ruby defect.  ``differs``:
    the reason the scenario is not compared line by line.
    """

    answers: Dict[str, str] = field(default_factory=dict)
    exit: Optional[str] = None
    differs: Optional[str] = None

    @classmethod
    def parse(cls, lines: List[str], origin: str = "port") -> PortRules:
        """Parse the lines of a ``port`` file."""
        rules = cls()
        for line in lines:
            words = line.split(None, 2)
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "answer" and len(words) == 3:
                rules.answers[words[1]] = words[2].strip()
            elif words[0] == "exit" and len(words) == 2 and words[1] in ("any", "nonzero"):
                rules.exit = words[1]
            elif words[0] == "differs":
                rules.differs = line.split(None, 1)[1] if len(words) > 1 else "-"
            else:
                raise PortRuleError(f"bad port rule {line!r} in {origin}")
        return rules


@dataclass
class Scenario:
    """One scenario directory, loaded."""

    path: str
    name: str
    args: str
    input: List[str]
    env: Dict[str, str]
    config: List[str]
    timeout: float
    finalize_wait: float

    @classmethod
    def load(cls, path: str) -> Scenario:
        """Read a scenario directory (payloads are read when sent)."""
        path = os.path.abspath(path)
        args = " ".join(
            line for line in read_lines(os.path.join(path, "args"))
            if not line.strip().startswith("#")
        )
        meta = read_kv(os.path.join(path, "meta"))
        return cls(
            path=path,
            name=os.path.basename(path.rstrip("/")),
            args=args.strip(),
            input=read_lines(os.path.join(path, "input")),
            env=read_kv(os.path.join(path, "env")),
            config=read_lines(os.path.join(path, "config")),
            timeout=float(meta.get("timeout", DEFAULT_TIMEOUT)),
            # how long the driver may take to exit after FINALIZE before its
            # stdin is closed (and, 5 s later, it is killed)
            finalize_wait=float(meta.get("finalize_wait", DEFAULT_FINALIZE_WAIT)),
        )

    @property
    def faults_path(self) -> str:
        return os.path.join(self.path, "faults")

    @property
    def files_dir(self) -> str:
        return os.path.join(self.path, "files")

    def vm_ids(self) -> Set[str]:
        """Numeric ids of the input's messages: the VMs of the scenario."""
        ids: Set[str] = set()
        for line in self.input:
            words = line.split()
            if len(words) >= 2 and not line.startswith("#!") and re.fullmatch(r"\d+", words[1]):
                ids.add(words[1])
        return ids

    def expected(self, kind: str, golden: Optional[str] = None) -> Optional[str]:
        """Content of ``expected.<kind>`` (``expected.<golden>.<kind>``: the
        project's own recording of a mode), or None when not recorded."""
        path = self.expected_path(kind, golden)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            return f.read()

    def expected_path(self, kind: str, golden: Optional[str] = None) -> str:
        return os.path.join(self.path, "expected." + (f"{golden}." if golden else "") + kind)

    def has_golden(self, golden: str) -> bool:
        """Whether this mode has a recording of its own (it differs from Ruby's by design)."""
        return os.path.exists(self.expected_path("stdout", golden))

    def port_rules(self) -> PortRules:
        """The scenario's port rules (none when there is no ``port`` file)."""
        path = os.path.join(self.path, "port")
        return PortRules.parse(read_lines(path), path)


def is_scenario_dir(path: str) -> bool:
    """A scenario has an ``input`` or an ``args`` file."""
    return os.path.exists(os.path.join(path, "input")) or os.path.exists(
        os.path.join(path, "args")
    )


def expand_scenario_paths(paths: List[str]) -> List[str]:
    """Scenario dirs as given; a dir of scenarios expands to its subdirs."""
    dirs: List[str] = []
    for path in paths:
        if is_scenario_dir(path):
            dirs.append(path)
        elif os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if os.path.isdir(full):
                    dirs.append(full)
    return dirs
