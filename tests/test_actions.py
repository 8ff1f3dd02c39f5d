"""The 27 action builders: message -> Plan / DirectCall / Immediate, as ``one_vmm_exec.rb``.

Every test builds a request the way the driver does (base64 of the XML, decoded by
``vmm_exec.message.decode``) and pins the stock step list (what strict mode runs):
steps in the Ruby order with their parameters, fail actions, ``no_fail`` and
``destination`` flags, the preconditions with the original failure texts, and
:class:`~vmm_exec.request.ActionError` where the Ruby thread would have crashed.
"""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from xml.sax.saxutils import escape

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmm_exec import rubyisms
from vmm_exec.actions import ACTIONS, build
from vmm_exec.config import DriverConfig, Paths
from vmm_exec.message import decode
from vmm_exec.protocol import RESULT_FAILURE
from vmm_exec.request import ActionError, BuildRequest
from vmm_exec.steps import (
    CHECKPOINT_FILE,
    DEPLOY_ID,
    DEPLOY_INFO,
    DEST_HOST,
    DISK_TARGET_PATH,
    HOST,
    DirectCall,
    Immediate,
    Plan,
    Step,
    step,
)

DS = "host01:/var/lib/one//datastores/0/42"
CONTEXT_TM = f"CONTEXT ssh /var/lib/one/vms/42/context.sh {DS}/disk.1 42 0"
MIGRATE_TM = "MIGRATE ssh host01 host02 /var/lib/one//datastores/0/42 42 0"
MAC = "02:00:0a:00:00:2a"
CONTEXT = "<CONTEXT><TARGET><![CDATA[hdb]]></TARGET></CONTEXT>"
NIC = ("<NIC><ATTACH>YES</ATTACH><BRIDGE>br0</BRIDGE><MAC>02:00:0a:00:00:2a</MAC>"
       "<MODEL>virtio</MODEL><TARGET>one-42-0</TARGET><VN_MAD>bridge</VN_MAD></NIC>")
DISK = ("<DISK><ATTACH>YES</ATTACH><RESIZE>YES</RESIZE><DISK_SNAPSHOT_ACTIVE>YES"
        "</DISK_SNAPSHOT_ACTIVE><DISK_ID>1</DISK_ID><SIZE>2048</SIZE><TARGET>vdc</TARGET>"
        "<TM_MAD>qcow2</TM_MAD></DISK>")
DATASTORE = "<DATASTORE><ID>0</ID><DS_MAD>restic</DS_MAD></DATASTORE>"

TOP_DEFAULTS: Dict[str, Optional[str]] = {
    "HOST": "host01",
    "MIGR_HOST": "",
    "DEPLOY_ID": "one-42",
    "LOCAL_DEPLOYMENT_FILE": "/var/lib/one/vms/42/deployment.0",
    "REMOTE_DEPLOYMENT_FILE": "/var/lib/one//datastores/0/42/deployment.0",
    "CHECKPOINT_FILE": "/var/lib/one//datastores/0/42/checkpoint",
    "TM_COMMAND": "",
    "TM_COMMAND_ROLLBACK": "",
    "DISK_TARGET_PATH": "/var/lib/one//datastores/0/42",
}


def message_xml(template: str = "", *, lcm_state: Optional[str] = "3",
                vm_mad: Optional[str] = "kvm", vm: bool = True, extra: str = "",
                datastore: str = DATASTORE, fields: Optional[Dict[str, Optional[str]]] = None,
                **top: Optional[str]) -> str:
    """A VMM_DRIVER_ACTION_DATA document; a top-level element given as None is left out
    (``fields`` gives top-level elements by name, like the keyword arguments)."""
    values = dict(TOP_DEFAULTS, **(fields or {}), **top)
    head = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in values.items() if v is not None)
    lcm = "" if lcm_state is None else f"<LCM_STATE>{lcm_state}</LCM_STATE>"
    mad = "" if vm_mad is None else f"<VM_MAD>{vm_mad}</VM_MAD>"
    vm_xml = (f"<VM><ID>42</ID><DEPLOY_ID>one-42</DEPLOY_ID>{lcm}<TEMPLATE>{template}</TEMPLATE>"
              f"<HISTORY_RECORDS><HISTORY><HOSTNAME>host01</HOSTNAME>{mad}</HISTORY>"
              "</HISTORY_RECORDS></VM>") if vm else ""
    return f"<VMM_DRIVER_ACTION_DATA>{head}{extra}{vm_xml}{datastore}</VMM_DRIVER_ACTION_DATA>"


def config(**options: object) -> DriverConfig:
    options.setdefault("live_disk_snapshots", ("kvm-qcow2",))
    return DriverConfig(hypervisor="kvm", paths=Paths(None), **options)  # type: ignore[arg-type]


def request(action: str, xml: str, cfg: Optional[DriverConfig] = None,
            msg_id: str = "42") -> BuildRequest:
    """The request as the engine builds it: base64 payload, decoded once."""
    payload = base64.b64encode(xml.encode("utf-8")).decode("ascii")
    return BuildRequest(action, msg_id, decode(payload), cfg or config(), payload)


def plan_of(action: str, xml: str, cfg: Optional[DriverConfig] = None) -> Plan:
    built = build(request(action, xml, cfg))
    assert isinstance(built, Plan), built
    return built


def immediate(action: str, info: str) -> Immediate:
    return Immediate(action, RESULT_FAILURE, info)


def deployment_file(tmp_path: Path, content: bytes = b"<domain type='kvm'>\r\n</domain>\n"
                    ) -> Path:
    path = tmp_path / "vms" / "42" / "deployment.0"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------
# the catalogue and the Ruby order of every stock list
# ---------------------------------------------------------------------------
def test_catalogue_has_the_27_protocol_actions() -> None:
    """Exactly the actions oned sends to a VMM driver."""
    assert sorted(ACTIONS) == sorted([
        "DEPLOY", "SHUTDOWN", "CANCEL", "SAVE", "RESTORE", "MIGRATE", "POLL", "REBOOT",
        "RESET", "ATTACHDISK", "DETACHDISK", "SNAPSHOTCREATE", "SNAPSHOTREVERT",
        "SNAPSHOTDELETE", "CLEANUP", "ATTACHNIC", "DETACHNIC", "DISKSNAPSHOTCREATE",
        "RESIZEDISK", "UPDATESG", "UPDATECONF", "RESIZE", "BACKUP", "UPDATENIC",
        "BACKUPCANCEL", "EXEC", "EXEC_CANCEL"])


