"""The paramiko transport's pool against sshds with a low ``MaxSessions``.

sshd refuses channels beyond ``MaxSessions`` per connection (10 by default;
hosts are configured lower). The pool learns the limit from the refusals and
retries refused channels on other connections: many concurrent commands and
streams to such hosts all succeed, as they do with the ssh binary (one
connection each). The test bed's hosts get ``MaxSessions`` prepended to their
sshd_config (sshd takes the first value of a keyword).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest
from testbed import Testbed

from vmm_exec.cancel import CancelScope
from vmm_exec.transports.base import Execution, RemoteGroup
from vmm_exec.transports.channel import Channel
from vmm_exec.transports.stream import SshStream, StreamCommand

paramiko = pytest.importorskip("paramiko")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the test bed needs Linux")

from vmm_exec.transports.paramiko import HostSettings, ParamikoTransport  # noqa: E402
from vmm_exec.transports.paramiko import pool as pool_module  # noqa: E402

LIMITS = {"ms1": 1, "ms2": 2, "ms3": 3}


@pytest.fixture(scope="module")
def limited(make_testbed: Callable[..., Testbed]) -> Iterator[Testbed]:
    testbed = make_testbed(names=tuple(LIMITS))
    try:
        for name, limit in LIMITS.items():
            config = Path(testbed.hosts[name].config_path)
            config.write_text(f"MaxSessions {limit}\n" + config.read_text())
            testbed.stop_host(name)
            testbed.start_host(name)
        yield testbed
    finally:
        testbed.stop()


@pytest.fixture
def transport(limited: Testbed, monkeypatch: pytest.MonkeyPatch) -> Iterator[ParamikoTransport]:
    monkeypatch.setenv("HOME", limited.client_home)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    made = ParamikoTransport()
    yield made
    made.close()


def run_all(jobs: List[Callable[[], object]], timeout: float) -> List[object]:
    """Run the jobs in threads at once; their results (or exceptions), in order."""
    results: List[object] = [None] * len(jobs)

    def one(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "jobs still running"
    return results


class Log:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def __call__(self, message: str, all_lines: bool = True) -> None:
        self.lines.append(message)


def make_stream(transport: ParamikoTransport, host: str, scope: CancelScope) -> StreamCommand:
    def opener(h: str, shell: str, forward: bool) -> Channel:
        return transport.open_stream(scope, h, shell, forward, timeout=30)

    def killer(group: RemoteGroup) -> None:
        transport.kill_remote(host, group)

    stream = SshStream(host, "bash", opener, scope, remote_killer=killer, identify_timeout=30)
    return StreamCommand(stream, "/nonexistent", Log(), lambda: None, reconnect=True)


@pytest.mark.parametrize("host", list(LIMITS))
def test_many_concurrent_runs_all_succeed(transport: ParamikoTransport, host: str) -> None:
    count = 14
    jobs: List[Callable[[], object]] = [
        (lambda i=i: transport.run(CancelScope(), host, f"sleep 0.3; echo {i}", None, 60))
        for i in range(count)]
    results = run_all(jobs, 90)
    got = {i: (r.code, r.stdout, r.stderr) if isinstance(r, Execution) else r
           for i, r in enumerate(results)}
    assert got == {i: (0, f"{i}\n", "") for i in range(count)}
    assert transport.pool.limit(host) == LIMITS[host]
    # the burst is over: one idle connection is left
    assert [(c.reserved, c.open) for c in transport.pool.connections(host)] == [(0, 0)]


@pytest.mark.parametrize("host", list(LIMITS))
def test_many_concurrent_streams_and_runs_all_succeed(transport: ParamikoTransport,
                                                      host: str) -> None:
    """Streams hold their channel for the whole action; runs come and go beside them."""

    def stream_job(i: int) -> Tuple[int, ...]:
        command = make_stream(transport, host, CancelScope())
        try:
            codes = []
            for step in range(3):
                result = command.run(f"echo {i}-{step}", None, None)
                assert result.stdout == f"{i}-{step}\n", result.stderr
                codes.append(result.code)
            return tuple(codes)
        finally:
            command.close()

    def run_job(i: int) -> Tuple[int, ...]:
        result = transport.run(CancelScope(), host, f"echo r{i}", None, 60)
        assert result.stdout == f"r{i}\n", result.stderr
        return (result.code,)

    jobs: List[Callable[[], object]] = []
    for i in range(6):
        jobs.append(lambda i=i: stream_job(i))
        jobs.append(lambda i=i: run_job(i))
    results = run_all(jobs, 120)
    assert results == [(0, 0, 0), (0,)] * 6
    assert transport.pool.limit(host) <= LIMITS[host]


def test_remotes_copy_beside_streams(transport: ParamikoTransport, limited: Testbed,
                                     tmp_path: Path) -> None:
    """SFTP takes a session too: with MaxSessions 1 it gets a connection of its own."""
    (tmp_path / "f").write_text("x\n")
    scope = CancelScope()
    command = make_stream(transport, "ms1", scope)
    try:
        assert command.run("true", None, None).code == 0
        result = transport.copy_remotes(scope, "ms1", str(tmp_path), "copied", 60)
        assert (result.code, result.stderr) == (0, "")
        assert Path(limited.hosts["ms1"].home, "copied", "f").read_text() == "x\n"
    finally:
        command.close()


def test_at_the_connection_cap_callers_wait_for_a_slot(transport: ParamikoTransport,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond the per-host cap a command waits for a free slot: within its timeout if it
    has one (then it times out), else until a slot is free (then it runs)."""
    monkeypatch.setattr(pool_module, "MAX_CONNECTIONS", 2)
    assert transport.run(CancelScope(), "ms1", "true", None, 30).code == 0  # limit learned
    busy = [lambda: transport.run(CancelScope(), "ms1", "sleep 3; echo busy", None, 60)] * 2
    holders: List[object] = []
    holder = threading.Thread(target=lambda: holders.extend(run_all(busy, 60)), daemon=True)
    holder.start()
    deadline = time.monotonic() + 20
    while sum(c.open for c in transport.pool.connections("ms1")) < 2:
        assert time.monotonic() < deadline, "the two long commands did not start"
        time.sleep(0.05)
    started = time.monotonic()
    bounded = transport.run(CancelScope(), "ms1", "echo bounded", None, 1.0)
    assert bounded.timed_out and bounded.code == 255
    assert time.monotonic() - started < 2.5
    waiting = transport.run(CancelScope(), "ms1", "echo waited", None, None)
    assert (waiting.code, waiting.stdout) == (0, "waited\n")
    assert len(transport.pool.connections("ms1")) <= 2
    holder.join(30)
    assert [r.stdout for r in holders if isinstance(r, Execution)] == ["busy\n"] * 2


