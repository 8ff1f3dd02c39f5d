"""Add-on hooks: extend or roll back any action, from the add-on's own directory.

An add-on drops one file into a hook directory (default
``/etc/one/vmm_exec/hooks.d/`` and ``<remotes>/vmm_exec/hooks.d/``, under
``$ONE_LOCATION`` in a self-contained install, more with ``--hooks-dir``):
TOML (``*.toml``) or the Ruby step-hash syntax (``*.rb``).
Each hook is an ordinary step (the same DSL as the stock step lists) attached
to a hook point:

``pre``             before the first step; a failing pre hook fails the action
                    before anything else ran
``post``            after the action succeeded (never changes the answer)
``fail``            after the action failed and its rollbacks ran (never
                    changes the answer)
``before D:A``      before the step ``D:A`` (e.g. ``before vmm:migrate``)
``after D:A``       after that step succeeded
``on-fail D:A``     in that step's rollback, after its stock fail actions
``instead D:A``     runs in place of that step (same name, same answer), with
                    its own fail actions followed by the step's; the last file
                    naming a step wins

Hooks of several files run in file-name order, hooks of one file in file
order. A hook can be scoped to hypervisors and actions. Nothing here runs
anything: :func:`weave` returns a new plan.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from vmm_exec.config import Paths
from vmm_exec.rubyhash import RubyHashError, parse
from vmm_exec.steps import DRIVERS, DirectCall, HookedCall, Param, Plan, Step, Sym

if sys.version_info >= (3, 11):
    import tomllib as _toml
else:  # pragma: no cover - Python < 3.11
    import tomli as _toml

POINT = re.compile(
    r"^(pre|post|fail|(before|after|on-fail|instead) (vmm|vnm|tm|ds|hook):(\S+))$")
HOOK_DRIVERS = DRIVERS
WHERE = ("host", "destination", "frontend")


class HookError(ValueError):
    """A hook file that cannot be used; the message names the file (and line/column)."""


@dataclass(frozen=True)
class Hook:
    """One hook: a step, where it attaches, and its scope."""

    point: str
    step: Step
    source: str
    hypervisors: Tuple[str, ...] = ()
    actions: Tuple[str, ...] = ()

    def applies(self, action: str, hypervisor: str) -> bool:
        return ((not self.actions or action.upper() in self.actions)
                and (not self.hypervisors or hypervisor in self.hypervisors))


def hook_dirs(paths: Paths, extra: Sequence[str] = ()) -> List[str]:
    """Where hook files are read from: ``ETC/vmm_exec/hooks.d`` (``/etc/one`` or
    ``$ONE_LOCATION/etc``), ``REMOTES/vmm_exec/hooks.d``, then ``--hooks-dir``s."""
    return [os.path.join(paths.etc, "vmm_exec", "hooks.d"),
            os.path.join(paths.remotes, "vmm_exec", "hooks.d"), *extra]


def load_hooks(dirs: Sequence[str], errors: Optional[List[str]] = None) -> List[Hook]:
    """Every hook of every file, in file-name order (directories in the given order).

    A file that cannot be used raises :class:`HookError`, or, when ``errors``
    is given, is skipped and its error appended there (the driver keeps
    running and reports it on its diagnostics channel).
    """
    hooks: List[Hook] = []
    seen = set()
    for directory in dirs:
        real = os.path.realpath(directory)
        if real in seen:
            continue  # the same directory named twice is read once
        seen.add(real)
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                continue
            try:
                if name.endswith(".toml"):
                    hooks.extend(load_toml(path))
                elif name.endswith(".rb"):
                    hooks.extend(load_ruby(path))
            except HookError as exc:
                if errors is None:
                    raise
                errors.append(str(exc))
    return hooks


# ---------------------------------------------------------------------------
# file formats
# ---------------------------------------------------------------------------
def load_toml(path: str) -> List[Hook]:
    """``[addon]`` (optional scope) and ``[[hook]]`` tables, one per hook."""
    try:
        with open(path, "rb") as handle:
            data = _toml.load(handle)
    except (OSError, ValueError) as exc:
        raise HookError(f"{path}: {exc}") from exc
    addon = data.get("addon", {})
    base = os.path.dirname(os.path.abspath(path))
    scope = (_names(addon.get("hypervisors"), path), _actions(addon.get("actions"), path))
    hooks = []
    for index, table in enumerate(data.get("hook", []), 1):
        where = f"{path}: hook #{index}"
        point = _point(table.get("point"), where)
        hooks.append(Hook(point, step_from_mapping(table, where, base), path,
                          _names(table.get("hypervisors"), where) or scope[0],
                          _actions(table.get("actions"), where) or scope[1]))
    return hooks


def load_ruby(path: str) -> List[Hook]:
    """Ruby syntax: ``{ :point => "before vmm:migrate", :driver => :vmm, ... }`` hashes.

    The file holds one array of such hashes (or ``hooks = [...]``); each hash
    is a step hash of the Ruby DSL plus ``:point`` (and optional
    ``:hypervisors``/``:actions``).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            value = parse(handle.read(), path)
    except RubyHashError as exc:
        raise HookError(str(exc)) from exc
    except OSError as exc:
        raise HookError(f"{path}: {exc}") from exc
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise HookError(f"{path}: expected an array of hook hashes")
    base = os.path.dirname(os.path.abspath(path))
    hooks = []
    for index, item in enumerate(value, 1):
        where = f"{path}: hook #{index}"
        if not isinstance(item, dict):
            raise HookError(f"{where}: expected a hash")
        table = {str(k): v for k, v in item.items()}
        hooks.append(Hook(_point(table.get("point"), where),
                          step_from_mapping(table, where, base), path,
                          _names(table.get("hypervisors"), where),
                          _actions(table.get("actions"), where)))
    return hooks