Shape = Tuple[str, ...]
# (label[@dest][!no_fail], then the fail actions' labels after "->"), in the Ruby order.
RUBY_ORDER: Dict[str, List[Shape]] = {
    "DEPLOY": [("tm:tm_context",), ("vnm:pre",), ("vmm:/bin/mkdir -p",),
               ("vmm:/bin/cat - >/var/lib/one//datastores/0/42/vm.xml",),
               ("vmm:/bin/cat - >/var/lib/one//datastores/0/42/ds.xml",),
               ("vmm:deploy", "->", "vnm:clean"),
               ("vnm:post", "->", "vmm:cancel", "vnm:clean")],
    "SHUTDOWN": [("vmm:shutdown",), ("vnm:clean",)],
    "CANCEL": [("vmm:cancel",), ("vnm:clean",)],
    "SAVE": [("vmm:save",), ("vnm:clean",)],
    "RESTORE": [("tm:tm_context",), ("vnm:pre",), ("vmm:restore",),
                ("vnm:post", "->", "vmm:cancel")],
    "MIGRATE": [("tm:tm_premigrate", "->", "tm:tm_failmigrate!"), ("vnm:pre@",),
                ("vmm:migrate", "->", "tm:tm_failmigrate!"), ("vnm:clean!",),
                ("vnm:post@!",), ("tm:tm_postmigrate!",)],
    "REBOOT": [("vmm:reboot",)],
    "RESET": [("vmm:reset",)],
    "ATTACHDISK": [("tm:tm_attach",), ("vmm:attach_disk", "->", "tm:tm_detach")],
    "DETACHDISK": [("vmm:detach_disk",), ("tm:tm_detach",)],
    "SNAPSHOTREVERT": [("vmm:SNAPSHOTREVERT",), ("vnm:post",)],
    "CLEANUP": [("vmm:cancel!",), ("vnm:clean!",), ("tm:tm_delete!",)],
    "ATTACHNIC": [("vnm:pre",), ("vmm:attach_nic",), ("vnm:post", "->", "vmm:detach_nic"),
                  ("vmm:prereconfigure", "->", "vmm:detach_nic"), ("tm:tm_context",),
                  ("vmm:reconfigure",)],
    "DETACHNIC": [("vmm:detach_nic",), ("vnm:clean",), ("vmm:prereconfigure",),
                  ("tm:tm_context",), ("vmm:reconfigure",)],
    "DISKSNAPSHOTCREATE": [("tm:tm_snap_create_live",)],
    "RESIZEDISK": [("tm:tm_resize",), ("vmm:resize_disk",)],
    "UPDATESG": [("vnm:update_sg",)],
    "UPDATECONF": [("vmm:prereconfigure",), ("tm:tm_context",), ("vmm:reconfigure",)],
    "BACKUP": [("tm:prebackup", "->", "tm:postbackup"), ("ds:backup", "->", "tm:postbackup"),
               ("tm:postbackup",)],
    "UPDATENIC": [("vnm:update_nic",)],
    "BACKUPCANCEL": [("ds:backup_cancel",)],
}
DIRECT = {"POLL": "poll", "SNAPSHOTCREATE": "snapshot_create",
          "SNAPSHOTDELETE": "snapshot_delete", "RESIZE": "resize", "EXEC": "exec",
          "EXEC_CANCEL": "exec_cancel"}


def shape(s: Step) -> Shape:
    def mark(x: Step) -> str:
        return x.label + ("@" if x.destination else "") + ("!" if x.no_fail else "")
    fail = ("->", *(mark(f) for f in s.fail_actions)) if s.fail_actions else ()
    return (mark(s), *fail)


def sample(action: str, tmp_path: Path) -> str:
    """A message every action accepts (the explain sample, with a real deployment file)."""
    from vmm_exec.explain import sample_message
    xml = sample_message(action, "kvm")
    return xml.replace("/var/lib/one/vms/42/deployment.0", str(deployment_file(tmp_path)))


@pytest.mark.parametrize("action", list(ACTIONS))
def test_stock_lists_follow_the_ruby_order(action: str, tmp_path: Path) -> None:
    """Each action's steps (and nested fail actions) in the order of one_vmm_exec.rb;
    the one-call actions are a DirectCall of their script."""
    built = build(request(action, sample(action, tmp_path)))
    if action in DIRECT:
        assert isinstance(built, DirectCall)
        assert (built.action, built.script_name or built.script_action) == (action,
                                                                            DIRECT[action])
        return
    assert isinstance(built, Plan)
    assert built.action == action
    assert [shape(s) for s in built.steps] == RUBY_ORDER[action]
    assert all(s.origin == "stock" and not s.rollback for _, s in built.walk())


@pytest.mark.parametrize("action", sorted(set(RUBY_ORDER) - {
    # these check their preconditions (answered at once) before the VM
    "ATTACHDISK", "DETACHDISK", "RESIZEDISK", "DISKSNAPSHOTCREATE", "SNAPSHOTREVERT",
    "ATTACHNIC", "DETACHNIC"}))
def test_actions_without_a_vm_element_are_action_errors(action: str, tmp_path: Path) -> None:
    """``VmmAction.new`` crashed the Ruby thread without a VM element: now a FAILURE reason."""
    xml = message_xml(NIC + CONTEXT, vm=False, TM_COMMAND=MIGRATE_TM,
                      LOCAL_DEPLOYMENT_FILE=str(deployment_file(tmp_path)),
                      SECURITY_GROUP_ID="0", VIRTUAL_NETWORK_ID="0")
    with pytest.raises(ActionError, match=f"^Cannot perform {action}"):
        build(request(action, xml))


# ---------------------------------------------------------------------------
# DEPLOY
# ---------------------------------------------------------------------------
def test_deploy_plan_reads_the_deployment_file(tmp_path: Path) -> None:
    """DEPLOY: tm_context, vnm pre, mkdir/cat of vm.xml and ds.xml, deploy with the domain
    file's exact bytes on stdin (CRLF kept), vnm post with its rollback."""
    dfile = deployment_file(tmp_path)
    xml = message_xml(NIC, TM_COMMAND=CONTEXT_TM, LOCAL_DEPLOYMENT_FILE=str(dfile))
    req = request("DEPLOY", xml)
    vm_dir = "/var/lib/one//datastores/0/42"
    assert build(req) == Plan("DEPLOY", "deploy", (
        step("tm", "tm_context", *CONTEXT_TM.split()),
        step("vnm", "pre"),
        step("vmm", "/bin/mkdir -p", vm_dir, is_local=False, stdin="", no_extra_params=True),
        step("vmm", f"/bin/cat - >{vm_dir}/vm.xml", is_local=False,
             stdin=req.message.element_xml("VM"), no_extra_params=True),
        step("vmm", f"/bin/cat - >{vm_dir}/ds.xml", is_local=False, stdin=DATASTORE,
             no_extra_params=True),
        step("vmm", "deploy", f"{vm_dir}/deployment.0", HOST,
             stdin="<domain type='kvm'>\r\n</domain>\n",
             fail_actions=[step("vnm", "clean", HOST)]),
        step("vnm", "post", DEPLOY_INFO, HOST, fail_actions=[
            step("vmm", "cancel", DEPLOY_INFO, HOST), step("vnm", "clean", HOST)]),
    ))
    assert req.message.element_xml("VM").startswith("<VM><ID>42</ID>")


def test_deploy_without_tm_command_has_no_context_step(tmp_path: Path) -> None:
    """No TM_COMMAND (no context disk): the list starts with ``vnm pre``."""
    xml = message_xml(LOCAL_DEPLOYMENT_FILE=str(deployment_file(tmp_path)))
    assert plan_of("DEPLOY", xml).steps[0] == step("vnm", "pre")


