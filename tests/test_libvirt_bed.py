"""The libvirt test bed: two session libvirtds of dedicated users, real QEMU (TCG) guests,
real live migrations between them with libvirt-python, and daemon failures on demand.

One bed for the module (the ``libvirt_bed`` fixture of conftest); every wait is bounded.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from typing import Any, Callable, Dict, List, Set, Tuple

import pytest
from libvirt_bed import LibvirtBed, pid_alive

pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.skipif(sys.platform != "linux", reason="the libvirt test bed needs Linux"),
]

HOSTS = ("host01", "host02")


@pytest.fixture(scope="module")
def lv() -> Any:
    """The libvirt-python module (the ``[kvm]`` extra); one clear skip line without it."""
    from libvirt_bed import Unavailable, libvirt_module

    try:
        return libvirt_module()
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def lbed(lv: Any, libvirt_bed: LibvirtBed) -> LibvirtBed:
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in libvirt_bed.timings.items())
    print(f"\nlibvirt test bed up: {timings}")
    return libvirt_bed


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s")
        time.sleep(0.05)


def live_flags(lv: Any) -> int:
    return int(lv.VIR_MIGRATE_LIVE | lv.VIR_MIGRATE_PERSIST_DEST
               | lv.VIR_MIGRATE_UNDEFINE_SOURCE)


def assert_runs_only_on(lv: Any, bed: LibvirtBed, uuid: str, where: str) -> None:
    other = next(h for h in HOSTS if h != where)
    state = bed.guest_state(where, uuid)
    assert state is not None and state[0] == lv.VIR_DOMAIN_RUNNING and state[2], state
    assert bed.guest_state(other, uuid) is None


def tcp_remote_ends() -> Set[Tuple[str, int]]:
    """(remote address, remote port) of every established IPv4 connection."""
    ends = set()
    with open("/proc/net/tcp", encoding="ascii") as handle:
        next(handle)
        for line in handle:
            fields = line.split()
            if fields[3] == "01":  # ESTABLISHED
                raw, port = fields[2].split(":")
                ends.add((socket.inet_ntoa(int(raw, 16).to_bytes(4, sys.byteorder)),
                          int(port, 16)))
    return ends


# --------------------------------------------------------------------------------------
# the endpoints
# --------------------------------------------------------------------------------------

def test_two_distinct_hosts(lv: Any, lbed: LibvirtBed) -> None:
    uuids = {}
    for index, name in enumerate(HOSTS):
        host = lbed.hosts[name]
        pid = lbed.daemon_pid(name)
        assert pid is not None and pid_alive(pid)
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            uid_line = next(line for line in handle if line.startswith("Uid:"))
        assert {int(x) for x in uid_line.split()[1:]} == {host.uid}
        assert host.user == f"lv-{name}" and host.uid != 0
        assert pid in lbed.processes(name)
        assert host.address == f"127.0.0.{index + 2}"
        # the socket: group rw, reachable through the 2750 directory
        info = os.stat(lbed.socket_path(name))
        assert stat.S_ISSOCK(info.st_mode) and info.st_mode & 0o777 == 0o770
        assert info.st_gid == os.stat(host.sock_dir).st_gid
        assert lbed.uri(name) == lbed.socket_dir_template.format(host=name)
        conn = lbed.connect(name)
        try:
            caps = ET.fromstring(conn.getCapabilities())
            uuids[name] = caps.findtext("host/uuid")
            assert conn.getURI() == lbed.uri(name)
        finally:
            conn.close()
        assert uuids[name] == lbed.host_uuid(name)
    assert len(set(uuids.values())) == len(HOSTS)
    # distinct migration port ranges below the ephemeral ports
    first, second = (lbed.hosts[n] for n in HOSTS)
    assert first.port_max < second.port_min and second.port_max < 32768


# --------------------------------------------------------------------------------------
# guests and live migrations
# --------------------------------------------------------------------------------------

def test_guest_starts_and_migrates_both_ways(lv: Any, lbed: LibvirtBed) -> None:
    began = time.monotonic()
    uuid = lbed.define_guest("host01", "lvb-roundtrip", ram_mib=64, random_ram_mib=0)
    started = time.monotonic() - began
    assert_runs_only_on(lv, lbed, uuid, "host01")
    qemus = lbed.qemu_pids("host01", "lvb-roundtrip")
    assert len(qemus) == 1 and qemus <= lbed.processes("host01")
    assert os.stat(lbed.serial_path("lvb-roundtrip")).st_mode & 0o777 == 0o666

    src, dst = lbed.connect("host01"), lbed.connect("host02")
    try:
        # client-managed, host01 -> host02
        began = time.monotonic()
        src.lookupByUUIDString(uuid).migrate3(dst, {}, live_flags(lv))
        forth = time.monotonic() - began
        assert_runs_only_on(lv, lbed, uuid, "host02")
        state = lbed.guest_state("host02", uuid)
        assert state is not None and state[1] == lv.VIR_DOMAIN_RUNNING_MIGRATED
        wait_for(lambda: not any(pid_alive(p) for p in qemus), 10, "source QEMU gone")
        assert lbed.qemu_pids("host01") == set() and len(lbed.qemu_pids("host02")) == 1
        # peer-to-peer, host02 -> host01: host02's daemon opens host01's socket itself
        began = time.monotonic()
        dst.lookupByUUIDString(uuid).migrateToURI3(
            lbed.uri("host01"), {}, live_flags(lv) | lv.VIR_MIGRATE_PEER2PEER)
        back = time.monotonic() - began
        assert_runs_only_on(lv, lbed, uuid, "host01")
    finally:
        src.close()
        dst.close()
    print(f"\nguest start {started:.2f}s, migrate3 01->02 {forth:.2f}s, "
          f"p2p 02->01 {back:.2f}s")


def test_snapshot_metadata(lv: Any, lbed: LibvirtBed) -> None:
    """Metadata can be added and listed; libvirt 9.0 refuses to migrate a guest that has
    any, so a migration must carry it over itself: dump, delete (metadata only),
    migrate, redefine on the target."""
    uuid = lbed.define_guest("host01", "lvb-snap", ram_mib=64, random_ram_mib=0)
    assert lbed.add_snapshot_metadata("host01", "lvb-snap", "first", "before") == "first"
    assert lbed.add_snapshot_metadata("host01", "lvb-snap", "second") == "second"
    assert lbed.snapshot_names("host01", uuid) == ["first", "second"]
    src, dst = lbed.connect("host01"), lbed.connect("host02")
    try:
        dom = src.lookupByUUIDString(uuid)
        with pytest.raises(lv.libvirtError, match="cannot migrate domain with 2 snapshots"):
            dom.migrate3(dst, {}, live_flags(lv))
        assert_runs_only_on(lv, lbed, uuid, "host01")

        snapshots = dom.listAllSnapshots(lv.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)
        saved = [(s.getXMLDesc(lv.VIR_DOMAIN_SNAPSHOT_XML_SECURE), s.isCurrent())
                 for s in snapshots]
        for snapshot in snapshots:
            snapshot.delete(lv.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        moved = dom.migrate3(dst, {}, live_flags(lv))
        for xml, current in saved:
            flags = lv.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
            if current:
                flags |= lv.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
            moved.snapshotCreateXML(xml, flags)
        assert_runs_only_on(lv, lbed, uuid, "host02")
        assert lbed.snapshot_names("host02", uuid) == ["first", "second"]
        description = moved.snapshotLookupByName("first").getXMLDesc(0)
        assert "<description>before</description>" in description
    finally:
        src.close()
        dst.close()


def test_throttled_migration_is_observable(lv: Any, lbed: LibvirtBed) -> None:
    """64 MiB of random data in RAM at 16 MiB/s: the job runs for seconds, the
    incoming guest waits paused on the target, the data goes to the target's own
    loopback address and migration port range."""
    uuid = lbed.define_guest("host01", "lvb-slow", ram_mib=128, random_ram_mib=64)
    result: Dict[str, Any] = {}

    def migrate() -> None:
        conn = lbed.connect("host01")
        try:
            conn.lookupByUUIDString(uuid).migrateToURI3(
                lbed.uri("host02"), {lv.VIR_MIGRATE_PARAM_BANDWIDTH: 16},
                live_flags(lv) | lv.VIR_MIGRATE_PEER2PEER)
            result["ok"] = True
        except lv.libvirtError as exc:
            result["error"] = str(exc)
        finally:
            conn.close()

    watcher = lbed.connect("host01")
    target = lbed.hosts["host02"]
    thread = threading.Thread(target=migrate, daemon=True)
    began = time.monotonic()
    thread.start()
    try:
        dom = watcher.lookupByUUIDString(uuid)
        seen = []   # (time, memory_processed) while the job runs
        peers: Set[Tuple[str, int]] = set()
        incoming = set()  # states of the incoming guest on host02
        while thread.is_alive() and time.monotonic() - began < 60:
            try:
                stats = dom.jobStats()
            except lv.libvirtError:
                break
            if stats.get("type") == lv.VIR_DOMAIN_JOB_UNBOUNDED:
                seen.append((time.monotonic(), stats.get("memory_processed", 0)))
                peers |= tcp_remote_ends()
                state = lbed.guest_state("host02", uuid)
                if state is not None:
                    incoming.add(state[:2])
            time.sleep(0.2)
        thread.join(60)
    finally:
        watcher.close()
    total = time.monotonic() - began
    assert result == {"ok": True}, result
    assert_runs_only_on(lv, lbed, uuid, "host02")
    assert seen, "no migration job seen"
    assert seen[-1][0] - seen[0][0] >= 2.0, f"job seen for {seen[-1][0] - seen[0][0]:.2f}s"
    assert seen[-1][1] > seen[0][1] + (16 << 20)
    # first PAUSED/STARTING_UP, then PAUSED/MIGRATION while the data comes in
    assert (lv.VIR_DOMAIN_PAUSED, lv.VIR_DOMAIN_PAUSED_MIGRATION) in incoming, incoming
    assert any(addr == target.address and target.port_min <= port <= target.port_max
               for addr, port in peers), peers
    print(f"\nthrottled migration (64 MiB random, 16 MiB/s) {total:.2f}s, "
          f"job seen for {seen[-1][0] - seen[0][0]:.2f}s")


# --------------------------------------------------------------------------------------
# daemon failures
# --------------------------------------------------------------------------------------

def test_frozen_daemon_call_fails_within_keepalive(lv: Any, lbed: LibvirtBed) -> None:
    uuid = lbed.define_guest("host02", "lvb-freeze", ram_mib=64, random_ram_mib=0)
    conn = lbed.connect("host02")
    conn.getVersion()
    lbed.freeze_daemon("host02")
    try:
        assert lbed.frozen("host02")
        began = time.monotonic()
        with pytest.raises(lv.libvirtError):
            conn.listAllDomains(0)
        waited = time.monotonic() - began
        assert waited < 12, waited
        assert lbed.qemu_pids("host02", "lvb-freeze")  # the guest runs on
    finally:
        lbed.thaw_daemon("host02")
        try:
            conn.close()
        except lv.libvirtError:
            pass
    assert not lbed.frozen("host02")
    state = lbed.guest_state("host02", uuid)
    assert state is not None and state[0] == lv.VIR_DOMAIN_RUNNING
    print(f"\ncall to a frozen libvirtd failed after {waited:.2f}s")


def test_bed_calls_survive_a_connection_its_keepalive_closed(lv: Any, lbed: LibvirtBed) -> None:
    """The bed's own connection dies during a freeze (keepalive); a call that finds it
    dead runs once more on a new connection instead of failing the test that asked
    (seen in CI: ``guest_state`` right after ``thaw_daemon`` raised "connection closed
    due to keepalive timeout")."""
    uuid = lbed.define_guest("host02", "lvb-keepalive", ram_mib=64, random_ram_mib=0)
    calls: List[Any] = []

    def read(conn: Any) -> int:
        calls.append(conn)
        if len(calls) == 1:
            lbed.freeze_daemon("host02")
            try:
                conn.listAllDomains(0)  # fails once the keepalive gives up
            finally:
                os.kill(lbed.daemon_pid("host02") or 0, signal.SIGCONT)
        return int(conn.lookupByUUIDString(uuid).state()[0])

    try:
        assert lbed._on_conn("host02", read) == lv.VIR_DOMAIN_RUNNING
    finally:
        lbed.thaw_daemon("host02")
    assert len(calls) == 2 and calls[0] is not calls[1]


def test_kill_stop_and_start_daemon(lv: Any, lbed: LibvirtBed) -> None:
    uuid = lbed.define_guest("host02", "lvb-crash", ram_mib=64, random_ram_mib=0)
    qemus = lbed.qemu_pids("host02", "lvb-crash")
    assert len(qemus) == 1
    for how in ("kill", "stop"):
        old = lbed.daemon_pid("host02")
        assert old is not None
        began = time.monotonic()
        (lbed.kill_daemon if how == "kill" else lbed.stop_daemon)("host02")
        assert time.monotonic() - began < 6
        assert lbed.daemon_pid("host02") is None and not pid_alive(old)
        with pytest.raises(lv.libvirtError):
            lbed.connect("host02")
        assert all(pid_alive(p) for p in qemus), f"QEMU died with libvirtd ({how})"
        began = time.monotonic()
        new = lbed.start_daemon("host02")
        restarted = time.monotonic() - began
        assert new != old and pid_alive(new) and lbed.daemon_pid("host02") == new
        state = lbed.guest_state("host02", uuid)  # picked up again
        assert state is not None and state[0] == lv.VIR_DOMAIN_RUNNING, (how, state)
        print(f"\nlibvirtd {how} + start_daemon: answering again after {restarted:.2f}s")
    # a frozen daemon can be stopped too (SIGCONT follows the SIGTERM)
    lbed.freeze_daemon("host02")
    lbed.stop_daemon("host02")
    assert lbed.daemon_pid("host02") is None and not lbed.frozen("host02")
    lbed.start_daemon("host02")
    assert lbed.guest_state("host02", uuid) is not None


SCRIPT = r"""
import sys, libvirt, xml.etree.ElementTree as ET
template, names = sys.argv[1], sys.argv[2:]
for name in names:
    try:
        conn = libvirt.open(template.format(host=name))
    except libvirt.libvirtError as exc:
        print(name, "ERROR", exc.get_error_code())
        continue
    print(name, ET.fromstring(conn.getCapabilities()).findtext("host/uuid"))
    conn.close()
"""


def run_as(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    entry = pwd.getpwnam(user)
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={entry.pw_gid}",
                           "--init-groups", "--reset-env", "--", *argv],
                          capture_output=True, text=True, timeout=30, cwd="/")


