"""``one-vmm-exec explain``: golden step trees of all 27 actions, in both modes.

The goldens in ``tests/golden/explain/`` are written by ``tests/golden/regenerate.py``
(run by hand, never by a test). They were reviewed against the Ruby step lists
of ``one_vmm_exec.rb`` (mirrored in ``vmm_exec/actions.py``): every action's
steps in the Ruby order with the fail actions nested under the step that owns
them; default mode adds only the rollbacks of DEPLOY, RESTORE, MIGRATE and
ATTACHNIC (``tests/test_rollback.py`` pins those one by one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from vmm_exec.actions import ACTIONS
from vmm_exec.config import DriverConfig, Paths
from vmm_exec.explain import (
    effective_plan,
    render_dot,
    render_text,
    sample_message,
)
from vmm_exec.hooks import Hook
from vmm_exec.steps import DirectCall, HookedCall, Immediate, Plan, step

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "explain"
MODES = ("strict", "default")
ONE_SHOT = ("POLL", "SNAPSHOTCREATE", "SNAPSHOTDELETE", "RESIZE", "EXEC", "EXEC_CANCEL")
HARDENED = ("DEPLOY", "RESTORE", "MIGRATE", "ATTACHNIC")


def config(mode: str) -> DriverConfig:
    """What ``one-vmm-exec explain --compat MODE`` configures for kvm (no hook files)."""
    return DriverConfig(hypervisor="kvm", strict=mode == "strict", paths=Paths(None),
                        live_disk_snapshots=("kvm-qcow2",))


def explain_text(action: str, mode: str) -> str:
    cfg = config(mode)
    return render_text(action, effective_plan(action, sample_message(action, "kvm"), cfg, []),
                       cfg)


def golden(name: str) -> str:
    return (GOLDEN / name).read_text(encoding="utf-8")


def top_level(text: str) -> List[str]:
    """The numbered top-level step lines of an explain text (4 spaces of indent)."""
    return [line for line in text.splitlines()
            if line.startswith("    ") and not line.startswith("     ") and line[4].isdigit()]


# ---------------------------------------------------------------------------
# goldens
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("action", list(ACTIONS))
def test_explain_text_matches_golden(action: str, mode: str) -> None:
    """The explain tree of every action, in both modes, is exactly the reviewed golden."""
    assert explain_text(action, mode) == golden(f"{action}.{mode}.txt")


def test_golden_directory_holds_exactly_the_current_set() -> None:
    """No golden is missing and none is stale (an action renamed or removed)."""
    expected = {f"{a}.{m}.txt" for a in ACTIONS for m in MODES} | {"MIGRATE.default.dot"}
    assert {p.name for p in GOLDEN.iterdir()} == expected
    assert len(ACTIONS) == 27


def test_migrate_dot_matches_golden() -> None:
    """The Graphviz rendering of MIGRATE (default mode): rollbacks dashed and orange."""
    cfg = config("default")
    plan = effective_plan("MIGRATE", sample_message("MIGRATE", "kvm"), cfg, [])
    assert render_dot("MIGRATE", plan, cfg) == golden("MIGRATE.default.dot")


def test_regeneration_script_reproduces_the_goldens(tmp_path: Path) -> None:
    """``tests/golden/regenerate.py --out DIR`` writes byte-identical files (and only them)."""
    out = tmp_path / "goldens"
    subprocess.run([sys.executable, str(ROOT / "tests" / "golden" / "regenerate.py"),
                    "--out", str(out)], check=True, capture_output=True, timeout=60)
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert written == {p.name: p.read_bytes() for p in GOLDEN.iterdir()}


@pytest.mark.parametrize("mode, args", [("default", []), ("strict", ["--compat", "strict"])])
def test_console_entry_point_prints_the_golden(tmp_path: Path, mode: str,
                                               args: List[str]) -> None:
    """``python3 -m vmm_exec explain MIGRATE`` (the real CLI path) prints the golden text.

    ONE_LOCATION points at an empty directory so that no hook file of the machine is read.
    """
    env = dict(os.environ, ONE_LOCATION=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "vmm_exec", "explain", "MIGRATE", *args],
                            cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == golden(f"MIGRATE.{mode}.txt")


# ---------------------------------------------------------------------------
# what the goldens say, checked structurally (so a careless regeneration shows)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("action", [a for a in ACTIONS if a not in HARDENED])
def test_modes_differ_only_in_the_header_for_actions_without_rollbacks(action: str) -> None:
    """Default mode adds nothing to the other 23 actions: same tree as strict mode."""
    strict, default = golden(f"{action}.strict.txt"), golden(f"{action}.default.txt")
    assert strict.replace("(strict mode)", "(default mode)", 1) == default


@pytest.mark.parametrize("action", HARDENED)
def test_default_mode_keeps_the_stock_steps_and_only_adds_marked_rollbacks(action: str) -> None:
    """The hardened goldens have the strict top-level steps unchanged, and every extra line
    is a ``default-mode rollback`` (or the stock failmigrate it is paired with)."""
    strict, default = golden(f"{action}.strict.txt"), golden(f"{action}.default.txt")
    assert top_level(strict) == top_level(default)
    extra = [line for line in default.splitlines()[1:] if line not in strict.splitlines()]
    assert extra
    for line in extra:
        stripped = line.strip()
        assert (stripped == "on failure:" or "default-mode rollback; no_fail, rollback" in line
                or "tm:tm_failmigrate" in line), line


@pytest.mark.parametrize("action", ONE_SHOT)
def test_one_shot_actions_are_shown_as_answered_calls(action: str) -> None:
    """POLL, snapshots, RESIZE, EXEC(_CANCEL) are one answered script call, not a step list."""
    text = golden(f"{action}.default.txt")
    assert "one-shot call: vmm:" in text and "steps:" not in text


def test_migrate_golden_shows_the_target_network_rollback_before_failmigrate() -> None:
    """OpenNebula #715: a failed ``vmm migrate`` cleans the target's network, then runs
    ``tm failmigrate``; the steps after the move stay ``no_fail``."""
    lines = golden("MIGRATE.default.txt").splitlines()
    at = lines.index("    3. vmm:migrate :deploy_id :dest_host :host  (on the host)")
    assert lines[at + 1:at + 4] == [
        "       on failure:",
        "          1. vnm:clean :host  (on the migration target; default-mode rollback; "
        "no_fail, rollback)",
        "          2. tm:tm_failmigrate FAILMIGRATE ssh host01 host02 "
        "/var/lib/one//datastores/0/42 42 0  (on the front-end; no_fail)",
    ]
    assert lines[at + 4:at + 7] == [
        "    4. vnm:clean :host  (on the host; no_fail)",
        "    5. vnm:post :deploy_id :host  (on the migration target; no_fail)",
        "    6. tm:tm_postmigrate POSTMIGRATE ssh host01 host02 /var/lib/one//datastores/0/42 "
        "42 0  (on the front-end; no_fail)",
    ]


# ---------------------------------------------------------------------------
# the renderer on what the goldens do not cover
# ---------------------------------------------------------------------------
def test_immediate_answer_is_rendered_as_such() -> None:
    """A failed precondition is printed as the answer oned would get at once."""
    cfg = DriverConfig(hypervisor="kvm", paths=Paths(None))  # no live disk snapshots
    xml = sample_message("DISKSNAPSHOTCREATE", "kvm")
    plan = effective_plan("DISKSNAPSHOTCREATE", xml, cfg, [])
    assert isinstance(plan, Immediate)
    assert render_text("DISKSNAPSHOTCREATE", plan, cfg) == (
        "DISKSNAPSHOTCREATE on kvm (default mode)\n"
        "  answered at once: DISKSNAPSHOTCREATE FAILURE Cannot perform a live "
        "DISKSNAPSHOTCREATE operation\n")


def test_hooks_are_rendered_with_their_origin_and_point() -> None:
    """Hooks show up where they run, tagged with their file and point; a one-shot action
    gets pre/post/fail hook sections around its call."""
    cfg = config("default")
    hooks = [Hook("pre", step("hook", "check", script_name="addon/check"), "/x/10-a.toml"),
             Hook("fail", step("hook", "undo", script_name="addon/undo"), "/x/10-a.toml")]
    plan = effective_plan("POLL", sample_message("POLL", "kvm"), cfg, hooks)
    assert isinstance(plan, HookedCall) and isinstance(plan.call, DirectCall)
    assert render_text("POLL", plan, cfg) == (
        "POLL on kvm (default mode)\n"
        "  pre hooks:\n"
        "    1. hook:check  (on the host; hook 10-a.toml (pre))\n"
        "  one-shot call: vmm:poll on the host (answered with its output)\n"
        "  fail hooks (after failure and rollback):\n"
        "    1. hook:undo  (on the host; hook 10-a.toml (fail); no_fail, rollback)\n")


def test_before_hook_is_rendered_in_place_in_both_formats() -> None:
    """A ``before vmm:migrate`` hook is the step right before ``vmm:migrate`` (text) and is
    drawn blue (dot)."""
    cfg = config("default")
    hook = Hook("before vmm:migrate", step("hook", "cache", script_name="c/setup",
                                           destination=True), "/x/20-cache.toml")
    plan = effective_plan("MIGRATE", sample_message("MIGRATE", "kvm"), cfg, [hook])
    assert isinstance(plan, Plan)
    lines = top_level(render_text("MIGRATE", plan, cfg))
    assert lines[2] == ("    3. hook:cache  (on the migration target; "
                        "hook 20-cache.toml (before vmm:migrate))")
    assert lines[3].startswith("    4. vmm:migrate ")
    assert 'hook:cache  (on the migration target; hook 20-cache.toml (before vmm:migrate))", ' \
           'style=solid, color=blue' in render_dot("MIGRATE", plan, cfg)
