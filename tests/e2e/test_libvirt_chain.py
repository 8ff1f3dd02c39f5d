"""Real live migrations through the whole chain, side by side with the stock script.

simulated oned → one-vmm-exec → ssh to host01 (a real sshd) → the migrate script
→ libvirt (two real session libvirtds, ``tests/libvirt_bed.py``) → QEMU.

The driver runs the libvirt framework instead of the stock ``vmm/kvm/migrate``
through the framework's hook file (``instead vmm:migrate``), installed with its
``install.sh`` into the world's remotes tree, which the hosts get like any
remotes. The same cases run with a transcription of the stock script
(``tests/stock_migrate.sh``, the same virsh commands) behind the same hook
point, so that what each leaves behind is measured on the same faults; the
README's table is this file's ``EXPECTED``.

After every failure, with the framework: oned got one FAILURE, the VM runs on
the source only, nothing of it is left on the destination, its snapshot
metadata is intact, the driver's rollback (``tm failmigrate``; default mode:
the target's network ``clean`` first) and the add-on's ``fail`` hook ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from .kit import PROJECT_ROOT, World, context, format_journal

lvbed = pytest.importorskip("libvirt_bed")

pytestmark = pytest.mark.libvirt

SRC, DST = "host01", "host02"
FRAMEWORK = PROJECT_ROOT / "drivers" / "libvirt"
STOCK = PROJECT_ROOT / "tests" / "stock_migrate.sh"
THROTTLE = "--bandwidth 8"   # MiB/s: 64 MiB of random RAM take several seconds
MIB = 1 << 20
SNAPSHOTS = (["snap-0", "snap-1"], "snap-1")


def lv() -> Any:
    return lvbed.libvirt_module()


# --------------------------------------------------------------------------------------
# the chain
# --------------------------------------------------------------------------------------

class Chain:
    """A world whose hosts run the framework (or the stock transcription) on libvirt."""

    def __init__(self, world: World, bed: Any, implementation: str) -> None:
        self.world = world
        self.bed = bed
        self.implementation = implementation
        self.state_dir = os.path.join(world.root, "libvirt-state")
        os.makedirs(self.state_dir)
        os.chmod(self.state_dir, 0o1777)
        subprocess.run(["sh", str(FRAMEWORK / "install.sh"), world.remotes], check=True,
                       capture_output=True, timeout=30)
        if implementation == "stock":
            stock_dir = os.path.join(world.remotes, "vmm_exec", "stock")
            os.makedirs(stock_dir)
            shutil.copy(STOCK, os.path.join(stock_dir, "migrate"))
            hook = os.path.join(world.remotes, "vmm_exec", "hooks.d",
                                "10-libvirt-migrate.toml")
            with open(hook, encoding="utf-8") as handle:
                text = handle.read()
            with open(hook, "w", encoding="utf-8") as handle:
                handle.write(text.replace("vmm_exec/libvirt/migrate", "vmm_exec/stock/migrate"))
        for top, dirs, _files in os.walk(os.path.join(world.remotes, "vmm_exec")):
            for entry in dirs:
                os.chmod(os.path.join(top, entry), 0o755)
        os.chmod(os.path.join(world.remotes, "vmm_exec"), 0o755)
        # the add-on's fail hook: on the front-end, it notes that it ran
        self.fail_mark = os.path.join(world.root, "fail-hook.ran")
        hooks = os.path.join(world.root, "hooks")
        os.makedirs(os.path.join(hooks, "scripts"))
        script = os.path.join(hooks, "scripts", "noted")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(f"#!/bin/sh\necho \"$VMM_HOOK_ACTION $VMM_FAILED_STEP\" >> "
                         f"{self.fail_mark}\n")
        os.chmod(script, 0o755)
        with open(os.path.join(hooks, "50-noted.toml"), "w", encoding="utf-8") as handle:
            handle.write('[[hook]]\npoint = "fail"\nwhere = "frontend"\n'
                         'script = "scripts/noted"\n')
        self.hooks_dir = hooks
        world.reset_hosts(with_remotes=(SRC, DST, "host03", "host04"))
        for host in (SRC, DST):
            self.configure(host)

    def configure(self, host: str, migrate_options: str = "") -> None:
        """What a host's own configuration says: its libvirt, the destinations'."""
        remote = self.world.host_path(host, "var", "tmp", "one")
        etc = os.path.join(remote, "etc", "vmm", "kvm")
        os.makedirs(etc, exist_ok=True)
        with open(os.path.join(etc, "kvmrc"), "w", encoding="utf-8") as handle:
            handle.write(f"export LIBVIRT_URI='{self.bed.uri(host)}'\n"
                         f"export MIGRATE_OPTIONS='{migrate_options}'\n"
                         f"export VMM_EXEC_DEST_URI='{self.bed.uri_template}'\n")
        with open(os.path.join(remote, "vmm_exec", "libvirt", "libvirtrc"), "w",
                  encoding="utf-8") as handle:
            handle.write(f"VMM_EXEC_DEST_URI='{self.bed.uri_template}'\n"
                         f"VMM_EXEC_STATE_DIR='{self.state_dir}'\n"
                         "VMM_EXEC_PROGRESS_INTERVAL=1\nVMM_EXEC_JOB_WAIT=30\n"
                         "VMM_EXEC_RECONNECT_WAIT=2\nVMM_EXEC_CONNECT_TIMEOUT=5\n")
        for top, dirs, files in os.walk(remote):
            for entry in dirs + files:
                shutil.chown(os.path.join(top, entry), self.world.testbed.user)

    def new_vm(self, vmid: int, random_ram_mib: int = 0) -> Tuple[str, str]:
        """``one-<vmid>`` running on the source, transient like OpenNebula's, with the
        metadata of two snapshots (snap-1 current): ``(name, uuid)``."""
        name = f"one-{vmid}"
        uuid = self.bed.define_guest(SRC, name, random_ram_mib=random_ram_mib)
        dom = self.bed.domain(SRC, uuid)
        dom.undefine()
        self.bed.add_snapshot_metadata(SRC, name, "snap-0")
        self.bed.add_snapshot_metadata(SRC, name, "snap-1")
        snap = dom.snapshotLookupByName("snap-1")
        dom.snapshotCreateXML(snap.getXMLDesc(0), lv().VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
                              | lv().VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT)
        return name, uuid

    def message(self, vmid: int, src: str = SRC, dst: str = DST) -> str:
        xml = self.world.migrate_xml(vmid, src, dst)
        return xml.replace("<SHARED><![CDATA[NO]]></SHARED>", "<SHARED><![CDATA[YES]]></SHARED>")

    def driver(self, args: str = "-t 15 -r 0 kvm", compat: Optional[str] = None,
               transport: Optional[str] = None) -> Any:
        return self.world.start_driver(args, compat=compat, transport=transport,
                                       hooks_dirs=(self.hooks_dir,))

    # what is where --------------------------------------------------------------------
    def state(self, host: str, uuid: str) -> Optional[Tuple[int, int, bool]]:
        return self.bed.guest_state(host, uuid)

    def snapshots(self, host: str, uuid: str) -> Tuple[List[str], Optional[str]]:
        dom = self.bed.domain(host, uuid)
        if dom is None:
            return [], None
        current = dom.snapshotCurrent().getName() if dom.hasCurrentSnapshot() else None
        return sorted(s.getName() for s in dom.listAllSnapshots(0)), current

    def wait_transfer(self, uuid: str, mib: int = 12, timeout: float = 40) -> None:
        """Until the migration job of ``uuid`` on the source has sent ``mib`` MiB."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dom = self.bed.domain(SRC, uuid)
            try:
                stats = dom.jobStats() if dom is not None else {}
            except lv().libvirtError:
                stats = {}
            if stats.get("type") == lv().VIR_DOMAIN_JOB_UNBOUNDED and \
                    stats.get("memory_processed", 0) >= mib * MIB:
                return
            time.sleep(0.1)
        raise AssertionError(f"no migration of {uuid} got past {mib} MiB")

    def settle(self, uuid: str, timeout: float = 40) -> None:
        """Until nothing of ``uuid`` moves any more (a background recovery finished)."""
        deadline = time.monotonic() + timeout
        last = None
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            now = (self.state(SRC, uuid), self.state(DST, uuid), self.snapshots(SRC, uuid))
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 3:
                return
            time.sleep(0.3)

    def qemu_of(self, host: str, uuid: str) -> List[int]:
        """QEMU processes of ``uuid`` on ``host`` (libvirt gives QEMU ``-uuid``), whether
        or not that host's libvirtd still knows them."""
        found = []
        for pid in self.bed.qemu_pids(host):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if uuid.encode() in handle.read():
                        found.append(pid)
            except OSError:
                pass
        return found

    def outcome(self, name: str, uuid: str) -> str:
        """What the hosts hold afterwards, in words (the README table's cells)."""
        src, dst = self.state(SRC, uuid), self.state(DST, uuid)
        words = []
        if src is None:
            words.append("source: gone")
        else:
            words.append("source: running" if src[0] == lv().VIR_DOMAIN_RUNNING
                         else "source: PAUSED" if src[0] == lv().VIR_DOMAIN_PAUSED
                         else f"source: state {src[0]}")
            words.append("snapshots intact" if self.snapshots(SRC, uuid) == SNAPSHOTS
                         else "snapshots LOST")
        if dst is not None or self.qemu_of(DST, uuid):
            words.append("destination: copy LEFT")
        else:
            words.append("destination: clean")
        return ", ".join(words)


