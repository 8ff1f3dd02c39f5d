"""Every wait of the paramiko transport is bounded, and a connect can be interrupted.

Against hosts that do not answer: a silent listener (accepts TCP, never
speaks), a full listen backlog (the TCP handshake itself hangs), and a real
test bed host whose sshd and session processes are SIGSTOPped mid-command
(SIGCONT afterwards). The bounds asserted are generous (several seconds of
margin); before these fixes the same cases took 30 to 50 seconds, or ended
only with the host.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Set, Tuple

import pytest
from testbed import Testbed

from vmm_exec.cancel import Cancelled, CancelScope
from vmm_exec.transports.base import Execution, RemoteGroup
from vmm_exec.transports.channel import ERR, Channel
from vmm_exec.transports.stream import SshStream, StreamCommand

pytest.importorskip("paramiko")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (test bed)")

from vmm_exec.transports.paramiko import HostSettings, ParamikoTransport, host_settings  # noqa
from vmm_exec.transports.paramiko.channel import FailedChannel  # noqa: E402

SILENT_ADDRESS = "127.0.0.42"
BACKLOG_ADDRESS = "127.0.0.43"


# ======================================================================================
# hosts that do not answer
# ======================================================================================

class Silent:
    """Accepts TCP connections and never says a word (no SSH banner)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(16)
        self.address = address
        self.port = self.sock.getsockname()[1]
        self.accepted: List[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        except OSError:
            pass
        self._thread.join(5)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class Backlogged:
    """A listener whose backlog is full: a new TCP handshake is never answered."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(0)
        self.address = address
        self.port = self.sock.getsockname()[1]
        self.filler = socket.create_connection((address, self.port), timeout=5)

    def close(self) -> None:
        self.filler.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    listener = Silent(SILENT_ADDRESS)
    yield listener
    listener.close()


@pytest.fixture
def backlogged() -> Iterator[Backlogged]:
    listener = Backlogged(BACKLOG_ADDRESS)
    yield listener
    listener.close()


def transport_to(address: str, port: int, connect_timeout: float = 30.0) -> ParamikoTransport:
    settings = HostSettings(alias="unanswering", hostname=address, port=port, user="nobody",
                            known_hosts=[], connect_timeout=connect_timeout)
    return ParamikoTransport(settings=lambda host: settings)


@contextmanager
def timed(bound: float) -> Iterator[None]:
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < bound, f"took {elapsed:.1f}s (bound {bound}s)"


def in_thread(work: Callable[[], object]) -> Tuple[threading.Thread, List[object]]:
    outcome: List[object] = []

    def target() -> None:
        try:
            outcome.append(work())
        except Exception as exc:  # noqa: BLE001 - Cancelled among them
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_run_timeout_bounds_connecting_to_a_silent_host(silent: Silent) -> None:
    transport = transport_to(silent.address, silent.port)
    try:
        with timed(10):
            result = transport.run(CancelScope(), "unanswering", "true", None, 2.0)
        assert (result.code, result.timed_out) == (255, True)
    finally:
        transport.close()


def test_copy_and_stream_timeouts_bound_a_silent_host(silent: Silent, tmp_path: object) -> None:
    transport = transport_to(silent.address, silent.port)
    try:
        with timed(10):
            copied = transport.copy_remotes(CancelScope(), "unanswering", str(tmp_path), "x", 2.0)
        assert (copied.code, copied.timed_out) == (255, True)
        with timed(10):
            channel = transport.open_stream(CancelScope(), "unanswering", "bash", False,
                                            timeout=2.0)
        assert isinstance(channel, FailedChannel) and channel.exit_status() == 255
        message = b"".join(data for name, data in channel.receive(0) if name == ERR)
        assert b"timed out" in message
    finally:
        transport.close()


def test_connect_timeout_is_reported_like_ssh(silent: Silent, backlogged: Backlogged) -> None:
    """ConnectTimeout (no action timeout): exit 255 and the ssh binary's words."""
    banner = transport_to(silent.address, silent.port, connect_timeout=1.5)
    tcp = transport_to(backlogged.address, backlogged.port, connect_timeout=1.5)
    try:
        with timed(10):
            result = banner.run(CancelScope(), "unanswering", "true", None, None)
        assert (result.code, result.timed_out, result.stderr) == (
            255, False, "Connection timed out during banner exchange\r\n"
                        f"Connection to {silent.address} port {silent.port} timed out\r\n")
        with timed(10):
            result = tcp.run(CancelScope(), "unanswering", "true", None, None)
        assert (result.code, result.stderr) == (
            255, f"ssh: connect to host {backlogged.address} port {backlogged.port}: "
                 "Connection timed out\r\n")
    finally:
        banner.close()
        tcp.close()


@pytest.mark.parametrize("phase", ["banner", "tcp"])
def test_cancel_interrupts_a_connect(phase: str, silent: Silent, backlogged: Backlogged) -> None:
    listener = silent if phase == "banner" else backlogged
    transport = transport_to(listener.address, listener.port, connect_timeout=120)
    scope = CancelScope()
    try:
        thread, outcome = in_thread(
            lambda: transport.run(scope, "unanswering", "true", None, None))
        if phase == "banner":
            wait_for(lambda: bool(silent.accepted), 10, "the connection")
        time.sleep(0.5)  # well into the attempt
        assert thread.is_alive()
        with timed(5):
            scope.cancel()
            thread.join(5)
        assert not thread.is_alive()
        assert isinstance(outcome[0], Cancelled)
    finally:
        transport.close()


def test_close_interrupts_a_connect(silent: Silent) -> None:
    """Driver shutdown: close() returns at once, and so does the action connecting."""
    transport = transport_to(silent.address, silent.port, connect_timeout=120)
    thread, outcome = in_thread(lambda: transport.open_stream(CancelScope(), "unanswering",
                                                              "bash", False))
    wait_for(lambda: bool(silent.accepted), 10, "the connection")
    with timed(5):
        transport.close()
        thread.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], FailedChannel)


