"""The libvirt migration framework (``drivers/libvirt``), without daemons.

Profiles, rc files, ``MIGRATE_OPTIONS`` and per-VM features, the recovery decision
over fabricated observations (every failure mode of FACTS §5), progress rate
limiting, snapshot metadata against libvirt's ``test://`` driver (lifecycle and
snapshots, no migration), and the entry scripts as processes: argv and stdin,
refusals that touch nothing, the hand-over to the stock script, failures against the
test driver, ``recover``. Real migrations: ``test_libvirt_framework_real.py``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FRAMEWORK = os.path.join(REPO, "drivers", "libvirt")
MSG_XML = os.path.join(REPO, "compat", "scenarios", "migrate_basic", "msg.xml")
sys.path.insert(0, FRAMEWORK)

libvirt = pytest.importorskip("libvirt")

from vmm_libvirt import actiondata, options, profiles, record, snapshots  # noqa: E402
from vmm_libvirt import settings as lvsettings  # noqa: E402
from vmm_libvirt.connection import Endpoint, describe_error, gone_ok  # noqa: E402
from vmm_libvirt.migration import ProgressReporter, conclude, format_progress  # noqa: E402
from vmm_libvirt.output import Output, one_line  # noqa: E402
from vmm_libvirt.recovery import (  # noqa: E402
    ABSENT,
    PAUSED,
    RUNNING,
    SHUTOFF,
    Act,
    Observation,
    Outcome,
    Recovery,
    RecoveryResult,
    Side,
    decide,
    describe,
)

libvirt.registerErrorHandler(lambda *_a: None, None)

UUID = "9d2f5a3e-0000-4000-8000-000000000042"
OTHER_UUID = "9d2f5a3e-0000-4000-8000-00000000beef"
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"


# ======================================================================================
# profiles
# ======================================================================================


def test_profiles_are_data() -> None:
    kvm, qemu = profiles.lookup("kvm"), profiles.lookup("QEMU")
    assert kvm is not None and qemu is not None
    for p in (kvm, qemu):
        assert p.live_migration and p.tested and p.stock_dir == "kvm"
        assert p.default_uri == "qemu:///system" and p.default_protocol == "qemu+ssh"
        assert "etc/vmm/kvm/kvmrc" in p.rc_files
    xen = profiles.lookup("libxl")
    assert xen is not None and xen.name == "xen"
    assert xen.live_migration and not xen.tested and xen.stock_dir is None
    assert profiles.lookup("vcenter") is None


@pytest.mark.parametrize("name, words", [
    ("lxc", ("LXC tools, not through libvirt", "onevm migrate without --live")),
    ("firecracker", ("not managed by libvirt", "onevm migrate without --live")),
])
def test_profiles_refusing(name: str, words: Tuple[str, ...]) -> None:
    p = profiles.lookup(name)
    assert p is not None and not p.live_migration
    for word in words:
        assert word in p.refusal


# ======================================================================================
# settings: the stock kvmrc and our libvirtrc, sourced with bash
# ======================================================================================


def make_tree(tmp: str, kvmrc: Optional[str] = None, libvirtrc: Optional[str] = None,
              old_kvmrc: Optional[str] = None, stock: Optional[str] = None) -> str:
    """A remotes tree with the framework installed; returns the script dir."""
    root = os.path.join(tmp, "remotes")
    script_dir = os.path.join(root, "vmm_exec", "libvirt")
    shutil.copytree(FRAMEWORK, script_dir, ignore=shutil.ignore_patterns("__pycache__"))
    os.remove(os.path.join(script_dir, "libvirtrc"))  # the example is all comments
    if kvmrc is not None:
        os.makedirs(os.path.join(root, "etc", "vmm", "kvm"), exist_ok=True)
        with open(os.path.join(root, "etc", "vmm", "kvm", "kvmrc"), "w") as fh:
            fh.write(kvmrc)
    if old_kvmrc is not None:
        os.makedirs(os.path.join(root, "vmm", "kvm"), exist_ok=True)
        with open(os.path.join(root, "vmm", "kvm", "kvmrc"), "w") as fh:
            fh.write(old_kvmrc)
    if libvirtrc is not None:
        with open(os.path.join(script_dir, "libvirtrc"), "w") as fh:
            fh.write(libvirtrc)
    if stock is not None:
        os.makedirs(os.path.join(root, "vmm", "kvm"), exist_ok=True)
        path = os.path.join(root, "vmm", "kvm", "migrate")
        with open(path, "w") as fh:
            fh.write(stock)
        os.chmod(path, 0o755)
    return script_dir


KVM = profiles.PROFILES["kvm"]


def test_settings_defaults_without_rc(tmp_path: Any) -> None:
    script_dir = make_tree(str(tmp_path))
    conf = lvsettings.load(KVM, script_dir, {"HOME": "/var/lib/one", "PATH": os.defpath})
    assert conf.libvirt_uri == "qemu:///system"
    assert conf.dest_uri("host02") == "qemu+ssh://host02/system"
    assert conf.migrate_options == ""
    assert conf.state_dir == "/var/lib/one/.local/state/vmm_exec/libvirt"
    assert (conf.progress_interval, conf.job_wait, conf.keepalive_interval,
            conf.keepalive_count) == (5.0, 60.0, 2, 3)
    assert conf.sources == ()


def test_settings_kvmrc_sourced_with_bash(tmp_path: Any) -> None:
    kvmrc = ("export LANG=C\nexport LIBVIRT_URI=qemu:///system\n"
             "export QEMU_PROTOCOL=qemu+tcp\n"
             "# a comment\nMIGRATE_OPTIONS=\"--unsafe --bandwidth 100\"  # trailing\n"
             "if true; then SHUTDOWN_TIMEOUT=1; fi\n")
    script_dir = make_tree(str(tmp_path), kvmrc=kvmrc)
    conf = lvsettings.load(KVM, script_dir, {"PATH": os.defpath, "HOME": "/h"})
    assert conf.migrate_options == "--unsafe --bandwidth 100"
    assert conf.dest_uri("host02") == "qemu+tcp://host02/system"
    assert conf.sources == (os.path.join(str(tmp_path), "remotes", "etc", "vmm", "kvm",
                                         "kvmrc"),)


def test_settings_own_rc_overrides_and_templates(tmp_path: Any) -> None:
    script_dir = make_tree(
        str(tmp_path), kvmrc="export LIBVIRT_URI=qemu:///system\nMIGRATE_OPTIONS=--unsafe\n",
        old_kvmrc="export QEMU_PROTOCOL=qemu+tls\n",
        libvirtrc=("LIBVIRT_URI='qemu+unix:///session?socket=/s/host01/sock'\n"
                   "VMM_EXEC_DEST_URI='qemu+unix:///session?socket=/s/{host}/sock'\n"
                   "VMM_EXEC_STATE_DIR=/tmp/state\nVMM_EXEC_PROGRESS_INTERVAL=1\n"
                   "VMM_EXEC_KEEPALIVE=1,4\nVMM_EXEC_MIGRATE_TIMEOUT=300\n"))
    conf = lvsettings.load(KVM, script_dir, {"PATH": os.defpath})
    assert conf.libvirt_uri == "qemu+unix:///session?socket=/s/host01/sock"
    assert conf.dest_uri("host02") == "qemu+unix:///session?socket=/s/host02/sock"
    assert conf.qemu_protocol == "qemu+tls"  # the older vmm/kvm/kvmrc is read too
    assert conf.migrate_options == "--unsafe"
    assert (conf.state_dir, conf.progress_interval, conf.keepalive_interval,
            conf.keepalive_count, conf.migrate_timeout) == ("/tmp/state", 1.0, 1, 4, 300.0)
    assert len(conf.sources) == 3
    assert conf.uri_for("host01", "host01") == conf.libvirt_uri
    assert conf.uri_for("host02", "host01") == conf.dest_uri("host02")


def test_settings_protocol_placeholder_and_errors(tmp_path: Any) -> None:
    assert lvsettings.expand_template("{protocol}://{host}/system", "h2", "qemu+tcp") == \
        "qemu+tcp://h2/system"
    with pytest.raises(lvsettings.SettingsError, match="not a valid template"):
        lvsettings.expand_template("qemu+ssh://{hots}/system", "h2", "qemu+ssh")
    for rc, match in (("VMM_EXEC_JOB_WAIT=soon\n", "not a number"),
                      ("VMM_EXEC_KEEPALIVE=5\n", "interval,count"),
                      ("VMM_EXEC_DEST_URI='{nope}'\n", "not a valid template"),
                      ("exit 3\n", "cannot source")):
        script_dir = make_tree(str(tmp_path / str(abs(hash(rc)))), libvirtrc=rc)
        with pytest.raises(lvsettings.SettingsError, match=match):
            lvsettings.load(KVM, script_dir, {"PATH": os.defpath})
    with pytest.raises(lvsettings.SettingsError, match="does not exist"):
        lvsettings.load(KVM, make_tree(str(tmp_path / "x")),
                        {"PATH": os.defpath, "VMM_EXEC_LIBVIRTRC": "/nonexistent"})


# ======================================================================================
# MIGRATE_OPTIONS and per-VM features
# ======================================================================================


def resolved(opts: str, per_vm: str = "") -> Tuple[int, Dict[str, Any]]:
    return options.parse(opts, per_vm).resolve(libvirt)


def test_options_default_is_live_client_managed() -> None:
    parsed = options.parse("")
    assert parsed.flags == ("VIR_MIGRATE_LIVE",) and not parsed.p2p
    assert resolved("") == (libvirt.VIR_MIGRATE_LIVE, {})
    assert parsed.describe() == "client-managed live migration"


@pytest.mark.parametrize("word, flag", sorted(options.FLAGS.items()))
def test_options_flags(word: str, flag: str) -> None:
    extra = {"--tunnelled": " --p2p", "--zerocopy": " --parallel"}.get(word, "")
    flags, params = resolved(word + extra)
    assert flags & getattr(libvirt, flag)
    assert flags & libvirt.VIR_MIGRATE_LIVE
    assert params == {}


def test_options_params_and_implied_flags() -> None:
    flags, params = resolved(
        "--p2p --bandwidth 8 --parallel-connections=4 --auto-converge-initial 20 "
        "--auto-converge-increment 10 --comp-methods mt,xbzrle --comp-mt-level 3 "
        "--listen-address 0.0.0.0 --verbose")
    assert flags == (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                     | libvirt.VIR_MIGRATE_PARALLEL | libvirt.VIR_MIGRATE_AUTO_CONVERGE
                     | libvirt.VIR_MIGRATE_COMPRESSED)
    assert params == {
        libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 8,
        libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS: 4,
        libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL: 20,
        libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT: 10,
        libvirt.VIR_MIGRATE_PARAM_COMPRESSION: ["mt", "xbzrle"],
        libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_LEVEL: 3,
        libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "0.0.0.0",
    }
    parsed = options.parse("--p2p --bandwidth 8 --verbose")
    assert parsed.describe() == "peer-to-peer live migration with --p2p --bandwidth 8"
    assert parsed.ignored == (("--verbose", "progress is reported by the framework itself"),)


@pytest.mark.parametrize("word", sorted(options.REFUSED))
def test_options_refused_with_reason(word: str) -> None:
    with pytest.raises(options.OptionError) as err:
        options.parse(f"--unsafe {word}")
    assert str(err.value) == (f"MIGRATE_OPTIONS: {word} is not supported: "
                              f"{options.REFUSED[word]}")


@pytest.mark.parametrize("text, match", [
    ("--frobnicate", "unknown option --frobnicate"),
    ("one-42", "unexpected argument 'one-42'"),
    ("--bandwidth", "--bandwidth needs a value"),
    ("--bandwidth 0", "--bandwidth '0': must be a positive integer"),
    ("--bandwidth fast", "--bandwidth 'fast'"),
    ("--auto-converge-initial 101", "between 0 and 100"),
    ("--unsafe=yes", "--unsafe takes no value"),
    ("--tunnelled", "--tunnelled needs --p2p"),
    ("--zerocopy", "--zerocopy needs --parallel"),
    ("--comp-methods ,", "needs at least one method"),
    ("--unsafe 'unbalanced", "cannot be split"),
])
def test_options_malformed(text: str, match: str) -> None:
    with pytest.raises(options.OptionError, match=match):
        options.parse(text)


def test_options_missing_in_old_bindings() -> None:
    class OldBindings:
        VIR_MIGRATE_LIVE = 1

    with pytest.raises(options.OptionError, match="--parallel needs a newer libvirt"):
        options.parse("--parallel").resolve(OldBindings)


@pytest.mark.parametrize("auto, comp, expected", [
    ("", False, ""),
    ("50", False, "--auto-converge --auto-converge-initial 50"),
    (" 50,10 ", True,
     "--auto-converge --auto-converge-initial 50 --auto-converge-increment 10 --compressed"),
    ("", True, "--compressed"),
])
def test_per_vm_options_like_build_migrate_opts(auto: str, comp: bool, expected: str) -> None:
    assert options.per_vm_options(auto, comp) == expected


@pytest.mark.parametrize("auto", [",5", "1,2,3", "a", "50,x", "150"])
def test_per_vm_options_invalid(auto: str) -> None:
    with pytest.raises(options.OptionError, match="MIGRATE_AUTO_CONVERGE|auto-converge"):
        options.parse("", options.per_vm_options(auto, False))


def test_per_vm_value_wins_over_global() -> None:
    _flags, params = resolved("--auto-converge --auto-converge-initial 10",
                              options.per_vm_options("40,5", False))
    assert params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] == 40
    assert params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] == 5


# ======================================================================================
# action data
# ======================================================================================


def action_data(shared: str = "YES", vm_mad: Optional[str] = None,
                features: Optional[Dict[str, str]] = None, deploy_id: str = "one-42",
                host: str = "host01", migr_host: str = "host02") -> bytes:
    """The recorded scenario's VMM_DRIVER_ACTION_DATA with these values."""
    root = ET.parse(MSG_XML).getroot()
    values = {"DATASTORE/TEMPLATE/SHARED": shared, "DEPLOY_ID": deploy_id, "HOST": host,
              "MIGR_HOST": migr_host}
    if vm_mad is not None:
        values["VM/HISTORY_RECORDS/HISTORY/VM_MAD"] = vm_mad
    for path, value in values.items():
        node = root.find(path)
        assert node is not None, path
        node.text = value
    if features:
        template = root.find("VM/TEMPLATE")
        assert template is not None
        feat = ET.SubElement(template, "FEATURES")
        for key, value in features.items():
            ET.SubElement(feat, key).text = value
    return ET.tostring(root)