def test_group_member_reaches_both_hosts(lbed: LibvirtBed) -> None:
    """A script as the extra group member (the sshd test bed's user), with the hosts'
    own /usr/bin/python3 and python3-libvirt, builds each URI from the host name."""
    (member,) = lbed.extra_group_members
    argv = ["/usr/bin/python3", "-c", SCRIPT, lbed.socket_dir_template, *HOSTS]
    result = run_as(member, *argv)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines == {name: lbed.host_uuid(name) for name in HOSTS}, result.stdout
    # and the group is what lets it in: a user outside it is refused
    result = run_as("nobody", *argv)
    assert result.returncode == 0, result.stderr
    assert all(" ERROR " in line for line in result.stdout.splitlines()), result.stdout


# --------------------------------------------------------------------------------------
# teardown (last: it stops the module's bed)
# --------------------------------------------------------------------------------------

def test_stop_leaves_nothing(lv: Any, lbed: LibvirtBed) -> None:
    lbed.define_guest("host01", "lvb-left", ram_mib=64, random_ram_mib=0)
    lbed.add_snapshot_metadata("host01", "lvb-left", "kept")
    pids = set()
    for name in HOSTS:
        pids |= lbed.processes(name)
    assert lbed.qemu_pids("host01", "lvb-left")
    base = lbed.base
    users = [h.uid for h in lbed.hosts.values()]
    began = time.monotonic()
    lbed.stop()
    took = time.monotonic() - began
    assert not any(pid_alive(p) for p in pids)
    for name in HOSTS:
        assert lbed.processes(name) == set()
    assert not os.path.exists(base)
    assert all(pwd.getpwuid(uid) for uid in users)  # users stay
    lbed.stop()  # twice is fine
    print(f"\nlibvirt test bed stopped in {took:.2f}s")