_STEP_KEYS = {"point", "hypervisors", "actions", "driver", "action", "script", "script_name",
              "parameters", "stdin", "where", "destination", "no_fail", "fail_actions",
              "no_extra_params", "is_local", "skip"}


def step_from_mapping(table: Mapping[str, Any], where: str, base: str) -> Step:
    """A hook step from its TOML table / Ruby hash, validated strictly."""
    unknown = set(table) - _STEP_KEYS
    if unknown:
        raise HookError(f"{where}: unknown keys {sorted(unknown)}")
    driver = str(table.get("driver", "hook"))
    if driver not in HOOK_DRIVERS:
        raise HookError(f"{where}: driver must be one of {HOOK_DRIVERS}, not {driver!r}")
    place = str(table.get("where", "destination" if table.get("destination") else "host"))
    if place not in WHERE:
        raise HookError(f"{where}: where must be one of {WHERE}, not {place!r}")
    script = table.get("script")
    if driver == "hook":
        if not script:
            raise HookError(f"{where}: a hook step needs a script")
        script = str(script)
        if place == "frontend" and not os.path.isabs(script):
            script = os.path.join(base, script)
    action = str(table.get("action") or (os.path.basename(str(script)) if script else ""))
    if not action:
        raise HookError(f"{where}: a {driver} step needs an action")
    params = table.get("parameters", [])
    if not isinstance(params, list):
        raise HookError(f"{where}: parameters must be a list")
    fail = table.get("fail_actions", [])
    if not isinstance(fail, list):
        raise HookError(f"{where}: fail_actions must be a list")
    stdin = table.get("stdin")
    return Step(
        driver=driver,
        action=action,
        parameters=tuple(_param(p, where) for p in params),
        stdin=None if stdin is None else str(stdin),
        destination=place == "destination",
        fail_actions=tuple(step_from_mapping({str(k): v for k, v in f.items()},
                                             f"{where} fail action", base)
                           for f in fail),
        no_fail=bool(table.get("no_fail", False)),
        # a stock driver's step given a script runs it instead of vmm/<hv>/<action>;
        # its path is relative to SCRIPTS_REMOTE_DIR, so the remotes update ships it
        script_name=str(script) if script else table.get("script_name"),
        no_extra_params=bool(table.get("no_extra_params", driver == "hook")),
        is_local=True if place == "frontend" else table.get("is_local"),
        skip=tuple(table.get("skip", ())),
        origin=os.path.basename(where.split(":")[0]),
    )


def _param(value: Any, where: str) -> Param:
    """``:name`` (Ruby symbol, or a TOML string starting with ':') is a symbol."""
    if type(value).__name__ == "Symbol" and isinstance(value, str):  # rubyhash.Symbol
        return Sym(str(value))
    if isinstance(value, bool) or value is None:
        raise HookError(f"{where}: parameter {value!r} is not a symbol, string or number")
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if text.startswith(":") and len(text) > 1:
        return Sym(text[1:])
    return text


def _point(value: Any, where: str) -> str:
    text = " ".join(str(value or "").split())
    if not POINT.match(text):
        raise HookError(f"{where}: point must be pre, post, fail, or 'before|after|on-fail|"
                        f"instead DRIVER:ACTION' (e.g. 'before vmm:migrate'), not {value!r}")
    return text


