"""vmm_exec against the corpus recorded from the Ruby driver (compat/scenarios).

All scenarios run once per module and mode, 4 at a time (about 1.5 minutes
each), through ``python -m vmm_exec --compat strict`` with the scenarios' port
rules (DIVERGENCES.md); each scenario is then one test, failing with the
runner's report (unified diffs of stdout / journal / exit status).

Default mode (no ``--compat``) runs the same corpus: where it differs from
Ruby by design, the scenario holds the project's own recording of it
(``expected.default.*``, written by ``python -m compat.runner --driver
'python3 -m vmm_exec' --golden default --record-golden``) and is compared
with that exactly, so a change of what default mode writes or runs is seen.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Dict

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from compat.runner import ScenarioResult, run_scenarios  # noqa: E402

SCENARIOS = ROOT / "compat" / "scenarios"
DRIVER = shlex.quote(sys.executable) + " -m vmm_exec --compat strict"
DEFAULT_MODE_DRIVER = shlex.quote(sys.executable) + " -m vmm_exec"
JOBS = 4
NAMES = sorted(p.name for p in SCENARIOS.iterdir() if (p / "input").exists())


@pytest.fixture(scope="module")
def results() -> Dict[str, ScenarioResult]:
    """Every scenario's result, run once for the whole module."""
    done = run_scenarios([str(SCENARIOS / name) for name in NAMES], DRIVER, JOBS)
    return {r.name: r for r in done}


def test_corpus_is_complete() -> None:
    assert len(NAMES) >= 57
    for name in NAMES:
        for kind in ("stdout", "journal.jsonl", "exit"):
            assert (SCENARIOS / name / ("expected." + kind)).is_file(), (name, kind)


@pytest.mark.parametrize("name", NAMES)
def test_scenario(name: str, results: Dict[str, ScenarioResult]) -> None:
    result = results[name]
    report = "\n".join(result.report)
    assert result.status in ("PASS", "DIFFERS"), f"{result.summary()}\n{report}"


@pytest.fixture(scope="module")
def default_mode_results() -> Dict[str, ScenarioResult]:
    done = run_scenarios([str(SCENARIOS / name) for name in NAMES], DEFAULT_MODE_DRIVER, JOBS,
                         golden="default")
    return {r.name: r for r in done}


@pytest.mark.parametrize("name", NAMES)
def test_scenario_in_default_mode(name: str,
                                  default_mode_results: Dict[str, ScenarioResult]) -> None:
    result = default_mode_results[name]
    report = "\n".join(result.report)
    assert result.status in ("PASS", "DIFFERS"), f"{result.summary()}\n{report}"


def test_default_mode_recordings_are_complete() -> None:
    """A scenario's own default-mode recording has all three files."""
    for name in NAMES:
        kinds = [(SCENARIOS / name / f"expected.default.{kind}").is_file()
                 for kind in ("stdout", "journal.jsonl", "exit")]
        assert all(kinds) or not any(kinds), name