def test_deploy_empty_deployment_file_is_answered_at_once(tmp_path: Path) -> None:
    """``File.zero?``: the original's ``Cannot open deployment file PATH``."""
    dfile = deployment_file(tmp_path, b"")
    xml = message_xml(LOCAL_DEPLOYMENT_FILE=str(dfile))
    assert build(request("DEPLOY", xml)) == immediate(
        "DEPLOY", f"Cannot open deployment file {dfile}")


def test_deploy_without_local_deployment_file_is_answered_at_once() -> None:
    """An empty LOCAL_DEPLOYMENT_FILE: Ruby interpolates nil, leaving a trailing space."""
    assert build(request("DEPLOY", message_xml(LOCAL_DEPLOYMENT_FILE=""))) == immediate(
        "DEPLOY", "Cannot open deployment file ")


def test_deploy_missing_deployment_file_is_an_action_error(tmp_path: Path) -> None:
    """A path that does not exist crashed the Ruby thread; now a FAILURE naming the file."""
    missing = tmp_path / "nope" / "deployment.0"
    with pytest.raises(ActionError) as info:
        build(request("DEPLOY", message_xml(LOCAL_DEPLOYMENT_FILE=str(missing))))
    assert str(info.value) == f"Cannot open deployment file {missing}: No such file or directory"


def test_deploy_without_remote_deployment_file_is_an_action_error(tmp_path: Path) -> None:
    """Remote deploy needs REMOTE_DEPLOYMENT_FILE."""
    xml = message_xml(LOCAL_DEPLOYMENT_FILE=str(deployment_file(tmp_path)),
                      REMOTE_DEPLOYMENT_FILE=None)
    with pytest.raises(ActionError, match="REMOTE_DEPLOYMENT_FILE"):
        build(request("DEPLOY", xml))


def test_local_deploy_uses_the_local_file_and_runs_on_the_front_end(tmp_path: Path) -> None:
    """``-l deploy``: the local deployment file and its directory, ``is_local`` file steps."""
    dfile = deployment_file(tmp_path)
    cfg = config(local_actions=rubyisms.parse_actions_list("deploy"))
    plan = plan_of("DEPLOY", message_xml(LOCAL_DEPLOYMENT_FILE=str(dfile)), cfg)
    local_dir = str(dfile.parent)
    files = plan.steps[1:4]
    assert [s.action for s in files] == ["/bin/mkdir -p", f"/bin/cat - >{local_dir}/vm.xml",
                                         f"/bin/cat - >{local_dir}/ds.xml"]
    assert files[0].parameters == (local_dir,)
    assert all(s.is_local is True for s in files)
    deploy = plan.steps[4]
    assert deploy.label == "vmm:deploy" and deploy.parameters == (str(dfile), HOST)


def test_deploy_vm_dir_of_an_ordinary_path_is_ruby_text() -> None:
    """An ordinary remote directory gives byte-identical ``/bin/cat - >DIR/vm.xml`` text."""
    from vmm_exec.actions import deploy
    req = request("DEPLOY", message_xml(LOCAL_DEPLOYMENT_FILE="/x"))
    req = BuildRequest(req.action, req.msg_id, req.message, req.config, req.payload,
                       explain=True)
    plan = deploy(req)
    assert isinstance(plan, Plan)
    assert [s.action for s in plan.steps[1:4]] == [
        "/bin/mkdir -p",
        "/bin/cat - >/var/lib/one//datastores/0/42/vm.xml",
        "/bin/cat - >/var/lib/one//datastores/0/42/ds.xml"]


@pytest.mark.parametrize("dirname", ["d $(touch X)", "with space", "it's", "a;b`touch X`"])
def test_deploy_vm_dir_is_quoted_and_cannot_inject(tmp_path: Path, dirname: str) -> None:
    """A REMOTE_DEPLOYMENT_FILE under a directory with ``$(...)``, a space or a quote:
    the ``cat`` step quotes the path, and run by a real shell it writes exactly there
    and runs nothing."""
    vm_dir = tmp_path / dirname
    vm_dir.mkdir()
    xml = message_xml(LOCAL_DEPLOYMENT_FILE=str(deployment_file(tmp_path)),
                      REMOTE_DEPLOYMENT_FILE=f"{vm_dir}/deployment.0")
    plan = plan_of("DEPLOY", xml)
    mkdir, cat_vm, cat_ds = plan.steps[1:4]
    assert mkdir.parameters == (str(vm_dir),)
    quoted = "'" + f"{vm_dir}/vm.xml".replace("'", "'\\''") + "'"
    assert cat_vm.action == f"/bin/cat - >{quoted}"
    for cat, name in ((cat_vm, "vm.xml"), (cat_ds, "ds.xml")):
        subprocess.run(["/bin/sh", "-c", cat.action], input=b"payload", cwd=tmp_path,
                       check=True, timeout=10)
        assert (vm_dir / name).read_bytes() == b"payload"
    assert not (tmp_path / "X").exists()
    assert sorted(p.name for p in vm_dir.iterdir()) == ["ds.xml", "vm.xml"]


# ---------------------------------------------------------------------------
# SHUTDOWN, CANCEL, SAVE, REBOOT, RESET, RESTORE
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("action, signal", [("SHUTDOWN", "shutdown"), ("CANCEL", "cancel")])
def test_shutdown_and_cancel(action: str, signal: str) -> None:
    """The hypervisor action, then ``vnm clean``; no fail actions, no ``no_fail``."""
    assert plan_of(action, message_xml(NIC)) == Plan(action, signal, (
        step("vmm", signal, DEPLOY_ID, HOST), step("vnm", "clean", HOST)))


@pytest.mark.parametrize("action, signal", [("REBOOT", "reboot"), ("RESET", "reset")])
def test_reboot_and_reset(action: str, signal: str) -> None:
    """One hypervisor step."""
    assert plan_of(action, message_xml()) == Plan(action, signal,
                                                  (step("vmm", signal, DEPLOY_ID, HOST),))


def test_save() -> None:
    """``save DEPLOY_ID CHECKPOINT_FILE HOST`` then ``vnm clean``."""
    assert plan_of("SAVE", message_xml()) == Plan("SAVE", "save", (
        step("vmm", "save", DEPLOY_ID, CHECKPOINT_FILE, HOST), step("vnm", "clean", HOST)))


@pytest.mark.parametrize("tm_command", [CONTEXT_TM, ""])
def test_restore(tm_command: str) -> None:
    """tm_context (only with TM_COMMAND), vnm pre, restore, vnm post that cancels on failure."""
    context = [step("tm", "tm_context", *tm_command.split())] if tm_command else []
    assert plan_of("RESTORE", message_xml(TM_COMMAND=tm_command)) == Plan(
        "RESTORE", "restore", tuple(context) + (
            step("vnm", "pre"),
            step("vmm", "restore", CHECKPOINT_FILE, HOST, DEPLOY_ID),
            step("vnm", "post", DEPLOY_ID, HOST, fail_actions=[
                step("vmm", "cancel", DEPLOY_ID, HOST)])))