# ======================================================================================
# a real host, frozen mid-command
# ======================================================================================

@pytest.fixture(scope="module")
def frost(make_testbed: Callable[..., Testbed]) -> Iterator[Testbed]:
    testbed = make_testbed(names=("frozen1",))
    try:
        yield testbed
    finally:
        testbed.stop()


@pytest.fixture
def client_env(frost: Testbed, monkeypatch: pytest.MonkeyPatch) -> Testbed:
    monkeypatch.setenv("HOME", frost.client_home)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return frost


@contextmanager
def frozen(testbed: Testbed, name: str) -> Iterator[None]:
    """SIGSTOP the host's sshd (listener and connections) and its session processes."""
    pids = testbed.host_pids(name)
    assert pids
    _signal(pids, signal.SIGSTOP)
    try:
        yield
    finally:
        _signal(pids | testbed.host_pids(name), signal.SIGCONT)


def _signal(pids: Set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def marker() -> str:
    return f"{400 + secrets.randbelow(100)}.{secrets.randbelow(10 ** 6):06d}"


def local_sleeps(mark: str) -> List[int]:
    """PIDs of ``sleep MARK``: the test bed's hosts are processes of this machine."""
    wanted = b"sleep\0" + mark.encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if handle.read() == wanted:
                        found.append(int(entry))
            except OSError:
                pass
    return found


@contextmanager
def cleaned(mark: str, grace: float = 20) -> Iterator[None]:
    """Afterwards no ``sleep MARK`` is left: given ``grace`` s to go (a background kill
    may still be on its way), then killed."""
    try:
        yield
    finally:
        deadline = time.monotonic() + grace
        while local_sleeps(mark) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal(set(local_sleeps(mark)), signal.SIGKILL)


def quick_keepalive(host: str) -> HostSettings:
    return dataclasses.replace(host_settings(host), alive_interval=1.0, alive_count=2)


def test_run_on_a_frozen_host_is_bounded_by_its_timeout(client_env: Testbed) -> None:
    transport = ParamikoTransport()
    mark = marker()
    try:
        with cleaned(mark):
            assert transport.run(CancelScope(), "frozen1", "true", None, 10).code == 0
            started = time.monotonic()
            thread, outcome = in_thread(lambda: transport.run(
                CancelScope(), "frozen1", f"sleep {mark}", None, 3.0))
            wait_for(lambda: bool(local_sleeps(mark)), 10, "the remote sleep")
            with frozen(client_env, "frozen1"):
                thread.join(25)
                elapsed = time.monotonic() - started
                assert not thread.is_alive()
            result = outcome[0]
            assert isinstance(result, Execution) and result.timed_out, result
            assert elapsed < 20, f"took {elapsed:.1f}s"
    finally:
        transport.close()


def test_stream_on_a_frozen_host_is_bounded_by_its_timeout(client_env: Testbed) -> None:
    transport = ParamikoTransport()
    scope = CancelScope()
    mark = marker()

    def opener(host: str, shell: str, forward: bool) -> Channel:
        return transport.open_stream(scope, host, shell, forward, timeout=10)

    def killer(group: RemoteGroup) -> None:
        transport.kill_remote("frozen1", group)

    stream = SshStream("frozen1", "bash", opener, scope, remote_killer=killer,
                       identify_timeout=10)
    command = StreamCommand(stream, "/nonexistent", lambda *a: None, lambda: None,
                            reconnect=True)
    try:
        with cleaned(mark):
            assert command.run("true", None, None).code == 0
            started = time.monotonic()
            thread, outcome = in_thread(lambda: command.run(f"sleep {mark}", None, None,
                                                            timeout=3.0))
            wait_for(lambda: bool(local_sleeps(mark)), 10, "the remote sleep")
            with frozen(client_env, "frozen1"):
                thread.join(25)
                elapsed = time.monotonic() - started
                assert not thread.is_alive()
            result = outcome[0]
            assert isinstance(result, Execution) and result.timed_out, result
            assert elapsed < 20, f"took {elapsed:.1f}s"
    finally:
        command.close()
        transport.close()


def test_keepalive_detects_a_frozen_host(client_env: Testbed) -> None:
    """No timeout at all: the keepalives end the command (ServerAliveInterval 1, CountMax 2)."""
    transport = ParamikoTransport(settings=quick_keepalive)
    mark = marker()
    try:
        # a lost connection leaves the command running, as with the ssh binary
        with cleaned(mark, grace=0):
            thread, outcome = in_thread(lambda: transport.run(
                CancelScope(), "frozen1", f"sleep {mark}", None, None))
            wait_for(lambda: bool(local_sleeps(mark)), 10, "the remote sleep")
            with frozen(client_env, "frozen1"):
                started = time.monotonic()
                thread.join(20)
                elapsed = time.monotonic() - started
                assert not thread.is_alive()
            result = outcome[0]
            assert isinstance(result, Execution) and result.code == 255, result
            address = client_env.hosts["frozen1"].address
            assert result.stderr.endswith(f"Timeout, server {address} not responding.\r\n")
            assert elapsed < 15, f"took {elapsed:.1f}s"
    finally:
        transport.close()


def test_close_returns_with_hung_connections(client_env: Testbed) -> None:
    """Driver shutdown with a frozen host: close() returns within seconds, and the
    action waiting on it ends."""
    transport = ParamikoTransport()
    mark = marker()
    channel: Optional[Channel] = None
    try:
        with cleaned(mark, grace=0):
            channel = transport.open_stream(CancelScope(), "frozen1", "bash", False, timeout=10)
            thread, outcome = in_thread(lambda: transport.run(
                CancelScope(), "frozen1", f"sleep {mark}", None, None))
            wait_for(lambda: bool(local_sleeps(mark)), 10, "the remote sleep")
            with frozen(client_env, "frozen1"):
                with timed(5):
                    transport.close()
                thread.join(5)
                assert not thread.is_alive()
            assert isinstance(outcome[0], Execution) and outcome[0].code == 255
    finally:
        if channel is not None:
            channel.release()
        transport.close()
