"""The libvirt migration framework (``drivers/libvirt``) against real libvirt daemons.

Two session libvirtds on this machine (``tests/libvirt_bed.py``, conftest's
``libvirt_bed`` fixture) are ``host01`` and ``host02``. Each "host" gets its own copy
of the remotes tree with the framework installed where the driver puts it
(``<remotes>/vmm_exec/libvirt/``), a stock ``etc/vmm/kvm/kvmrc`` whose ``LIBVIRT_URI``
is that host's socket and a ``libvirtrc`` whose ``VMM_EXEC_DEST_URI`` is the bed's
``{host}`` socket template. ``migrate`` runs the way a host runs it: Debian's
``/usr/bin/python3`` (with ``python3-libvirt``), argv ``DEPLOY_ID DEST_HOST SRC_HOST
VMID HOST`` and a realistic ``VMM_DRIVER_ACTION_DATA`` (the recorded ``migrate_basic``
scenario's, with ``SHARED=YES``) on stdin, in a process group of its own (the driver
signals groups); as root, and once as ``vmmtest``, an ordinary member of the hosts'
socket group.

Guests are TCG, transient like OpenNebula's, with 64 MiB of random RAM when a fault
must hit mid-migration (``--bandwidth 8`` in ``MIGRATE_OPTIONS`` gives a window of
several seconds), and two snapshots' metadata (one current) that must never be lost.
After every failure: the VM runs on the source only, nothing of it on the
destination, its snapshot metadata is intact, and the message says what happened.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.skipif(sys.platform != "linux", reason="the libvirt test bed needs Linux"),
]

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FRAMEWORK = os.path.join(REPO, "drivers", "libvirt")
MSG_XML = os.path.join(REPO, "compat", "scenarios", "migrate_basic", "msg.xml")
PYTHON = "/usr/bin/python3"
HOSTS = ("host01", "host02")
MIB = 1 << 20

lvbed = pytest.importorskip("libvirt_bed")


# --------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------


def lvmod() -> Any:
    return lvbed.libvirt_module()


@pytest.fixture(scope="module")
def bed(libvirt_bed: Any) -> Any:
    """conftest's bed: host01 and host02, ``vmmtest`` in the socket group."""
    try:
        lvmod().registerErrorHandler(lambda *_a: None, None)  # no libvirt noise on stderr
    except lvbed.Unavailable as exc:
        pytest.skip(str(exc))
    return libvirt_bed