def test_action_data_from_the_recorded_scenario() -> None:
    with open(MSG_XML, "rb") as fh:
        data = actiondata.parse(fh.read())
    assert (data.deploy_id, data.vm_id, data.host, data.migr_host) == \
        ("one-42", "42", "host01", "host02")
    assert not data.shared and data.vm_mad == "kvm"
    assert data.ds_base_path == "/var/lib/one//datastores/0"
    assert data.os_uuid == UUID
    parsed = actiondata.parse(action_data(features={"MIGRATE_AUTO_CONVERGE": " 30,5 ",
                                                    "MIGRATE_COMPRESSED": "yes"}))
    assert parsed.shared and parsed.auto_converge == "30,5" and parsed.compressed


@pytest.mark.parametrize("data, match", [
    (b"", "no VMM_DRIVER_ACTION_DATA"),
    (b"  \n", "no VMM_DRIVER_ACTION_DATA"),
    (b"<VMM_DRIVER_ACTION_DATA>", "not valid XML"),
    (b"<VM/>", "not <VMM_DRIVER_ACTION_DATA>"),
])
def test_action_data_errors(data: bytes, match: str) -> None:
    with pytest.raises(actiondata.ActionDataError, match=match):
        actiondata.parse(data)


# ======================================================================================
# the recovery decision (pure), case by case (FACTS §5)
# ======================================================================================

S, D = "host01", "host02"


def src(state: str = RUNNING, reason: str = "", job: bool = False,
        persistent: bool = False) -> Side:
    if state == ABSENT:
        return Side(S)
    return Side(S, exists=True, active=state != SHUTOFF, state=state, reason=reason,
                persistent=persistent, job=job)


