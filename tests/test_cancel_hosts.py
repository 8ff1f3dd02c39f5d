"""Cancelling an action on real hosts, with both transports (default mode).

* A stream's script ends with its session's process (the watchdog), without a remote kill.
* A cancel after a command has finished kills nothing on the host, even when the
  finished command's process group id now belongs to another process there.
* A host that no longer answers does not delay the kill of the action's work on
  the other hosts.

The hosts are the test bed's sshds on loopback addresses, so their processes are
visible in this machine's ``/proc``: the tests look at them directly.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import pytest
from helpers import can_choose_pids, spawn_with_pid, wait_until
from testbed import Testbed

from vmm_exec.cancel import Cancelled, CancelScope
from vmm_exec.transports import make_transport
from vmm_exec.transports.api import Transport
from vmm_exec.transports.base import RemoteGroup
from vmm_exec.transports.channel import Channel
from vmm_exec.transports.stream import SshStream, StreamCommand

HOSTS = ("host01", "host02")


@pytest.fixture(scope="module")
def bed(make_testbed: Callable[..., Testbed]) -> Iterator[Testbed]:
    testbed = make_testbed(names=HOSTS)
    yield testbed
    testbed.stop()


@pytest.fixture(params=["openssh", "paramiko"])
def transport(request: pytest.FixtureRequest, bed: Testbed,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Transport]:
    for key, value in bed.client_env().items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    made = make_transport(request.param, strict=False)
    yield made
    made.close()


class KillSpy:
    """Counts the remote group kills a transport is asked for."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.groups: List[RemoteGroup] = []

    def __call__(self, host: str, group: RemoteGroup) -> None:
        self.groups.append(group)
        self.transport.kill_remote(host, group)


def stream_on(transport: Transport, scope: CancelScope, host: str,
              killer: Callable[[str, RemoteGroup], None]) -> StreamCommand:
    """The engine's wiring of a default-mode stream."""

    def opener(h: str, shell: str, forward: bool) -> Channel:
        return transport.open_stream(scope, h, shell, forward)

    stream = SshStream(host, "bash", opener, scope,
                       remote_killer=lambda group: killer(host, group), identify_timeout=20)
    return StreamCommand(stream, "/nonexistent", lambda *a: None, lambda: None, reconnect=True)


def local_pids_running(argv_tail: str) -> List[int]:
    """PIDs on this machine (the test hosts included) whose command line ends so."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except OSError:
            continue
        if cmdline.decode(errors="replace").endswith(argv_tail):
            found.append(int(entry.name))
    return found


def group_members(pgid: int) -> List[int]:
    """Processes of this machine (the test hosts included) in process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(") ", 1)[1].split()[2]) == pgid:
                found.append(int(entry.name))
    return found


def mark() -> str:
    return f"{400 + secrets.randbelow(100)}.{secrets.randbelow(10 ** 6):06d}"


PGID = "sed 's/.*) //' /proc/$$/stat | cut -d' ' -f3"


@pytest.mark.skipif(not can_choose_pids(), reason="choosing PIDs needs root and ns_last_pid")
def test_cancel_after_finished_commands_kills_nothing_remote(transport: Transport,
                                                             bed: Testbed) -> None:
    scope = CancelScope("finished")
    spy = KillSpy(transport)
    # a one-shot command, finished
    done = transport.run(scope, "host01", PGID, None, 20)
    assert done.code == 0, done
    one_shot_group = int(done.stdout)
    # a stream command, finished, and the stream closed
    command = stream_on(transport, scope, "host01", spy)
    assert command.run("true", None, None, 20).code == 0
    identified = command.stream.remote_group
    assert identified is not None
    command.close()
    assert scope.live_callbacks == 0, "a finished command left a kill registered"
    # once both groups are empty (the stream's watchdog may still sleep for a
    # second), the hosts reuse both numbers for unrelated processes of the same user
    for pgid in (one_shot_group, identified.pgid):
        wait_until(lambda g=pgid: not group_members(g), 5, what=f"group {pgid} empty")
    foreign = [spawn_with_pid(pid, ["sleep", mark()], user=bed.user)
               for pid in (one_shot_group, identified.pgid)]
    # a live stream of the same action, which the cancel must kill
    live = stream_on(transport, scope, "host02", spy)
    runner, sleeping = _sleep_in_background(live)
    try:
        _wait_sleeping(sleeping, "host02")
        live_group = live.stream.remote_group
        assert live_group is not None
        scope.cancel()
        wait_until(lambda: not local_pids_running(f"sleep {sleeping}"), 10,
                   what="the live command killed on host02")
        time.sleep(1.5)  # a stray kill would have landed by now
        for proc in foreign:
            assert proc.poll() is None, f"process {proc.pid} (a reused PID) was killed"
        # the only remote kill asked for is the live stream's
        assert spy.groups == [live_group]
    finally:
        for proc in foreign:
            proc.kill()
            proc.wait()
        runner.join(10)


