"""The package's layers: imports point down only, and nothing imports in a cycle.

Every ``import`` of a ``vmm_exec`` module anywhere in a module (top level,
inside functions, under ``TYPE_CHECKING``) is an edge; the test fails on an
edge into a layer the importing layer may not use, and on any cycle. A new
module must be placed in a layer here before it can land.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vmm_exec"

# layer → modules (a trailing ".*" takes a whole subpackage)
LAYERS: Dict[str, Tuple[str, ...]] = {
    "base": ("vmm_exec", "vmm_exec.rubyisms", "vmm_exec.quoting", "vmm_exec.config",
             "vmm_exec.cancel", "vmm_exec.logs"),
    "model": ("vmm_exec.protocol", "vmm_exec.xmlcompat", "vmm_exec.message", "vmm_exec.masking",
              "vmm_exec.steps",
              "vmm_exec.request"),
    "transports": ("vmm_exec.transports", "vmm_exec.transports.*"),
    "planning": ("vmm_exec.actions", "vmm_exec.rollback", "vmm_exec.rubyhash",
                 "vmm_exec.hooks", "vmm_exec.planning"),
    "execution": ("vmm_exec.context", "vmm_exec.runners", "vmm_exec.engine"),
    "scheduling": ("vmm_exec.scheduler",),
    "driver": ("vmm_exec.driver", "vmm_exec.cli", "vmm_exec.explain", "vmm_exec.__main__"),
    # the protocol-test harness: a second, independent reading of the protocol
    "testing": ("vmm_exec.testing", "vmm_exec.testing.*"),
}

# layer → the layers it may import (besides itself)
ALLOWED: Dict[str, Set[str]] = {
    "base": set(),
    "model": {"base"},
    "transports": {"base"},
    "planning": {"base", "model"},
    "execution": {"base", "model", "transports", "planning"},
    "scheduling": {"base", "model"},
    "driver": {"base", "model", "transports", "planning", "execution", "scheduling",
               "testing"},
    "testing": {"base", "model", "planning"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    for layer, names in LAYERS.items():
        for name in names:
            if module == name or (name.endswith(".*") and module.startswith(name[:-1])):
                return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def imports_of(module: str, path: Path, known: Set[str]) -> Set[str]:
    """The vmm_exec modules ``module`` imports (``from pkg import mod`` counts as mod)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith("vmm_exec"):
                found.add(name)
    found.discard("vmm_exec")  # the package itself only holds the version
    return found


def graph() -> Dict[str, Set[str]]:
    found = modules()
    known = set(found)
    return {m: imports_of(m, p, known) for m, p in found.items()}


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer_of(module)


def test_imports_point_down_only() -> None:
    wrong: List[str] = []
    for module, targets in graph().items():
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycle() -> None:
    edges = graph()
    cycles: List[List[str]] = []
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_planted_cycle(tmp_path: Path) -> None:
    """The import walk is not vacuous: lazy imports inside functions count."""
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from vmm_exec.engine import perform\n    return perform\n")
    assert imports_of("vmm_exec.steps", lazy, set(modules())) == {"vmm_exec.engine"}


@pytest.mark.parametrize("module, forbidden", [
    ("vmm_exec.actions", "vmm_exec.transports"),
    ("vmm_exec.planning", "vmm_exec.transports"),
    ("vmm_exec.explain", "vmm_exec.transports"),
    ("vmm_exec.driver", "vmm_exec.testing"),
])
def test_importing_a_layer_does_not_load_what_it_must_not_know(module: str,
                                                               forbidden: str) -> None:
    """The action catalogue and ``explain`` load without the transport stack; the
    driver oned runs loads no test tooling."""
    probe = (f"import sys, {module}; "
             f"print(sorted(m for m in sys.modules if m.startswith('{forbidden}')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd=str(PACKAGE.parent), check=True).stdout
    assert out.strip() == "[]"
