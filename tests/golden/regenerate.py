"""Regenerate the golden ``explain`` outputs in ``tests/golden/explain/`` (run by hand).

Usage, from the repository root::

    python3 tests/golden/regenerate.py            # rewrite tests/golden/explain/
    python3 tests/golden/regenerate.py --out DIR  # write them somewhere else instead

For every action of ``vmm_exec.actions.ACTIONS`` it writes ``ACTION.strict.txt``
and ``ACTION.default.txt``: the text of ``one-vmm-exec explain ACTION --compat
strict|default`` for the built-in sample request, kvm, no hook files, live
disk snapshots for ``kvm-qcow2`` (what the CLI configures), rendered in-process
with ``vmm_exec.explain``. It also writes ``MIGRATE.default.dot`` (the Graphviz
rendering). Stale files of the directory are removed, so the directory always
holds exactly the current set.

The tests (``tests/test_explain.py``) only read these files and never rewrite
them; after a deliberate change of a step list, run this script and review the
diff (``git diff tests/golden``) against the Ruby step lists before committing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vmm_exec.actions import ACTIONS  # noqa: E402
from vmm_exec.config import DriverConfig, Paths  # noqa: E402
from vmm_exec.explain import effective_plan, render_dot, render_text, sample_message  # noqa: E402

GOLDEN_DIR = HERE / "explain"
MODES = ("strict", "default")
DOT_GOLDENS = (("MIGRATE", "default"),)


def config(mode: str) -> DriverConfig:
    """The configuration ``one-vmm-exec explain --compat MODE`` uses for kvm."""
    return DriverConfig(hypervisor="kvm", strict=mode == "strict", paths=Paths(None),
                        live_disk_snapshots=("kvm-qcow2",))


def render(action: str, mode: str, fmt: str = "text") -> str:
    """The explain output for ACTION in MODE (``text`` or ``dot``)."""
    cfg = config(mode)
    plan = effective_plan(action, sample_message(action, "kvm"), cfg, [])
    return (render_dot if fmt == "dot" else render_text)(action, plan, cfg)


def goldens() -> Dict[str, str]:
    """File name -> content, for every golden file."""
    files = {f"{action}.{mode}.txt": render(action, mode) for action in ACTIONS for mode in MODES}
    for action, mode in DOT_GOLDENS:
        files[f"{action}.{mode}.dot"] = render(action, mode, "dot")
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR,
                        help="directory to write (default: tests/golden/explain)")
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    files = goldens()
    for stale in sorted(set(p.name for p in out.iterdir() if p.is_file()) - set(files)):
        (out / stale).unlink()
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8", newline="")
    print(f"wrote {len(files)} golden files to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
