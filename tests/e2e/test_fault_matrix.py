"""The faults a production cloud sends, against every transport and mode.

(refused, silent listener, frozen host, sshd killed, MaxSessions 1–3, stalled
remotes copy) × (openssh, paramiko) × (strict, default), with ``-w 3``: every
request gets exactly one answer, within the bound, and afterwards nothing of
the action runs on the front-end or on the host.

A stream action (SHUTDOWN: a persistent shell, the ``-x`` check, the script)
and a one-shot action (POLL: ``ssh HOST 'if [ -x ...'``) go to the faulty host
in each case.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from testbed import Testbed

from vmm_exec.testing.simoned import SimulatedOned

from .kit import World, context

HOST = "host03"
TIMEOUT = 3
# an answer may take the timeout, the kill of the local client (TERM, a grace) and,
# with paramiko on a frozen host, the wait for the signal's reply; never more
BOUND = TIMEOUT + 9
ARGS = f"-w {TIMEOUT} -t 15 -r 0 kvm"


# -- faults ----------------------------------------------------------------------------

class Fault:
    """What is done to the host before (``arm``) and once the scripts started (``hit``)."""

    name = "?"
    # the requests must fail (False: they succeed despite the fault; None: either)
    fails: Optional[bool] = True
    # the scripts must start before the fault hits (they sleep, so they need a kill)
    scripts_start = False
    parallel = False

    def __init__(self, world: World) -> None:
        self.world = world
        self.bed: Testbed = world.testbed

    def arm(self) -> None:
        pass

    def hit(self) -> None:
        pass

    def heal(self) -> None:
        pass


class Refused(Fault):
    name = "refused"

    def arm(self) -> None:
        self.bed.stop_host(HOST)


class SilentListener(Fault):
    """Accepts connections and never says a word (a hung sshd, a black-holing proxy)."""

    name = "silent"

    def arm(self) -> None:
        info = self.bed.hosts[HOST]
        self.bed.stop_host(HOST)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((info.address, info.port))
        self.sock.listen(64)
        self.accepted: List[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def heal(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


class Frozen(Fault):
    """The host stops answering mid-command: sshd and its sessions are stopped."""

    name = "frozen"
    scripts_start = True

    def hit(self) -> None:
        self.frozen = self.bed.host_pids(HOST)
        for pid in self.frozen:
            _signal(pid, signal.SIGSTOP)

    def heal(self) -> None:
        for pid in getattr(self, "frozen", ()):
            _signal(pid, signal.SIGCONT)


class SshdKilled(Fault):
    name = "sshd-killed"
    scripts_start = True

    def hit(self) -> None:
        self.bed.kill_host(HOST)


class MaxSessions(Fault):
    """sshd allows only N sessions per connection; concurrent actions must all succeed."""

    fails = False
    parallel = True

    def __init__(self, world: World, limit: int) -> None:
        super().__init__(world)
        self.limit = limit
        self.name = f"maxsessions-{limit}"

    def arm(self) -> None:
        config = Path(self.bed.hosts[HOST].config_path)
        self.original = config.read_text()
        config.write_text(f"MaxSessions {self.limit}\n" + self.original)
        self.bed.stop_host(HOST)
        self.bed.start_host(HOST)

    def heal(self) -> None:
        Path(self.bed.hosts[HOST].config_path).write_text(self.original)
        self.bed.stop_host(HOST)
        self.bed.start_host(HOST)


class StalledCopy(Fault):
    """The host has no remote scripts and the copy of them stalls on the host side.

    Whether a request fails depends on how far the copy got before it stalled
    (the watcher stops copy processes as it finds them): either answer is fine,
    the bound and the single answer are what is checked."""

    name = "stalled-copy"
    fails = None

    def arm(self) -> None:
        self.world.reset_hosts(with_remotes=(), names=(HOST,))
        self.stop = threading.Event()
        self.stopped: List[int] = []
        self.thread = threading.Thread(target=self._stall, daemon=True)
        self.thread.start()

    def _stall(self) -> None:
        """Stop every copy process (``scp -t``, ``sftp-server``) the host starts."""
        while not self.stop.is_set():
            for pid in self.bed.host_pids(HOST):
                if pid in self.stopped:
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"scp\0-" in cmdline or b"sftp-server" in cmdline:
                    _signal(pid, signal.SIGSTOP)
                    self.stopped.append(pid)
            time.sleep(0.02)

    def heal(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for pid in self.stopped:
            _signal(pid, signal.SIGCONT)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


FAULTS: Dict[str, Callable[[World], Fault]] = {
    "refused": Refused,
    "silent": SilentListener,
    "frozen": Frozen,
    "sshd-killed": SshdKilled,
    "maxsessions-1": lambda w: MaxSessions(w, 1),
    "maxsessions-2": lambda w: MaxSessions(w, 2),
    "maxsessions-3": lambda w: MaxSessions(w, 3),
    "stalled-copy": StalledCopy,
}


# -- the matrix --------------------------------------------------------------------------

def local_clients(bed: Testbed) -> List[int]:
    """Processes on the front-end talking to the test bed (ssh/scp clients)."""
    marker = bed.ssh_config_path.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture
def fault(request: pytest.FixtureRequest, world: World) -> Iterator[Fault]:
    made = FAULTS[request.param](world)
    yield made
    made.heal()


@pytest.mark.parametrize("compat", ["strict", "default"])
@pytest.mark.parametrize("transport", ["openssh", "paramiko"])
@pytest.mark.parametrize("fault", sorted(FAULTS), indirect=True)
def test_fault(world: World, fault: Fault, transport: str, compat: str) -> None:
    if fault.scripts_start:
        world.set_faults(f"{HOST} vmm/kvm/shutdown sleep=60\n{HOST} vmm/kvm/poll sleep=60")
    fault.arm()
    args = ("-p " if fault.parallel else "") + ARGS
    oned = world.start_driver(args, transport=transport, compat=compat)
    requests = {70: "SHUTDOWN", 71: "POLL"}
    if fault.parallel:
        requests.update({vm: ("SHUTDOWN", "POLL")[vm % 2] for vm in range(72, 78)})
    sent: Dict[int, float] = {}
    try:
        for vm, action in requests.items():
            xml = (world.shutdown_xml if action == "SHUTDOWN" else world.poll_xml)(vm, HOST)
            sent[vm] = time.monotonic()
            oned.send_action(action, vm, xml)
        if fault.scripts_start:
            world.wait_started(HOST, "vmm/kvm/shutdown", 70)
            world.wait_started(HOST, "vmm/kvm/poll", 71)
            fault.hit()
        for vm, action in requests.items():
            answer = oned.wait_answer(vm, timeout=BOUND + 20, action=action)
            took = time.monotonic() - sent[vm]
            why = context(world, oned)
            if fault.fails is not None:
                assert answer.success is not fault.fails, f"{action} {vm}: {answer}{why}"
            assert took < BOUND, f"{action} {vm} answered after {took:.1f} s{why}"
        time.sleep(0.5)
        for vm in requests:
            assert len(oned.answers(vm)) == 1, f"vm {vm}: {oned.answers(vm)}"
    finally:
        fault.heal()
    # strict mode sends the one-shot POLL with the Ruby driver's exact ssh command
    # line: on a host that did not answer when it timed out, its remote side
    # cannot be reached in-band (README: what bounds each wait)
    spared = ("vmm/kvm/poll",) if compat == "strict" and fault.name == "frozen" else ()
    _assert_nothing_left(world, oned, spared)


def _assert_nothing_left(world: World, oned: SimulatedOned, spared: Tuple[str, ...]) -> None:
    """FINALIZE ends the driver; its clients are gone and, once the host is reachable
    again, nothing of the actions runs there (but the ``spared`` scripts)."""
    code = oned.finalize(timeout=30)
    assert code == 0, f"FINALIZE: exit {code}{context(world, oned)}"
    deadline = time.monotonic() + 15
    while local_clients(world.testbed) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert local_clients(world.testbed) == [], "ssh clients of the driver still run"
    if not world.testbed.running(HOST):
        world.testbed.start_host(HOST)
    deadline = time.monotonic() + 20
    while True:
        left = {host: {pid for pid in pids if not any(
                    script in _cmdline(pid) for script in spared)}
                for host, pids in world.leftovers().items()}
        left = {host: pids for host, pids in left.items() if pids}
        if not left:
            return
        assert time.monotonic() < deadline, ("left behind: "
                                             + world.describe_leftovers(left))
        time.sleep(0.2)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""