# ---------------------------------------------------------------------------
# MIGRATE
# ---------------------------------------------------------------------------
def test_migrate_to_another_host() -> None:
    """PRE/FAIL/POST tm commands with the VM in strict base64, target network set up
    before the move, everything after the move ``no_fail``."""
    req = request("MIGRATE", message_xml(NIC, TM_COMMAND=MIGRATE_TM, MIGR_HOST="host02"))
    vm = base64.b64encode(req.message.element_xml("VM").encode()).decode()
    assert "\n" not in vm
    failmigrate = step("tm", "tm_failmigrate", *("FAIL" + MIGRATE_TM).split(), stdin=vm,
                       no_fail=True)
    assert build(req) == Plan("MIGRATE", "migrate", (
        step("tm", "tm_premigrate", *("PRE" + MIGRATE_TM).split(), stdin=vm,
             fail_actions=[failmigrate]),
        step("vnm", "pre", destination=True),
        step("vmm", "migrate", DEPLOY_ID, DEST_HOST, HOST, fail_actions=[failmigrate]),
        step("vnm", "clean", HOST, no_fail=True),
        step("vnm", "post", DEPLOY_ID, HOST, destination=True, no_fail=True),
        step("tm", "tm_postmigrate", *("POST" + MIGRATE_TM).split(), stdin=vm, no_fail=True),
    ))


def test_migrate_to_the_same_host_has_no_network_steps() -> None:
    """MIGR_HOST == HOST (e.g. a system datastore change): premigrate, migrate, postmigrate."""
    tm = "MIGRATE ssh host01 host01 /var/lib/one//datastores/0/42 42 0"
    plan = plan_of("MIGRATE", message_xml(NIC, TM_COMMAND=tm, MIGR_HOST="host01"))
    assert [s.label for s in plan.steps] == ["tm:tm_premigrate", "vmm:migrate",
                                             "tm:tm_postmigrate"]
    assert plan.steps[0].parameters[0] == "PREMIGRATE"
    assert [f.label for f in plan.steps[1].fail_actions] == ["tm:tm_failmigrate"]


@pytest.mark.parametrize("tm_command", ["", None])
def test_migrate_without_tm_command_is_an_action_error(tm_command: Optional[str]) -> None:
    """``'PRE' << nil`` crashed the Ruby thread; now a FAILURE with the reason."""
    xml = message_xml(TM_COMMAND=tm_command, MIGR_HOST="host02")
    with pytest.raises(ActionError, match="^Cannot perform MIGRATE, expecting TM_COMMAND$"):
        build(request("MIGRATE", xml))


# ---------------------------------------------------------------------------
# the one-call actions
# ---------------------------------------------------------------------------
SNAPSHOTS = ("<SNAPSHOT><ACTIVE>NO</ACTIVE><SNAPSHOT_ID>1</SNAPSHOT_ID>"
             "<HYPERVISOR_ID>snap-1</HYPERVISOR_ID></SNAPSHOT>"
             "<SNAPSHOT><ACTIVE>YES</ACTIVE><SNAPSHOT_ID>3</SNAPSHOT_ID>"
             "<HYPERVISOR_ID>snap-3</HYPERVISOR_ID></SNAPSHOT>")


def test_poll_is_one_answered_call() -> None:
    """``poll DEPLOY_ID HOST`` on the host with the whole message on stdin."""
    req = request("POLL", message_xml())
    assert build(req) == DirectCall("POLL", "poll", ("one-42", "host01"), "host01",
                                    req.message.xml())


@pytest.mark.parametrize("missing", ["HOST", "DEPLOY_ID"])
def test_poll_without_host_or_deploy_id_is_an_action_error(missing: str) -> None:
    """A missing element crashed the Ruby thread (``nil.text``)."""
    with pytest.raises(ActionError, match=f"no {missing} element"):
        build(request("POLL", message_xml(fields={missing: None})))


def test_snapshot_create_uses_the_active_snapshot_id() -> None:
    """The ACTIVE='YES' snapshot's SNAPSHOT_ID (``to_i``), script ``snapshot_create``."""
    req = request("SNAPSHOTCREATE", message_xml(SNAPSHOTS))
    assert build(req) == DirectCall("SNAPSHOTCREATE", "snapshot_create", ("one-42", "3"),
                                    "host01", req.message.xml(), script_name="snapshot_create")


def test_snapshot_create_without_active_snapshot_is_an_action_error() -> None:
    """No active snapshot crashed the Ruby thread."""
    with pytest.raises(ActionError, match="SNAPSHOT"):
        build(request("SNAPSHOTCREATE", message_xml()))


def test_snapshot_delete_uses_the_active_hypervisor_id() -> None:
    """The active snapshot's HYPERVISOR_ID."""
    req = request("SNAPSHOTDELETE", message_xml(SNAPSHOTS))
    assert build(req) == DirectCall("SNAPSHOTDELETE", "snapshot_delete", ("one-42", "snap-3"),
                                    "host01", req.message.xml(), script_name="snapshot_delete")


def test_snapshot_revert_is_a_plan_with_post_skipping_elastic() -> None:
    """The revert script, then ``vnm post`` (which asks to skip the elastic driver)."""
    assert plan_of("SNAPSHOTREVERT", message_xml(SNAPSHOTS)) == Plan(
        "SNAPSHOTREVERT", "snapshot_revert", (
            step("vmm", "SNAPSHOTREVERT", DEPLOY_ID, "snap-3", script_name="snapshot_revert"),
            step("vnm", "post", DEPLOY_ID, HOST, skip=["elastic"])))


def test_resize_is_one_answered_call() -> None:
    """``resize DEPLOY_ID`` (plus the id and host the runner appends)."""
    req = request("RESIZE", message_xml())
    assert build(req) == DirectCall("RESIZE", "resize", ("one-42",), "host01",
                                    req.message.xml(), script_name="resize")


@pytest.mark.parametrize("command, stdin, raw", [
    ("uname -a", "", "42 host01 uname\\ -a "),
    ("cat", "x y", "42 host01 cat 'x y'"),
    ("echo \"it's\" | tr a-z A-Z; ls $HOME", "it's",
     "42 host01 echo\\ \\\"it\\'s\\\"\\ \\|\\ tr\\ a-z\\ A-Z\\;\\ ls\\ \\$HOME 'it'\\''s'"),
])
def test_exec_parameters_are_the_ruby_line_quoted_safely(command: str, stdin: str,
                                                         raw: str) -> None:
    """EXEC: id, host, ``Shellwords.escape(COMMAND)``, STDIN; the empty STDIN word vanishes
    as in Ruby (``exec 42 host01 uname\\ -a ``), a non-trivial one is single-quoted."""
    template = (f"<QEMU_GA_EXEC><COMMAND>{escape(command)}</COMMAND>"
                f"<STDIN>{escape(stdin)}</STDIN></QEMU_GA_EXEC>")
    req = request("EXEC", message_xml(template))
    assert build(req) == DirectCall("EXEC", "exec", (), "host01", req.message.xml(),
                                    script_name="exec", no_extra_params=True,
                                    raw_parameters=raw)