def dst(state: str = ABSENT, reason: str = "", persistent: bool = False) -> Side:
    if state == ABSENT:
        return Side(D)
    return Side(D, exists=True, active=state != SHUTOFF, state=state, reason=reason,
                persistent=persistent)


def down(host: str, error: str = "Failed to connect socket") -> Side:
    return Side(host, reachable=False, error=error)


INCOMING = dst(PAUSED, "migration")


def run_decisions(obs: Observation, after: Optional[Dict[Act, Tuple[Side, Side]]] = None
                  ) -> Tuple[List[Act], Outcome]:
    """Iterate decide() like Recovery.run(): ``after`` says what each act changes."""
    acts: List[Act] = []
    for _ in range(10):
        decision = decide(obs)
        if decision.outcome is not None:
            return acts, decision.outcome
        acts += decision.acts
        source, dest = obs.source, obs.dest
        pending = obs.snapshots_pending
        for act in decision.acts:
            if after and act in after:
                source, dest = after[act]
            if act in (Act.RESTORE_SNAPSHOTS_SOURCE, Act.REDEFINE_SNAPSHOTS_DEST):
                pending = 0
        obs = Observation(source, dest, obs.paused_before, obs.dest_defined_before,
                          obs.abort_running_job, pending,
                          obs.attempted | frozenset(decision.acts))
    raise AssertionError("decide() did not reach an outcome")


CASES: List[Tuple[str, Observation, Dict[Act, Tuple[Side, Side]], List[Act], Outcome]] = [
    ("2a/2b/3/6a: target qemu killed, abort, client died: libvirt cleaned up",
     Observation(src(RUNNING, "migration canceled"), dst()), {}, [], Outcome.SOURCE),
    ("2a with snapshots set aside",
     Observation(src(), dst(), snapshots_pending=2), {},
     [Act.RESTORE_SNAPSHOTS_SOURCE], Outcome.SOURCE),
    ("2c/2d: target daemon killed: cannot check it (orphan qemu possible)",
     Observation(src(RUNNING, "migration canceled"), down(D), snapshots_pending=1),
     {Act.RESTORE_SNAPSHOTS_SOURCE: (src(RUNNING), down(D))},
     [Act.RESTORE_SNAPSHOTS_SOURCE], Outcome.UNKNOWN),
    ("3: a job still running is aborted, then waited for",
     Observation(src(RUNNING, job=True), INCOMING),
     {Act.WAIT_JOB: (src(RUNNING, "migration canceled"), INCOMING),
      Act.DESTROY_DEST: (src(RUNNING), dst())},
     [Act.ABORT_JOB, Act.WAIT_JOB, Act.DESTROY_DEST], Outcome.SOURCE),
    ("3 (stand-alone recover): the job is waited for, not aborted; it completes",
     Observation(src(PAUSED, "migration", job=True), dst(RUNNING, "migrated"),
                 abort_running_job=False, snapshots_pending=2),
     {Act.WAIT_JOB: (src(ABSENT), dst(RUNNING, "migrated"))},
     [Act.WAIT_JOB, Act.REDEFINE_SNAPSHOTS_DEST], Outcome.DESTINATION),
    ("3: the job does not end",
     Observation(src(RUNNING, job=True), INCOMING), {},
     [Act.ABORT_JOB, Act.WAIT_JOB], Outcome.JOB_RUNNING),
    ("5a: target hung, then back: its incoming domain is destroyed",
     Observation(src(RUNNING, "migration canceled"), INCOMING),
     {Act.DESTROY_DEST: (src(RUNNING), dst())}, [Act.DESTROY_DEST], Outcome.SOURCE),
    ("5b: source left PAUSED/MIGRATION, target unreachable: do NOT resume",
     Observation(src(PAUSED, "migration"), down(D), snapshots_pending=2), {}, [],
     Outcome.UNKNOWN),
    ("5b: source left paused, target empty: resume, restore",
     Observation(src(PAUSED, "migration"), dst(), snapshots_pending=2),
     {Act.RESUME_SOURCE: (src(RUNNING, "unpaused"), dst())},
     [Act.RESUME_SOURCE, Act.RESTORE_SNAPSHOTS_SOURCE], Outcome.SOURCE),
    ("5b: source paused, incoming copy still there: destroy it first, then resume",
     Observation(src(PAUSED, "migration"), INCOMING),
     {Act.DESTROY_DEST: (src(PAUSED, "migration"), dst()),
      Act.RESUME_SOURCE: (src(RUNNING), dst())},
     [Act.DESTROY_DEST, Act.RESUME_SOURCE], Outcome.SOURCE),
    ("5b: the resume does not work",
     Observation(src(PAUSED, "migration"), dst()), {}, [Act.RESUME_SOURCE], Outcome.NONE),
    ("6b passing state: source paused without a job, target runs: it completed",
     Observation(src(PAUSED, "migration"), dst(RUNNING, "migrated"), snapshots_pending=2),
     {Act.DESTROY_SOURCE: (src(ABSENT), dst(RUNNING, "migrated"))},
     [Act.DESTROY_SOURCE, Act.REDEFINE_SNAPSHOTS_DEST], Outcome.DESTINATION),
    ("6b: source SHUTOFF/MIGRATED (persistent), target runs",
     Observation(src(SHUTOFF, persistent=True), dst(RUNNING, "migrated")), {}, [],
     Outcome.DESTINATION),
    ("6b: completed, source gone",
     Observation(src(ABSENT), dst(RUNNING, "migrated"), snapshots_pending=3), {},
     [Act.REDEFINE_SNAPSHOTS_DEST], Outcome.DESTINATION),
    ("7: source daemon down, incoming copy on the target: destroy it, still unknown",
     Observation(down(S), INCOMING), {Act.DESTROY_DEST: (down(S), dst())},
     [Act.DESTROY_DEST], Outcome.UNKNOWN),
    ("7: source daemon down, target runs the VM: unknown",
     Observation(down(S), dst(RUNNING)), {}, [], Outcome.UNKNOWN),
    ("both run: pause the destination's copy, operator",
     Observation(src(RUNNING, "migration canceled"), dst(RUNNING, "migrated")),
     {Act.PAUSE_DEST: (src(RUNNING), dst(PAUSED, "user"))}, [Act.PAUSE_DEST], Outcome.BOTH),
    ("a copy paused by its user on the target while the source runs: never destroyed",
     Observation(src(RUNNING), dst(PAUSED, "user")), {}, [], Outcome.BOTH),
    ("a definition left on the target by the migration: undefined",
     Observation(src(RUNNING), dst(SHUTOFF, persistent=True)),
     {Act.UNDEFINE_DEST: (src(RUNNING), dst())}, [Act.UNDEFINE_DEST], Outcome.SOURCE),
    ("4c: a definition that was there before: left alone",
     Observation(src(RUNNING), dst(SHUTOFF, persistent=True), dest_defined_before=True), {},
     [], Outcome.SOURCE),
    ("the leftover definition cannot be removed",
     Observation(src(RUNNING), dst(SHUTOFF, persistent=True)), {}, [Act.UNDEFINE_DEST],
     Outcome.UNKNOWN),
    ("paused by its user before: stays paused",
     Observation(src(PAUSED, "user"), INCOMING, paused_before=True),
     {Act.DESTROY_DEST: (src(PAUSED, "user"), dst())}, [Act.DESTROY_DEST], Outcome.SOURCE),
    ("paused by its user before, and it arrived (paused) on the target",
     Observation(src(ABSENT), dst(PAUSED, "user"), paused_before=True), {}, [],
     Outcome.DESTINATION),
    ("nothing anywhere",
     Observation(src(ABSENT), dst()), {}, [], Outcome.NONE),
    ("only an incoming copy, no source: give libvirt a moment, then operator",
     Observation(src(ABSENT), INCOMING), {}, [Act.SETTLE], Outcome.NONE),
    ("source gone, target unreachable",
     Observation(src(ABSENT), down(D)), {}, [], Outcome.UNKNOWN),
]


@pytest.mark.parametrize("case, obs, after, acts, outcome", CASES,
                         ids=[c[0].split(":")[0] for c in CASES])
def test_decide_cases(case: str, obs: Observation, after: Dict[Act, Tuple[Side, Side]],
                      acts: List[Act], outcome: Outcome) -> None:
    assert run_decisions(obs, after) == (acts, outcome), case