@pytest.fixture
def bed(libvirt_bed: Any) -> Iterator[Any]:
    try:
        lv().registerErrorHandler(lambda *_a: None, None)
    except lvbed.Unavailable as exc:
        pytest.skip(str(exc))
    yield libvirt_bed
    for host in (SRC, DST):
        if libvirt_bed.frozen(host) or not libvirt_bed.running(host):
            libvirt_bed.start_daemon(host)
    libvirt_bed.destroy_all()


def make_chain(world: World, bed: Any, implementation: str = "framework") -> Chain:
    return Chain(world, bed, implementation)


# --------------------------------------------------------------------------------------
# success
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["openssh", "paramiko"])
def test_live_migration_there_and_back(world: World, bed: Any, transport: str) -> None:
    chain = make_chain(world, bed)
    name, uuid = chain.new_vm(301)
    oned = chain.driver(transport=transport)
    answer = oned_act(oned, "MIGRATE", 301, chain.message(301))
    why = context(world, oned)
    assert answer.success, why
    assert chain.state(DST, uuid)[0] == lv().VIR_DOMAIN_RUNNING, why
    assert chain.state(SRC, uuid) is None
    assert chain.snapshots(DST, uuid) == SNAPSHOTS
    texts = [log.text for log in oned.logs(301)]
    assert any(t.startswith(f"Migrated {name} from {SRC} to {DST}") for t in texts) or \
        "Successfully execute virtualization driver operation: migrate." in texts, why
    answer = oned_act(oned, "MIGRATE", 301, chain.message(301, DST, SRC))
    assert answer.success, context(world, oned)
    assert chain.state(SRC, uuid)[0] == lv().VIR_DOMAIN_RUNNING
    assert chain.state(DST, uuid) is None
    assert chain.snapshots(SRC, uuid) == SNAPSHOTS
    assert oned.finalize(timeout=30) == 0


