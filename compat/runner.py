"""Run a VMM driver against the recorded compat scenarios.

    python -m compat.runner [--driver 'COMMAND'] [-j N] [--keep]
                            [--ignore-exit] [--record | --golden NAME
                            [--record-golden]] [SCENARIO_DIR...]

Each scenario runs in a fresh world (fake hosts, journal) with the fake
ssh/scp first on PATH; the driver's normalised stdout, journal and exit
status are judged against the recording, applying the scenario's ``port``
rules (DIVERGENCES.md).  Without scenario dirs, compat/scenarios is used.

``--golden NAME`` judges a mode that differs from Ruby by design (``default``:
the driver without ``--compat strict``): where a scenario holds the project's
own recording of that mode (``expected.NAME.*``) it is compared exactly with
it, elsewhere with Ruby's recording as above. ``--record-golden`` writes those
files for the scenarios where the mode differs from Ruby's recording, and
removes them where it no longer does.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file: make ``compat`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Callable, Dict, List, Optional, Sequence  # noqa: E402

from compat import judge as judging  # noqa: E402
from compat.normalize import normalize_journal, normalize_stdout  # noqa: E402
from compat.scenario import (  # noqa: E402
    EXPECTED_KINDS,
    PortRules,
    Scenario,
    expand_scenario_paths,
)
from compat.session import play  # noqa: E402
from compat.world import build_world, driver_env, new_world_dir, snapshot  # noqa: E402

COMPAT_DIR = os.path.dirname(os.path.abspath(__file__))
SCENARIOS_DIR = os.path.join(COMPAT_DIR, "scenarios")
DEFAULT_DRIVER = shlex.quote(sys.executable) + " -m vmm_exec --compat strict"


@dataclass
class ScenarioResult:
    """Outcome of one scenario: PASS, FAIL, DIFFERS or RECORDED."""

    name: str
    status: str
    seconds: float
    report: List[str] = field(default_factory=list)
    path: str = ""

    @property
    def ok(self) -> bool:
        """PASS, and DIFFERS (judged by the project's own tests)."""
        return self.status in (judging.PASS, judging.DIFFERS, judging.RECORDED)

    def summary(self) -> str:
        return f"{self.status:<8} {self.name} ({self.seconds:.1f}s)"


def _read_text(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


def _record(scenario: Scenario, got: Dict[str, str]) -> None:
    for kind, text in got.items():
        path = os.path.join(scenario.path, "expected." + kind)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def _run_in_world(
    scenario: Scenario, driver: str, world: str, record: bool, ignore_exit: bool,
    golden: Optional[str] = None, record_golden: bool = False,
) -> ScenarioResult:
    """Build the world, play the scenario, normalise, judge (or record)."""
    t0 = time.monotonic()
    rules = None if record else scenario.port_rules()
    if rules is not None and rules.differs:
        return ScenarioResult(
            scenario.name, judging.DIFFERS, 0.0, ["not compared: " + rules.differs], scenario.path
        )
    own = golden is not None and not record_golden and scenario.has_golden(golden)
    if own:
        rules = PortRules()  # the project's own recording: compared exactly
    build_world(
        world,
        config=scenario.config,
        faults=_read_text(scenario.faults_path),
        files_dir=scenario.files_dir,
    )
    before = snapshot(world)
    env = driver_env(world, scenario.vm_ids(), scenario.env)
    expected = {kind: scenario.expected(kind, golden if own else None)
                for kind in EXPECTED_KINDS}
    need = None
    if rules is not None and expected["stdout"] is not None:
        need = judging.answers_needed(expected["stdout"], rules)
    session = play(scenario, driver, world, env, need)
    got = {
        "stdout": normalize_stdout(session.snapshot_lines(), world),
        "journal.jsonl": normalize_journal(world, scenario.vm_ids(), before),
        "exit": f"{session.exit_code}\n",
    }
    if rules is None:
        _record(scenario, got)
        return ScenarioResult(scenario.name, judging.RECORDED, time.monotonic() - t0, [],
                              scenario.path)
    status, report = judging.judge(expected, got, rules, ignore_exit)
    if record_golden and golden is not None:
        _record_golden(scenario, golden, got if status != judging.PASS else None)
        if status != judging.PASS:
            status, report = judging.RECORDED, []
    return ScenarioResult(scenario.name, status, time.monotonic() - t0, report, scenario.path)


def _record_golden(scenario: Scenario, golden: str, got: Optional[Dict[str, str]]) -> None:
    """Write the mode's own recording (``got``), or remove it (None: the mode
    reads as Ruby's recording)."""
    for kind in EXPECTED_KINDS:
        path = scenario.expected_path(kind, golden)
        if got is None:
            if os.path.exists(path):
                os.remove(path)
            continue
        with open(path, "w", encoding="utf-8") as f:
            f.write(got[kind])


def run_scenario(
    path: str,
    driver: str = DEFAULT_DRIVER,
    *,
    keep: bool = False,
    record: bool = False,
    ignore_exit: bool = False,
    golden: Optional[str] = None,
    record_golden: bool = False,
) -> ScenarioResult:
    """Run one scenario directory; never raises (errors are FAIL results)."""
    t0 = time.monotonic()
    name = os.path.basename(os.path.abspath(path).rstrip("/"))
    world = new_world_dir()
    try:
        result = _run_in_world(Scenario.load(path), driver, world, record, ignore_exit,
                               golden, record_golden)
    except Exception as error:  # a broken scenario or runner bug: report it
        result = ScenarioResult(
            name, judging.FAIL, time.monotonic() - t0, [f"runner error: {error!r}"], path
        )
    finally:
        if not keep:
            shutil.rmtree(world, ignore_errors=True)
    if keep:
        result.report.append(f"world kept at {world}")
    return result


def run_scenarios(
    paths: Sequence[str],
    driver: str = DEFAULT_DRIVER,
    jobs: int = 1,
    *,
    keep: bool = False,
    record: bool = False,
    ignore_exit: bool = False,
    golden: Optional[str] = None,
    record_golden: bool = False,
    on_result: Optional[Callable[[ScenarioResult], None]] = None,
) -> List[ScenarioResult]:
    """Run scenarios (a dir of scenarios is expanded), ``jobs`` at a time.

    Results come back in input order; ``on_result`` sees each one in that
    order as soon as it and its predecessors are done.
    """
    dirs = expand_scenario_paths(list(paths))
    results: List[ScenarioResult] = []
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [
            pool.submit(
                run_scenario, d, driver, keep=keep, record=record, ignore_exit=ignore_exit,
                golden=golden, record_golden=record_golden,
            )
            for d in dirs
        ]
        for future in futures:
            result = future.result()
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def _print_result(result: ScenarioResult) -> None:
    for line in result.report:
        print(line)
    print(result.summary(), flush=True)


def _refuse_shipped_recording(paths: Sequence[str]) -> Optional[str]:
    """The shipped corpus is the Ruby driver's: never overwrite it."""
    shipped = os.path.realpath(SCENARIOS_DIR)
    for path in expand_scenario_paths(list(paths)):
        real = os.path.realpath(path)
        if real == shipped or real.startswith(shipped + os.sep):
            return path
    return None


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.strip().split("\n\n")[0])
    parser.add_argument(
        "--driver", default=DEFAULT_DRIVER,
        help="shell command starting the driver; scenario args are appended "
             "(default: %(default)s)")
    parser.add_argument("-j", "--jobs", type=int, default=1,
                        help="scenarios run in parallel (default 1)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the world directories (path is printed)")
    parser.add_argument("--ignore-exit", action="store_true",
                        help="do not compare the driver exit status")
    parser.add_argument("--record", action="store_true",
                        help="write expected.* files instead of comparing (reference "
                             "driver only; refused on the shipped compat/scenarios)")
    parser.add_argument("--golden", metavar="NAME",
                        help="judge a mode against its own recordings (expected.NAME.*) "
                             "where it has them, against Ruby's elsewhere")
    parser.add_argument("--record-golden", action="store_true",
                        help="with --golden: write expected.NAME.* where the mode differs "
                             "from Ruby's recording, remove them where it does not")
    parser.add_argument("scenarios", nargs="*", default=[SCENARIOS_DIR],
                        help="scenario dirs; a dir holding scenario dirs is expanded "
                             "(default: compat/scenarios)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; exit status 1 when a scenario failed."""
    opts = build_parser().parse_args(argv)
    if opts.record_golden and not opts.golden:
        print("--record-golden needs --golden NAME", file=sys.stderr)
        return 2
    if opts.record and opts.golden:
        print("--record writes Ruby's recording; a mode's own is --golden NAME "
              "--record-golden", file=sys.stderr)
        return 2
    if opts.record:
        shipped = _refuse_shipped_recording(opts.scenarios)
        if shipped:
            print(f"refusing to --record over the shipped recording: {shipped}",
                  file=sys.stderr)
            return 2
    t0 = time.monotonic()
    results = run_scenarios(
        opts.scenarios, opts.driver, opts.jobs, keep=opts.keep, record=opts.record,
        ignore_exit=opts.ignore_exit, golden=opts.golden, record_golden=opts.record_golden,
        on_result=_print_result,
    )
    failed = sum(1 for r in results if r.status == judging.FAIL)
    differs = sum(1 for r in results if r.status == judging.DIFFERS)
    compared = len(results) - differs
    if differs:
        print(f"{differs} not compared (port rule: differs)")
    if opts.record:
        print(f"{compared} recorded")
    elif opts.record_golden:
        recorded = sum(1 for r in results if r.status == judging.RECORDED)
        print(f"{recorded} recorded as {opts.golden!r}, {compared - failed - recorded} as Ruby's, "
              f"{failed} failed")
    else:
        print(f"{compared - failed} passed, {failed} failed")
    print(f"total time {time.monotonic() - t0:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
