"""Threads and connections stay bounded by ``-t`` and the pool, not by the hosts.

Two dozen real sshds. The paramiko pool, driven directly: connections never
exceed ``max_connections``, handshakes never exceed ``max_handshakes``, and once
idle past ``idle_timeout`` every connection, its paramiko thread and the
keepalive thread go away. The driver, through the simulated oned: a storm of
requests over every host with ``-t 4 --max-connections 4 --max-handshakes 2``
is answered once each, while its threads stay within ``2 × -t + 10`` and its
established connections to the hosts within the pool size.

No timing is asserted; every wait is bounded.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Set, Tuple

import pytest
from e2e.kit import World
from testbed import Testbed, host_names

from vmm_exec.cancel import CancelScope
from vmm_exec.transports.base import Execution

paramiko = pytest.importorskip("paramiko")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the test bed needs Linux")

from vmm_exec.transports.paramiko import ParamikoTransport, keepalive  # noqa: E402
from vmm_exec.transports.paramiko.pool import Connection, Pool  # noqa: E402

HOSTS = host_names(24)
THREADS = 4
HANDSHAKES = 2
SETTLE = 15.0  # bound of every wait for something to go away


@pytest.fixture(scope="module")
def many(make_testbed: Callable[..., Testbed]) -> Iterator[Testbed]:
    bed = make_testbed(names=HOSTS)
    yield bed
    bed.stop()


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Watched:
    """Counts the pool's connector calls at once and the connections alive."""

    def __init__(self, pool: Pool) -> None:
        self.lock = threading.Lock()
        self.connecting = self.peak_connecting = 0
        self.alive = self.peak_alive = 0
        self._connect = pool._connector
        pool._connector = self.connect

    def connect(self, host: str, deadline: object, scope: CancelScope) -> Connection:
        with self.lock:
            self.connecting += 1
            self.peak_connecting = max(self.peak_connecting, self.connecting)
        try:
            conn = self._connect(host, deadline, scope)  # type: ignore[arg-type]
        finally:
            with self.lock:
                self.connecting -= 1
        with self.lock:
            self.alive += 1
            self.peak_alive = max(self.peak_alive, self.alive)
        close = conn.close

        def closing(wait: float = 0.0) -> None:
            with self.lock:
                self.alive -= 1
            close(wait)

        conn.close = closing  # type: ignore[method-assign]
        return conn


def paramiko_threads() -> List[threading.Thread]:
    """paramiko's transport threads and our keepalive and alarm threads, still running."""
    return [t for t in threading.enumerate()
            if isinstance(t, paramiko.Transport) or t.name in ("keepalives", "alarms")]


