"""Default-mode rollbacks (``vmm_exec.rollback``): what the Ruby step lists leave behind.

``harden`` adds fail actions to the stock plans of DEPLOY, RESTORE, MIGRATE and
ATTACHNIC (and returns every other plan unchanged); every added step is marked
``rollback=True``, ``origin="default-mode rollback"``, ``no_fail=True`` and is
never a duplicate of a stock fail action. ``never_stop`` makes a rollback list
run to its end.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm_exec.actions import ACTIONS, build
from vmm_exec.config import DriverConfig, Paths
from vmm_exec.explain import sample_message
from vmm_exec.message import decode
from vmm_exec.request import BuildRequest
from vmm_exec.rollback import HARDENERS, ORIGIN, harden, never_stop
from vmm_exec.steps import DEPLOY_ID, DRIVERS, HOST, Plan, Step, Sym, step

HARDENED = ("DEPLOY", "RESTORE", "MIGRATE", "ATTACHNIC")
MAC = "02:00:0a:00:00:2a"
CONTEXT_TM = ("CONTEXT ssh /var/lib/one/vms/42/context.sh "
              "host01:/var/lib/one//datastores/0/42/disk.1 42 0")


def config() -> DriverConfig:
    return DriverConfig(hypervisor="kvm", paths=Paths(None), live_disk_snapshots=("kvm-qcow2",))


def stock(action: str, xml: Optional[str] = None) -> Plan:
    """The stock plan of the explain sample (or of XML)."""
    xml = xml if xml is not None else sample_message(action, "kvm")
    payload = base64.b64encode(xml.encode()).decode()
    built = build(BuildRequest(action, "42", decode(payload), config(), payload, explain=True))
    assert isinstance(built, Plan), built
    return built


def rb(s: Step) -> Step:
    """A step as default mode adds it."""
    return replace(s, rollback=True, origin=ORIGIN, no_fail=True)


CLEAN = rb(step("vnm", "clean", HOST))
CLEAN_TARGET = rb(step("vnm", "clean", HOST, destination=True))
DETACH = step("vmm", "detach_nic", DEPLOY_ID, MAC)


def fails(plan: Plan) -> List[Tuple[str, Tuple[Step, ...]]]:
    return [(s.label, s.fail_actions) for s in plan.steps]


def added(stock_plan: Plan, hardened: Plan) -> List[Step]:
    """The fail actions harden added (whatever is not a stock fail action of that step)."""
    out = []
    for before, after in zip(stock_plan.steps, hardened.steps):
        out += [f for f in after.fail_actions if f not in before.fail_actions]
    return out


# ---------------------------------------------------------------------------
# DEPLOY, RESTORE
# ---------------------------------------------------------------------------
def test_deploy_cleans_the_network_after_any_failure() -> None:
    """``vnm clean`` after pre, mkdir, both cats; deploy and post keep their stock
    rollback (their ``vnm clean`` is not repeated); tm_context gets nothing."""
    plan = stock("DEPLOY")
    hard = harden(plan)
    assert fails(hard) == [
        ("tm:tm_context", ()),
        ("vnm:pre", (CLEAN,)),
        ("vmm:/bin/mkdir -p", (CLEAN,)),
        ("vmm:/bin/cat - >/var/lib/one//datastores/0/42/vm.xml", (CLEAN,)),
        ("vmm:/bin/cat - >/var/lib/one//datastores/0/42/ds.xml", (CLEAN,)),
        ("vmm:deploy", plan.steps[5].fail_actions),
        ("vnm:post", plan.steps[6].fail_actions),
    ]
    assert [f.label for f in hard.steps[6].fail_actions] == ["vmm:cancel", "vnm:clean"]


def test_restore_cleans_the_network_after_any_failure() -> None:
    """pre and restore get ``vnm clean``; post keeps ``cancel`` first, then cleans."""
    hard = harden(stock("RESTORE"))
    assert fails(hard) == [
        ("tm:tm_context", ()),
        ("vnm:pre", (CLEAN,)),
        ("vmm:restore", (CLEAN,)),
        ("vnm:post", (step("vmm", "cancel", DEPLOY_ID, HOST), CLEAN)),
    ]


# ---------------------------------------------------------------------------
# MIGRATE
# ---------------------------------------------------------------------------
def test_migrate_cleans_the_target_network_before_failmigrate() -> None:
    """OpenNebula #715: after a failed ``vmm migrate`` the target's network is cleaned,
    then the stock ``tm failmigrate`` runs; premigrate and the after-move steps unchanged."""
    plan = stock("MIGRATE")
    failmigrate = plan.steps[2].fail_actions[0]
    assert failmigrate.action == "tm_failmigrate"
    hard = harden(plan)
    assert hard.steps[0] == plan.steps[0]
    assert hard.steps[2].fail_actions == (CLEAN_TARGET, failmigrate)
    assert hard.steps[3:] == plan.steps[3:]


def test_migrate_failed_target_pre_runs_clean_and_failmigrate() -> None:
    """A failed ``vnm pre`` on the target: clean the target, then undo the TM pre-migrate."""
    plan = stock("MIGRATE")
    pre = harden(plan).steps[1]
    assert pre.label == "vnm:pre" and pre.destination
    assert [(f.label, f.destination, f.no_fail) for f in pre.fail_actions] == [
        ("vnm:clean", True, True), ("tm:tm_failmigrate", False, True)]
    assert pre.fail_actions[0] == CLEAN_TARGET
    assert pre.fail_actions[1].parameters == plan.steps[2].fail_actions[0].parameters
    assert pre.fail_actions[1].stdin == plan.steps[2].fail_actions[0].stdin


def test_migrate_failmigrate_added_after_target_pre_is_marked() -> None:
    """The failmigrate that default mode adds under ``vnm pre`` is a marked rollback."""
    pre = harden(stock("MIGRATE")).steps[1]
    failmigrate = pre.fail_actions[1]
    assert (failmigrate.rollback, failmigrate.origin, failmigrate.no_fail) == (
        True, ORIGIN, True)


def test_same_host_migration_is_unchanged() -> None:
    """MIGR_HOST == HOST: no target network was set up, nothing is added."""
    xml = sample_message("MIGRATE", "kvm").replace("<MIGR_HOST>host02</MIGR_HOST>",
                                                   "<MIGR_HOST>host01</MIGR_HOST>")
    plan = stock("MIGRATE", xml)
    assert not any(s.label.startswith("vnm:") for s in plan.steps)
    assert harden(plan) == plan


# ---------------------------------------------------------------------------
# ATTACHNIC
# ---------------------------------------------------------------------------
def test_attach_nic_detaches_and_cleans_after_late_failures() -> None:
    """pre and attach_nic: clean; post and prereconfigure: stock detach, then clean;
    tm_context and reconfigure: detach and clean, both added."""
    hard = harden(stock("ATTACHNIC"))
    assert fails(hard) == [
        ("vnm:pre", (CLEAN,)),
        ("vmm:attach_nic", (CLEAN,)),
        ("vnm:post", (DETACH, CLEAN)),
        ("vmm:prereconfigure", (DETACH, CLEAN)),
        ("tm:tm_context", (rb(DETACH), CLEAN)),
        ("vmm:reconfigure", (rb(DETACH), CLEAN)),
    ]


def test_attach_nic_alias_rollback() -> None:
    """A NIC alias (no hypervisor attach): post cleans; from prereconfigure on, the
    alias is detached and the network cleaned."""
    alias = sample_message("ATTACHNIC", "kvm").replace("<NIC>", "<NIC_ALIAS>").replace(
        "</NIC>", "</NIC_ALIAS>")
    hard = harden(stock("ATTACHNIC", alias))
    assert fails(hard) == [
        ("vnm:pre", (CLEAN,)),
        ("vnm:post", (CLEAN,)),
        ("vmm:prereconfigure", (DETACH, CLEAN)),
        ("tm:tm_context", (rb(DETACH), CLEAN)),
        ("vmm:reconfigure", (rb(DETACH), CLEAN)),
    ]


def test_attach_nic_without_context_step() -> None:
    """No TM_COMMAND: no tm_context step, reconfigure still detaches and cleans."""
    xml = sample_message("ATTACHNIC", "kvm").replace(CONTEXT_TM, "")
    hard = harden(stock("ATTACHNIC", xml))
    assert [s.label for s in hard.steps][-2:] == ["vmm:prereconfigure", "vmm:reconfigure"]
    assert hard.steps[-1].fail_actions == (rb(DETACH), CLEAN)


# ---------------------------------------------------------------------------
# across actions
# ---------------------------------------------------------------------------
def test_only_the_four_documented_actions_are_hardened() -> None:
    """The README's table: DEPLOY, RESTORE, MIGRATE and ATTACHNIC."""
    assert sorted(HARDENERS) == sorted(HARDENED)


