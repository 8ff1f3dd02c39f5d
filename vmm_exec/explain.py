"""``one-vmm-exec explain``: print the effective step tree of an action.

Stock steps, their fail actions, the rollbacks default mode adds and every
hook (with the file it came from), as indented text or Graphviz ``dot``.
Nothing is run: plans are data.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from typing import Optional, Sequence, Tuple, Union

from vmm_exec.actions import ACTIONS
from vmm_exec.config import DriverConfig, Paths
from vmm_exec.hooks import Hook, HookError, hook_dirs, load_hooks
from vmm_exec.message import MessageError
from vmm_exec.message import decode as decode_message
from vmm_exec.planning import Effective, plan_request
from vmm_exec.request import ActionError, BuildRequest
from vmm_exec.steps import DirectCall, HookedCall, Immediate, Plan, Step

_DS = "host01:/var/lib/one//datastores/0/42"
_CONTEXT = f"CONTEXT ssh /var/lib/one/vms/42/context.sh {_DS}/disk.1 42 0"
SAMPLE_TM = {
    "DEPLOY": _CONTEXT,
    "RESTORE": _CONTEXT,
    "ATTACHNIC": _CONTEXT,
    "DETACHNIC": _CONTEXT,
    "UPDATECONF": _CONTEXT,
    "MIGRATE": "MIGRATE ssh host01 host02 /var/lib/one//datastores/0/42 42 0",
    "ATTACHDISK": f"CLONE qcow2 frontend:/var/lib/one//datastores/1/img {_DS}/disk.2 42 1",
    "DETACHDISK": f"DELETE qcow2 {_DS}/disk.2 42 1",
    "RESIZEDISK": f"RESIZE 2048 {_DS}/disk.0 42 0",
    "DISKSNAPSHOTCREATE": f"SNAP_CREATE qcow2 {_DS}/disk.0 0 42 1",
    "CLEANUP": f"DELETE ssh {_DS} 42 0",
    "BACKUP": f"BACKUP ssh {_DS} 0:1 one-42 - 42 0",
    "BACKUPCANCEL": f"BACKUP_CANCEL ssh {_DS} one-42 42 0",
}


def sample_message(action: str, hypervisor: str) -> str:
    """A representative request, so that every action can be explained without oned."""
    migr = "host02" if action in ("MIGRATE",) else ""
    tm = SAMPLE_TM.get(action, "")
    cdata = "<![CDATA[{}]]>".format
    return (
        "<VMM_DRIVER_ACTION_DATA><HOST>host01</HOST>"
        f"<MIGR_HOST>{migr}</MIGR_HOST><DEPLOY_ID>one-42</DEPLOY_ID>"
        "<LOCAL_DEPLOYMENT_FILE>/var/lib/one/vms/42/deployment.0</LOCAL_DEPLOYMENT_FILE>"
        "<REMOTE_DEPLOYMENT_FILE>/var/lib/one//datastores/0/42/deployment.0"
        "</REMOTE_DEPLOYMENT_FILE><CHECKPOINT_FILE>/var/lib/one//datastores/0/42/checkpoint"
        f"</CHECKPOINT_FILE><TM_COMMAND>{tm}</TM_COMMAND>"
        "<TM_COMMAND_ROLLBACK>DELETE qcow2 host01:/var/lib/one//datastores/0/42/disk.2 42 1"
        "</TM_COMMAND_ROLLBACK><DISK_TARGET_PATH>/var/lib/one//datastores/0/42</DISK_TARGET_PATH>"
        "<SECURITY_GROUP_ID>0</SECURITY_GROUP_ID><VIRTUAL_NETWORK_ID>0</VIRTUAL_NETWORK_ID>"
        "<VM><ID>42</ID><DEPLOY_ID>one-42</DEPLOY_ID><LCM_STATE>3</LCM_STATE><TEMPLATE>"
        f"<CONTEXT><TARGET>{cdata('hdb')}</TARGET></CONTEXT>"
        f"<DISK><ATTACH>YES</ATTACH><RESIZE>YES</RESIZE><DISK_SNAPSHOT_ACTIVE>YES"
        f"</DISK_SNAPSHOT_ACTIVE><DISK_ID>1</DISK_ID><SIZE>2048</SIZE><TARGET>vdb</TARGET>"
        f"<TM_MAD>qcow2</TM_MAD></DISK>"
        f"<NIC><ATTACH>YES</ATTACH><BRIDGE>br0</BRIDGE><MAC>02:00:0a:00:00:2a</MAC>"
        f"<MODEL>virtio</MODEL><TARGET>one-42-0</TARGET><VN_MAD>bridge</VN_MAD></NIC>"
        f"<SNAPSHOT><ACTIVE>YES</ACTIVE><SNAPSHOT_ID>0</SNAPSHOT_ID>"
        f"<HYPERVISOR_ID>snap-0</HYPERVISOR_ID></SNAPSHOT>"
        f"<QEMU_GA_EXEC><COMMAND>uname -a</COMMAND><STDIN></STDIN></QEMU_GA_EXEC>"
        "</TEMPLATE><HISTORY_RECORDS><HISTORY><HOSTNAME>host01</HOSTNAME>"
        f"<VM_MAD>{hypervisor}</VM_MAD></HISTORY></HISTORY_RECORDS></VM>"
        "<DATASTORE><ID>0</ID><DS_MAD>restic</DS_MAD></DATASTORE></VMM_DRIVER_ACTION_DATA>"
    )


def read_message(path: str) -> str:
    """An XML file, or the base64 payload oned sends."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return text if text.lstrip().startswith("<") else base64.b64decode(
        "".join(text.split())).decode("utf-8", "surrogateescape")