def sides(host: str) -> Any:
    states = st.sampled_from([RUNNING, PAUSED, SHUTOFF, ABSENT, "other"])
    reasons = st.sampled_from(["", "migration", "migration canceled", "migrated", "user"])

    def build(reachable: bool, state: str, reason: str, persistent: bool, job: bool) -> Side:
        if not reachable:
            return Side(host, reachable=False, error="x")
        if state == ABSENT:
            return Side(host)
        return Side(host, exists=True, active=state != SHUTOFF, state=state, reason=reason,
                    persistent=persistent, job=job and state != SHUTOFF and host == S)

    return st.builds(build, st.booleans(), states, reasons, st.booleans(), st.booleans())


@settings(max_examples=400, deadline=None)
@given(sides(S), sides(D), st.booleans(), st.booleans(), st.booleans(),
       st.integers(0, 2), st.sets(st.sampled_from(list(Act))))
def test_decide_invariants(s: Side, d: Side, paused_before: bool, defined_before: bool,
                           abort: bool, pending: int, attempted: Any) -> None:
    """Whatever is observed: acts are never repeated; the destination is only ever
    destroyed when it holds an incoming (never started) copy; the source is never
    resumed while the destination runs or cannot be checked, nor when its user paused
    it; a settled outcome really has exactly one copy."""
    obs = Observation(s, d, paused_before, defined_before, abort, pending,
                      frozenset(attempted))
    decision = decide(obs)
    assert (decision.outcome is None) == bool(decision.acts)
    assert not set(decision.acts) & set(attempted)
    if Act.DESTROY_DEST in decision.acts:
        assert d.incoming
    if Act.RESUME_SOURCE in decision.acts:
        assert d.reachable and not d.runs and not paused_before
    if Act.DESTROY_SOURCE in decision.acts:
        assert d.runs and s.paused
    if Act.PAUSE_DEST in decision.acts:
        assert d.runs and s.runs
    if decision.outcome is Outcome.SOURCE:
        assert s.active and d.reachable and not d.active
    if decision.outcome is Outcome.DESTINATION:
        assert d.active and s.reachable and not s.active
    # and it always ends
    acts, _outcome = run_decisions(obs)
    assert len(acts) == len(set(acts))


def test_describe_observations() -> None:
    obs = Observation(src(PAUSED, "migration", job=True), INCOMING, snapshots_pending=2)
    assert describe(obs, "one-42") == (
        "one-42 paused for the migration on host01, its migration job still active, a "
        "paused incoming copy on host02; 2 snapshots set aside")
    obs = Observation(src(RUNNING, "migration canceled"), down(D, "keepalive timeout"))
    assert describe(obs, "one-42") == (
        "one-42 running on host01 (libvirt resumed it after the failure), host02 "
        "unreachable (keepalive timeout)")


@pytest.mark.parametrize("outcome, code, tail", [
    (Outcome.SOURCE, 1, "Now one-42 runs on host01 only."),
    (Outcome.DESTINATION, 0, "Now one-42 runs on host02 only."),
    (Outcome.NONE, 2, "an operator is needed."),
    (Outcome.BOTH, 2, "an operator must decide which copy to keep."),
    (Outcome.JOB_RUNNING, 2, "run recover again once it has ended."),
])
def test_conclude_exit_status(tmp_path: Any, outcome: Outcome, code: int, tail: str) -> None:
    path = str(tmp_path / "rec.json")
    with open(path, "w") as fh:
        fh.write("{}")
    final = Observation(src(RUNNING), dst(RUNNING) if outcome is Outcome.DESTINATION else dst())
    got_code, text = conclude(RecoveryResult(outcome, "found", [], final), "one-42", path)
    assert got_code == code and text.endswith(tail)
    assert os.path.exists(path) == (not outcome.settled)


def test_conclude_keeps_pending_snapshots(tmp_path: Any) -> None:
    path = str(tmp_path / "rec.json")
    final = Observation(src(PAUSED, "migration"), down(D), snapshots_pending=2)
    _code, text = conclude(RecoveryResult(Outcome.UNKNOWN, "", [], final), "one-42", path)
    assert text.endswith("The metadata of 2 snapshot(s) waits until it is known where one-42 "
                         f"runs; it is kept in {path}: recover puts it back.")
    final = Observation(src(RUNNING), dst(), snapshots_pending=2,
                        attempted=frozenset([Act.RESTORE_SNAPSHOTS_SOURCE]))
    code, text = conclude(RecoveryResult(Outcome.SOURCE, "", [], final), "one-42", path)
    assert code == 1 and "could not be put back; it is kept in" in text


# ======================================================================================
# progress
# ======================================================================================

STATS = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "time_elapsed": 6000,
         "data_total": 128 << 20, "data_processed": 48 << 20, "data_remaining": 80 << 20,
         "memory_bps": 8 << 20}


def test_format_progress() -> None:
    assert format_progress(STATS) == ("38%, 48.0 MiB sent, 80.0 of 128.0 MiB remaining, "
                                      "8.0 MiB/s, 6 s elapsed")
    assert format_progress({"type": libvirt.VIR_DOMAIN_JOB_NONE}) is None
    assert format_progress({"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
                            "time_elapsed": 900}) is None
    assert format_progress({"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
                            "memory_processed": 1 << 20}) == "1.0 MiB sent"


def test_progress_rate_limited() -> None:
    now = [100.0]
    rep = ProgressReporter("one-42 to host02", 5.0, clock=lambda: now[0])
    lines = []
    for _ in range(60):  # one sample every 0.5 s for 30 s
        now[0] += 0.5
        line = rep.update(STATS)
        if line:
            lines.append((now[0], line))
    assert [t for t, _ in lines] == [105.0, 110.0, 115.0, 120.0, 125.0, 130.0]
    assert lines[0][1].startswith("one-42 to host02: 38%, 48.0 MiB sent")
    # nothing to say (no job) does not use up the slot
    now[0] += 5
    assert rep.update({"type": libvirt.VIR_DOMAIN_JOB_NONE}) is None
    now[0] += 0.5
    assert rep.update(STATS) is not None


# ======================================================================================
# snapshot metadata against the test:///default driver
# ======================================================================================

DOMAIN_XML = ("<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
              "<memory>65536</memory><os><type>hvm</type></os></domain>")


@pytest.fixture
def test_dom() -> Any:
    conn = libvirt.open("test:///default")
    import uuid as uuidlib

    uid = str(uuidlib.uuid4())
    dom = conn.defineXML(DOMAIN_XML.format(name=f"t-{uid[:8]}", uuid=uid))
    dom.create()
    for name in ("snap-0", "snap-1", "snap-2"):
        dom.snapshotCreateXML(f"<domainsnapshot><name>{name}</name></domainsnapshot>")
    # snap-1 current
    dom.snapshotCreateXML(dom.snapshotLookupByName("snap-1").getXMLDesc(0),
                          libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
                          | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT)
    yield dom
    gone_ok(dom.destroy)
    gone_ok(lambda: dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA))


class MetadataOnly:
    """The test driver has no DELETE_METADATA_ONLY (its snapshots are metadata anyway):
    translate, and optionally fail the n-th deletion."""

    def __init__(self, dom: Any, fail_at: Optional[int] = None) -> None:
        self.dom, self.fail_at, self.deleted = dom, fail_at, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dom, name)

    def snapshotLookupByName(self, name: str) -> Any:  # noqa: N802 - libvirt's name
        outer = self
        snap = self.dom.snapshotLookupByName(name)

        class Snap:
            def delete(self, flags: int) -> None:
                assert flags == libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
                if outer.fail_at is not None and outer.deleted == outer.fail_at:
                    raise libvirt.libvirtError("injected: cannot delete")
                snap.delete(0)
                outer.deleted += 1

        return Snap()


def names_and_current(dom: Any) -> Tuple[List[str], Optional[str]]:
    current = dom.snapshotCurrent().getName() if dom.hasCurrentSnapshot() else None
    return sorted(s.getName() for s in dom.listAllSnapshots(0)), current