def _names(value: Any, where: str) -> Tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise HookError(f"{where}: expected a list of names")
    return tuple(str(v) for v in value)


def _actions(value: Any, where: str) -> Tuple[str, ...]:
    return tuple(v.upper() for v in _names(value, where))


# ---------------------------------------------------------------------------
# weaving
# ---------------------------------------------------------------------------
def _tag(step: Step, hook: Hook, *, rollback: bool = False) -> Step:
    origin = f"hook {os.path.basename(hook.source)} ({hook.point})"
    fail = tuple(_tag(f, hook, rollback=True) for f in step.fail_actions)
    return replace(step, origin=origin, fail_actions=fail,
                   rollback=rollback or step.rollback,
                   no_fail=step.no_fail or rollback, hook_point=hook.point)


def weave(plan: Union[Plan, DirectCall], hooks: Sequence[Hook],
          hypervisor: str) -> Union[Plan, DirectCall, HookedCall]:
    """The plan with the applicable hooks attached (unchanged when there are none)."""
    mine = [h for h in hooks if h.applies(plan.action, hypervisor)]
    if not mine:
        return plan
    pre = tuple(_tag(h.step, h) for h in mine if h.point == "pre")
    post = tuple(_tag(h.step, h, rollback=True) for h in mine if h.point == "post")
    fail = tuple(_tag(h.step, h, rollback=True) for h in mine if h.point == "fail")
    if isinstance(plan, DirectCall):
        return HookedCall(plan, pre, post, fail)
    steps = tuple(_weave_steps(plan.steps, mine))
    return replace(plan, steps=steps, pre_hooks=plan.pre_hooks + pre,
                   post_hooks=plan.post_hooks + post, fail_hooks=plan.fail_hooks + fail)


def _replacement(stock: Step, hook: Hook, rollback: Tuple[Step, ...]) -> Step:
    """The hook's step in place of ``stock``: it keeps the stock step's name (so
    its info is the action's answer and other hooks still find it), its
    ``no_fail`` and its rollback, after the hook's own fail actions."""
    mine = _tag(hook.step, hook)
    return replace(mine, action=stock.action, no_fail=stock.no_fail or mine.no_fail,
                   destination=stock.destination, fail_actions=mine.fail_actions + rollback)


def _inherit(hook_step: Step, rollback: Tuple[Step, ...]) -> Step:
    """A hook step failing leaves the action where the neighbouring stock step's
    failure would: after its own fail actions, that step's rollback runs."""
    return replace(hook_step, fail_actions=hook_step.fail_actions + rollback)


def _weave_steps(steps: Sequence[Step], hooks: Sequence[Hook]) -> List[Step]:
    """Insert before/after hooks around their steps and on-fail hooks into rollbacks.

    A ``before S`` hook inherits the rollback of S (S has not run yet); an
    ``after S`` hook inherits the rollback of the step after S (which has not
    run yet), so a failing hook never leaves set-up state behind.
    """
    woven = []
    for s in steps:
        on_fail = tuple(_tag(h.step, h, rollback=True) for h in hooks
                        if h.point == f"on-fail {s.label}")
        stock_rollback = tuple(_weave_steps(s.fail_actions, hooks)) + on_fail
        instead = [h for h in hooks if h.point == f"instead {s.label}"]
        if instead:
            woven.append(_replacement(s, instead[-1], stock_rollback))
        else:
            woven.append(replace(s, fail_actions=stock_rollback))
    out: List[Step] = []
    for i, (s, w) in enumerate(zip(steps, woven)):
        following = woven[i + 1].fail_actions if i + 1 < len(woven) else ()
        out.extend(_inherit(_tag(h.step, h), w.fail_actions) for h in hooks
                   if h.point == f"before {s.label}")
        out.append(w)
        out.extend(_inherit(_tag(h.step, h), following) for h in hooks
                   if h.point == f"after {s.label}")
    return out


def hook_environment(data: Mapping[str, Optional[str]], action: str, point: str,
                     origin: str = "") -> Dict[str, str]:
    """What a hook script gets in its environment (documented in the README)."""
    return {
        "VMM_HOOK_ACTION": action,
        "VMM_HOOK_POINT": point,
        "VMM_HOOK_ORIGIN": origin,
        "VMM_VM_ID": data.get("vm_id") or "",
        "VMM_DEPLOY_ID": data.get("deploy_id") or "",
        "VMM_HOST": data.get("host") or "",
        "VMM_DEST_HOST": data.get("dest_host") or "",
        "VMM_FAILED_STEP": data.get("failed_step") or "",
        "VMM_FAILED_INFO": data.get("failed_info_text") or "",
    }