def test_exec_without_stdin_element_is_an_action_error() -> None:
    """No STDIN element crashed the Ruby thread."""
    xml = message_xml("<QEMU_GA_EXEC><COMMAND>ls</COMMAND></QEMU_GA_EXEC>")
    with pytest.raises(ActionError, match="STDIN"):
        build(request("EXEC", xml))


def test_exec_cancel_is_one_call_without_parameters() -> None:
    """``exec_cancel`` gets no parameters of its own."""
    req = request("EXEC_CANCEL", message_xml())
    assert build(req) == DirectCall("EXEC_CANCEL", "exec_cancel", (), "host01",
                                    req.message.xml(), script_name="exec_cancel",
                                    raw_parameters="")


# ---------------------------------------------------------------------------
# ATTACHDISK, DETACHDISK, RESIZEDISK, DISKSNAPSHOTCREATE
# ---------------------------------------------------------------------------
ATTACH_TM = f"CLONE qcow2 frontend:/var/lib/one//datastores/1/img {DS}/disk.2 42 2"
ROLLBACK_TM = f"DELETE qcow2 {DS}/disk.2 42 2"


def test_attach_disk() -> None:
    """tm_attach, then attach_disk (target and its index, the raw payload) that runs
    tm_detach with TM_COMMAND_ROLLBACK on failure."""
    req = request("ATTACHDISK", message_xml(DISK, TM_COMMAND=ATTACH_TM + "\n",
                                            TM_COMMAND_ROLLBACK=" " + ROLLBACK_TM + "\n"))
    assert build(req) == Plan("ATTACHDISK", "attach_disk", (
        step("tm", "tm_attach", *ATTACH_TM.split()),
        step("vmm", "attach_disk", DEPLOY_ID, DISK_TARGET_PATH, "vdc", "2", req.payload,
             fail_actions=[step("tm", "tm_detach", *ROLLBACK_TM.split())]),
    ))


@pytest.mark.parametrize("target, index", [("vda", "0"), ("SDB", "1"), ("hdz", "25")])
def test_disk_target_index_is_the_last_letter(target: str, index: str) -> None:
    """``target.downcase[-1].unpack('c').first - 97``."""
    disk = DISK.replace("<TARGET>vdc</TARGET>", f"<TARGET>{target}</TARGET>")
    plan = plan_of("DETACHDISK", message_xml(disk, TM_COMMAND=ROLLBACK_TM))
    assert plan.steps[0].parameters[2:] == (target, index)


@pytest.mark.parametrize("action, overrides, template, info", [
    ("ATTACHDISK", {"TM_COMMAND": ""}, DISK, "Cannot perform ATTACHDISK, expecting TM_COMMAND"),
    ("ATTACHDISK", {"TM_COMMAND": " \n "}, DISK,
     "Cannot perform ATTACHDISK, expecting TM_COMMAND"),
    ("ATTACHDISK", {"TM_COMMAND": ATTACH_TM, "TM_COMMAND_ROLLBACK": ROLLBACK_TM}, "",
     "Cannot perform ATTACHDISK, expecting VM/TEMPLATE/DISK[ATTACH='YES']/TARGET"),
    ("DETACHDISK", {"TM_COMMAND": None}, DISK, "Cannot perform DETACHDISK, expecting TM_COMMAND"),
    ("DETACHDISK", {"TM_COMMAND": ROLLBACK_TM}, DISK.replace("<ATTACH>YES", "<ATTACH>NO"),
     "Cannot perform DETACHDISK, expecting VM/TEMPLATE/DISK[ATTACH='YES']/TARGET"),
    ("RESIZEDISK", {"TM_COMMAND": "RESIZE 1 x 42 0"}, DISK.replace("<SIZE>2048</SIZE>", ""),
     "Cannot perform RESIZEDISK, expecting VM/TEMPLATE/DISK[RESIZE='YES']/SIZE"),
    ("RESIZEDISK", {"TM_COMMAND": "RESIZE 1 x 42 0"}, DISK.replace("<DISK_ID>1</DISK_ID>", ""),
     "Cannot perform RESIZEDISK, expecting VM/TEMPLATE/DISK[RESIZE='YES']/DISK_ID"),
    ("RESIZEDISK", {"TM_COMMAND": ""}, DISK, "Cannot perform RESIZEDISK, expecting TM_COMMAND"),
])
def test_disk_preconditions_answer_with_the_original_text(
        action: str, overrides: Dict[str, Optional[str]], template: str, info: str) -> None:
    """``ensure_xpath``: an empty or missing element is answered ``Cannot perform A,
    expecting XPATH`` before anything runs."""
    xml = message_xml(template, fields=overrides)
    assert build(request(action, xml)) == immediate(action, info)


@pytest.mark.parametrize("rollback", ["", None])
def test_attach_disk_without_rollback_command_is_an_action_error(rollback: Optional[str]
                                                                 ) -> None:
    """``TM_COMMAND_ROLLBACK.text.strip`` on nil crashed the Ruby thread."""
    xml = message_xml(DISK, TM_COMMAND=ATTACH_TM, TM_COMMAND_ROLLBACK=rollback)
    with pytest.raises(ActionError, match="TM_COMMAND_ROLLBACK"):
        build(request("ATTACHDISK", xml))


def test_detach_disk() -> None:
    """detach_disk on the host first, then the TM epilog."""
    assert plan_of("DETACHDISK", message_xml(DISK, TM_COMMAND=ROLLBACK_TM)) == Plan(
        "DETACHDISK", "detach_disk", (
            step("vmm", "detach_disk", DEPLOY_ID, DISK_TARGET_PATH, "vdc", "2"),
            step("tm", "tm_detach", *ROLLBACK_TM.split())))


def test_resize_disk() -> None:
    """tm_resize, then ``resize_disk DEPLOY_ID DISK_ID SIZE PAYLOAD HOST``."""
    tm = f"RESIZE 2048 {DS}/disk.1 42 1"
    req = request("RESIZEDISK", message_xml(DISK, TM_COMMAND=tm))
    assert build(req) == Plan("RESIZEDISK", "resize_disk", (
        step("tm", "tm_resize", *tm.split()),
        step("vmm", "resize_disk", DEPLOY_ID, "1", "2048", req.payload, HOST)))


SNAP_TM = f"SNAP_CREATE qcow2 {DS}/disk.1 0 42 1"


def test_disk_snapshot_create_live() -> None:
    """kvm-qcow2 in LIVE_DISK_SNAPSHOTS: ``tm_snap_create_live`` with ``SNAP_CREATE_LIVE``."""
    assert plan_of("DISKSNAPSHOTCREATE", message_xml(DISK, TM_COMMAND=SNAP_TM)) == Plan(
        "DISKSNAPSHOTCREATE", "disk_snapshot_create", (
            step("tm", "tm_snap_create_live", "SNAP_CREATE_LIVE",
                 *SNAP_TM.split()[1:]),))