def test_snapshots_set_aside_and_back(test_dom: Any, tmp_path: Any) -> None:
    snaps = snapshots.capture(test_dom)
    assert snaps.names() == ["snap-0", "snap-1", "snap-2"]  # parents first
    assert snaps.current == "snap-1"
    assert all("<domainsnapshot>" in xml for _n, xml in snaps.snapshots)
    # into a record file and back: what a later recovery reads
    rec = record.Record(uuid=test_dom.UUIDString(), deploy_id=test_dom.name(),
                        hypervisor="kvm", source_host="h1", dest_host="h2", source_uri="a",
                        dest_uri="b", paused_before=True, snapshots=snaps)
    path = record.path_for(str(tmp_path / "state"), rec.uuid)
    record.save(rec, path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    again = record.load(path)
    assert again.snapshots == snaps and again.paused_before
    assert record.find(str(tmp_path / "state"), test_dom.name()) == path
    assert record.find(str(tmp_path / "state"), rec.uuid) == path

    snapshots.delete_metadata(MetadataOnly(test_dom), snaps)
    assert names_and_current(test_dom) == ([], None)
    assert snapshots.redefine(test_dom, again.snapshots) == 3
    assert names_and_current(test_dom) == (["snap-0", "snap-1", "snap-2"], "snap-1")
    # idempotent: a second recovery redefining them is fine
    assert snapshots.redefine(test_dom, again.snapshots) == 3
    assert names_and_current(test_dom) == (["snap-0", "snap-1", "snap-2"], "snap-1")


def test_snapshots_delete_is_all_or_nothing(test_dom: Any) -> None:
    snaps = snapshots.capture(test_dom)
    with pytest.raises(snapshots.SnapshotError, match="cannot remove the metadata of snapshot "
                       "snap-1: injected: cannot delete"):
        snapshots.delete_metadata(MetadataOnly(test_dom, fail_at=1), snaps)
    assert names_and_current(test_dom) == (["snap-0", "snap-1", "snap-2"], "snap-1")
    # and the real test driver, which cannot delete metadata only: nothing lost either
    with pytest.raises(snapshots.SnapshotError, match="unsupported flags"):
        snapshots.delete_metadata(test_dom, snaps)
    assert names_and_current(test_dom) == (["snap-0", "snap-1", "snap-2"], "snap-1")


# ======================================================================================
# Recovery acting on the test driver (one connection per endpoint: test:///FILE
# connections each get their own copy of the file's domains)
# ======================================================================================


def node_xml(path: str, domains: List[Tuple[str, str, int]]) -> str:
    """A test-driver node file: (name, uuid, runstate) domains (1 running, 3 paused)."""
    parts = [f"<node xmlns:test='{TEST_NS}'>"]
    for name, uid, runstate in domains:
        parts.append(f"<domain type='test'><name>{name}</name><uuid>{uid}</uuid>"
                     f"<memory>65536</memory><os><type>hvm</type></os>"
                     f"<test:runstate>{runstate}</test:runstate></domain>")
    parts.append("</node>")
    with open(path, "w") as fh:
        fh.write("".join(parts))
    return f"test://{path}"


def test_recovery_resumes_a_paused_source_and_restores_snapshots(tmp_path: Any) -> None:
    src_uri = node_xml(str(tmp_path / "h1.xml"), [("one-42", UUID, 3)])
    dst_uri = node_xml(str(tmp_path / "h2.xml"), [])
    snaps = snapshots.SnapshotSet(
        (("snap-0", "<domainsnapshot><name>snap-0</name><state>running</state>"
          "<creationTime>1</creationTime><memory snapshot='no'/>"
          f"<domain type='test'><name>one-42</name><uuid>{UUID}</uuid><memory>65536</memory>"
          "<os><type>hvm</type></os></domain></domainsnapshot>"),), "snap-0")
    back: List[str] = []
    out = Output(io.StringIO())
    source, dest = Endpoint(S, src_uri), Endpoint(D, dst_uri)
    rec = Recovery(source, dest, UUID, "one-42", out, snapshots=snaps,
                   on_snapshots_back=back.append)
    result = rec.run()
    assert result.outcome is Outcome.SOURCE
    assert result.found == ("one-42 paused on host01, nothing of one-42 on host02; "
                            "1 snapshots set aside")
    assert result.done == ["resumed one-42 on host01", "restored 1 snapshot on host01"]
    assert back == [S]
    dom = source.conn.lookupByUUIDString(UUID)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert names_and_current(dom) == (["snap-0"], "snap-0")
    assert out.lines == ["INFO: recovery: found " + result.found,
                         "INFO: recovery: resumed one-42 on host01",
                         "INFO: recovery: restored 1 snapshot on host01"]


def test_recovery_destroys_only_our_uuid_on_the_destination(tmp_path: Any) -> None:
    src_uri = node_xml(str(tmp_path / "h1.xml"), [("one-42", UUID, 1)])
    # host02: a paused copy of ours (the "incoming" one) and another domain
    dst_uri = node_xml(str(tmp_path / "h2.xml"), [("one-42", UUID, 3),
                                                   ("one-43", OTHER_UUID, 1)])
    out = Output(io.StringIO())
    source, dest = Endpoint(S, src_uri), Endpoint(D, dst_uri)
    # the test driver reports PAUSED_UNKNOWN, not PAUSED_MIGRATION: do the act directly
    rec = Recovery(source, dest, UUID, "one-42", out)
    assert rec.do(Act.DESTROY_DEST) == "destroyed and undefined the incoming domain on host02"
    assert rec.do(Act.DESTROY_DEST) == "the incoming domain on host02 had already gone"
    others = [(d.name(), d.isActive()) for d in dest.conn.listAllDomains()]
    assert others == [("one-43", 1)]


def test_recovery_with_an_unreachable_destination(tmp_path: Any) -> None:
    src_uri = node_xml(str(tmp_path / "h1.xml"), [("one-42", UUID, 3)])
    out = Output(io.StringIO())
    source = Endpoint(S, src_uri)
    dest = Endpoint(D, f"qemu+unix:///session?socket={tmp_path}/nothing", 2.0)
    result = Recovery(source, dest, UUID, "one-42", out, reconnect_wait=0).run()
    assert result.outcome is Outcome.UNKNOWN and result.done == []
    assert source.conn.lookupByUUIDString(UUID).state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert "host02 unreachable (Failed to connect socket to" in result.found


def test_acts_tolerate_a_vanished_domain(tmp_path: Any) -> None:
    out = Output(io.StringIO())
    source = Endpoint(S, node_xml(str(tmp_path / "h1.xml"), []))
    dest = Endpoint(D, node_xml(str(tmp_path / "h2.xml"), []))
    rec = Recovery(source, dest, UUID, "one-42", out)
    assert [rec.do(act) for act in Act if act is not Act.SETTLE] == [
        "the job on host01 had already ended",
        "waited 0.0 s for the job on host01 to end",
        "the incoming domain on host02 had already gone",
        "the definition on host02 had already gone",
        "the copy on host02 had already gone",
        "one-42 had gone from host01: nothing to resume",
        "the stale copy on host01 had already gone",
        "could not put the snapshot metadata back: one-42 is not on host01",
        "could not put the snapshot metadata back: one-42 is not on host02",
    ]


def test_connection_helpers() -> None:
    err = libvirt.libvirtError("x")
    err.err = (libvirt.VIR_ERR_NO_DOMAIN, 0, "Domain not found:\n no domain", 0, "", None,
               None, 0, 0)

    def raise_(e: BaseException) -> Any:
        raise e

    assert gone_ok(lambda: raise_(err), "gone") == "gone"
    assert describe_error(err) == "Domain not found: no domain"
    other = libvirt.libvirtError("y")
    other.err = (libvirt.VIR_ERR_INTERNAL_ERROR, 0, "boom", 0, "", None, None, 0, 0)
    with pytest.raises(libvirt.libvirtError):
        gone_ok(lambda: raise_(other))
    ep = Endpoint("h", "qemu+unix:///session?socket=/nonexistent/sock", 2.0)
    began = time.monotonic()
    assert not ep.connect() and "Failed to connect socket" in ep.error
    assert time.monotonic() - began < 2


def test_output_lines(tmp_path: Any) -> None:
    stream = io.StringIO()
    log = str(tmp_path / "x.log")
    out = Output(stream, log_file=log)
    out.info("two\nlines")
    out.error("e")
    out.debug("d")
    out.summary("Migration   of one-42\nfailed.")
    assert stream.getvalue() == ("INFO: two lines\nERROR: e\nDEBUG: d\n"
                                 "Migration of one-42 failed.\n")
    with open(log) as fh:
        assert fh.read().count("\n") == 4
    assert one_line(" a \n\t b ") == "a b"


# ======================================================================================
# the entry scripts, as processes
# ======================================================================================


class Tree:
    """A remotes tree with the framework and test-driver "hosts" (node files)."""

    def __init__(self, tmp: str, kvmrc: str = "", libvirtrc: str = "",
                 stock: Optional[str] = None) -> None:
        self.tmp = tmp
        self.state = os.path.join(tmp, "state")
        self.script_dir = make_tree(
            tmp, kvmrc=(f"export LIBVIRT_URI=test://{tmp}/host01.xml\n" + kvmrc),
            libvirtrc=(f"VMM_EXEC_DEST_URI='test://{tmp}/{{host}}.xml'\n"
                       f"VMM_EXEC_STATE_DIR={self.state}\nVMM_EXEC_RECONNECT_WAIT=0\n"
                       + libvirtrc), stock=stock)

    def host(self, name: str, domains: List[Tuple[str, str, int]]) -> str:
        return node_xml(os.path.join(self.tmp, f"{name}.xml"), domains)

    def run(self, script: str, args: List[str], stdin: bytes = b"",
            env: Optional[Dict[str, str]] = None,
            timeout: float = 60) -> Tuple[int, str, str]:
        proc = subprocess.run([sys.executable, os.path.join(self.script_dir, script), *args],
                              input=stdin, capture_output=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, check=False)
        return proc.returncode, proc.stdout.decode(), proc.stderr.decode()

    def migrate(self, data: bytes, args: Optional[List[str]] = None,
                env: Optional[Dict[str, str]] = None) -> Tuple[int, str]:
        rc, stdout, stderr = self.run(
            "migrate", args or ["one-42", "host02", "host01", "42", "host01"], data, env)
        assert stdout == ""
        return rc, stderr


def plain(stderr: str) -> str:
    return " ".join(ln.strip() for ln in stderr.splitlines()
                    if ln.strip() and not ln.startswith(("INFO:", "ERROR:", "DEBUG:")))


@pytest.fixture
def tree(tmp_path: Any) -> Tree:
    t = Tree(str(tmp_path))
    t.host("host01", [("one-42", UUID, 1)])
    t.host("host02", [])
    return t


def test_migrate_usage(tree: Tree) -> None:
    rc, err = tree.migrate(b"", ["one-42", "host02"])
    assert (rc, err) == (1, "usage: migrate DEPLOY_ID DEST_HOST SRC_HOST VMID [HOST], with "
                            "VMM_DRIVER_ACTION_DATA on stdin\n")


@pytest.mark.parametrize("data, text", [
    (b"", "failed: no VMM_DRIVER_ACTION_DATA on stdin. Nothing was changed."),
    (b"<oops", "failed: stdin is not valid XML: "),
])
def test_migrate_bad_stdin(tree: Tree, data: bytes, text: str) -> None:
    rc, err = tree.migrate(data)
    assert rc == 1
    assert plain(err).startswith(f"Migration of one-42 from host01 to host02 {text}")


def test_migrate_invalid_host(tree: Tree) -> None:
    rc, err = tree.migrate(action_data(), ["one-42", "host02/x?socket=", "host01", "42",
                                           "host01"])
    assert rc == 1 and "refused: invalid host name 'host02/x?socket='" in plain(err)


@pytest.mark.parametrize("how", ["vm_mad", "env"])
@pytest.mark.parametrize("hv", ["lxc", "firecracker"])
def test_migrate_refuses_lxc_and_firecracker_touching_nothing(tmp_path: Any, hv: str,
                                                              how: str) -> None:
    marker = str(tmp_path / "rc-was-read")
    tree = Tree(str(tmp_path), kvmrc=f"touch {marker}\n")
    data = action_data(vm_mad=hv if how == "vm_mad" else "kvm")
    env = {"VMM_EXEC_HYPERVISOR": hv} if how == "env" else None
    rc, err = tree.migrate(data, env=env)
    assert rc == 1
    profile = profiles.PROFILES[hv]
    assert plain(err) == (f"Migration of one-42 from host01 to host02 refused: "
                          f"{profile.refusal} Nothing was changed.")
    assert not os.path.exists(marker)  # not even the configuration was read
    assert not os.path.exists(tree.state)


def test_migrate_refusals_need_no_libvirt(tmp_path: Any) -> None:
    """On a host without python3-libvirt: the refusals still work, the live path says
    what is missing."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "libvirt.py").write_text("raise ImportError('No module named libvirt')\n")
    tree = Tree(str(tmp_path))
    env = {"PYTHONPATH": str(shadow)}
    rc, err = tree.migrate(action_data(vm_mad="firecracker"), env=env)
    assert rc == 1 and "Firecracker micro-VMs are not managed by libvirt" in err
    rc, err = tree.migrate(action_data(), env=env)
    assert rc == 1
    assert plain(err).endswith("failed: the libvirt Python bindings are missing on this host "
                               "(No module named libvirt; Debian: apt install python3-libvirt)."
                               " Nothing was changed.")


STOCK = """#!/bin/sh
{ printf '%s\\n' "$@"; echo ---; cat; } > "$(dirname "$0")/called"
echo "stock migrate here" >&2
exit 7
"""


@pytest.mark.parametrize("case", ["non-shared", "same-host"])
def test_migrate_hands_over_to_the_stock_script(tmp_path: Any, case: str) -> None:
    tree = Tree(str(tmp_path), stock=STOCK)
    if case == "non-shared":
        data = action_data(shared="NO")
        args = ["one-42", "host02", "host01", "42", "host01"]
        why = ("the system datastore is not shared (DATASTORE/TEMPLATE/SHARED is not YES): "
               "the disks are copied")
    else:
        data = action_data(migr_host="host01")
        args = ["one-42", "host01", "host01", "42", "host01"]
        why = "source and destination are the same host (a system datastore move)"
    rc, err = tree.migrate(data, args)
    stock = os.path.join(str(tmp_path), "remotes", "vmm", "kvm", "migrate")
    assert rc == 7
    assert err == f"INFO: {why}: handing over to the stock script {stock}\nstock migrate here\n"
    with open(os.path.join(os.path.dirname(stock), "called"), "rb") as fh:
        assert fh.read() == ("\n".join(args) + "\n---\n").encode() + data


def test_migrate_hand_over_without_a_stock_script(tmp_path: Any) -> None:
    tree = Tree(str(tmp_path))
    rc, err = tree.migrate(action_data(shared="NO"))
    assert rc == 1
    assert "which is the stock script's job, but " in plain(err)
    assert plain(err).endswith("has no executable stock migrate script. Nothing was changed.")
    rc, err = tree.migrate(action_data(shared="NO"), env={"VMM_EXEC_HYPERVISOR": "xen"})
    assert rc == 1 and "the xen profile has no executable stock migrate script" in err


@pytest.mark.parametrize("kvmrc, data, text", [
    ("MIGRATE_OPTIONS='--postcopy'\n", action_data(),
     "refused: MIGRATE_OPTIONS: --postcopy is not supported: a post-copy migration cannot be "
     "rolled back to the source once it has switched over. Nothing was changed."),
    ("MIGRATE_OPTIONS='--bandwidth'\n", action_data(),
     "refused: MIGRATE_OPTIONS: --bandwidth needs a value. Nothing was changed."),
    ("", action_data(features={"MIGRATE_AUTO_CONVERGE": "fast"}),
     "refused: MIGRATE_OPTIONS: --auto-converge-initial 'fast': invalid literal for int() "
     "with base 10: 'fast'. Nothing was changed."),
])
def test_migrate_refuses_bad_options_before_connecting(tmp_path: Any, kvmrc: str, data: bytes,
                                                       text: str) -> None:
    tree = Tree(str(tmp_path), kvmrc=kvmrc + "LIBVIRT_URI=qemu+unix:///x?socket=/nonexistent\n")
    rc, err = tree.migrate(data)
    assert rc == 1
    assert plain(err) == f"Migration of one-42 from host01 to host02 {text}"


def test_migrate_failure_on_the_test_driver(tree: Tree) -> None:
    """The test driver cannot migrate: a real failure after the checks, recovered."""
    rc, err = tree.migrate(action_data())
    assert rc == 1
    assert plain(err) == (
        "Migration of one-42 from host01 to host02 failed: this function is not supported by "
        "the connection driver: virDomainMigrate3. Found: one-42 running on host01, nothing "
        "of one-42 on host02. Done: nothing was needed. Now one-42 runs on host01 only.")
    lines = err.splitlines()
    assert lines[1] == (f"INFO: migrating one-42 (uuid {UUID}) from host01 to host02: "
                        f"client-managed live migration; destination test://{tree.tmp}/"
                        f"host02.xml")
    assert os.listdir(tree.state) == []  # the record is gone


def test_migrate_p2p_refused_by_the_test_driver(tmp_path: Any) -> None:
    tree = Tree(str(tmp_path), kvmrc="MIGRATE_OPTIONS='--p2p --bandwidth 8'\n")
    tree.host("host01", [("one-42", UUID, 1)])
    tree.host("host02", [])
    rc, err = tree.migrate(action_data())
    assert rc == 1
    assert ("failed: argument unsupported: p2p migration is not supported by the source "
            "host. Found:") in plain(err)
    assert "peer-to-peer live migration with --p2p --bandwidth 8" in err


def test_migrate_destination_unreachable(tree: Tree, tmp_path: Any) -> None:
    with open(os.path.join(tree.script_dir, "libvirtrc"), "a") as fh:
        fh.write(f"VMM_EXEC_DEST_URI='qemu+unix:///session?socket={tmp_path}/{{host}}.sock'\n")
    rc, err = tree.migrate(action_data())
    assert rc == 1
    text = plain(err)
    assert text.startswith("Migration of one-42 from host01 to host02 failed: cannot connect "
                           f"to libvirt on host02 (qemu+unix:///session?socket={tmp_path}/"
                           "host02.sock): Failed to connect socket")
    assert text.endswith("Nothing was changed: one-42 still runs on host01.")


def test_migrate_same_name_other_uuid(tree: Tree) -> None:
    tree.host("host02", [("one-42", OTHER_UUID, 5)])
    rc, err = tree.migrate(action_data())
    assert rc == 1
    assert plain(err) == (
        f"Migration of one-42 from host01 to host02 refused: another domain named one-42 "
        f"(uuid {OTHER_UUID}, defined, not running) already exists on host02. Nothing was "
        f"changed: one-42 still runs on host01 and that domain was not touched.")


def test_migrate_already_on_the_destination(tree: Tree) -> None:
    tree.host("host01", [])
    tree.host("host02", [("one-42", UUID, 1)])
    rc, err = tree.migrate(action_data())
    assert (rc, plain(err)) == (0, f"one-42 is not on host01 but already runs on host02 "
                                   f"(uuid {UUID}): nothing to migrate.")
    tree.host("host02", [])
    rc, err = tree.migrate(action_data())
    assert rc == 1 and plain(err).startswith("Migration of one-42 from host01 to host02 "
                                             "failed: no domain one-42 on host01")


def test_migrate_snapshot_metadata_that_cannot_be_set_aside(tree: Tree) -> None:
    """libvirt's test driver cannot delete snapshot metadata only: the migration stops
    before anything changed, and the record is removed."""
    path = os.path.join(tree.tmp, "host01.xml")
    with open(path) as fh:
        node = fh.read()
    snap = ("<name>snap-0</name><state>running</state>"
            "<creationTime>1</creationTime><memory snapshot='no'/><active>1</active>"
            f"<domain type='test'><name>one-42</name><uuid>{UUID}</uuid>"
            "<memory>65536</memory><os><type>hvm</type></os></domain>")
    node = node.replace("</test:runstate>", "</test:runstate>"
                        f"<test:domainsnapshot>{snap}</test:domainsnapshot>")
    with open(path, "w") as fh:
        fh.write(node)
    rc, err = tree.migrate(action_data())
    assert rc == 1
    assert plain(err) == ("Migration of one-42 from host01 to host02 failed: cannot remove "
                          "the metadata of snapshot snap-0: unsupported flags (0x2) in "
                          "function testDomainSnapshotDelete. Nothing was changed.")
    assert os.listdir(tree.state) == []


def test_migrate_cancelled_before_anything_changed(tmp_path: Any) -> None:
    tree = Tree(str(tmp_path), kvmrc="sleep 5\n")
    tree.host("host01", [("one-42", UUID, 1)])
    proc = subprocess.Popen(
        [sys.executable, os.path.join(tree.script_dir, "migrate"), "one-42", "host02",
         "host01", "42", "host01"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(action_data())
    proc.stdin.close()
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGTERM)  # like the driver: the whole group (bash too)
    err = proc.stderr.read().decode()
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert plain(err) == ("Migration of one-42 from host01 to host02 cancelled (SIGTERM) "
                          "before anything was changed: one-42 still runs on host01.")


def test_recover_usage_and_refusals(tree: Tree) -> None:
    rc, _out, err = tree.run("recover", [])
    assert rc == 1 and plain(err) == ("usage: recover [--hypervisor HV] VM SOURCE_HOST "
                                      "DEST_HOST (or --record FILE)")
    rc, _out, err = tree.run("recover", ["--bogus"])
    assert rc == 1 and "unrecognized arguments: --bogus" in err
    rc, _out, err = tree.run("recover", ["--hypervisor", "lxc", "one-42", "host01", "host02"])
    assert rc == 1 and plain(err).startswith("Recovery of one-42 refused: LXC containers")
    rc, _out, err = tree.run("recover", ["--record", os.path.join(tree.tmp, "nope.json")])
    assert rc == 1 and plain(err).startswith("Recovery impossible: cannot read the "
                                             "migration record")


def test_recover_resumes_a_paused_source(tree: Tree) -> None:
    tree.host("host01", [("one-42", UUID, 3)])
    rc, _out, err = tree.run("recover", ["one-42", "host01", "host02"])
    assert rc == 0, err
    assert plain(err) == (
        f"Recovery of one-42 (uuid {UUID}) between host01 and host02: Found: one-42 paused "
        f"on host01, nothing of one-42 on host02. Done: resumed one-42 on host01. Now one-42 "
        f"runs on host01 only.")


def test_recover_by_uuid_when_it_runs_nowhere(tree: Tree) -> None:
    tree.host("host01", [])
    rc, _out, err = tree.run("recover", [UUID, "host01", "host02"])
    assert rc == 2
    assert plain(err).endswith(f"Now {UUID} runs nowhere (nothing of {UUID} on host01, "
                               f"nothing of {UUID} on host02): an operator is needed.")
    rc, _out, err = tree.run("recover", ["one-42", "host01", "host02"])
    assert rc == 2 and plain(err) == ("Recovery of one-42: found on neither host01 nor host02 "
                                      "(it runs nowhere, or give its UUID if it was renamed).")


def test_recover_name_ambiguous(tree: Tree) -> None:
    tree.host("host02", [("one-42", OTHER_UUID, 1)])
    rc, _out, err = tree.run("recover", ["one-42", "host01", "host02"])
    assert rc == 1
    assert plain(err) == (f"Recovery of one-42 refused: the name belongs to different domains "
                          f"(uuid {UUID} on host01), (uuid {OTHER_UUID} on host02); give the "
                          f"UUID.")


def test_recover_from_a_record_detached(tree: Tree) -> None:
    """What migrate starts on SIGTERM: no stderr, a log file; snapshots back, record gone."""
    xml = ("<domainsnapshot><name>snap-0</name><state>running</state><creationTime>1"
           "</creationTime><memory snapshot='no'/>"
           f"<domain type='test'><name>one-42</name><uuid>{UUID}</uuid><memory>65536</memory>"
           "<os><type>hvm</type></os></domain></domainsnapshot>")
    rec = record.Record(uuid=UUID, deploy_id="one-42", hypervisor="kvm", source_host="host01",
                        dest_host="host02", source_uri=f"test://{tree.tmp}/host01.xml",
                        dest_uri=f"test://{tree.tmp}/host02.xml",
                        snapshots=snapshots.SnapshotSet((("snap-0", xml),), "snap-0"))
    path = record.path_for(tree.state, UUID)
    record.save(rec, path)
    rc, out, err = tree.run("recover", ["--record", path, "--abort", "--detached"])
    assert (rc, out, err) == (0, "", "")
    assert not os.path.exists(path)
    with open(record.log_path_for(tree.state, UUID)) as fh:
        logged = fh.read()
    assert ("Recovery of one-42 (uuid " + UUID + ") between host01 and host02: Found: one-42 "
            "running on host01, nothing of one-42 on host02; 1 snapshots set aside. Done: "
            "restored 1 snapshot on host01. Now one-42 runs on host01 only.") in logged


def test_recover_uses_a_record_found_by_deploy_id(tree: Tree) -> None:
    """A user-paused VM (per the record) stays paused."""
    tree.host("host01", [("one-42", UUID, 3)])
    rec = record.Record(uuid=UUID, deploy_id="one-42", hypervisor="kvm", source_host="host01",
                        dest_host="host02", source_uri="x", dest_uri="y", paused_before=True)
    path = record.path_for(tree.state, UUID)
    record.save(rec, path)
    rc, _out, err = tree.run("recover", ["one-42", "host01", "host02"])
    assert rc == 0, err
    assert f"INFO: using the migration record {path}" in err
    assert plain(err).endswith("Done: nothing was needed. Now one-42 is on host01 only "
                               "(paused, as before the migration).")
    assert not os.path.exists(path)


def test_entry_scripts_are_executable_python3() -> None:
    for name in ("migrate", "recover", "install.sh"):
        path = os.path.join(FRAMEWORK, name)
        assert os.access(path, os.X_OK), name
    for name in ("migrate", "recover"):
        with open(os.path.join(FRAMEWORK, name)) as fh:
            assert fh.readline() == "#!/usr/bin/env python3\n"


def test_framework_imports_only_stdlib_and_libvirt() -> None:
    """On hosts: python3 and python3-libvirt only; never vmm_exec."""
    allowed = set(sys.stdlib_module_names) | {"libvirt", "vmm_libvirt"}
    files = [os.path.join(FRAMEWORK, "migrate"), os.path.join(FRAMEWORK, "recover")]
    pkg = os.path.join(FRAMEWORK, "vmm_libvirt")
    files += [os.path.join(pkg, f) for f in os.listdir(pkg) if f.endswith(".py")]
    import ast

    for path in files:
        with open(path) as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            names: List[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path}: imports {name}"


def test_install_sh(tmp_path: Any) -> None:
    remotes = str(tmp_path / "remotes")
    proc = subprocess.run(["sh", os.path.join(FRAMEWORK, "install.sh"), remotes],
                          capture_output=True, text=True, check=True)
    dest = os.path.join(remotes, "vmm_exec", "libvirt")
    assert proc.stdout == f"libvirt migration framework installed in {dest}\n"
    assert sorted(os.listdir(dest)) == ["README.md", "libvirtrc", "migrate", "recover",
                                        "vmm_libvirt"]
    hooks = sorted(os.listdir(os.path.join(FRAMEWORK, "hooks"))) \
        if os.path.isdir(os.path.join(FRAMEWORK, "hooks")) else []
    if hooks:  # the driver-side wiring: the hook that runs migrate instead of the stock one
        assert sorted(os.listdir(os.path.join(remotes, "vmm_exec", "hooks.d"))) == hooks
    with open(os.path.join(dest, "libvirtrc"), "w") as fh:
        fh.write("KEEP=1\n")
    subprocess.run(["sh", os.path.join(FRAMEWORK, "install.sh"), remotes], check=True,
                   capture_output=True)
    with open(os.path.join(dest, "libvirtrc")) as fh:
        assert fh.read() == "KEEP=1\n"  # a site's rc survives a reinstall
    assert json.dumps(sorted(f for f in os.listdir(os.path.join(dest, "vmm_libvirt"))
                             if f.endswith(".py")))  # the package is there



# ======================================================================================
# the migration call: progress while it runs, the framework's own timeout
# ======================================================================================


class FakeMigratingDomain:
    """A source domain whose migration runs until it is aborted (or ``finish`` is set)."""

    def __init__(self) -> None:
        import threading

        self.aborted = threading.Event()
        self.finish = threading.Event()
        self.calls: List[Tuple[str, Any, Any, int]] = []

    def migrate3(self, dconn: Any, params: Dict[str, Any], flags: int) -> Any:
        self.calls.append(("migrate3", dconn, params, flags))
        return self._run()

    def migrateToURI3(self, uri: str, params: Dict[str, Any], flags: int) -> Any:  # noqa: N802
        self.calls.append(("migrateToURI3", uri, params, flags))
        return self._run()

    def _run(self) -> Any:
        while not (self.aborted.is_set() or self.finish.is_set()):
            time.sleep(0.01)
        if self.aborted.is_set():
            err = libvirt.libvirtError("aborted")
            err.err = (libvirt.VIR_ERR_OPERATION_ABORTED, 0, "operation aborted: job "
                       "'migration out' canceled by client", 0, "", None, None, 0, 0)
            raise err
        return object()

    def jobStats(self) -> Dict[str, Any]:  # noqa: N802
        return STATS

    def abortJob(self) -> int:  # noqa: N802
        self.aborted.set()
        return 0


def test_run_call_times_out_and_aborts() -> None:
    from vmm_libvirt.migration import run_call

    dom = FakeMigratingDomain()
    dest = Endpoint(D, "qemu+ssh://host02/system")
    dest.conn = "the destination connection"
    out = Output(io.StringIO())
    reporter = ProgressReporter("one-42 to host02", 0.5)
    result = run_call(dom, dest, 1, {"bandwidth": 8}, False, reporter, out, timeout=1.2,
                      poll=0.1)
    assert not result.ok and result.timed_out
    assert describe_error(result.error) == ("operation aborted: job 'migration out' canceled "
                                            "by client")
    assert dom.calls == [("migrate3", "the destination connection", {"bandwidth": 8}, 1)]
    progress = [ln for ln in out.lines if "MiB sent" in ln]
    assert 1 <= len(progress) <= 3
    assert out.lines[-1] == ("INFO: the migration has run for more than 1.2 s "
                             "(VMM_EXEC_MIGRATE_TIMEOUT): aborting it")


def test_run_call_p2p_success() -> None:
    from vmm_libvirt.migration import run_call

    dom = FakeMigratingDomain()
    dom.finish.set()
    dest = Endpoint(D, "qemu+ssh://host02/system")
    result = run_call(dom, dest, 3, {}, True, ProgressReporter("x", 5), Output(None))
    assert result.ok and result.error is None
    assert dom.calls == [("migrateToURI3", "qemu+ssh://host02/system", {}, 3)]


def test_migration_retried_while_a_block_job_is_active() -> None:
    """As the stock virsh_retry: libvirt refused before anything started."""
    from vmm_libvirt.migration import CallResult, with_retries

    def refused(text: str) -> CallResult:
        err = libvirt.libvirtError(text)
        err.err = (libvirt.VIR_ERR_OPERATION_INVALID, 0, text, 0, "", None, None, 0, 0)
        return CallResult(ok=False, error=err)

    answers = [refused("cannot migrate domain: domain has an active block job"),
               refused("cannot migrate domain: domain has an active block job"),
               CallResult(ok=True)]
    slept: List[float] = []
    out = Output(None)
    result = with_retries(lambda: answers.pop(0), 3, out, slept.append)
    assert result.ok and slept == [5.0, 5.0] and answers == []
    assert out.lines[0] == ("INFO: libvirt refused: cannot migrate domain: domain has an "
                            "active block job; trying again in 5 s (attempt 2 of 3)")
    # given up after VIRSH_TRIES; other errors are not retried
    answers = [refused("active block job")] * 3
    assert not with_retries(lambda: answers.pop(0), 2, Output(None), slept.append).ok
    assert len(answers) == 1
    answers = [refused("operation failed: domain 'x' already exists"), CallResult(ok=True)]
    assert not with_retries(lambda: answers.pop(0), 3, Output(None), slept.append).ok