@pytest.mark.parametrize("action", [a for a in ACTIONS if a not in HARDENED])
def test_other_actions_are_returned_unchanged(action: str) -> None:
    """SAVE, SHUTDOWN, CANCEL, DETACHNIC, ATTACHDISK, RESIZEDISK... get nothing added."""
    payload = base64.b64encode(sample_message(action, "kvm").encode()).decode()
    built = build(BuildRequest(action, "42", decode(payload), config(), payload, explain=True))
    if isinstance(built, Plan):
        assert harden(built) is built


@pytest.mark.parametrize("action", HARDENED)
def test_every_added_step_is_a_marked_rollback(action: str) -> None:
    """Each fail action default mode adds is ``rollback``, ``no_fail`` and named
    ``default-mode rollback`` (so ``explain`` shows it apart from the stock ones)."""
    plan = stock(action)
    new = added(plan, harden(plan))
    assert new
    for s in new:
        assert (s.rollback, s.origin, s.no_fail) == (True, ORIGIN, True), s


@pytest.mark.parametrize("action", HARDENED)
def test_hardening_keeps_the_stock_steps_and_fail_actions(action: str) -> None:
    """Top-level steps are untouched; each stock fail list is kept, in order, as a
    contiguous block (the added rollbacks go before or after it)."""
    plan = stock(action)
    hard = harden(plan)
    assert [replace(s, fail_actions=()) for s in hard.steps] == [
        replace(s, fail_actions=()) for s in plan.steps]
    for before, after in zip(plan.steps, hard.steps):
        n = len(before.fail_actions)
        assert any(after.fail_actions[i:i + n] == before.fail_actions
                   for i in range(len(after.fail_actions) - n + 1))