@pytest.mark.parametrize("live", [(), ("kvm-ceph",), ("qemu-qcow2",)])
def test_disk_snapshot_create_not_live_is_answered_at_once(live: Tuple[str, ...]) -> None:
    """``VM_MAD-TM_MAD`` not in LIVE_DISK_SNAPSHOTS: the original's message."""
    req = request("DISKSNAPSHOTCREATE", message_xml(DISK, TM_COMMAND=SNAP_TM),
                  config(live_disk_snapshots=live))
    assert build(req) == immediate("DISKSNAPSHOTCREATE",
                                   "Cannot perform a live DISKSNAPSHOTCREATE operation")


def test_disk_snapshot_lvm_thin_counts_as_its_own_driver() -> None:
    """fs_lvm_ssh with LVM_THIN_ENABLE=YES is checked as ``kvm-lvm_thin``."""
    disk = DISK.replace("<TM_MAD>qcow2</TM_MAD>", "<TM_MAD>fs_lvm_ssh</TM_MAD>")
    thin = disk.replace("</DISK>", "<LVM_THIN_ENABLE>yes</LVM_THIN_ENABLE></DISK>")
    cfg = config(live_disk_snapshots=("kvm-lvm_thin",))
    assert isinstance(build(request("DISKSNAPSHOTCREATE", message_xml(thin, TM_COMMAND=SNAP_TM),
                                    cfg)), Plan)
    assert isinstance(build(request("DISKSNAPSHOTCREATE", message_xml(disk, TM_COMMAND=SNAP_TM),
                                    cfg)), Immediate)


@pytest.mark.parametrize("vm_mad, tm_command, info", [
    (None, SNAP_TM,
     "Cannot perform DISKSNAPSHOTCREATE, expecting VM/HISTORY_RECORDS/HISTORY/VM_MAD"),
    ("kvm", "", "Cannot perform DISKSNAPSHOTCREATE, expecting TM_COMMAND"),
])
def test_disk_snapshot_create_preconditions(vm_mad: Optional[str], tm_command: str,
                                            info: str) -> None:
    """The VM_MAD is checked before the live check, TM_COMMAND after it."""
    xml = message_xml(DISK, vm_mad=vm_mad, TM_COMMAND=tm_command)
    assert build(request("DISKSNAPSHOTCREATE", xml)) == immediate("DISKSNAPSHOTCREATE", info)


# ---------------------------------------------------------------------------
# CLEANUP
# ---------------------------------------------------------------------------
def test_cleanup_without_migration_host() -> None:
    """cancel (deploy id known) and clean on the host, then tm_delete; all ``no_fail``."""
    tm = f"DELETE ssh {DS} 42 0"
    assert plan_of("CLEANUP", message_xml(TM_COMMAND=tm)) == Plan("CLEANUP", "cleanup", (
        step("vmm", "cancel", DEPLOY_ID, HOST, no_fail=True),
        step("vnm", "clean", HOST, no_fail=True),
        step("tm", "tm_delete", *tm.split(), no_fail=True)))


def test_cleanup_with_migration_host_and_multi_line_tm_command() -> None:
    """MIGR_HOST: also cancel and clean on the previous host; one ``tm_delete`` per
    non-blank TM_COMMAND line (stripped, CRLF included)."""
    lines = [f"DELETE ssh {DS}/disk.0 42 0", f"DELETE ssh {DS}/disk.1 42 1", "DELETE ssh x 42"]
    tm = f"{lines[0]}\r\n\n   \n  {lines[1]}\n{lines[2]}"
    plan = plan_of("CLEANUP", message_xml(TM_COMMAND=tm, MIGR_HOST="host02"))
    assert plan.steps == (
        step("vmm", "cancel", DEPLOY_ID, HOST, no_fail=True),
        step("vnm", "clean", HOST, no_fail=True),
        step("vmm", "cancel", DEPLOY_ID, DEST_HOST, destination=True, no_fail=True),
        step("vnm", "clean", HOST, destination=True, no_fail=True),
        *(step("tm", "tm_delete", *line.split(), no_fail=True) for line in lines))


def test_cleanup_without_deploy_id_does_not_cancel() -> None:
    """No deploy id (the VM never booted): no ``vmm cancel``."""
    plan = plan_of("CLEANUP", message_xml(TM_COMMAND="DELETE ssh x 42 0", DEPLOY_ID=""))
    assert [s.label for s in plan.steps] == ["vnm:clean", "tm:tm_delete"]


@pytest.mark.parametrize("missing", ["TM_COMMAND", "MIGR_HOST", "DEPLOY_ID"])
def test_cleanup_missing_element_is_an_action_error(missing: str) -> None:
    """A missing element crashed the Ruby thread (``nil.text``)."""
    with pytest.raises(ActionError, match=missing):
        build(request("CLEANUP", message_xml(fields={"TM_COMMAND": "DELETE ssh x 42 0",
                                                 missing: None})))


def test_cleanup_with_an_empty_tm_command_deletes_nothing() -> None:
    """``<TM_COMMAND/>``: ``if tm_command`` guards ``each_line``, so the original cancels
    and cleans and answers SUCCESS without any tm_delete (recorded: cleanup_variants)."""
    plan = plan_of("CLEANUP", message_xml(TM_COMMAND=""))
    assert [s.label for s in plan.steps] == ["vmm:cancel", "vnm:clean"]


# ---------------------------------------------------------------------------
# ATTACHNIC, DETACHNIC, UPDATECONF, UPDATESG, UPDATENIC
# ---------------------------------------------------------------------------
def reconfigure(mac: Optional[str]) -> Tuple[Step, ...]:
    fail = [step("vmm", "detach_nic", DEPLOY_ID, mac)] if mac else []
    return (step("vmm", "prereconfigure", DEPLOY_ID, "hdb", fail_actions=fail),
            step("tm", "tm_context", *CONTEXT_TM.split()),
            step("vmm", "reconfigure", DEPLOY_ID, "hdb", "/var/lib/one//datastores/0/42"))


@pytest.mark.parametrize("kind", ["NIC", "PCI"])
def test_attach_nic_and_pci(kind: str) -> None:
    """pre, attach_nic (mac bridge model vn_mad target), post (detaches on failure), then
    prereconfigure (detaches on failure), tm_context and reconfigure."""
    nic = NIC.replace("NIC>", f"{kind}>")
    xml = message_xml(nic + CONTEXT, TM_COMMAND=CONTEXT_TM)
    assert plan_of("ATTACHNIC", xml) == Plan("ATTACHNIC", "attach_nic", (
        step("vnm", "pre"),
        step("vmm", "attach_nic", DEPLOY_ID, MAC, "br0", "virtio", "bridge", "one-42-0"),
        step("vnm", "post", DEPLOY_ID, HOST, fail_actions=[
            step("vmm", "detach_nic", DEPLOY_ID, MAC)]),
        *reconfigure(MAC)))