def effective_plan(action: str, xml: str, config: DriverConfig,
                   hooks: Sequence[Hook]) -> Union[Immediate, Effective]:
    """What the driver would run for this request (the engine plans with the same function)."""
    payload = base64.b64encode(xml.encode("utf-8", "surrogateescape")).decode()
    request = BuildRequest(action, "42", decode_message(payload), config, payload,
                           explain=True)
    return plan_request(request, hooks)


def _describe(step: Step) -> str:
    params = " ".join(str(p) for p in step.parameters)
    where = ("on the front-end" if step.is_local or step.driver in ("tm", "ds")
             else "on the migration target" if step.destination else "on the host")
    flags = [f for f, on in (("no_fail", step.no_fail), ("rollback", step.rollback)) if on]
    text = f"{step.label} {params}".rstrip() + f"  ({where}"
    if step.origin != "stock":
        text += f"; {step.origin}"
    if flags:
        text += "; " + ", ".join(flags)
    return text + ")"


def _hooks(plan: Effective) -> Tuple[Tuple[Step, ...], Tuple[Step, ...], Tuple[Step, ...]]:
    """(pre, post, fail) hooks of a plan; a bare one-call action has none."""
    if isinstance(plan, DirectCall):
        return (), (), ()
    return plan.pre_hooks, plan.post_hooks, plan.fail_hooks


def render_text(action: str, plan: Union[Immediate, Effective], config: DriverConfig) -> str:
    mode = "strict" if config.strict else "default"
    lines = [f"{action} on {config.hypervisor} ({mode} mode)"]

    def steps(items: Sequence[Step], indent: int) -> None:
        for n, s in enumerate(items, 1):
            lines.append(" " * indent + f"{n}. {_describe(s)}")
            if s.fail_actions:
                lines.append(" " * (indent + 3) + "on failure:")
                steps(s.fail_actions, indent + 6)

    if isinstance(plan, Immediate):
        lines.append(f"  answered at once: {plan.action} {plan.result} {plan.info}")
        return "\n".join(lines) + "\n"
    call = plan.call if isinstance(plan, HookedCall) else plan
    pre_hooks, post_hooks, fail_hooks = _hooks(plan)
    if pre_hooks:
        lines.append("  pre hooks:")
        steps(pre_hooks, 4)
    if isinstance(call, DirectCall):
        lines.append(f"  one-shot call: vmm:{call.script_name or call.script_action} on the host "
                     f"(answered with its output)")
    else:
        lines.append("  steps:")
        steps(call.steps, 4)
    for title, hooks in (("post hooks (after success)", post_hooks),
                         ("fail hooks (after failure and rollback)", fail_hooks)):
        if hooks:
            lines.append(f"  {title}:")
            steps(hooks, 4)
    return "\n".join(lines) + "\n"


def render_dot(action: str, plan: Union[Immediate, Effective], config: DriverConfig) -> str:
    out = [f'digraph "{action}" {{', "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
    counter = [0]

    def node(step: Step) -> str:
        counter[0] += 1
        name = f"s{counter[0]}"
        style = ("dashed" if step.rollback else "solid")
        color = "black" if step.origin == "stock" else (
            "darkorange" if step.origin.startswith("default") else "blue")
        label = _describe(step).replace('"', '\\"')
        out.append(f'  {name} [label="{label}", style={style}, color={color}];')
        return name

    def chain(items: Sequence[Step]) -> Optional[Tuple[str, str]]:
        first = prev = None
        for s in items:
            n = node(s)
            if prev:
                out.append(f"  {prev} -> {n};")
            first = first or n
            prev = n
            if s.fail_actions:
                sub = chain(s.fail_actions)
                if sub:
                    out.append(f'  {n} -> {sub[0]} [style=dashed, color=red, label="fails"];')
        return (first, prev) if first and prev else None

    if not isinstance(plan, Immediate):
        call = plan.call if isinstance(plan, HookedCall) else plan
        pre_hooks, post_hooks, fail_hooks = _hooks(plan)
        parts = [pre_hooks]
        if isinstance(call, Plan):
            parts.append(call.steps)
        parts += [post_hooks, fail_hooks]
        last = None
        for items in parts:
            c = chain(items)
            if c:
                if last:
                    out.append(f"  {last} -> {c[0]};")
                last = c[1]
    out.append("}")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="one-vmm-exec explain",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("action", help="protocol action, e.g. MIGRATE")
    parser.add_argument("--message", help="request XML (or its base64) to plan for")
    parser.add_argument("--hypervisor", default="kvm")
    parser.add_argument("--format", choices=("text", "dot"), default="text")
    parser.add_argument("--compat", choices=("strict", "default"), default="default")
    parser.add_argument("--hooks-dir", action="append", default=[])
    args = parser.parse_args(list(argv))
    action = args.action.upper()
    if action not in ACTIONS:
        print(f"unknown action {args.action!r}; known: {', '.join(ACTIONS)}", file=sys.stderr)
        return 2
    paths = Paths(os.environ.get("ONE_LOCATION") or None)
    config = DriverConfig(hypervisor=args.hypervisor, strict=args.compat == "strict",
                          paths=paths, hook_dirs=tuple(args.hooks_dir),
                          live_disk_snapshots=(f"{args.hypervisor}-qcow2",))
    try:
        hooks = load_hooks(hook_dirs(paths, config.hook_dirs))
        xml = read_message(args.message) if args.message else sample_message(
            action, args.hypervisor)
        plan = effective_plan(action, xml, config, hooks)
    except (HookError, MessageError, ActionError, OSError, ValueError) as exc:
        print(f"one-vmm-exec explain: {exc}", file=sys.stderr)
        return 1
    render = render_dot if args.format == "dot" else render_text
    sys.stdout.write(render(action, plan, config))
    return 0