def oned_act(oned: Any, action: str, vmid: int, xml: str, timeout: float = 90) -> Any:
    oned.send_action(action, vmid, xml)
    return oned.wait_answer(vmid, timeout=timeout, action=action)


# --------------------------------------------------------------------------------------
# failures, framework and stock side by side
# --------------------------------------------------------------------------------------

Fault = Callable[[Chain, Any, str, str, int], None]   # (chain, oned, name, uuid, vmid)


def dest_daemon_down(chain: Chain, oned: Any, name: str, uuid: str, vmid: int) -> None:
    chain.bed.stop_daemon(DST)


def dest_qemu_killed(chain: Chain, oned: Any, name: str, uuid: str, vmid: int) -> None:
    chain.wait_transfer(uuid)
    for pid in chain.bed.qemu_pids(DST, name):
        os.kill(pid, 9)


def dest_daemon_killed(chain: Chain, oned: Any, name: str, uuid: str, vmid: int) -> None:
    chain.wait_transfer(uuid)
    chain.bed.kill_daemon(DST)


def same_name_on_dest(chain: Chain, oned: Any, name: str, uuid: str, vmid: int) -> None:
    chain.other = chain.bed.define_guest(DST, name)  # type: ignore[attr-defined]


def driver_cancel(chain: Chain, oned: Any, name: str, uuid: str, vmid: int) -> None:
    chain.wait_transfer(uuid)
    oned.cancel(vmid)