def test_attach_nic_alias_has_no_hypervisor_attach() -> None:
    """A NIC_ALIAS (no TARGET needed): pre, post, then the reconfigure steps."""
    alias = NIC.replace("NIC>", "NIC_ALIAS>").replace("<TARGET>one-42-0</TARGET>", "")
    assert plan_of("ATTACHNIC", message_xml(alias + CONTEXT, TM_COMMAND=CONTEXT_TM)) == Plan(
        "ATTACHNIC", "attach_nic", (step("vnm", "pre"), step("vnm", "post", DEPLOY_ID, HOST),
                                    *reconfigure(MAC)))


def test_attach_nic_prefers_the_nic_and_defaults_the_model() -> None:
    """An attached NIC wins over an attached alias; no MODEL is ``-``; values stripped."""
    nic = NIC.replace("<MODEL>virtio</MODEL>", "").replace(MAC, f" {MAC}\n")
    alias = NIC.replace("NIC>", "NIC_ALIAS>").replace(MAC, "02:00:00:00:00:99")
    plan = plan_of("ATTACHNIC", message_xml(alias + nic + CONTEXT))
    assert plan.steps[1] == step("vmm", "attach_nic", DEPLOY_ID, MAC, "br0", "-", "bridge",
                                 "one-42-0")
    assert [s.label for s in plan.steps] == ["vnm:pre", "vmm:attach_nic", "vnm:post",
                                             "vmm:prereconfigure", "vmm:reconfigure"]


@pytest.mark.parametrize("kind", ["NIC", "PCI", "NIC_ALIAS"])
@pytest.mark.parametrize("name", ["VN_MAD", "BRIDGE", "TARGET", "MAC"])
def test_attach_nic_empty_value_is_answered_at_once(kind: str, name: str) -> None:
    """An element without text (``nil.strip``): the original's ``Missing VN_MAD, BRIDGE,
    TARGET or MAC in VM NIC`` (recorded: attach_nic_edges, VM 42)."""
    nic = re.sub(f"<{name}>[^<]*</{name}>", f"<{name}/>", NIC.replace("NIC>", f"{kind}>"))
    assert build(request("ATTACHNIC", message_xml(nic + CONTEXT))) == immediate(
        "ATTACHNIC", "Missing VN_MAD, BRIDGE, TARGET or MAC in VM NIC")


@pytest.mark.parametrize("kind", ["NIC", "PCI"])
@pytest.mark.parametrize("name", ["VN_MAD", "BRIDGE", "TARGET", "MAC"])
def test_attach_nic_absent_value_is_an_empty_argument(kind: str, name: str) -> None:
    """An absent element is nil, passed as ``''`` (a PCI passthrough NIC has no TARGET:
    recorded in attach_nic_pci)."""
    nic = re.sub(f"<{name}>[^<]*</{name}>", "", NIC.replace("NIC>", f"{kind}>"))
    plan = plan_of("ATTACHNIC", message_xml(nic + CONTEXT))
    values = {"MAC": MAC, "BRIDGE": "br0", "VN_MAD": "bridge", "TARGET": "one-42-0", name: ""}
    assert plan.steps[1] == step("vmm", "attach_nic", DEPLOY_ID, values["MAC"],
                                 values["BRIDGE"], "virtio", values["VN_MAD"], values["TARGET"])
    assert plan.steps[2].fail_actions == (step("vmm", "detach_nic", DEPLOY_ID, values["MAC"]),)


def test_attach_nic_with_nothing_attached_runs_the_alias_steps() -> None:
    """No NIC, PCI or NIC_ALIAS marked ATTACH: the original takes the alias branch with
    nil values (recorded: attach_nic_edges, VM 45)."""
    nic = NIC.replace("<ATTACH>YES</ATTACH>", "")
    plan = plan_of("ATTACHNIC", message_xml(nic + CONTEXT, TM_COMMAND=CONTEXT_TM))
    assert [s.label for s in plan.steps] == ["vnm:pre", "vnm:post", "vmm:prereconfigure",
                                             "tm:tm_context", "vmm:reconfigure"]
    assert plan.steps[2].fail_actions == (step("vmm", "detach_nic", DEPLOY_ID, ""),)


def test_attach_nic_empty_model_is_a_dash() -> None:
    """``<MODEL/>``: nil text, so ``-`` like an absent MODEL (attach_nic_edges, VM 46)."""
    plan = plan_of("ATTACHNIC", message_xml(NIC.replace("<MODEL>virtio</MODEL>", "<MODEL/>")
                                            + CONTEXT))
    assert plan.steps[1] == step("vmm", "attach_nic", DEPLOY_ID, MAC, "br0", "-", "bridge",
                                 "one-42-0")


NIC_VALUES = {"BRIDGE": " br0\n", "MAC": MAC + " ", "TARGET": "one-42-9", "VN_MAD": "\tbridge",
              "MODEL": " e1000 "}


@given(kind=st.sampled_from(["NIC", "PCI", "NIC_ALIAS"]),
       states=st.fixed_dictionaries({name: st.sampled_from(["absent", "empty", "value"])
                                     for name in NIC_VALUES}))
def test_attach_nic_values_follow_the_ruby_nil_rules(kind: str, states: Dict[str, str]) -> None:
    """Any mix of absent, text-less and valued BRIDGE/MAC/TARGET/VN_MAD/MODEL, on any
    device kind: a text-less one of the four is the "Missing ..." answer; otherwise an
    absent one is an empty argument, values are stripped, MODEL defaults to ``-``."""
    body = "".join({"absent": "", "empty": f"<{n}/>", "value": f"<{n}>{escape(v)}</{n}>"}[
        states[n]] for n, v in NIC_VALUES.items())
    xml = message_xml(f"<{kind}><ATTACH>YES</ATTACH>{body}</{kind}>" + CONTEXT)
    got = build(request("ATTACHNIC", xml))
    if any(states[n] == "empty" for n in ("BRIDGE", "MAC", "TARGET", "VN_MAD")):
        assert got == immediate("ATTACHNIC", "Missing VN_MAD, BRIDGE, TARGET or MAC in VM NIC")
        return
    value = {n: v.strip() if states[n] == "value" else "" for n, v in NIC_VALUES.items()}
    assert isinstance(got, Plan)
    detach = (step("vmm", "detach_nic", DEPLOY_ID, value["MAC"]),)
    if kind == "NIC_ALIAS":
        assert [s.label for s in got.steps[:2]] == ["vnm:pre", "vnm:post"]
    else:
        assert got.steps[1] == step("vmm", "attach_nic", DEPLOY_ID, value["MAC"],
                                    value["BRIDGE"], value["MODEL"] or "-", value["VN_MAD"],
                                    value["TARGET"])
        assert got.steps[2].fail_actions == detach
    prereconfigure = next(s for s in got.steps if s.label == "vmm:prereconfigure")
    assert prereconfigure.fail_actions == detach


