"""vmm_exec against the corpus recorded from the Ruby driver (compat/scenarios).

All scenarios run once per module, 4 at a time (about 1.5 minutes), through
``python -m vmm_exec --compat strict`` with the scenarios' port rules
(DIVERGENCES.md); each scenario is then one test, failing with the runner's
report (unified diffs of stdout / journal / exit status).
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