def timeout_expires(chain: Chain, oned: Any, name: str, uuid: str, vmid: int) -> None:
    pass  # the driver runs with -w 4; the throttled migration takes longer


def source_left_paused(chain: Chain, oned: Any, name: str, uuid: str, vmid: int) -> None:
    """FACTS 5b: peer-to-peer, the target hangs while the source waits paused for the
    switch-over, then the source's libvirtd dies and comes back."""
    chain.wait_transfer(uuid, mib=4)
    chain.bed.freeze_daemon(DST)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        got = chain.state(SRC, uuid)
        if got is not None and got[0] == lv().VIR_DOMAIN_PAUSED:
            break
        time.sleep(0.2)
    chain.bed.kill_daemon(SRC)
    chain.bed.start_daemon(SRC)


CASES: Dict[str, Tuple[Fault, str, bool]] = {
    # name: (fault, MIGRATE_OPTIONS, throttled)
    "destination daemon down": (dest_daemon_down, "", False),
    "destination QEMU killed mid-migration": (dest_qemu_killed, THROTTLE, True),
    "destination daemon killed mid-migration": (dest_daemon_killed, THROTTLE, True),
    "same name already on the destination": (same_name_on_dest, "", False),
    "DRIVER_CANCEL mid-migration": (driver_cancel, THROTTLE, True),
    "-w expiring mid-migration": (timeout_expires, THROTTLE, True),
    "source left paused": (source_left_paused, f"--p2p {THROTTLE}", True),
}

# faults that are there before the migration starts
BEFORE_THE_START = ("destination daemon down", "same name already on the destination")

# what each leaves behind (README: "the stock script beside the framework")
EXPECTED: Dict[Tuple[str, str], str] = {}
FRAMEWORK_OUTCOME = "source: running, snapshots intact, destination: clean"
for _case in CASES:
    EXPECTED[(_case, "framework")] = FRAMEWORK_OUTCOME
EXPECTED.update({
    ("destination daemon down", "stock"):
        "source: running, snapshots LOST, destination: clean",
    ("destination QEMU killed mid-migration", "stock"):
        "source: running, snapshots LOST, destination: clean",
    ("destination daemon killed mid-migration", "stock"):
        "source: running, snapshots LOST, destination: clean",
    ("same name already on the destination", "stock"):
        "source: running, snapshots LOST, destination: clean",
    ("DRIVER_CANCEL mid-migration", "stock"):
        "source: running, snapshots LOST, destination: clean",
    ("-w expiring mid-migration", "stock"):
        "source: running, snapshots LOST, destination: clean",
    ("source left paused", "stock"):
        "source: PAUSED, snapshots LOST, destination: clean",
})


