"""Default-mode rollbacks: what the Ruby step lists leave behind, undone.

The stock step lists in :mod:`vmm_exec.actions` stay exactly the Ruby ones
(strict mode runs them as they are). In default mode this module adds fail
actions where a failure would otherwise leave state on a host: the network
set up by ``pre`` on the host (or on the migration target, OpenNebula issue
#715), a NIC attached to a VM whose ATTACHNIC oned is about to record as
failed. Added steps are marked ``rollback`` with their origin, so ``explain``
shows them apart from the stock ones.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Dict, Tuple

from vmm_exec.steps import HOST, Plan, Step, step

ORIGIN = "default-mode rollback"


def _rb(*steps: Step) -> Tuple[Step, ...]:
    return tuple(replace(s, rollback=True, origin=ORIGIN, no_fail=True) for s in steps)


def _clean(destination: bool = False) -> Step:
    return step("vnm", "clean", HOST, destination=destination)


def _add(plan: Plan, rules: Dict[str, Tuple[Step, ...]], *, first: bool = False) -> Plan:
    """Append (or prepend) rollback steps to the fail actions of the named steps."""
    steps = []
    for s in plan.steps:
        extra = rules.get(s.label)
        if extra is None and s.action.startswith("/bin/"):
            extra = rules.get("vmm:/bin/*")
        if extra:
            existing = s.fail_actions
            # a stock rollback step already doing the same job is not repeated
            extra = tuple(e for e in extra if not any(
                e.label == x.label and e.destination == x.destination for x in existing))
            s = replace(s, fail_actions=extra + existing if first else existing + extra)
        steps.append(s)
    return replace(plan, steps=tuple(steps))


def _deploy(plan: Plan) -> Plan:
    clean = _rb(_clean())
    return _add(plan, {"vnm:pre": clean, "vmm:/bin/*": clean, "vmm:deploy": clean,
                       "vnm:post": clean})


def _restore(plan: Plan) -> Plan:
    clean = _rb(_clean())
    return _add(plan, {"vnm:pre": clean, "vmm:restore": clean, "vnm:post": clean})


def _migrate(plan: Plan) -> Plan:
    if not any(s.label == "vnm:pre" and s.destination for s in plan.steps):
        return plan  # same-host migration: no target network was set up
    failmigrate = next((f for s in plan.steps if s.label == "vmm:migrate"
                        for f in s.fail_actions if f.action == "tm_failmigrate"), None)
    clean_target = _rb(_clean(destination=True))
    rules = {"vmm:migrate": clean_target}
    if failmigrate is not None:
        # the stock storage rollback, added where Ruby has none: marked as ours
        rules["vnm:pre"] = clean_target + _rb(failmigrate)
    # the target's network goes before the storage rollback: reverse of setup
    return _add(plan, rules, first=True)


def _attach_nic(plan: Plan) -> Plan:
    detach = next((f for s in plan.steps for f in s.fail_actions
                   if f.label == "vmm:detach_nic"), None)
    clean = _rb(_clean())
    undo = (_rb(detach) if detach is not None else ()) + clean
    return _add(plan, {"vnm:pre": clean, "vmm:attach_nic": clean, "vnm:post": clean,
                       "vmm:prereconfigure": clean, "tm:tm_context": undo,
                       "vmm:reconfigure": undo})


HARDENERS: Dict[str, Callable[[Plan], Plan]] = {
    "DEPLOY": _deploy,
    "RESTORE": _restore,
    "MIGRATE": _migrate,
    "ATTACHNIC": _attach_nic,
}

def harden(plan: Plan) -> Plan:
    """The plan with default-mode rollbacks added (unchanged for other actions)."""
    fn = HARDENERS.get(plan.action)
    return fn(plan) if fn else plan


def never_stop(steps: Tuple[Step, ...]) -> Tuple[Step, ...]:
    """Rollback lists run to the end in default mode: each step is ``no_fail``."""
    return tuple(s if s.no_fail else replace(s, no_fail=True) for s in steps)