class Hosts:
    """The remotes trees of the fake hosts and how to run the framework on them."""

    def __init__(self, bed: Any) -> None:
        self.bed = bed
        self.state_dir = os.path.join(bed.base, "state")
        os.makedirs(self.state_dir, exist_ok=True)
        os.chmod(self.state_dir, 0o1777)  # root and vmmtest keep records there
        self.counter = 100
        for host in HOSTS:
            root = self.remotes(host)
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(os.path.join(root, "etc", "vmm", "kvm"))
            os.makedirs(os.path.join(root, "vmm_exec"))
            shutil.copytree(FRAMEWORK, os.path.join(root, "vmm_exec", "libvirt"),
                            ignore=shutil.ignore_patterns("__pycache__"))
            self.configure(host)

    def remotes(self, host: str) -> str:
        return os.path.join(self.bed.base, f"remotes-{host}")

    def script(self, host: str, name: str) -> str:
        return os.path.join(self.remotes(host), "vmm_exec", "libvirt", name)

    def configure(self, host: str, migrate_options: str = "") -> None:
        with open(os.path.join(self.remotes(host), "etc", "vmm", "kvm", "kvmrc"), "w") as fh:
            fh.write(f"export LIBVIRT_URI='{self.bed.uri(host)}'\n"
                     f"export QEMU_PROTOCOL=qemu+ssh\n"
                     f"MIGRATE_OPTIONS='{migrate_options}'\n")
        with open(self.script(host, "libvirtrc"), "w") as fh:
            fh.write(f"VMM_EXEC_DEST_URI='{self.bed.uri_template}'\n"
                     f"VMM_EXEC_STATE_DIR='{self.state_dir}'\n"
                     "VMM_EXEC_PROGRESS_INTERVAL=1\n"
                     "VMM_EXEC_JOB_WAIT=30\n"
                     "VMM_EXEC_RECONNECT_WAIT=2\n"
                     "VMM_EXEC_CONNECT_TIMEOUT=5\n")

    def new_vm(self, host: str, random_ram_mib: int = 0, snapshots: bool = True,
               transient: bool = True) -> Tuple[str, str, str]:
        """A running guest ``one-N`` on ``host`` with two snapshots (snap-1 current):
        ``(deploy_id, vm_id, uuid)``."""
        self.counter += 1
        vm_id = str(self.counter)
        name = f"one-{vm_id}"
        uuid = self.bed.define_guest(host, name, random_ram_mib=random_ram_mib)
        dom = self.bed.domain(host, uuid)
        if transient:
            dom.undefine()  # OpenNebula's domains are transient
        if snapshots:
            lv = lvmod()
            self.bed.add_snapshot_metadata(host, name, "snap-0")
            self.bed.add_snapshot_metadata(host, name, "snap-1")
            snap = dom.snapshotLookupByName("snap-1")
            dom.snapshotCreateXML(snap.getXMLDesc(0), lv.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
                                  | lv.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT)
        return name, vm_id, uuid

    def action_data(self, deploy_id: str, vm_id: str, src: str, dst: str) -> bytes:
        root = ET.parse(MSG_XML).getroot()
        for path, value in (("HOST", src), ("MIGR_HOST", dst), ("DEPLOY_ID", deploy_id),
                            ("VM/ID", vm_id), ("VM/DEPLOY_ID", deploy_id),
                            ("DATASTORE/TEMPLATE/SHARED", "YES")):
            node = root.find(path)
            assert node is not None, path
            node.text = value
        return ET.tostring(root)

    def start_migrate(self, deploy_id: str, vm_id: str, src: str, dst: str,
                      user: Optional[str] = None) -> subprocess.Popen[bytes]:
        """``migrate`` as the host runs it (as root, or as ``user``)."""
        prefix = [] if user is None else [
            "setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--reset-env",
            "--"]
        proc = subprocess.Popen(
            [*prefix, PYTHON, self.script(src, "migrate"), deploy_id, dst, src, vm_id, src],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        assert proc.stdin is not None
        proc.stdin.write(self.action_data(deploy_id, vm_id, src, dst))
        proc.stdin.close()
        proc.stdin = None  # communicate() must not flush it again
        return proc

    def migrate(self, deploy_id: str, vm_id: str, src: str, dst: str,
                timeout: float = 120, user: Optional[str] = None) -> Tuple[int, str]:
        proc = self.start_migrate(deploy_id, vm_id, src, dst, user)
        _out, err = proc.communicate(timeout=timeout)
        return proc.returncode, err.decode()

    def recover(self, host: str, *args: str, timeout: float = 120) -> Tuple[int, str]:
        proc = subprocess.run([PYTHON, self.script(host, "recover"), *args],
                              capture_output=True, timeout=timeout, check=False)
        return proc.returncode, proc.stderr.decode()


@pytest.fixture(scope="module")
def hosts(bed: Any) -> Hosts:
    return Hosts(bed)


@pytest.fixture(autouse=True)
def clean(bed: Any, hosts: Hosts) -> Iterator[None]:
    for host in HOSTS:
        if not bed.running(host):
            bed.start_daemon(host)
        hosts.configure(host)
    yield
    for host in HOSTS:
        if bed.frozen(host) or not bed.running(host):
            bed.start_daemon(host)
    bed.destroy_all()


def summary(stderr: str) -> str:
    """The plain (non INFO/ERROR/DEBUG) lines: what the driver makes the FAILURE text."""
    lines = [ln.strip() for ln in stderr.splitlines()
             if ln.strip() and not ln.startswith(("INFO:", "ERROR:", "DEBUG:"))]
    return " ".join(lines)


def snapshots(bed: Any, host: str, uuid: str) -> Tuple[List[str], Optional[str]]:
    dom = bed.domain(host, uuid)
    if dom is None:
        return [], None
    current = dom.snapshotCurrent().getName() if dom.hasCurrentSnapshot() else None
    return sorted(s.getName() for s in dom.listAllSnapshots(0)), current


def state(bed: Any, host: str, uuid: str) -> Optional[int]:
    got = bed.guest_state(host, uuid)
    return None if got is None else got[0]


def wait_transfer(bed: Any, host: str, uuid: str, mib: int = 16,
                  timeout: float = 40) -> Dict[str, Any]:
    """Wait until the migration job of ``uuid`` on ``host`` has sent ``mib`` MiB."""
    lv = lvmod()
    dom = bed.domain(host, uuid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = dom.jobStats()
        if stats.get("type") == lv.VIR_DOMAIN_JOB_UNBOUNDED and \
                stats.get("memory_processed", 0) >= mib * MIB:
            return stats
        time.sleep(0.1)
    raise AssertionError(f"no migration job on {host} reached {mib} MiB")


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def assert_only_on(bed: Any, hosts: Hosts, where: str, other: str, name: str,
                   uuid: str) -> None:
    """``name`` runs on ``where`` with both snapshots, nothing of it on ``other``, and
    no recovery record is left."""
    lv = lvmod()
    assert state(bed, where, uuid) == lv.VIR_DOMAIN_RUNNING
    assert bed.guest_state(other, uuid) is None
    assert bed.qemu_pids(other, name) == set()
    assert snapshots(bed, where, uuid) == (["snap-0", "snap-1"], "snap-1")
    assert not os.path.exists(os.path.join(hosts.state_dir, f"{uuid}.json"))


def assert_on_source_only(bed: Any, hosts: Hosts, src: str, dst: str, name: str,
                          uuid: str) -> None:
    assert_only_on(bed, hosts, src, dst, name, uuid)


# --------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------


def test_round_trip_moves_snapshots(bed: Any, hosts: Hosts) -> None:
    """host01 -> host02 client-managed as an ordinary member of the socket group (like
    oneadmin), then back peer-to-peer as root: snapshots follow."""
    lv = lvmod()
    name, vm_id, uuid = hosts.new_vm("host01")
    user = next(m for m in bed.extra_group_members)
    rc, err = hosts.migrate(name, vm_id, "host01", "host02", user=user)
    print(err)
    assert rc == 0, err
    assert summary(err).startswith(f"Migrated {name} from host01 to host02 in ")
    assert "client-managed live migration); moved 2 snapshot(s)." in summary(err)
    assert state(bed, "host02", uuid) == lv.VIR_DOMAIN_RUNNING
    assert bed.guest_state("host01", uuid) is None
    assert snapshots(bed, "host02", uuid) == (["snap-0", "snap-1"], "snap-1")
    assert not os.path.exists(os.path.join(hosts.state_dir, f"{uuid}.json"))

    hosts.configure("host02", "--p2p")
    rc, err = hosts.migrate(name, vm_id, "host02", "host01")
    print(err)
    assert rc == 0, err
    assert "(peer-to-peer live migration with --p2p); moved 2 snapshot(s)." in summary(err)
    assert state(bed, "host01", uuid) == lv.VIR_DOMAIN_RUNNING
    assert bed.guest_state("host02", uuid) is None
    assert snapshots(bed, "host01", uuid) == (["snap-0", "snap-1"], "snap-1")


def test_destination_daemon_down(bed: Any, hosts: Hosts) -> None:
    name, vm_id, uuid = hosts.new_vm("host01")
    bed.stop_daemon("host02")
    rc, err = hosts.migrate(name, vm_id, "host01", "host02")
    print(err)
    assert rc == 1, err
    text = summary(err)
    assert "failed: cannot connect to libvirt on host02" in text
    assert text.endswith(f"Nothing was changed: {name} still runs on host01.")
    bed.start_daemon("host02")
    assert_on_source_only(bed, hosts, "host01", "host02", name, uuid)


def test_destination_qemu_killed_mid_migration(bed: Any, hosts: Hosts) -> None:
    name, vm_id, uuid = hosts.new_vm("host01", random_ram_mib=64)
    hosts.configure("host01", "--bandwidth 8")
    proc = hosts.start_migrate(name, vm_id, "host01", "host02")
    wait_transfer(bed, "host01", uuid)
    pids = bed.qemu_pids("host02", name)
    assert pids, "no incoming QEMU on host02"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    _out, raw = proc.communicate(timeout=60)
    err = raw.decode()
    print(err)
    assert proc.returncode == 1, err
    text = summary(err)
    assert text.startswith(f"Migration of {name} from host01 to host02 failed: ")
    assert "restored 2 snapshots on host01" in text
    assert text.endswith(f"Now {name} runs on host01 only.")
    assert any(ln.startswith(f"INFO: {name} to host02: ") and "MiB sent" in ln
               for ln in err.splitlines()), "no progress line"
    assert_on_source_only(bed, hosts, "host01", "host02", name, uuid)


def test_destination_daemon_killed_mid_migration(bed: Any, hosts: Hosts) -> None:
    """FACTS 2d: the incoming QEMU outlives its daemon; the source cannot check
    host02, says so (exit 2); once host02's libvirtd is back, recover confirms."""
    name, vm_id, uuid = hosts.new_vm("host01", random_ram_mib=64)
    hosts.configure("host01", "--bandwidth 8")
    proc = hosts.start_migrate(name, vm_id, "host01", "host02")
    wait_transfer(bed, "host01", uuid)
    bed.kill_daemon("host02")
    _out, raw = proc.communicate(timeout=90)
    err = raw.decode()
    print(err)
    assert proc.returncode == 2, err
    text = summary(err)
    assert f"Now {name} runs on host01, but host02 could not be checked" in text
    assert "restored 2 snapshots on host01" in text

    bed.start_daemon("host02")
    rc, err = hosts.recover("host01", name, "host01", "host02")
    print(err)
    assert rc == 0, err
    assert summary(err).endswith(f"Now {name} runs on host01 only.")
    wait_for(lambda: not bed.qemu_pids("host02", name), 10, "the orphan QEMU to go")
    assert_on_source_only(bed, hosts, "host01", "host02", name, uuid)


def test_same_name_other_uuid_on_destination(bed: Any, hosts: Hosts) -> None:
    lv = lvmod()
    name, vm_id, uuid = hosts.new_vm("host01")
    other = bed.define_guest("host02", name, random_ram_mib=0)
    rc, err = hosts.migrate(name, vm_id, "host01", "host02")
    print(err)
    assert rc == 1, err
    assert summary(err) == (
        f"Migration of {name} from host01 to host02 refused: another domain named {name} "
        f"(uuid {other}, running) already exists on host02. Nothing was changed: {name} "
        f"still runs on host01 and that domain was not touched.")
    assert bed.guest_state("host02", other) == (lv.VIR_DOMAIN_RUNNING,
                                                lv.VIR_DOMAIN_RUNNING_BOOTED, True)
    bed.domain("host02", other).destroy()
    bed.domain("host02", other).undefine()
    assert_on_source_only(bed, hosts, "host01", "host02", name, uuid)


def test_sigterm_mid_migration(bed: Any, hosts: Hosts) -> None:
    """The driver's cancel: TERM to the process group, KILL 1.5 s later."""
    name, vm_id, uuid = hosts.new_vm("host01", random_ram_mib=64)
    hosts.configure("host01", "--bandwidth 8")
    proc = hosts.start_migrate(name, vm_id, "host01", "host02")
    wait_transfer(bed, "host01", uuid)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(1.5)
    except subprocess.TimeoutExpired:
        pass
    exited = time.monotonic() - sent
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _out, raw = proc.communicate(timeout=10)
    err = raw.decode()
    print(err)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert exited < 1.5
    text = summary(err)
    assert text.startswith(f"Migration of {name} from host01 to host02 cancelled (SIGTERM) "
                           f"while migrating: aborted the migration job on host01; recovery "
                           f"continues in the background (pid ")
    record = os.path.join(hosts.state_dir, f"{uuid}.json")
    log = os.path.join(hosts.state_dir, f"{uuid}.log")
    wait_for(lambda: not os.path.exists(record), 40, "the detached recovery")
    with open(log, encoding="utf-8") as fh:
        logged = fh.read()
    print(logged)
    assert f"Now {name} runs on host01 only." in logged
    assert "restored 2 snapshots on host01" in logged
    assert_on_source_only(bed, hosts, "host01", "host02", name, uuid)


def test_source_left_paused(bed: Any, hosts: Hosts) -> None:
    """FACTS 5b, for real: peer-to-peer; host02's libvirtd hangs mid-transfer; the
    source pauses for the switch-over and waits for host02; then host01's libvirtd
    crashes and restarts: the source is left PAUSED (migration), no job. host02 cannot
    be checked, so the VM might have started there: it must NOT be resumed (exit 2).
    Once host02 answers again, recover either finds the VM still only on the source (it
    destroys an incoming domain libvirt has not dropped yet, resumes the source and puts
    the snapshot metadata back) or finds that host02 completed the migration (it stops
    the stale source copy and defines the snapshot metadata on host02)."""
    lv = lvmod()
    name, vm_id, uuid = hosts.new_vm("host01", random_ram_mib=64)
    hosts.configure("host01", "--p2p --bandwidth 8")
    with open(hosts.script("host01", "libvirtrc"), "a", encoding="utf-8") as fh:
        fh.write("VMM_EXEC_RECONNECT_WAIT=15\n")
    proc = hosts.start_migrate(name, vm_id, "host01", "host02")
    wait_transfer(bed, "host01", uuid)
    bed.freeze_daemon("host02")
    bed.domain("host01", uuid).migrateSetMaxSpeed(1000)  # finish the transfer now

    def paused_for_migration() -> bool:
        got = bed.guest_state("host01", uuid)
        return got is not None and got[:2] == (lv.VIR_DOMAIN_PAUSED,
                                               lv.VIR_DOMAIN_PAUSED_MIGRATION)

    wait_for(paused_for_migration, 6, "the source to pause for the switch-over")
    # paused as soon as QEMU completes; a moment later libvirt has recorded that and
    # waits for host02's Finish (until its keepalive gives up, ~6 s after the freeze):
    # a crash then leaves the source paused. A crash before, it would resume by itself.
    time.sleep(1.0)
    bed.kill_daemon("host01")
    bed.start_daemon("host01")
    _out, raw = proc.communicate(timeout=90)
    err = raw.decode()
    print(err)
    assert proc.returncode == 2, err
    text = summary(err)
    assert f"Found: {name} paused for the migration on host01, host02 unreachable" in text
    assert ("the VM might have started there, so it was not resumed; run recover once "
            "host02's libvirt answers. The metadata of 2 snapshot(s) waits until it is known "
            f"where {name} runs; it is kept in ") in text
    assert bed.guest_state("host01", uuid)[:2] == (lv.VIR_DOMAIN_PAUSED,
                                                   lv.VIR_DOMAIN_PAUSED_MIGRATION)

    bed.thaw_daemon("host02")
    # host02 answers again. What it does next is up to libvirt and timing, and both
    # happen on this machine: it drops its incoming domain once it notices host01's
    # connection is gone (on a loaded machine that took more than 20 s, so recover may
    # still find it paused there and destroys it) -- or it first reads host01's Finish
    # request, which waited in its socket during the freeze, and completes the
    # migration: the VM then really did start on host02, the very case in which
    # resuming the source would have made two running copies.
    incoming = bed.guest_state("host02", uuid)
    assert incoming is None or incoming[0] in (lv.VIR_DOMAIN_PAUSED,
                                               lv.VIR_DOMAIN_RUNNING), incoming
    rc, err = hosts.recover("host01", name, "host01", "host02")
    print(err)
    assert rc == 0, err
    text = summary(err)
    if f"{name} running on host02 (arrived by migration)" in text:
        assert ("stopped the stale paused copy on host01 (the migration had completed), "
                "redefined 2 snapshots on host02") in text, text
        assert text.endswith(f"Now {name} runs on host02 only.")
        assert_only_on(bed, hosts, "host02", "host01", name, uuid)
        return
    assert f"resumed {name} on host01, restored 2 snapshots on host01" in text, text
    assert text.endswith(f"Now {name} runs on host01 only.")
    assert_on_source_only(bed, hosts, "host01", "host02", name, uuid)


def test_recover_after_the_client_died_p2p(bed: Any, hosts: Hosts) -> None:
    """FACTS 6b and gotcha 9: a peer-to-peer migration outlives a SIGKILLed script and
    completes; recover waits for the job, finds the VM on host02 and defines the
    snapshot metadata there from the record."""
    lv = lvmod()
    name, vm_id, uuid = hosts.new_vm("host01", random_ram_mib=64)
    hosts.configure("host01", "--p2p --bandwidth 8")
    proc = hosts.start_migrate(name, vm_id, "host01", "host02")
    wait_transfer(bed, "host01", uuid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    record = os.path.join(hosts.state_dir, f"{uuid}.json")
    with open(record, encoding="utf-8") as fh:
        assert len(json.load(fh)["snapshots"]["snapshots"]) == 2
    rc, err = hosts.recover("host01", name, "host01", "host02")
    print(err)
    assert rc == 0, err
    text = summary(err)
    assert "its migration job still active" in text
    assert "redefined 2 snapshots on host02" in text
    assert text.endswith(f"Now {name} runs on host02 only.")
    assert state(bed, "host02", uuid) == lv.VIR_DOMAIN_RUNNING
    assert bed.guest_state("host01", uuid) is None
    assert snapshots(bed, "host02", uuid) == (["snap-0", "snap-1"], "snap-1")
    assert not os.path.exists(record)