@pytest.mark.parametrize("implementation", ["framework", "stock"])
@pytest.mark.parametrize("case", list(CASES))
def test_failure(world: World, bed: Any, case: str, implementation: str) -> None:
    fault, options, _throttled = CASES[case]
    vmid = 310 + list(CASES).index(case) * 2 + (implementation == "stock")
    chain = make_chain(world, bed, implementation)
    for host in (SRC, DST):
        chain.configure(host, options)
    name, uuid = chain.new_vm(vmid, random_ram_mib=48 if _throttled else 0)
    # -w 4 is the fault of its case; -w 40 bounds the stock script, which waits for a
    # destination that does not answer as long as it takes
    args = ("-w 4 -t 15 -r 0 kvm" if case.startswith("-w")
            else "-w 25 -t 15 -r 0 kvm" if case == "source left paused" else "-t 15 -r 0 kvm")
    oned = chain.driver(args)
    before = case in BEFORE_THE_START
    if before:
        fault(chain, oned, name, uuid, vmid)
    oned.send_action("MIGRATE", vmid, chain.message(vmid))
    if not before:
        fault(chain, oned, name, uuid, vmid)
    cancelled = case.startswith("DRIVER_CANCEL")
    if not cancelled:
        answer = oned.wait_answer(vmid, timeout=120, action="MIGRATE")
        why = context(world, oned)
        assert not answer.success, f"{case}: {answer}{why}"
    else:
        time.sleep(1.0)
        assert oned.answers(vmid) == [], "a cancelled action gets no answer"
    # a daemon that went away comes back, as an operator would bring it back
    for host in (SRC, DST):
        if chain.bed.frozen(host):
            chain.bed.thaw_daemon(host)
        if not chain.bed.running(host):
            chain.bed.start_daemon(host)
    if implementation == "framework" and case in ("destination daemon killed mid-migration",
                                                  "source left paused"):
        # the framework said the destination could not be checked: `recover` once it
        # answers (an operator, or a fail hook)
        done = world.ssh(SRC, "var/tmp/one/vmm_exec/libvirt/recover --hypervisor kvm "
                              f"{name} {SRC} {DST}", timeout=120)
        assert done.returncode == 0, done.stderr
    chain.settle(uuid)
    got = chain.outcome(name, uuid)
    record_outcome(case, implementation, got)
    if case.startswith("same name"):
        other = chain.state(DST, chain.other)  # type: ignore[attr-defined]
        if implementation == "framework":
            assert other is not None and other[0] == lv().VIR_DOMAIN_RUNNING, \
                "the other domain of that name was touched"
            got_other = "untouched"
        else:
            got_other = "running" if other and other[0] == lv().VIR_DOMAIN_RUNNING else "DESTROYED"
        record_outcome(case, implementation, got + f"; other domain: {got_other}")
        chain.bed.destroy_all()
    expected = EXPECTED[(case, implementation)]
    assert got == expected, f"{case} with {implementation}: {got}\n" + \
        format_journal(world.journal(), world.root)
    if implementation == "framework" and not cancelled:
        calls = world.calls(vmid)
        scripts = [script for _host, script in calls]
        assert "tm/ssh/failmigrate" in scripts, calls
        assert (DST, "vnm/bridge/clean") in calls, calls  # default mode: target network
        with open(chain.fail_mark, encoding="utf-8") as handle:
            assert handle.read().split() == ["MIGRATE", "vmm:migrate"]
    oned.finalize(timeout=60)


def test_failure_in_strict_mode(world: World, bed: Any) -> None:
    """Strict mode runs the Ruby step list: after the framework's own recovery only the
    stock rollback (``tm failmigrate``), no target network clean; the VM is back on the
    source all the same, snapshots intact, one FAILURE."""
    chain = make_chain(world, bed)
    for host in (SRC, DST):
        chain.configure(host, THROTTLE)
    name, uuid = chain.new_vm(399, random_ram_mib=48)
    oned = chain.driver(compat="strict")
    oned.send_action("MIGRATE", 399, chain.message(399))
    dest_qemu_killed(chain, oned, name, uuid, 399)
    answer = oned.wait_answer(399, timeout=120, action="MIGRATE")
    assert not answer.success, context(world, oned)
    assert "runs on host01 only" in answer.info, answer.info
    chain.settle(uuid)
    assert chain.outcome(name, uuid) == FRAMEWORK_OUTCOME
    calls = world.calls(399)
    assert ("frontend", "tm/ssh/failmigrate") in calls and (DST, "vnm/bridge/clean") not in calls
    assert oned.finalize(timeout=60) == 0


OUTCOMES: Dict[Tuple[str, str], str] = {}


def record_outcome(case: str, implementation: str, outcome: str) -> None:
    OUTCOMES[(case, implementation)] = outcome
    path = os.environ.get("VMM_EXEC_OUTCOMES")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{case}\t{implementation}\t{outcome}\n")