def test_pool_connections_handshakes_and_idle_threads_are_bounded(
        many: Testbed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", many.client_home)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    before = len(paramiko_threads())
    transport = ParamikoTransport(max_connections=THREADS, max_handshakes=HANDSHAKES)
    transport.pool.idle_timeout = 1.0
    watched = Watched(transport.pool)
    work = [host for _round in range(2) for host in HOSTS]
    results: List[object] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                host = work.pop(0)
            try:
                result: object = transport.run(CancelScope(), host, "echo ok", None, 60)
            except Exception as exc:  # noqa: BLE001 - reported below
                result = exc
            with lock:
                results.append(result)

    try:
        workers = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(120)
        assert not any(t.is_alive() for t in workers), "commands still running"
        assert len(results) == 2 * len(HOSTS)
        assert all(isinstance(r, Execution) and (r.code, r.stdout) == (0, "ok\n")
                   for r in results), results
        # as many connections as actions at once, never one per host
        assert watched.peak_alive <= THREADS, watched.peak_alive
        assert watched.peak_connecting <= HANDSHAKES, watched.peak_connecting
        total, idle, handshakes = transport.pool.counts()
        assert total <= THREADS and idle <= THREADS and handshakes == 0
        # the scheduler's view: exactly the hosts holding a pooled connection
        holding = {h for h in HOSTS if transport.pool.connections(h)}
        assert transport.warm_hosts() == holding and 1 <= len(holding) <= THREADS
        # idle past the timeout: the connections, their threads and the keepalives go
        assert wait_until(lambda: transport.pool.counts() == (0, 0, 0), SETTLE), \
            transport.pool.counts()
        assert wait_until(lambda: watched.alive == 0, SETTLE), watched.alive
        assert transport.warm_hosts() == frozenset()
        assert wait_until(lambda: len(paramiko_threads()) <= before, SETTLE), \
            paramiko_threads()
        assert keepalive.watched() == 0
        # nothing learned about the hosts: no record kept for them
        assert transport.pool.hosts_known() == 0
    finally:
        transport.close()


# -- the driver ----------------------------------------------------------------------

def proc_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def established(pid: int, wanted: Set[str]) -> int:
    """The driver's established TCP connections to the hosts."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    with open("/proc/net/tcp", encoding="ascii") as handle:
        next(handle, None)
        for line in handle:
            fields = line.split()
            if fields[3] == "01" and fields[2] in wanted and fields[9] in inodes:
                count += 1
    return count


class Sampler(threading.Thread):
    def __init__(self, pid: int, wanted: Set[str]) -> None:
        super().__init__(daemon=True)
        self.pid, self.wanted = pid, wanted
        self.peaks: Tuple[int, int] = (0, 0)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            try:
                now = (proc_threads(self.pid), established(self.pid, self.wanted))
            except OSError:
                return
            self.peaks = (max(self.peaks[0], now[0]), max(self.peaks[1], now[1]))


def test_driver_threads_and_connections_stay_within_t(many: Testbed) -> None:
    world = World(many, name="scale")
    world.reset_hosts(with_remotes=HOSTS)
    vms = range(500, 500 + 2 * len(HOSTS))
    oned = world.start_driver(f"-t {THREADS} -r 0 --max-connections {THREADS} "
                              f"--max-handshakes {HANDSHAKES} kvm", transport="paramiko")
    assert oned.pid is not None
    sampler = Sampler(oned.pid, many.tcp_endpoints())
    sampler.start()
    try:
        for index, vmid in enumerate(vms):
            oned.send_action("REBOOT", vmid, world.reboot_xml(vmid, HOSTS[index % len(HOSTS)]))
        for vmid in vms:
            answer = oned.wait_answer(vmid, timeout=120, action="REBOOT")
            assert answer.success, answer
        sampler.stopped.set()
        sampler.join(5)
        threads, connections = sampler.peaks
        assert threads <= 2 * THREADS + 10, threads
        assert 1 <= connections <= THREADS, connections
        assert oned.finalize(timeout=30) == 0
        answers = oned.answers()
        assert sorted(int(a.vm_id) for a in answers) == list(vms)
    finally:
        sampler.stopped.set()
        world.stop_drivers()


def logins(bed: Testbed) -> int:
    """Connections the hosts' sshds accepted so far (one key exchange each)."""
    return sum(Path(info.log_path).read_text(errors="replace").count("Accepted publickey")
               for info in bed.hosts.values())


def test_more_hosts_than_connections_do_not_mean_a_handshake_per_action(
        many: Testbed) -> None:
    """Connection affinity: 4 actions on each of 24 hosts through a pool of 4
    connections. In arrival order (hosts in turn) every action would evict a
    connection and make one; preferring the hosts that have one, a connection
    serves its host's queue and only one cold host is let in per 4 starts."""
    world = World(many, name="affinity")
    world.reset_hosts(with_remotes=HOSTS)
    rounds = 4
    vms = range(700, 700 + rounds * len(HOSTS))
    oned = world.start_driver(f"-t {THREADS} -r 0 --max-connections {THREADS} "
                              f"--max-handshakes {HANDSHAKES} kvm", transport="paramiko")
    try:
        before = logins(many)
        for index, vmid in enumerate(vms):
            oned.send_action("REBOOT", vmid, world.reboot_xml(vmid, HOSTS[index % len(HOSTS)]))
        for vmid in vms:
            answer = oned.wait_answer(vmid, timeout=180, action="REBOOT")
            assert answer.success, answer
        made = logins(many) - before
        # every host needs one; arrival order would need about one per action (96)
        assert len(HOSTS) <= made <= len(vms) // 2, made
        assert oned.finalize(timeout=30) == 0
        assert sorted(int(a.vm_id) for a in oned.answers()) == list(vms)
    finally:
        world.stop_drivers()
