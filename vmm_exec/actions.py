"""The 27 VMM actions: message → plan, side by side with ``one_vmm_exec.rb``.

Each builder is a pure function of the request (no I/O except reading the
deployment file DEPLOY sends), returning a :class:`~vmm_exec.steps.Plan`
(steps), a :class:`~vmm_exec.steps.DirectCall` (one answered script call) or
an :class:`~vmm_exec.steps.Immediate` answer (a failed precondition, with
the original's message). Where the Ruby driver's thread would crash on a
missing element, an :class:`~vmm_exec.request.ActionError` says what is
missing instead.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional

from vmm_exec import rubyisms, xmlcompat
from vmm_exec.protocol import RESULT_FAILURE
from vmm_exec.quoting import bare, one_line, shellwords
from vmm_exec.request import ActionError, BuildRequest
from vmm_exec.steps import (
    CHECKPOINT_FILE,
    DEPLOY_ID,
    DEPLOY_INFO,
    DEST_HOST,
    DISK_TARGET_PATH,
    HOST,
    ActionPlan,
    DirectCall,
    Immediate,
    Plan,
    Step,
    step,
)


class Precondition(Exception):
    """``ensure_xpath`` and friends: the action is answered FAILURE with this text."""


def ensure_xpath(req: BuildRequest, xpath: str) -> str:
    """The element's stripped text, or the original's "Cannot perform ..., expecting ..."."""
    value = req.message.text(xpath)
    value = rubyisms.strip(value) if value is not None else ""
    if not value:
        raise Precondition(f"Cannot perform {req.action}, expecting {xpath}")
    return value


def required_text(req: BuildRequest, path: str) -> Optional[str]:
    """``elements[path].text`` where Ruby crashes on a missing element."""
    if req.message.element(path) is None:
        raise ActionError(f"Cannot perform {req.action}: the request has no {path} element")
    return req.message.text(path)


def text(req: BuildRequest, path: str) -> Optional[str]:
    return req.message.text(path)


def require_vm(req: BuildRequest) -> None:
    """``VmmAction.new`` needs the VM element (the Ruby thread dies without it)."""
    if req.message.element("VM") is None:
        raise ActionError(f"Cannot perform {req.action}: the request has no VM element")


def tm_words(command: str) -> List[str]:
    """``tm_command.strip.split(' ')``."""
    return rubyisms.split_words(command)


def plan(req: BuildRequest, main_action: str, steps: List[Step],
         extra_info: Optional[str] = None) -> Plan:
    # extra_info (UPDATESG's, UPDATENIC's id) starts the answer: one line only
    return Plan(req.action, main_action, tuple(steps),
                None if extra_info is None else one_line(extra_info))


def context_steps(req: BuildRequest) -> List[Step]:
    """The ``tm_context`` step some actions start with when TM_COMMAND is given."""
    tm_command = text(req, "TM_COMMAND")
    if tm_command:
        return [step("tm", "tm_context", *tm_words(tm_command))]
    return []


# ---------------------------------------------------------------------------
# DEPLOY
# ---------------------------------------------------------------------------
def deploy(req: BuildRequest) -> ActionPlan:
    require_vm(req)
    local_dfile = text(req, "LOCAL_DEPLOYMENT_FILE")
    if req.explain:
        domain = f"<contents of {local_dfile}>"
    elif not local_dfile or _file_empty(local_dfile):
        return Immediate(req.action, RESULT_FAILURE,
                         f"Cannot open deployment file {one_line(local_dfile or '')}")
    else:
        try:
            with open(local_dfile, encoding="utf-8", errors="surrogateescape",
                      newline="") as f:
                domain = f.read()
        except OSError as exc:
            raise ActionError(
                f"Cannot open deployment file {one_line(local_dfile)}: {exc.strerror}") from exc

    is_action_local = req.config.action_is_local("deploy")
    dfile = local_dfile if is_action_local else text(req, "REMOTE_DEPLOYMENT_FILE")
    if not dfile:
        raise ActionError("Cannot perform DEPLOY: the request has no REMOTE_DEPLOYMENT_FILE")
    vm_dir = rubyisms.dirname(dfile)

    return plan(req, "deploy", context_steps(req) + [
        # Execute pre-boot networking setup
        step("vnm", "pre"),
        # Make vm_dir, store vm.xml and ds.xml
        step("vmm", "/bin/mkdir -p", vm_dir, is_local=is_action_local, stdin="",
             no_extra_params=True),
        # (the path quoted where Ruby pasted it raw: same text for ordinary paths)
        step("vmm", f"/bin/cat - >{bare(vm_dir + '/vm.xml')}", is_local=is_action_local,
             stdin=req.message.element_xml("VM"), no_extra_params=True),
        step("vmm", f"/bin/cat - >{bare(vm_dir + '/ds.xml')}", is_local=is_action_local,
             stdin=req.message.element_xml("DATASTORE"), no_extra_params=True),
        # Boot the Virtual Machine
        step("vmm", "deploy", dfile, HOST, stdin=domain, fail_actions=[
            step("vnm", "clean", HOST),
        ]),
        # Execute post-boot networking setup
        step("vnm", "post", DEPLOY_INFO, HOST, fail_actions=[
            step("vmm", "cancel", DEPLOY_INFO, HOST),
            step("vnm", "clean", HOST),
        ]),
    ])


def _file_empty(path: str) -> bool:
    """Ruby ``File.empty?``: false for a missing file (which then fails to open)."""
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


# ---------------------------------------------------------------------------
# SHUTDOWN, CANCEL (destroy), REBOOT, RESET (restart), SAVE, RESTORE
# ---------------------------------------------------------------------------
def _destroy(signal: str) -> Callable[[BuildRequest], ActionPlan]:
    def build(req: BuildRequest) -> ActionPlan:
        require_vm(req)
        return plan(req, signal, [
            # Shutdown the Virtual Machine
            step("vmm", signal, DEPLOY_ID, HOST),
            # Execute networking clean up operations
            step("vnm", "clean", HOST),
        ])
    return build


def _restart(signal: str) -> Callable[[BuildRequest], ActionPlan]:
    def build(req: BuildRequest) -> ActionPlan:
        require_vm(req)
        return plan(req, signal, [step("vmm", signal, DEPLOY_ID, HOST)])
    return build


def save(req: BuildRequest) -> ActionPlan:
    require_vm(req)
    return plan(req, "save", [
        # Save the Virtual Machine state
        step("vmm", "save", DEPLOY_ID, CHECKPOINT_FILE, HOST),
        # Execute networking clean up operations
        step("vnm", "clean", HOST),
    ])


def restore(req: BuildRequest) -> ActionPlan:
    require_vm(req)
    return plan(req, "restore", context_steps(req) + [
        # Execute pre-boot networking setup
        step("vnm", "pre"),
        # Restore the Virtual Machine from checkpoint
        step("vmm", "restore", CHECKPOINT_FILE, HOST, DEPLOY_ID),
        # Execute post-boot networking setup
        step("vnm", "post", DEPLOY_ID, HOST, fail_actions=[
            step("vmm", "cancel", DEPLOY_ID, HOST),
        ]),
    ])


# ---------------------------------------------------------------------------
# MIGRATE
# ---------------------------------------------------------------------------
def migrate(req: BuildRequest) -> ActionPlan:
    require_vm(req)
    tm_command = text(req, "TM_COMMAND")
    if tm_command is None:
        raise ActionError("Cannot perform MIGRATE, expecting TM_COMMAND")
    vm = rubyisms.strict_encode64(req.message.element_xml("VM").encode("utf-8", "surrogateescape"))
    pre = rubyisms.split_words("PRE" + tm_command)
    post = rubyisms.split_words("POST" + tm_command)
    failed = rubyisms.split_words("FAIL" + tm_command)

    same_host = req.message.text("HOST") == req.message.text("MIGR_HOST")
    failmigrate = step("tm", "tm_failmigrate", *failed, stdin=vm, no_fail=True)

    steps = [
        # Execute a pre-migrate TM setup
        step("tm", "tm_premigrate", *pre, stdin=vm, fail_actions=[failmigrate]),
    ]
    if not same_host:
        # Execute pre-boot networking setup on migrating host
        steps.append(step("vnm", "pre", destination=True))
    # Migrate the Virtual Machine
    steps.append(step("vmm", "migrate", DEPLOY_ID, DEST_HOST, HOST,
                      fail_actions=[failmigrate]))
    if not same_host:
        steps += [
            # Execute networking clean up operations
            # NOTE: VM is now in the new host. If we fail from now on, oned will
            # assume that the VM is in the previous host but it is in fact
            # migrated. Log errors will be shown in vm.log
            step("vnm", "clean", HOST, no_fail=True),
            # Execute post-boot networking setup on migrating host
            step("vnm", "post", DEPLOY_ID, HOST, destination=True, no_fail=True),
        ]
    steps.append(step("tm", "tm_postmigrate", *post, stdin=vm, no_fail=True))
    return plan(req, "migrate", steps)


# ---------------------------------------------------------------------------
# POLL, SNAPSHOTCREATE, SNAPSHOTDELETE, RESIZE, EXEC, EXEC_CANCEL (answered calls)
# ---------------------------------------------------------------------------
def poll(req: BuildRequest) -> ActionPlan:
    host = required_text(req, "HOST")
    deploy_id = required_text(req, "DEPLOY_ID")
    return DirectCall(req.action, "poll", (deploy_id or "", host or ""), host,
                      req.message.xml())


def snapshot_create(req: BuildRequest) -> ActionPlan:
    host = required_text(req, "HOST")
    deploy_id = required_text(req, "DEPLOY_ID")
    snap_id = rubyisms.to_i(
        required_text(req, "VM/TEMPLATE/SNAPSHOT[ACTIVE='YES']/SNAPSHOT_ID") or "")
    return DirectCall(req.action, "snapshot_create", (deploy_id or "", rubyisms.decimal(snap_id)),
                      host, req.message.xml(), script_name="snapshot_create")


def snapshot_revert(req: BuildRequest) -> ActionPlan:
    snapshot_name = required_text(req, "VM/TEMPLATE/SNAPSHOT[ACTIVE='YES']/HYPERVISOR_ID")
    require_vm(req)
    return plan(req, "snapshot_revert", [
        # Run the snapshot_revert action script
        step("vmm", "SNAPSHOTREVERT", DEPLOY_ID, snapshot_name or "",
             script_name="snapshot_revert"),
        # Execute post-boot networking setup
        step("vnm", "post", DEPLOY_ID, HOST, skip=["elastic"]),
    ])


def snapshot_delete(req: BuildRequest) -> ActionPlan:
    host = required_text(req, "HOST")
    deploy_id = required_text(req, "DEPLOY_ID")
    snapshot_name = required_text(req, "VM/TEMPLATE/SNAPSHOT[ACTIVE='YES']/HYPERVISOR_ID")
    return DirectCall(req.action, "snapshot_delete", (deploy_id or "", snapshot_name or ""),
                      host, req.message.xml(), script_name="snapshot_delete")


def resize(req: BuildRequest) -> ActionPlan:
    host = required_text(req, "HOST")
    deploy_id = required_text(req, "DEPLOY_ID")
    return DirectCall(req.action, "resize", (deploy_id or "",), host, req.message.xml(),
                      script_name="resize")


def exec_command(req: BuildRequest) -> ActionPlan:
    host = required_text(req, "HOST")
    cmd = required_text(req, "VM/TEMPLATE/QEMU_GA_EXEC/COMMAND")
    cmd_stdin = required_text(req, "VM/TEMPLATE/QEMU_GA_EXEC/STDIN")
    params = " ".join([bare(req.msg_id), bare(host or ""), shellwords(cmd or ""),
                       bare(cmd_stdin or "")])
    return DirectCall(req.action, "exec", (), host, req.message.xml(), script_name="exec",
                      no_extra_params=True, raw_parameters=params)


def exec_cancel(req: BuildRequest) -> ActionPlan:
    host = required_text(req, "HOST")
    return DirectCall(req.action, "exec_cancel", (), host, req.message.xml(),
                      script_name="exec_cancel", raw_parameters="")


# ---------------------------------------------------------------------------
# ATTACHDISK, DETACHDISK, RESIZEDISK, DISKSNAPSHOTCREATE
# ---------------------------------------------------------------------------
def _target_index(target: str) -> int:
    return rubyisms.first_byte_signed(target.lower()[-1]) - 97


def attach_disk(req: BuildRequest) -> ActionPlan:
    tm_command = ensure_xpath(req, "TM_COMMAND")
    tm_rollback = required_text(req, "TM_COMMAND_ROLLBACK")
    if tm_rollback is None:
        raise ActionError("Cannot perform ATTACHDISK, expecting TM_COMMAND_ROLLBACK")
    tm_rollback = rubyisms.strip(tm_rollback)
    target = ensure_xpath(req, "VM/TEMPLATE/DISK[ATTACH='YES']/TARGET")
    target_index = _target_index(target)
    require_vm(req)
    return plan(req, "attach_disk", [
        # Perform a PROLOG on the disk
        step("tm", "tm_attach", *rubyisms.split_words(tm_command)),
        # Run the attach vmm script
        step("vmm", "attach_disk", DEPLOY_ID, DISK_TARGET_PATH, target, str(target_index),
             req.payload, fail_actions=[
                 step("tm", "tm_detach", *rubyisms.split_words(tm_rollback)),
             ]),
    ])


def detach_disk(req: BuildRequest) -> ActionPlan:
    tm_command = ensure_xpath(req, "TM_COMMAND")
    target = ensure_xpath(req, "VM/TEMPLATE/DISK[ATTACH='YES']/TARGET")
    target_index = _target_index(target)
    require_vm(req)
    return plan(req, "detach_disk", [
        # Run the detach vmm script
        step("vmm", "detach_disk", DEPLOY_ID, DISK_TARGET_PATH, target, str(target_index)),
        # Perform an EPILOG on the disk
        step("tm", "tm_detach", *rubyisms.split_words(tm_command)),
    ])


def resize_disk(req: BuildRequest) -> ActionPlan:
    tm_command = ensure_xpath(req, "TM_COMMAND")
    size = ensure_xpath(req, "VM/TEMPLATE/DISK[RESIZE='YES']/SIZE")
    disk_id = ensure_xpath(req, "VM/TEMPLATE/DISK[RESIZE='YES']/DISK_ID")
    require_vm(req)
    return plan(req, "resize_disk", [
        # Perform the resize command
        step("tm", "tm_resize", *rubyisms.split_words(tm_command)),
        # Run the attach vmm script
        step("vmm", "resize_disk", DEPLOY_ID, disk_id, size, req.payload, HOST),
    ])


def disk_snapshot_create(req: BuildRequest) -> ActionPlan:
    # Check that live snapshot is supported
    vmm_driver = ensure_xpath(req, "VM/HISTORY_RECORDS/HISTORY/VM_MAD")
    tm_driver = ensure_xpath(req, "VM/TEMPLATE/DISK[DISK_SNAPSHOT_ACTIVE='YES']/TM_MAD")
    lvm_thin = text(req, "VM/TEMPLATE/DISK[DISK_SNAPSHOT_ACTIVE='YES']/LVM_THIN_ENABLE")
    if tm_driver == "fs_lvm_ssh" and lvm_thin is not None and \
            rubyisms.strip(lvm_thin).lower() == "yes":
        tm_driver = "lvm_thin"
    if f"{vmm_driver}-{tm_driver}" not in req.config.live_disk_snapshots:
        raise Precondition(f"Cannot perform a live {req.action} operation")

    # Get TM command
    words = rubyisms.split_words(ensure_xpath(req, "TM_COMMAND"))
    if "." in words[0]:
        words[0] = words[0].replace(".", "_LIVE.", 1)
    else:
        words[0] += "_LIVE"
    require_vm(req)
    return plan(req, "disk_snapshot_create", [
        step("tm", "tm_snap_create_live", *words),
    ])


# ---------------------------------------------------------------------------
# CLEANUP
# ---------------------------------------------------------------------------
def cleanup(req: BuildRequest) -> ActionPlan:
    tm_command = required_text(req, "TM_COMMAND")
    mhost = required_text(req, "MIGR_HOST")
    deploy_id = required_text(req, "DEPLOY_ID")
    require_vm(req)
    steps: List[Step] = []

    # Cancel the VM at host (only if we have a valid deploy-id)
    if deploy_id:
        steps.append(step("vmm", "cancel", DEPLOY_ID, HOST, no_fail=True))
    steps.append(step("vnm", "clean", HOST, no_fail=True))

    # Cancel the VM at the previous host (in case of migration)
    if mhost:
        steps.append(step("vmm", "cancel", DEPLOY_ID, DEST_HOST, destination=True,
                          no_fail=True))
        steps.append(step("vnm", "clean", HOST, destination=True, no_fail=True))

    # Cleans VM disk images and directory (an empty TM_COMMAND element: nothing to delete)
    for line in rubyisms.each_line(tm_command or ""):
        line = rubyisms.strip(line)
        if line:
            steps.append(step("tm", "tm_delete", *rubyisms.split_words(line), no_fail=True))
    return plan(req, "cleanup", steps)


# ---------------------------------------------------------------------------
# ATTACHNIC, DETACHNIC, UPDATECONF, UPDATESG, UPDATENIC
# ---------------------------------------------------------------------------
def _nic_template(req: BuildRequest) -> tuple[str, bool]:
    for kind in ("NIC", "PCI"):
        path = f"VM/TEMPLATE/{kind}[ATTACH='YES']"
        if req.message.element(path) is not None:
            return path, False
    return "VM/TEMPLATE/NIC_ALIAS[ATTACH='YES']", True


def _reconfigure_steps(req: BuildRequest, target_device: Optional[str],
                       target_path: Optional[str],
                       prereconfigure_fail: Optional[List[Step]] = None) -> List[Step]:
    steps = [step("vmm", "prereconfigure", DEPLOY_ID, target_device or "",
                  fail_actions=prereconfigure_fail or [])]
    steps += context_steps(req)
    steps.append(step("vmm", "reconfigure", DEPLOY_ID, target_device or "", target_path or ""))
    return steps


def _nic_value(req: BuildRequest, path: str) -> str:
    """``elem.text.strip if elem`` of ``attach_nic``: an absent element is nil, which
    reaches the script as an empty argument (a PCI NIC has no TARGET, an alias no
    TARGET or MODEL); an element without text raised NoMethodError, which the
    original rescued into its "Missing ..." answer."""
    if req.message.element(path) is None:
        return ""
    value = text(req, path)
    if value is None:
        raise Precondition("Missing VN_MAD, BRIDGE, TARGET or MAC in VM NIC")
    return rubyisms.strip(value)


def attach_nic(req: BuildRequest) -> ActionPlan:
    """``attach_nic``: the device is the NIC, else the PCI passthrough NIC, else the
    NIC alias marked ATTACH (none of them marked: the alias steps with empty values)."""
    target_path = text(req, "DISK_TARGET_PATH")
    target_device = text(req, "VM/TEMPLATE/CONTEXT/TARGET")
    base, nic_alias = _nic_template(req)
    values = {name: _nic_value(req, f"{base}/{name}")
              for name in ("BRIDGE", "MAC", "TARGET", "VN_MAD")}
    model = text(req, f"{base}/MODEL")
    model = "-" if model is None else rubyisms.strip(model)
    mac = values["MAC"]
    require_vm(req)

    if not nic_alias:
        steps = [
            # Execute pre-attach networking setup
            step("vnm", "pre"),
            # Attach the new NIC
            step("vmm", "attach_nic", DEPLOY_ID, mac, values["BRIDGE"], model,
                 values["VN_MAD"], values["TARGET"]),
            # Execute post-boot networking setup
            step("vnm", "post", DEPLOY_ID, HOST, fail_actions=[
                step("vmm", "detach_nic", DEPLOY_ID, mac),
            ]),
        ]
    else:
        steps = [
            # Execute pre-attach networking setup
            step("vnm", "pre"),
            # Execute post-boot networking setup
            step("vnm", "post", DEPLOY_ID, HOST),
        ]
    steps += _reconfigure_steps(req, target_device, target_path, [
        step("vmm", "detach_nic", DEPLOY_ID, mac),
    ])
    return plan(req, "attach_nic", steps)


def detach_nic(req: BuildRequest) -> ActionPlan:
    target_path = text(req, "DISK_TARGET_PATH")
    target_device = text(req, "VM/TEMPLATE/CONTEXT/TARGET")
    base, nic_alias = _nic_template(req)
    mac = text(req, f"{base}/MAC")
    if mac is None:
        raise Precondition("Error in DETACHNIC, MAC needed in NIC")
    mac = rubyisms.strip(mac)
    require_vm(req)

    if not nic_alias:
        steps = [
            # Detach the NIC
            step("vmm", "detach_nic", DEPLOY_ID, mac),
            # Clean networking setup
            step("vnm", "clean", HOST),
        ]
    else:
        steps = [step("vnm", "clean", HOST)]
    steps += _reconfigure_steps(req, target_device, target_path)
    return plan(req, "detach_nic", steps)


def update_conf(req: BuildRequest) -> ActionPlan:
    target_path = text(req, "DISK_TARGET_PATH")
    target_device = text(req, "VM/TEMPLATE/CONTEXT/TARGET")
    require_vm(req)
    return plan(req, "update_conf", _reconfigure_steps(req, target_device, target_path))


def update_sg(req: BuildRequest) -> ActionPlan:
    sg_id = required_text(req, "SECURITY_GROUP_ID")
    require_vm(req)
    return plan(req, "update_sg", [
        # Execute update networking action
        step("vnm", "update_sg", DEPLOY_ID),
    ], extra_info=sg_id)


def update_nic(req: BuildRequest) -> ActionPlan:
    vn_id = required_text(req, "VIRTUAL_NETWORK_ID")
    require_vm(req)
    vm_b64 = rubyisms.encode64(req.message.element_xml("VM").encode("utf-8", "surrogateescape"))
    return plan(req, "update_nic", [
        # Execute update networking action
        step("vnm", "update_nic", DEPLOY_ID, vn_id or "", stdin=vm_b64),
    ], extra_info=vn_id)


# ---------------------------------------------------------------------------
# BACKUP, BACKUPCANCEL
# ---------------------------------------------------------------------------
def backup(req: BuildRequest) -> ActionPlan:
    require_vm(req)
    tm_command = ensure_xpath(req, "TM_COMMAND")
    bck_mad = ensure_xpath(req, "DATASTORE/DS_MAD")
    pre_tm = rubyisms.split_words(tm_command)
    post_tm = list(pre_tm)
    pre_tm[0] = f"PRE{pre_tm[0]}"
    post_tm[0] = f"POST{post_tm[0]}"
    pre_name, post_name = "prebackup", "postbackup"

    state = required_text(req, "/VMM_DRIVER_ACTION_DATA/VM/LCM_STATE")
    if state == "69":
        pre_tm[0] += "_LIVE"
        post_tm[0] += "_LIVE"
        pre_name, post_name = "prebackup_live", "postbackup_live"
    if len(pre_tm) < 2:
        raise ActionError(f"Cannot perform BACKUP: malformed TM_COMMAND {tm_command!r}")
    ds_command = ["BACKUP", bck_mad] + pre_tm[2:]
    vm_xml = req.message.element_xml("/VMM_DRIVER_ACTION_DATA/VM")
    ds_xml = req.message.element_xml("DATASTORE")
    ds_stdin = f"<DS_DRIVER_ACTION_DATA>\n  {ds_xml}\n  {vm_xml}\n</DS_DRIVER_ACTION_DATA>\n"
    # after a failure, postbackup learns it from a BACKUP_RESULT element appended to the VM
    failed_vm_xml = _with_child(vm_xml, "BACKUP_RESULT", "FAILURE")

    # Cleanup backup and tmp files
    cleanup_steps = [step("tm", post_name, *post_tm, stdin=vm_xml)]
    fail_cleanup_steps = [step("tm", post_name, *post_tm, stdin=failed_vm_xml)]
    return plan(req, "backup", [
        # Generate backup files for VM disks
        step("tm", pre_name, *pre_tm, stdin=vm_xml, fail_actions=fail_cleanup_steps),
        # Upload backup files to repo
        step("ds", "backup", *ds_command, stdin=ds_stdin, fail_actions=fail_cleanup_steps),
    ] + cleanup_steps)


def _with_child(element_xml: str, name: str, value: str) -> str:
    """``element.add_element(name).text = value`` on a copy, serialised the REXML way."""
    root = xmlcompat.parse(element_xml).root
    if root is None:
        raise ActionError(f"cannot add {name}: no element")
    child = root.add_element(name)
    child.children.append(xmlcompat.TextNode.from_value(value))
    child.children[-1].parent = child
    written = root.to_s()
    xmlcompat.dispose(root)
    return written


def backup_cancel(req: BuildRequest) -> ActionPlan:
    require_vm(req)
    tm_command = ensure_xpath(req, "TM_COMMAND")
    bck_mad = ensure_xpath(req, "DATASTORE/DS_MAD")
    tm = rubyisms.split_words(tm_command)
    if len(tm) < 2:  # Ruby's concat(tm[2..-1]) of nil raised: the thread died unanswered
        raise ActionError(f"Cannot perform BACKUPCANCEL: malformed TM_COMMAND {tm_command!r}")
    ds_command = ["BACKUP_CANCEL", bck_mad] + tm[2:]
    vm_xml = req.message.element_xml("/VMM_DRIVER_ACTION_DATA/VM")
    return plan(req, "backup_cancel", [
        step("ds", "backup_cancel", *ds_command, stdin=vm_xml),
    ])


# ---------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------
ACTIONS: Dict[str, Callable[[BuildRequest], ActionPlan]] = {
    "DEPLOY": deploy,
    "SHUTDOWN": _destroy("shutdown"),
    "CANCEL": _destroy("cancel"),
    "SAVE": save,
    "RESTORE": restore,
    "MIGRATE": migrate,
    "POLL": poll,
    "REBOOT": _restart("reboot"),
    "RESET": _restart("reset"),
    "ATTACHDISK": attach_disk,
    "DETACHDISK": detach_disk,
    "SNAPSHOTCREATE": snapshot_create,
    "SNAPSHOTREVERT": snapshot_revert,
    "SNAPSHOTDELETE": snapshot_delete,
    "CLEANUP": cleanup,
    "ATTACHNIC": attach_nic,
    "DETACHNIC": detach_nic,
    "DISKSNAPSHOTCREATE": disk_snapshot_create,
    "RESIZEDISK": resize_disk,
    "UPDATESG": update_sg,
    "UPDATECONF": update_conf,
    "RESIZE": resize,
    "BACKUP": backup,
    "UPDATENIC": update_nic,
    "BACKUPCANCEL": backup_cancel,
    "EXEC": exec_command,
    "EXEC_CANCEL": exec_cancel,
}


def build(req: BuildRequest) -> ActionPlan:
    """The plan for a request (the action name must be in :data:`ACTIONS`)."""
    try:
        return ACTIONS[req.action](req)
    except Precondition as exc:
        return Immediate(req.action, RESULT_FAILURE, str(exc))
