"""Judging a run against the recording, with the scenario's port rules.

The project only has this one mode (the kit's ``--port`` mode): the Ruby
recording is the reference except where DIVERGENCES.md says a correct port
must do better, as each scenario's ``port`` file states.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from compat.normalize import key_order
from compat.scenario import EXPECTED_KINDS, PortRules

#: A final answer to oned (INIT's answer aside).
ANSWER_RE = re.compile(r"^([A-Z_]+) (SUCCESS|FAILURE)(?: |$)")

PASS = "PASS"
FAIL = "FAIL"
DIFFERS = "DIFFERS"
RECORDED = "RECORDED"


def count_answers(lines: Iterable[str]) -> int:
    """Number of action answers (``ACTION SUCCESS|FAILURE ...``) but INIT's."""
    return sum(1 for line in lines if ANSWER_RE.match(line) and not line.startswith("INIT "))


def answers_needed(expected_stdout: str, rules: Optional[PortRules]) -> int:
    """Answers to wait for: the recorded ones plus those the port adds."""
    need = count_answers(expected_stdout.splitlines())
    return need + (len(rules.answers) if rules else 0)


def _diff(
    expected: List[str], actual: List[str], a: str = "expected", b: str = "actual"
) -> List[str]:
    return list(difflib.unified_diff(expected, actual, a, b, lineterm=""))


def _groups(text: str, header: Callable[[str], Optional[str]]) -> Dict[Optional[str], List[str]]:
    """``{key: lines}`` of normalised output, split at header lines."""
    groups: Dict[Optional[str], List[str]] = {}
    key: Optional[str] = None
    for line in text.splitlines():
        found = header(line)
        if found is not None:
            key = found
            groups.setdefault(key, [])
        else:
            groups.setdefault(key, []).append(line)
    return groups


def _stdout_key(line: str) -> Optional[str]:
    return line[len("## id "):] if line.startswith("## id ") else None


def _check_added_answer(key: str, action: str, rest: List[str]) -> List[str]:
    """The lines after the recorded ones of an unanswered id: LOG lines and
    exactly one final ``ACTION FAILURE ID message``."""
    final = [line for line in rest if line.startswith(f"{action} FAILURE {key}")]
    others = [line for line in rest if line not in final]
    if len(final) != 1 or not rest or rest[-1] not in final:
        return [
            f'id {key}: expected exactly one final "{action} FAILURE {key} ..." answer,'
            f" got {rest!r}"
        ]
    if any(not line.startswith("LOG ") for line in others):
        return [f"id {key}: unexpected non-LOG lines {others!r}"]
    if len(final[0].split(None, 3)) < 4:
        return [f"id {key}: the FAILURE answer carries no message"]
    return []


def port_compare_stdout(expected: str, actual: str, answers: Mapping[str, str]) -> List[str]:
    """Complaints about stdout ([] when acceptable) under ``answer`` rules."""
    exp, got = _groups(expected, _stdout_key), _groups(actual, _stdout_key)
    keys = set(exp) | set(got) | set(answers)
    bad: List[str] = []
    for key in sorted(keys, key=lambda k: key_order(k or "-")):
        el, gl = exp.get(key, []), got.get(key, [])
        if key is None or key not in answers:
            if el != gl:
                bad.append(f"id {key}: lines differ")
                bad.extend(_diff(el, gl))
            continue
        if gl[:len(el)] != el:
            bad.append(f"id {key}: recorded lines are not a prefix")
            bad.extend(_diff(el, gl))
            continue
        bad.extend(_check_added_answer(key, answers[key], gl[len(el):]))
    return bad


def _vm_of(line: str) -> Optional[str]:
    try:
        return json.loads(line).get("vm")
    except ValueError:
        return None


def port_compare_journal(expected: str, actual: str, answers: Mapping[str, str]) -> List[str]:
    """Complaints about the journal under ``answer`` rules: the recorded
    calls of an unanswered VM must be a prefix, everything else equal."""
    el, gl = expected.splitlines(), actual.splitlines()
    bad: List[str] = []
    for vm in answers:
        ev = [line for line in el if _vm_of(line) == vm]
        gv = [line for line in gl if _vm_of(line) == vm]
        if gv[:len(ev)] != ev:
            bad.append(f"journal of vm {vm}: recorded calls are not a prefix")
            bad.extend(_diff(ev, gv))
    ro = [line for line in el if _vm_of(line) not in answers]
    rg = [line for line in gl if _vm_of(line) not in answers]
    if ro != rg:
        bad.append("journal (other entries) differs")
        bad.extend(_diff(ro, rg))
    return bad


def _judge_exit(actual: str, rules: PortRules) -> Tuple[bool, List[str]]:
    """(handled, complaints) for the exit status under an ``exit`` rule."""
    if rules.exit == "any":
        return True, []
    if rules.exit == "nonzero":
        if actual.strip() == "0":
            return True, ["exit status 0, a non-zero exit was required"]
        return True, []
    return False, []


def judge(
    expected: Mapping[str, Optional[str]],
    actual: Mapping[str, str],
    rules: PortRules,
    ignore_exit: bool = False,
) -> Tuple[str, List[str]]:
    """(PASS or FAIL, report lines) of a run's normalised texts."""
    report: List[str] = []
    for kind in EXPECTED_KINDS:
        if kind == "exit" and ignore_exit:
            continue
        exp, got = expected.get(kind), actual[kind]
        if exp is None:
            report.append(f"missing expected.{kind}")
            continue
        if kind == "exit":
            handled, bad = _judge_exit(got, rules)
            if handled:
                report.extend(bad)
                continue
        if kind == "stdout" and rules.answers:
            report.extend(port_compare_stdout(exp, got, rules.answers))
            continue
        if kind == "journal.jsonl" and rules.answers:
            report.extend(port_compare_journal(exp, got, rules.answers))
            continue
        if exp != got:
            diff = _diff(exp.splitlines(), got.splitlines(), "expected." + kind, "actual." + kind)
            report.extend(diff or [f"expected.{kind} and actual.{kind} differ in line ends"])
    return (FAIL if report else PASS), report