def test_learned_limit_is_per_host(transport: ParamikoTransport) -> None:
    results: Dict[str, List[object]] = {}
    for host in ("ms2", "ms3"):
        results[host] = run_all([lambda h=host: transport.run(CancelScope(), h, "sleep 0.2", None,
                                                              60)] * 8, 60)
    assert all(isinstance(r, Execution) and r.code == 0
               for rs in results.values() for r in rs)
    assert (transport.pool.limit("ms2"), transport.pool.limit("ms3")) == (2, 3)


# ======================================================================================
# a server that accepts channel opens and refuses the exec beyond its limit
# ======================================================================================

class RefusingServer:
    """An in-process SSH server (paramiko's server side) that accepts every session
    channel but refuses the exec request while ``limit`` commands run on the same
    connection: the case of an sshd that counts sessions only at their request."""

    def __init__(self, address: str, limit: int, tmp: Path) -> None:
        self.limit = limit
        self.refused = 0
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "",
                            "-f", str(tmp / name)], check=True, timeout=30)
        self.host_key = paramiko.Ed25519Key.from_private_key_file(str(tmp / "host"))
        self.client_key = str(tmp / "client")
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(16)
        self.address = address
        self.port = self.sock.getsockname()[1]
        self.known_hosts = tmp / "known_hosts"
        self.known_hosts.write_text(f"[{address}]:{self.port} "
                                    f"{self.host_key.get_name()} {self.host_key.get_base64()}\n")
        self.transports: List[paramiko.Transport] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        server = self

        class Interface(paramiko.ServerInterface):
            def __init__(self) -> None:
                self.running = 0
                self.lock = threading.Lock()

            def get_allowed_auths(self, username: str) -> str:
                return "publickey"

            def check_auth_publickey(self, username: str, key: object) -> int:
                return paramiko.AUTH_SUCCESSFUL

            def check_channel_request(self, kind: str, chanid: int) -> int:
                return paramiko.OPEN_SUCCEEDED

            def check_channel_exec_request(self, channel: object, command: bytes) -> bool:
                with self.lock:
                    if self.running >= server.limit:
                        server.refused += 1
                        return False
                    self.running += 1
                threading.Thread(target=self._serve, args=(channel,), daemon=True).start()
                return True

            def _serve(self, channel: paramiko.Channel) -> None:
                time.sleep(0.3)
                try:
                    channel.sendall(b"ok\n")
                    with self.lock:
                        self.running -= 1
                    channel.send_exit_status(0)
                    channel.close()
                except Exception:  # noqa: BLE001 - the client went away
                    pass

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            transport.start_server(server=Interface())
            self.transports.append(transport)

    def settings(self) -> HostSettings:
        return HostSettings(alias="refusing", hostname=self.address, port=self.port,
                            user="nobody", identity_files=[self.client_key],
                            known_hosts=[str(self.known_hosts)], identities_only=True,
                            connect_timeout=10)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(5)
        self.sock.close()
        for transport in self.transports:
            transport.close()


@pytest.mark.parametrize("limit", [0, 2])
def test_exec_refused_after_the_open_is_retried_elsewhere(limit: int, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Open accepted, exec refused: the connection is full at the channels it holds; the
    command runs on another connection. Refused on a connection holding nothing of ours,
    the refusal is genuine and reported like ssh."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    server = RefusingServer("127.0.0.44", limit, tmp_path)
    settings = server.settings()
    transport = ParamikoTransport(settings=lambda host: settings)
    try:
        if limit == 0:
            result = transport.run(CancelScope(), "refusing", "true", None, 20)
            assert (result.code, result.stderr) == (255, "exec request failed on channel 0\r\n")
            return
        results = run_all([lambda: transport.run(CancelScope(), "refusing", "x", None, 30)] * 7,
                          60)
        assert [(r.code, r.stdout) for r in results if isinstance(r, Execution)] == [
            (0, "ok\n")] * 7
        assert server.refused >= 1
        assert transport.pool.limit("refusing") == limit
    finally:
        transport.close()
        server.close()