def test_a_stream_whose_shell_dies_takes_its_script_along(transport: Transport,
                                                          bed: Testbed) -> None:
    """When the session's process on the host dies alone (a signal to it, not to its
    group) while the connection lives on (a pooled paramiko connection), the stream's
    watchdog notices and ends the group: the script does not run on, orphaned, until
    the connection closes. (No remote kill here: the watchdog alone.)"""
    scope = CancelScope("shell dies")
    command = stream_on(transport, scope, "host01", lambda host, group: None)
    assert command.run("true", None, None, 20).code == 0
    group = command.stream.remote_group
    assert group is not None
    runner, sleeping = _sleep_in_background(command)
    try:
        _wait_sleeping(sleeping, "host01")
        # the group's leader alone (the login shell running "bash -s", or that shell),
        # as sshd signals a session's process
        os.kill(group.pgid, signal.SIGTERM)
        wait_until(lambda: not local_pids_running(f"sleep {sleeping}"), 10,
                   what="the script ended with its shell")
    finally:
        runner.join(20)
        command.close()


def _sleep_in_background(command: StreamCommand) -> Tuple[threading.Thread, str]:
    """A thread running ``sleep <mark>`` through ``command``; the mark."""
    sleeping = mark()
    runner = threading.Thread(target=_run_quietly, args=(command, f"sleep {sleeping}"),
                              daemon=True)
    runner.start()
    return runner, sleeping


def _wait_sleeping(sleeping: str, host: str) -> None:
    wait_until(lambda: bool(local_pids_running(f"sleep {sleeping}")), 20,
               what=f"the command running on {host}")


def _run_quietly(command: StreamCommand, text: str) -> None:
    try:
        command.run(text, None, None, 60)
    except Cancelled:
        pass


def freeze(bed: Testbed, host: str, sig: int) -> None:
    for pid in bed.host_pids(host):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def test_unreachable_host_does_not_delay_the_other_kills(transport: Transport,
                                                         bed: Testbed) -> None:
    """host02 stops answering mid-action (its sshd and sessions are stopped): the
    cancel still ends the work on host01 within 2 s, and returns within its deadline."""
    scope = CancelScope("two hosts")
    marks = {host: mark() for host in HOSTS}
    commands = {host: stream_on(transport, scope, host, transport.kill_remote)
                for host in HOSTS}
    threads = []
    # host02 first: its kill is registered first, so a cancel running kills one
    # after the other would be stuck on it before reaching host01
    for host in reversed(HOSTS):
        thread = threading.Thread(target=_run_quietly,
                                  args=(commands[host], f"sleep {marks[host]}"), daemon=True)
        thread.start()
        threads.append(thread)
        wait_until(lambda h=host: bool(local_pids_running(f"sleep {marks[h]}")), 20,
                   what=f"the command running on {host}")
    frozen_sleep: Optional[List[int]] = None
    freeze(bed, "host02", signal.SIGSTOP)
    try:
        frozen_sleep = local_pids_running(f"sleep {marks['host02']}")
        started = time.monotonic()
        canceller = threading.Thread(target=scope.cancel, daemon=True)
        canceller.start()
        wait_until(lambda: not local_pids_running(f"sleep {marks['host01']}"), 2,
                   what="host01's command killed while host02 does not answer")
        canceller.join(scope.deadline + scope.grace + 3)
        assert not canceller.is_alive()
        assert time.monotonic() - started < scope.deadline + scope.grace + 3
    finally:
        freeze(bed, "host02", signal.SIGCONT)
        for pid in frozen_sleep or ():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for thread in threads:
            thread.join(10)
    bed.kill_host("host02")
    bed.start_host("host02")