@pytest.mark.parametrize("action", HARDENED)
def test_no_rollback_step_is_duplicated(action: str) -> None:
    """No fail list holds the same job twice, and hardening twice adds nothing."""
    hard = harden(stock(action))
    for s in hard.steps:
        jobs = [(f.label, f.destination) for f in s.fail_actions]
        assert len(jobs) == len(set(jobs)), s.label
    assert harden(hard) == hard


def test_a_stock_rollback_doing_the_same_job_is_not_repeated() -> None:
    """When the stock list already cleans after a step, default mode adds no second clean."""
    plan = Plan("DEPLOY", "deploy", (
        step("vnm", "pre", fail_actions=[step("vnm", "clean", HOST)]),
        step("vmm", "deploy", fail_actions=[step("vnm", "clean", HOST, no_fail=True)])))
    assert harden(plan) == plan


# ---------------------------------------------------------------------------
# hypothesis: harden and never_stop on arbitrary step lists
# ---------------------------------------------------------------------------
LABELS = [("vnm", "pre"), ("vnm", "post"), ("vnm", "clean"), ("vmm", "deploy"),
          ("vmm", "migrate"), ("vmm", "restore"), ("vmm", "attach_nic"),
          ("vmm", "detach_nic"), ("vmm", "prereconfigure"), ("vmm", "reconfigure"),
          ("vmm", "/bin/mkdir -p"), ("tm", "tm_context"), ("tm", "tm_failmigrate"),
          ("ds", "backup"), ("hook", "x")]
params = st.lists(st.one_of(st.text(max_size=5), st.builds(Sym, st.sampled_from(
    ["host", "deploy_id", "dest_host"]))), max_size=3).map(tuple)


def steps_strategy(depth: int, size: int = 5) -> st.SearchStrategy[Tuple[Step, ...]]:
    """Up to SIZE steps, each with fail actions nested DEPTH levels (2 per level)."""
    fail = steps_strategy(depth - 1, 2) if depth > 0 else st.just(())
    one = st.builds(
        lambda da, p, dest, nf, rbk, fa: Step(da[0], da[1], p, destination=dest, no_fail=nf,
                                              rollback=rbk, fail_actions=fa),
        st.sampled_from(LABELS), params, st.booleans(), st.booleans(), st.booleans(), fail)
    return st.lists(one, max_size=size).map(tuple)


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from(list(ACTIONS)), steps_strategy(1))
def test_harden_never_drops_reorders_or_duplicates(action: str,
                                                   steps: Tuple[Step, ...]) -> None:
    """On any plan: same top-level steps, each stock fail list kept whole and in order,
    added steps ``no_fail`` and either marked or a copy of a stock fail action (MIGRATE's
    failmigrate), no job added twice, idempotent."""
    plan = Plan(action, "x", steps)
    hard = harden(plan)
    assert [replace(s, fail_actions=()) for s in hard.steps] == [
        replace(s, fail_actions=()) for s in steps]
    stock_fail = [f for s in steps for f in s.fail_actions]
    for before, after in zip(steps, hard.steps):
        n = len(before.fail_actions)
        assert any(after.fail_actions[i:i + n] == before.fail_actions
                   for i in range(len(after.fail_actions) - n + 1))
        extra = list(after.fail_actions)
        for f in before.fail_actions:
            extra.remove(f)
        existing = {(f.label, f.destination) for f in before.fail_actions}
        assert len({(e.label, e.destination) for e in extra}) == len(extra)
        for e in extra:
            assert (e.label, e.destination) not in existing
            assert (e.rollback and e.origin == ORIGIN and e.no_fail) or e in stock_fail
    assert harden(hard) == hard


@settings(max_examples=150, deadline=None, database=None)
@given(steps_strategy(2))
def test_never_stop_makes_every_step_no_fail_and_changes_nothing_else(
        steps: Tuple[Step, ...]) -> None:
    """``never_stop``: same length and order, each step ``no_fail`` and otherwise equal
    (fail actions untouched), steps already ``no_fail`` kept as they are, idempotent."""
    out = never_stop(steps)
    assert isinstance(out, tuple) and len(out) == len(steps)
    for before, after in zip(steps, out):
        assert after.no_fail
        assert after == replace(before, no_fail=True)
        assert after.fail_actions is before.fail_actions
        if before.no_fail:
            assert after is before
    assert never_stop(out) == out


def test_never_stop_on_an_empty_list() -> None:
    """Nothing to run is nothing to change."""
    assert never_stop(()) == ()


def test_drivers_cover_the_step_strategy() -> None:
    """The hypothesis strategies above draw every step driver."""
    assert {d for d, _ in LABELS} == set(DRIVERS)

