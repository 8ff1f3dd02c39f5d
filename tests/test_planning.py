"""``vmm_exec.planning.plan_request``: what actually runs for a request.

A failed precondition is an :class:`Immediate` answer (no hooks, no rollbacks);
otherwise strict mode runs the stock plan, default mode the hardened one, and
applicable hooks are woven in either way. ``explain`` prints what the engine
runs because both call this one function.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest

from vmm_exec import engine, explain, planning
from vmm_exec.actions import ACTIONS, build
from vmm_exec.config import DriverConfig, Paths
from vmm_exec.explain import effective_plan, sample_message
from vmm_exec.hooks import Hook, weave
from vmm_exec.message import decode
from vmm_exec.protocol import RESULT_FAILURE
from vmm_exec.request import ActionError, BuildRequest
from vmm_exec.rollback import ORIGIN, harden
from vmm_exec.steps import DEPLOY_ID, DirectCall, HookedCall, Immediate, Plan, Step, step

ONE_SHOT = ("POLL", "SNAPSHOTCREATE", "SNAPSHOTDELETE", "RESIZE", "EXEC", "EXEC_CANCEL")


def config(strict: bool = False, **options: object) -> DriverConfig:
    options.setdefault("live_disk_snapshots", ("kvm-qcow2",))
    return DriverConfig(hypervisor="kvm", strict=strict, paths=Paths(None),
                        **options)  # type: ignore[arg-type]


def request(action: str, xml: str, cfg: DriverConfig, msg_id: str = "42") -> BuildRequest:
    """The request the engine builds (``explain=False``)."""
    payload = base64.b64encode(xml.encode("utf-8")).decode("ascii")
    return BuildRequest(action, msg_id, decode(payload), cfg, payload)


def deployment_file(tmp_path: Path) -> Path:
    path = tmp_path / "deployment.0"
    path.write_text("<domain type='kvm'/>\n")
    return path


def sample(action: str, tmp_path: Path) -> str:
    """The explain sample, with a deployment file that exists (for the engine's DEPLOY)."""
    return sample_message(action, "kvm").replace("/var/lib/one/vms/42/deployment.0",
                                                 str(deployment_file(tmp_path)))


def hook(point: str, name: str, *, source: str = "/etc/one/vmm_exec/hooks.d/10-addon.toml",
         hypervisors: Sequence[str] = (), actions: Sequence[str] = (),
         fail_actions: Sequence[Step] = ()) -> Hook:
    return Hook(point, step("hook", name, DEPLOY_ID, script_name=f"addon/{name}",
                            no_extra_params=True, fail_actions=list(fail_actions)),
                source, tuple(hypervisors), tuple(actions))


def tag(hook_: Hook, *, rollback: bool = False) -> Step:
    """The hook's step as woven: origin and point recorded."""
    s = hook_.step
    return replace(s, origin=f"hook 10-addon.toml ({hook_.point})", hook_point=hook_.point,
                   rollback=rollback or s.rollback, no_fail=s.no_fail or rollback)


# ---------------------------------------------------------------------------
# Immediate answers
# ---------------------------------------------------------------------------
NIC = ("<NIC><ATTACH>YES</ATTACH><BRIDGE>br0</BRIDGE><MAC>02:00:0a:00:00:2a</MAC>"
       "<TARGET>one-42-0</TARGET><VN_MAD>bridge</VN_MAD></NIC>")


def failing(action: str, tmp_path: Path) -> str:
    """A sample message that fails the action's precondition."""
    xml = sample(action, tmp_path)
    if action == "ATTACHDISK":
        return xml.replace(xml[xml.index("<TM_COMMAND>"):xml.index("</TM_COMMAND>")],
                           "<TM_COMMAND>")
    if action == "ATTACHNIC":  # an element without text (an absent one is '')
        return xml.replace("<MAC>02:00:0a:00:00:2a</MAC>", "<MAC/>")
    if action == "DETACHNIC":
        return xml.replace("<MAC>02:00:0a:00:00:2a</MAC>", "")
    if action == "DEPLOY":
        empty = tmp_path / "empty.0"
        empty.write_text("")
        return xml.replace(str(deployment_file(tmp_path)), str(empty))
    return xml  # DISKSNAPSHOTCREATE: fails without live snapshots configured


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("action, info", [
    ("ATTACHDISK", "Cannot perform ATTACHDISK, expecting TM_COMMAND"),
    ("ATTACHNIC", "Missing VN_MAD, BRIDGE, TARGET or MAC in VM NIC"),
    ("DETACHNIC", "Error in DETACHNIC, MAC needed in NIC"),
    ("DISKSNAPSHOTCREATE", "Cannot perform a live DISKSNAPSHOTCREATE operation"),
    ("DEPLOY", "Cannot open deployment file {tmp}/empty.0"),
])
def test_failed_precondition_is_an_immediate_answer(tmp_path: Path, action: str, info: str,
                                                    strict: bool) -> None:
    """The original's answer, in both modes, whatever hooks exist (nothing runs: no pre
    hook, no fail hook)."""
    cfg = config(strict, live_disk_snapshots=())
    hooks = [hook("pre", "veto"), hook("fail", "undo")]
    planned = planning.plan_request(request(action, failing(action, tmp_path), cfg), hooks)
    assert planned == Immediate(action, RESULT_FAILURE, info.format(tmp=tmp_path))


def test_unplannable_request_raises_action_error() -> None:
    """A request that cannot be planned raises (the engine answers FAILURE with the text)."""
    xml = sample_message("MIGRATE", "kvm").replace(
        "MIGRATE ssh host01 host02 /var/lib/one//datastores/0/42 42 0", "")
    with pytest.raises(ActionError, match="Cannot perform MIGRATE, expecting TM_COMMAND"):
        planning.plan_request(request("MIGRATE", xml, config()), [])


# ---------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("action", list(ACTIONS))
def test_strict_mode_runs_the_stock_plan(action: str, tmp_path: Path) -> None:
    """Strict mode without hooks: exactly the stock plan (or DirectCall) of ``actions``."""
    req = request(action, sample(action, tmp_path), config(strict=True))
    assert planning.plan_request(req, []) == build(req)


@pytest.mark.parametrize("action", list(ACTIONS))
def test_default_mode_runs_the_hardened_plan(action: str, tmp_path: Path) -> None:
    """Default mode without hooks: the stock plan with its default-mode rollbacks."""
    req = request(action, sample(action, tmp_path), config())
    stock = build(req)
    expected = harden(stock) if isinstance(stock, Plan) else stock
    assert planning.plan_request(req, []) == expected


@pytest.mark.parametrize("strict", [False, True])
def test_rollbacks_appear_only_in_default_mode(tmp_path: Path, strict: bool) -> None:
    """The #715 target clean after a failed ``vmm migrate`` is a default-mode addition."""
    req = request("MIGRATE", sample("MIGRATE", tmp_path), config(strict))
    planned = planning.plan_request(req, [])
    assert isinstance(planned, Plan)
    origins = {s.origin for _, s in planned.walk()}
    assert (ORIGIN in origins) is not strict


# ---------------------------------------------------------------------------
# hooks
# ---------------------------------------------------------------------------
def test_hooks_are_woven_around_the_hardened_plan(tmp_path: Path) -> None:
    """Default mode, MIGRATE: pre/post/fail hooks in their lists; a ``before vmm:migrate``
    hook inherits the hardened rollback of vmm:migrate (target clean, failmigrate); an
    ``after`` hook inherits the next step's; an ``on-fail`` hook runs after the stock and
    default-mode fail actions."""
    req = request("MIGRATE", sample("MIGRATE", tmp_path), config())
    hardened = harden(build(req))  # type: ignore[arg-type]
    pre, post, fail = hook("pre", "check"), hook("post", "done"), hook("fail", "revert")
    before = hook("before vmm:migrate", "cache")
    after = hook("after vnm:pre", "probe")
    on_fail = hook("on-fail vmm:migrate", "uncache")
    planned = planning.plan_request(req, [pre, post, fail, before, after, on_fail])
    assert isinstance(planned, Plan)
    assert planned.pre_hooks == (tag(pre),)
    assert planned.post_hooks == (tag(post, rollback=True),)
    assert planned.fail_hooks == (tag(fail, rollback=True),)
    migrate = hardened.steps[2]
    assert [s.label for s in planned.steps] == [
        "tm:tm_premigrate", "vnm:pre", "hook:probe", "hook:cache", "vmm:migrate",
        "vnm:clean", "vnm:post", "tm:tm_postmigrate"]
    rollback = migrate.fail_actions + (tag(on_fail, rollback=True),)
    assert [f.label for f in rollback] == ["vnm:clean", "tm:tm_failmigrate", "hook:uncache"]
    assert planned.steps[4] == replace(migrate, fail_actions=rollback)
    # both hooks stand before vmm:migrate: they inherit its whole rollback, on-fail included
    assert planned.steps[3] == replace(tag(before), fail_actions=rollback)
    assert planned.steps[2] == replace(tag(after), fail_actions=rollback)
    untouched = [s for i, s in enumerate(planned.steps) if i not in (2, 3, 4)]
    assert untouched == [s for i, s in enumerate(hardened.steps) if i != 2]


def test_strict_mode_weaves_hooks_into_the_stock_plan(tmp_path: Path) -> None:
    """Hooks apply in strict mode too, around the unhardened plan."""
    req = request("MIGRATE", sample("MIGRATE", tmp_path), config(strict=True))
    hooks = [hook("before vmm:migrate", "cache")]
    stock = build(req)
    assert isinstance(stock, Plan)
    planned = planning.plan_request(req, hooks)
    assert planned == weave(stock, hooks, "kvm")
    assert isinstance(planned, Plan)
    # the before hook inherits the stock rollback of vmm:migrate, without the target clean
    assert planned.steps[2].label == "hook:cache"
    assert planned.steps[2].fail_actions == stock.steps[2].fail_actions
    assert [f.label for f in planned.steps[2].fail_actions] == ["tm:tm_failmigrate"]
    assert all(s.origin != ORIGIN for _, s in planned.walk())


@pytest.mark.parametrize("action", ONE_SHOT)
def test_one_call_action_with_hooks_is_a_hooked_call(action: str, tmp_path: Path) -> None:
    """A DirectCall with applicable hooks becomes a HookedCall around the same call."""
    req = request(action, sample(action, tmp_path), config())
    call = build(req)
    assert isinstance(call, DirectCall)
    pre, fail = hook("pre", "check"), hook("fail", "undo")
    planned = planning.plan_request(req, [pre, fail, hook("before vmm:poll", "never")])
    assert planned == HookedCall(call, (tag(pre),), (), (tag(fail, rollback=True),))


@pytest.mark.parametrize("scope", [
    {"hypervisors": ("lxc", "qemu")},
    {"actions": ("DEPLOY",)},
])
def test_hooks_out_of_scope_leave_the_plan_alone(tmp_path: Path, scope: Dict[str, Any]) -> None:
    """A hook for other hypervisors or actions changes nothing."""
    req = request("MIGRATE", sample("MIGRATE", tmp_path), config())
    hooks = [hook("pre", "check", **scope), hook("before vmm:migrate", "cache", **scope)]
    assert planning.plan_request(req, hooks) == planning.plan_request(req, [])


def test_hook_scope_matches_the_action_and_hypervisor(tmp_path: Path) -> None:
    """A hook scoped to ``MIGRATE`` on ``kvm`` is woven into MIGRATE on kvm."""
    req = request("MIGRATE", sample("MIGRATE", tmp_path), config())
    planned = planning.plan_request(req, [hook("pre", "check", hypervisors=("kvm",),
                                               actions=("MIGRATE",))])
    assert isinstance(planned, Plan) and [s.action for s in planned.pre_hooks] == ["check"]


# ---------------------------------------------------------------------------
# explain prints what the engine runs
# ---------------------------------------------------------------------------
def test_explain_and_engine_share_the_planning_function() -> None:
    """Both import the one ``plan_request``; neither has a planner of its own."""
    assert vars(explain)["plan_request"] is planning.plan_request
    assert vars(engine)["plan_request"] is planning.plan_request


ENGINE_HOOKS: List[Hook] = [hook("pre", "check"), hook("before vnm:pre", "prepare"),
                            hook("on-fail vmm:deploy", "undo"), hook("fail", "revert")]


@pytest.mark.parametrize("hooks", [[], ENGINE_HOOKS], ids=["no-hooks", "hooks"])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("action", [a for a in ACTIONS if a != "DEPLOY"])
def test_effective_plan_is_exactly_what_the_engine_plans(action: str, strict: bool,
                                                         hooks: List[Hook],
                                                         tmp_path: Path) -> None:
    """``explain.effective_plan`` equals ``plan_request`` on the engine's request."""
    cfg = config(strict)
    xml = sample(action, tmp_path)
    assert effective_plan(action, xml, cfg, hooks) == planning.plan_request(
        request(action, xml, cfg), hooks)


@pytest.mark.parametrize("strict", [False, True])
def test_effective_deploy_differs_only_by_the_unread_domain(tmp_path: Path,
                                                            strict: bool) -> None:
    """DEPLOY: explain does not read the deployment file; apart from the deploy step's
    stdin (a placeholder) the tree is the engine's."""
    cfg = config(strict)
    xml = sample("DEPLOY", tmp_path)
    shown = effective_plan("DEPLOY", xml, cfg, ENGINE_HOOKS)
    run = planning.plan_request(request("DEPLOY", xml, cfg), ENGINE_HOOKS)
    assert isinstance(shown, Plan) and isinstance(run, Plan)
    index = [s.label for s in run.steps].index("vmm:deploy")
    assert run.steps[index].stdin == "<domain type='kvm'/>\n"
    assert shown.steps[index].stdin == f"<contents of {deployment_file(tmp_path)}>"
    fixed = list(shown.steps)
    fixed[index] = replace(fixed[index], stdin=run.steps[index].stdin)
    assert replace(shown, steps=tuple(fixed)) == run