def test_detach_nic() -> None:
    """detach_nic, vnm clean, then the reconfigure steps (no fail actions)."""
    assert plan_of("DETACHNIC", message_xml(NIC + CONTEXT, TM_COMMAND=CONTEXT_TM)) == Plan(
        "DETACHNIC", "detach_nic", (step("vmm", "detach_nic", DEPLOY_ID, MAC),
                                    step("vnm", "clean", HOST), *reconfigure(None)))


def test_detach_nic_alias_only_cleans_the_network() -> None:
    """A NIC_ALIAS has no hypervisor device to detach."""
    alias = NIC.replace("NIC>", "NIC_ALIAS>")
    assert [s.label for s in plan_of("DETACHNIC", message_xml(alias + CONTEXT)).steps] == [
        "vnm:clean", "vmm:prereconfigure", "vmm:reconfigure"]


def test_detach_nic_without_mac_is_answered_at_once() -> None:
    """The original's ``Error in DETACHNIC, MAC needed in NIC``."""
    nic = NIC.replace(f"<MAC>{MAC}</MAC>", "<MAC/>")
    assert build(request("DETACHNIC", message_xml(nic + CONTEXT))) == immediate(
        "DETACHNIC", "Error in DETACHNIC, MAC needed in NIC")


def test_update_conf() -> None:
    """prereconfigure, tm_context, reconfigure."""
    assert plan_of("UPDATECONF", message_xml(CONTEXT, TM_COMMAND=CONTEXT_TM)) == Plan(
        "UPDATECONF", "update_conf", reconfigure(None))


def test_update_sg_answers_with_the_security_group_id() -> None:
    """``vnm update_sg``; the SUCCESS info is prefixed with SECURITY_GROUP_ID."""
    xml = message_xml(NIC, extra="<SECURITY_GROUP_ID>7</SECURITY_GROUP_ID>")
    assert plan_of("UPDATESG", xml) == Plan("UPDATESG", "update_sg",
                                            (step("vnm", "update_sg", DEPLOY_ID),), "7")
    with pytest.raises(ActionError, match="SECURITY_GROUP_ID"):
        build(request("UPDATESG", message_xml(NIC)))


def test_update_nic_sends_the_vm_in_ruby_base64() -> None:
    """``vnm update_nic DEPLOY_ID VN_ID`` with ``Base64.encode64(VM)`` (60-column lines)."""
    xml = message_xml(NIC * 3, extra="<VIRTUAL_NETWORK_ID>5</VIRTUAL_NETWORK_ID>")
    req = request("UPDATENIC", xml)
    plan = build(req)
    assert isinstance(plan, Plan) and plan.extra_info == "5"
    [update] = plan.steps
    assert update.label == "vnm:update_nic" and update.parameters == (DEPLOY_ID, "5")
    assert update.stdin is not None
    lines = update.stdin.split("\n")
    assert lines[-1] == "" and all(len(line) == 60 for line in lines[:-2])
    assert base64.b64decode(update.stdin).decode() == req.message.element_xml("VM")


# ---------------------------------------------------------------------------
# BACKUP, BACKUPCANCEL
# ---------------------------------------------------------------------------
BACKUP_TM = f"BACKUP ssh {DS} 0:1 one-42 - 42 0"


@pytest.mark.parametrize("lcm_state, suffix", [("3", ""), ("70", ""), ("69", "_LIVE")])
def test_backup_live_or_not(lcm_state: str, suffix: str) -> None:
    """prebackup, ds backup (BACKUP DS_MAD args...), postbackup; LCM_STATE 69 (a running
    VM) selects the ``_LIVE`` scripts. Failures run postbackup with BACKUP_RESULT=FAILURE."""
    req = request("BACKUP", message_xml(lcm_state=lcm_state, TM_COMMAND=BACKUP_TM))
    plan = build(req)
    assert isinstance(plan, Plan) and plan.main_action == "backup"
    pre, ds, post = plan.steps
    name = "backup_live" if suffix else "backup"
    args = BACKUP_TM.split()[1:]
    vm = req.message.element_xml("VM")
    assert (pre.label, pre.parameters, pre.stdin) == (
        f"tm:pre{name}", (f"PREBACKUP{suffix}", *args), vm)
    assert (post.label, post.parameters, post.stdin) == (
        f"tm:post{name}", (f"POSTBACKUP{suffix}", *args), vm)
    assert (ds.label, ds.parameters) == ("ds:backup", ("BACKUP", "restic", *args[1:]))
    assert ds.stdin == f"<DS_DRIVER_ACTION_DATA>\n  {DATASTORE}\n  {vm}\n</DS_DRIVER_ACTION_DATA>\n"
    failed_vm = vm[:-len("</VM>")] + "<BACKUP_RESULT>FAILURE</BACKUP_RESULT></VM>"
    for owner in (pre, ds):
        assert owner.fail_actions == (step("tm", f"post{name}", *post.parameters,
                                           stdin=failed_vm),)
    assert not post.fail_actions and not post.no_fail


@pytest.mark.parametrize("tm_command, datastore, info", [
    ("", DATASTORE, "Cannot perform BACKUP, expecting TM_COMMAND"),
    (BACKUP_TM, "<DATASTORE><ID>0</ID></DATASTORE>",
     "Cannot perform BACKUP, expecting DATASTORE/DS_MAD"),
])
def test_backup_preconditions(tm_command: str, datastore: str, info: str) -> None:
    """``ensure_xpath`` on TM_COMMAND and DATASTORE/DS_MAD."""
    xml = message_xml(datastore=datastore, TM_COMMAND=tm_command)
    assert build(request("BACKUP", xml)) == immediate("BACKUP", info)


def test_backup_without_lcm_state_is_an_action_error() -> None:
    """No LCM_STATE crashed the Ruby thread."""
    with pytest.raises(ActionError, match="LCM_STATE"):
        build(request("BACKUP", message_xml(lcm_state=None, TM_COMMAND=BACKUP_TM)))


@pytest.mark.parametrize("action", ["BACKUP", "BACKUPCANCEL"])
def test_backup_one_word_tm_command_is_an_action_error(action: str) -> None:
    """A one-word TM_COMMAND: Ruby's ``concat(words[2..-1])`` got nil and the thread died
    (recorded: crash_no_answer_steps); two words leave no arguments, which is fine."""
    with pytest.raises(ActionError, match="malformed TM_COMMAND"):
        build(request(action, message_xml(TM_COMMAND=action)))
    plan = build(request(action, message_xml(TM_COMMAND=f"{action} ssh")))
    assert isinstance(plan, Plan)
    assert plan.steps[-1 if action == "BACKUPCANCEL" else 1].parameters[2:] == ()


def test_backup_cancel() -> None:
    """One ds step: ``BACKUP_CANCEL DS_MAD`` and the TM arguments after the driver."""
    tm = f"BACKUP_CANCEL ssh {DS} one-42 42 0"
    req = request("BACKUPCANCEL", message_xml(TM_COMMAND=tm))
    assert build(req) == Plan("BACKUPCANCEL", "backup_cancel", (
        step("ds", "backup_cancel", "BACKUP_CANCEL", "restic", *tm.split()[2:],
             stdin=req.message.element_xml("VM")),))
