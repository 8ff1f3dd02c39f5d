"""The transport contract, run against real sshd hosts for every transport.

Each test runs once with the OpenSSH binaries (``OpenSSHTransport``, the
``ssh``/``scp`` of the test bed first on ``PATH``) and once with paramiko
(``ParamikoTransport``, ``HOME`` pointing at the test bed's client home), so
the two are held to the same observable behaviour: exit codes, output of any
size, stdin, timeouts and cancellation that really stop the remote commands,
connection failures as exit status 255 with ssh's message, the framed stream
with its ``-x`` check and remotes update, and the remotes copy.

The hosts are real OpenSSH sshd processes on loopback addresses, a non-root
user, throwaway keys (see :class:`SshBed`). Remote processes are looked for
over a separate connection with ``pgrep``.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from vmm_exec.transports.api import Transport
from vmm_exec.transports.base import Cancelled, Execution, Tracker
from vmm_exec.transports.openssh import OpenSSHTransport
from vmm_exec.transports.remote import update_remotes
from vmm_exec.transports.stream import SshStream, StreamCommand

SSHD = "/usr/sbin/sshd"
USER = "vmm-ct"
USER_HOME = "/var/tmp/vmm-ct-home"
HOSTS = ("host01", "host02", "host03")
MB = 1024 * 1024

pytestmark = [
    pytest.mark.skipif(not os.path.exists(SSHD), reason="needs OpenSSH's sshd (openssh-server)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="starts sshd and uses a dedicated user: root"),
]


# ======================================================================================
# The test bed: one sshd per fake host
# ======================================================================================

def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _ensure_user() -> None:
    """A non-root login user (sshd honours SSH signal requests only with privsep)."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", USER_HOME,
                        "--shell", "/bin/bash", USER], check=True)
    # '*': no password, but not locked (sshd refuses locked accounts without PAM)
    subprocess.run(["usermod", "-p", "*", "-d", USER_HOME, USER], check=True)
    os.makedirs(USER_HOME, exist_ok=True)
    entry = pwd.getpwnam(USER)
    os.chown(USER_HOME, entry.pw_uid, entry.pw_gid)
    os.chmod(USER_HOME, 0o755)


def _children() -> Dict[int, List[int]]:
    tree: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(name))
    return tree


def _descendants(pid: int) -> List[int]:
    tree = _children()
    found: List[int] = []
    todo = [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


@dataclass
class FakeHost:
    name: str
    address: str
    port: int
    config: Path
    log: Path
    proc: Optional[subprocess.Popen] = None


@dataclass
class SshBed:
    """sshd per host on 127.0.0.x, a client home whose ``.ssh/config`` maps the names."""

    root: Path
    hosts: Dict[str, FakeHost] = field(default_factory=dict)

    @property
    def client_home(self) -> Path:
        return self.root / "client"

    @property
    def ssh_config(self) -> Path:
        return self.client_home / ".ssh" / "config"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @classmethod
    def create(cls, root: Path, names: Tuple[str, ...]) -> SshBed:
        _ensure_user()
        bed = cls(root)
        keys = root / "keys"
        keys.mkdir(mode=0o755)
        dot_ssh = bed.client_home / ".ssh"
        dot_ssh.mkdir(parents=True, mode=0o700)
        bed.bin.mkdir()
        _keygen(dot_ssh / "id_ed25519")
        _keygen(dot_ssh / "stranger")  # a key the hosts do not accept
        authorized = keys / "authorized_keys"
        shutil.copy(dot_ssh / "id_ed25519.pub", authorized)
        authorized.chmod(0o644)
        known: List[str] = []
        client: List[str] = []
        for index, name in enumerate(names):
            address = f"127.0.0.{61 + index}"
            port = _free_port(address)
            hostdir = root / name
            hostdir.mkdir(mode=0o755)
            _keygen(hostdir / "host_key")
            public = (hostdir / "host_key.pub").read_text().split()
            known.append(f"[{address}]:{port} {public[0]} {public[1]}")
            config = hostdir / "sshd_config"
            config.write_text("\n".join([
                f"ListenAddress {address}:{port}",
                f"HostKey {hostdir / 'host_key'}",
                f"PidFile {hostdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                f"AllowUsers {USER}",
                "UsePAM no", "StrictModes no", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "PermitRootLogin no",
                "Subsystem sftp internal-sftp", "MaxStartups 50", "LogLevel VERBOSE", ""]))
            client += [f"Host {name}", f"  HostName {address}", f"  Port {port}", ""]
            bed.hosts[name] = FakeHost(name, address, port, config, hostdir / "sshd.log")
        first = bed.hosts[names[0]]
        client += [
            # the first host under a name whose host key nobody knows
            "Host unknown-key", f"  HostName {first.address}", f"  Port {first.port}",
            "  HostKeyAlias unknown-key.invalid", "",
            # the first host with a key it does not accept
            "Host wrong-key", f"  HostName {first.address}", f"  Port {first.port}",
            f"  IdentityFile {dot_ssh / 'stranger'}", "",
            "Host *", f"  User {USER}", f"  IdentityFile {dot_ssh / 'id_ed25519'}",
            "  IdentitiesOnly yes", f"  UserKnownHostsFile {dot_ssh / 'known_hosts_bed'}",
            "  StrictHostKeyChecking yes", "  BatchMode yes", "  ConnectTimeout 5",
            "  ControlMaster no", ""]
        (dot_ssh / "known_hosts_bed").write_text("\n".join(known) + "\n")
        bed.ssh_config.write_text("\n".join(client))
        for tool in ("ssh", "scp"):
            wrapper = bed.bin / tool
            wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/{tool} -F {bed.ssh_config} "$@"\n')
            wrapper.chmod(0o755)
        for name in names:
            bed.start(name)
        return bed

    # -- hosts ----------------------------------------------------------------
    def start(self, name: str) -> None:
        host = self.hosts[name]
        if host.proc is not None and host.proc.poll() is None:
            return
        with open(host.log, "ab") as log:
            host.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(host.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host.address, host.port), 0.5).close()
                return
            except OSError:
                if host.proc.poll() is not None:
                    raise RuntimeError(f"sshd for {name} exited: {host.log.read_text()}")
                time.sleep(0.05)
        raise RuntimeError(f"sshd for {name} does not listen")

    def stop(self, name: str) -> None:
        """The listener goes (connection refused); open connections stay."""
        proc = self.hosts[name].proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)

    def kill(self, name: str) -> None:
        """The host's sshd dies, every connection with it, then what they ran."""
        proc = self.hosts[name].proc
        if proc is None:
            return
        everything = _descendants(proc.pid)
        for pid in [proc.pid] + [p for p in everything if _comm(p).startswith("sshd")]:
            _signal(pid, signal.SIGKILL)
        proc.wait(10)
        time.sleep(0.2)
        for pid in everything:
            _signal(pid, signal.SIGKILL)

    def close(self) -> None:
        for name in self.hosts:
            self.kill(name)

    # -- the client side ------------------------------------------------------
    def client_env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.bin}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def ssh(self, host: str, command: str, timeout: float = 20) -> subprocess.CompletedProcess:
        """A separate connection (the OpenSSH client) to look at the host."""
        return subprocess.run(["/usr/bin/ssh", "-F", str(self.ssh_config), "-n", host, command],
                              capture_output=True, text=True, timeout=timeout)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                   check=True)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def bed() -> Iterator[SshBed]:
    root = Path(tempfile.mkdtemp(prefix="vmm-ct-"))
    root.chmod(0o755)
    made = None
    try:
        made = SshBed.create(root, HOSTS)
        yield made
    finally:
        if made is not None:
            made.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def hosts_restored(bed: SshBed) -> Iterator[SshBed]:
    """For tests that stop or kill hosts: every host runs again afterwards."""
    yield bed
    for name in bed.hosts:
        bed.start(name)


# ======================================================================================
# Transports
# ======================================================================================

TRANSPORTS = ["openssh", "paramiko"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest, bed: SshBed,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Transport]:
    if request.param == "openssh":
        monkeypatch.setenv("PATH", bed.client_env()["PATH"])
        made: Transport = OpenSSHTransport()
    else:
        from vmm_exec.transports.paramiko_transport import ParamikoTransport

        monkeypatch.setenv("HOME", str(bed.client_home))
        monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
        made = ParamikoTransport()
    yield made
    made.close()


@pytest.fixture
def paramiko_transport(bed: SshBed, monkeypatch: pytest.MonkeyPatch) -> Iterator[Transport]:
    from vmm_exec.transports.paramiko_transport import ParamikoTransport

    monkeypatch.setenv("HOME", str(bed.client_home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    made = ParamikoTransport()
    yield made
    made.close()


def marker() -> str:
    """A unique ``sleep`` argument that a remote ``pgrep`` can find."""
    return f"{300 + secrets.randbelow(100)}.{secrets.randbelow(10 ** 6):06d}"


def remote_sleeps(bed: SshBed, host: str, mark: str) -> List[str]:
    """PIDs of ``sleep MARK`` on the host, seen over a separate connection."""
    pattern = "sleep " + mark.replace(".", "[.]")  # [.] keeps pgrep from finding itself
    result = bed.ssh(host, f"pgrep -u {USER} -f '{pattern}' || true")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class LogSink:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def __call__(self, message: str, all_lines: bool = True) -> None:
        self.lines.append(message)


def make_stream(transport: Transport, host: str, tracker: Tracker, log: LogSink,
                update: Callable[[], None], remote_dir: str = "/nonexistent",
                kill_remote: bool = True) -> StreamCommand:
    """The engine's wiring: a stream over ``transport.open_stream`` (default mode kills
    the remote group over another connection when ``kill_remote``)."""

    def opener(h: str, shell: str, forward: bool) -> object:
        return transport.open_stream(tracker, h, shell, forward)

    killer = None
    if kill_remote:
        def killer(pgid: int) -> None:
            transport.kill_remote(host, pgid)

    stream = SshStream(host, "bash", opener, tracker,  # type: ignore[arg-type]
                       remote_killer=killer, identify_timeout=10)
    return StreamCommand(stream, remote_dir, log, update, reconnect=True)


# ======================================================================================
# run
# ======================================================================================

@pytest.mark.parametrize("code", [0, 1, 42, 254])
def test_run_exit_code_stdout_stderr(transport: Transport, code: int) -> None:
    result = transport.run(Tracker(), "host01", f"echo out; echo err >&2; exit {code}",
                           None, 20)
    assert (result.code, result.stdout, result.stderr, result.timed_out) == (
        code, "out\n", "err\n", False)
    assert result.command == f"echo out; echo err >&2; exit {code}"


def test_run_stdin_is_delivered(transport: Transport) -> None:
    result = transport.run(Tracker(), "host01", "cat; echo; cat", "a\nb 'c' $d", 20)
    assert (result.code, result.stdout) == (0, "a\nb 'c' $d\n")


def test_run_without_stdin_gives_eof(transport: Transport) -> None:
    # ssh -n: a command reading stdin ends at once
    result = transport.run(Tracker(), "host01", "cat; echo done", None, 20)
    assert (result.code, result.stdout) == (0, "done\n")


def test_run_megabyte_stdout_and_stderr_at_once(transport: Transport) -> None:
    command = ("head -c 1048576 /dev/zero | tr '\\0' o & "
               "head -c 1048576 /dev/zero | tr '\\0' e >&2; wait")
    started = time.monotonic()
    result = transport.run(Tracker(), "host01", command, None, 30)
    assert result.code == 0
    assert result.stdout == "o" * MB
    assert result.stderr == "e" * MB
    assert time.monotonic() - started < 15


def test_run_megabyte_stdin(transport: Transport) -> None:
    data = "".join(chr(33 + (i * 7) % 90) for i in range(1024)) * 1024
    result = transport.run(Tracker(), "host01", "sha256sum | cut -d' ' -f1; exit 3", data, 30)
    assert result.code == 3
    assert result.stdout.strip() == hashlib.sha256(data.encode()).hexdigest()


def test_run_big_stdin_to_a_command_that_does_not_read_it(transport: Transport) -> None:
    result = transport.run(Tracker(), "host01", "echo ignored", "x" * (4 * MB), 30)
    assert (result.code, result.stdout) == (0, "ignored\n")


def test_run_timeout_kills_the_remote_command(transport: Transport, bed: SshBed,
                                              request: pytest.FixtureRequest) -> None:
    if transport.name == "openssh":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="OpenSSHTransport.run kills only the local ssh client on "
                                "timeout; sshd leaves the remote command running"))
    mark = marker()
    started = time.monotonic()
    result = transport.run(Tracker(), "host01", f"sleep {mark}", None, 1.0)
    elapsed = time.monotonic() - started
    try:
        assert result.timed_out
        assert elapsed < 8
        wait_for(lambda: not remote_sleeps(bed, "host01", mark), 5, "the remote sleep to die")
    finally:
        for pid in remote_sleeps(bed, "host01", mark):  # do not leave it behind
            bed.ssh("host01", f"kill -9 {pid}")


def test_run_cancel_kills_the_remote_command(transport: Transport, bed: SshBed,
                                             request: pytest.FixtureRequest) -> None:
    if transport.name == "openssh":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="OpenSSHTransport.run kills only the local ssh client on "
                                "cancel; sshd leaves the remote command running"))
    mark = marker()
    tracker = Tracker()
    outcome: List[object] = []

    def work() -> None:
        try:
            outcome.append(transport.run(tracker, "host01", f"sleep {mark}", None, 60))
        except Cancelled as exc:
            outcome.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        wait_for(lambda: bool(remote_sleeps(bed, "host01", mark)), 10, "the remote sleep")
        tracker.cancel()
        thread.join(15)
        assert not thread.is_alive()
        assert isinstance(outcome[0], Cancelled)
        wait_for(lambda: not remote_sleeps(bed, "host01", mark), 5, "the remote sleep to die")
    finally:
        for pid in remote_sleeps(bed, "host01", mark):
            bed.ssh("host01", f"kill -9 {pid}")


def test_run_connection_refused(transport: Transport, hosts_restored: SshBed) -> None:
    hosts_restored.stop("host02")
    host = hosts_restored.hosts["host02"]
    result = transport.run(Tracker(), "host02", "true", None, 20)
    assert result.code == 255
    assert (f"ssh: connect to host {host.address} port {host.port}: Connection refused"
            in result.stderr)


def test_run_unknown_host_key_is_rejected(transport: Transport) -> None:
    result = transport.run(Tracker(), "unknown-key", "echo should-not-run", None, 20)
    assert result.code == 255
    assert result.stdout == ""
    assert "Host key verification failed." in result.stderr


def test_run_refused_key_is_permission_denied(transport: Transport) -> None:
    result = transport.run(Tracker(), "wrong-key", "echo should-not-run", None, 20)
    assert result.code == 255
    assert f"{USER}@127.0.0.61: Permission denied (publickey" in result.stderr


def test_run_unresolvable_host(transport: Transport) -> None:
    result = transport.run(Tracker(), "no-such-host.invalid", "true", None, 20)
    assert result.code == 255
    assert "ssh: Could not resolve hostname no-such-host.invalid" in result.stderr


# ======================================================================================
# streams
# ======================================================================================

def test_stream_framed_commands_and_heredoc_byte_exact(transport: Transport) -> None:
    tracker = Tracker()
    log = LogSink()
    command = make_stream(transport, "host01", tracker, log, lambda: None)
    try:
        first = command.run("echo $$", None, None)
        assert first.code == 0
        pid = first.stdout.strip()
        r = command.run("echo out; echo err >&2; exit 7", None, None)
        assert (r.code, r.stdout, r.stderr) == (7, "out\n", "err\nExitCode: 7")
        # a here-document of awkward bytes, including the usual delimiter and
        # invalid UTF-8 (which must travel as the same bytes)
        body = ("plain\n'single' \"double\" $HOME `id` $(id) \\ \\n\t tab\r\n"
                "EOT\nunicode: \u00e9\u4e2d\U0001f600\n" + "\udcff\udcfe" + "\nend")
        r = command.run("cat", body, None)
        assert r.code == 0
        assert r.stdout.encode("utf-8", "surrogateescape") == (
            body + "\n").encode("utf-8", "surrogateescape")
        assert r.command.startswith("cat << '") and "| cat" in r.command
        big = "".join(chr(48 + i % 64) for i in range(300_000))
        r = command.run("sha256sum | cut -c1-64", big, None)
        assert r.stdout.strip() == hashlib.sha256((big + "\n").encode()).hexdigest()
        r = command.run("printf 'no newline' >&2; exit 0", None, None)
        assert (r.code, r.stderr) == (0, "no newline\nExitCode: 0")
        assert command.run("echo $$", None, None).stdout.strip() == pid  # same shell
    finally:
        command.close()


def test_stream_missing_remotes_are_updated(transport: Transport, bed: SshBed,
                                            tmp_path: Path) -> None:
    local = tmp_path / "remotes"
    (local / "vmm" / "fake").mkdir(parents=True)
    script = local / "vmm" / "fake" / "hello"
    script.write_text('#!/bin/sh\necho "hello $*"; cat\n')
    script.chmod(0o755)
    # relative to the login directory, like a bare SCRIPTS_REMOTE_DIR would be
    remote_dir = f"vmm-ct-{secrets.token_hex(4)}/remotes"
    tracker = Tracker()
    log = LogSink()
    assert bed.ssh("host01", f"test -e {remote_dir}").returncode == 1  # not there yet

    def update() -> None:
        update_remotes(transport, tracker, "host01", remote_dir, str(local), log)

    command = make_stream(transport, "host01", tracker, log, update, remote_dir)
    try:
        base = f"{remote_dir}/vmm/fake/hello"
        result = command.run(f"{base} a b", "stdin text", base)
        assert (result.code, result.stdout) == (0, "hello a b\nstdin text\n")
        assert log.lines[:2] == ["Remote worker node files not found", "Updating remotes"]
        assert bed.ssh("host01", f"test -x {base}").returncode == 0
        log.lines.clear()
        again = command.run(f"{base} c", None, base)  # present now: no second update
        assert (again.code, again.stdout) == (0, "hello c\n")
        assert "Updating remotes" not in log.lines
    finally:
        command.close()
        bed.ssh("host01", f"rm -rf {remote_dir.split('/')[0]}")


def _cancel_mid_command(transport: Transport, bed: SshBed, kill_remote: bool) -> None:
    mark = marker()
    tracker = Tracker()
    command = make_stream(transport, "host01", tracker, LogSink(), lambda: None,
                          kill_remote=kill_remote)
    outcome: List[object] = []

    def work() -> None:
        try:
            outcome.append(command.run(f"echo started; sleep {mark}; echo never", None, None))
        except Cancelled as exc:
            outcome.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        wait_for(lambda: bool(remote_sleeps(bed, "host01", mark)), 10, "the remote sleep")
        tracker.cancel()
        thread.join(15)
        assert not thread.is_alive()
        assert isinstance(outcome[0], Cancelled)
        wait_for(lambda: not remote_sleeps(bed, "host01", mark), 5, "the remote sleep to die")
    finally:
        try:
            command.close()
        except Exception:  # noqa: BLE001 - the stream is dead
            pass
        for pid in remote_sleeps(bed, "host01", mark):
            bed.ssh("host01", f"kill -9 {pid}")


def test_stream_cancel_kills_the_remote_command(transport: Transport, bed: SshBed) -> None:
    _cancel_mid_command(transport, bed, kill_remote=True)


def test_stream_timeout_ends_the_command(transport: Transport) -> None:
    tracker = Tracker()
    command = make_stream(transport, "host01", tracker, LogSink(), lambda: None)
    try:
        started = time.monotonic()
        result = command.run("sleep 30", None, None, timeout=1.0)
        assert time.monotonic() - started < 10
        assert result.timed_out and result.stderr.endswith("\nTimeout Error")
    finally:
        command.close()


def test_stream_host_killed_mid_command(transport: Transport,
                                        hosts_restored: SshBed) -> None:
    bed = hosts_restored
    mark = marker()
    tracker = Tracker()
    command = make_stream(transport, "host03", tracker, LogSink(), lambda: None)
    outcome: List[Execution] = []
    thread = threading.Thread(
        target=lambda: outcome.append(command.run(f"sleep {mark}", None, None)), daemon=True)
    try:
        assert command.run("true", None, None).code == 0
        thread.start()
        wait_for(lambda: bool(remote_sleeps(bed, "host03", mark)), 10, "the remote sleep")
        started = time.monotonic()
        bed.kill("host03")
        thread.join(20)
        assert not thread.is_alive(), "the stream hangs on a dead connection"
        assert time.monotonic() - started < 10
        result = outcome[0]
        assert result.code == 255
        assert "ExitSSHCode: 255\nError connecting to host03" in result.stderr
    finally:
        command.close()


def test_stream_to_a_stopped_host(transport: Transport, hosts_restored: SshBed) -> None:
    hosts_restored.stop("host02")
    command = make_stream(transport, "host02", Tracker(), LogSink(), lambda: None)
    try:
        result = command.run("echo hi", None, None)
        assert result.code in (-1, 255)
        assert "Connection refused" in result.stderr
        assert "Error connecting to host02" in result.stderr
    finally:
        command.close()


# ======================================================================================
# copy_remotes
# ======================================================================================

def _tree(top: Path) -> Dict[str, Tuple[str, int, int]]:
    """path → (kind + content hash, mode, mtime) of everything under ``top``."""
    found: Dict[str, Tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.stat()
            rel = str(path.relative_to(top))
            kind = "d" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            found[rel] = (kind, stat.S_IMODE(info.st_mode), int(info.st_mtime))
    return found


def test_copy_remotes_copies_contents_modes_and_times(transport: Transport, bed: SshBed,
                                                      tmp_path: Path) -> None:
    local = tmp_path / "remotes"
    (local / "vmm" / "kvm").mkdir(parents=True)
    (local / "im" / "kvm.d" / ".hidden-dir").mkdir(parents=True)
    (local / "vmm" / "kvm" / "deploy").write_text("#!/bin/sh\necho deploy\n")
    (local / "vmm" / "kvm" / "deploy").chmod(0o755)
    (local / "vmm" / "kvm" / "conf").write_text("X=1\n")
    (local / "vmm" / "kvm" / "conf").chmod(0o640)
    (local / "im" / "kvm.d" / ".hidden").write_text("inside a directory: copied\n")
    (local / "im" / "kvm.d" / ".hidden-dir" / "x").write_bytes(bytes(range(256)) * 512)
    (local / "top-file").write_text("top\n")
    (local / ".top-hidden").write_text("not matched by the * glob\n")
    os.utime(local / "top-file", (1_600_000_000, 1_600_000_000))
    remote_dir = f"/var/tmp/vmm-ct-{secrets.token_hex(4)}"
    bed.ssh("host01", f"mkdir -p {remote_dir}")
    try:
        result = transport.copy_remotes(Tracker(), "host01", str(local), remote_dir, 60)
        assert (result.code, result.stderr) == (0, "")
        assert str(local) in result.command and f"host01:{remote_dir}" in result.command
        listing = bed.ssh("host01", f"cd {remote_dir} && find . -mindepth 1 -printf "
                                    "'%P %m %T@\\n' | sort")
        assert listing.returncode == 0, listing.stderr
        expected = {k: v for k, v in _tree(local).items() if not k.startswith(".top")}
        got = {}
        for line in listing.stdout.splitlines():
            rel, mode, mtime = line.rsplit(" ", 2)
            got[rel] = (int(mode, 8), int(float(mtime)))
        assert got == {k: (mode, mtime) for k, (_, mode, mtime) in expected.items()}
        # contents: the remote checksums equal the local ones
        sums = bed.ssh("host01", f"cd {remote_dir} && find . -type f -printf '%P\\n' | sort | "
                                 "xargs -d '\\n' sha256sum")
        remote_sums = {line.split("  ", 1)[1]: line.split()[0]
                       for line in sums.stdout.splitlines()}
        assert remote_sums == {k: kind for k, (kind, _, _) in expected.items() if kind != "d"}
        # again, over existing files (the remotes update runs on every missing script)
        assert transport.copy_remotes(Tracker(), "host01", str(local), remote_dir, 60).code == 0
    finally:
        bed.ssh("host01", f"rm -rf {remote_dir}")


def test_copy_remotes_to_a_stopped_host(transport: Transport, hosts_restored: SshBed,
                                        tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    hosts_restored.stop("host02")
    result = transport.copy_remotes(Tracker(), "host02", str(tmp_path), "/var/tmp/x", 20)
    assert result.code == 255
    assert "Connection refused" in result.stderr


# ======================================================================================
# paramiko only: how it gets there
# ======================================================================================

def test_paramiko_stream_terminate_alone_kills_the_remote(paramiko_transport: Transport,
                                                          bed: SshBed) -> None:
    """Without the stream's remote killer (strict mode), the SSH signal request does it."""
    _cancel_mid_command(paramiko_transport, bed, kill_remote=False)


def test_paramiko_channel_terminate_signals_the_session(paramiko_transport: Transport,
                                                        bed: SshBed) -> None:
    from vmm_exec.transports.paramiko_transport import ParamikoChannel

    mark = marker()
    channel = paramiko_transport.open_stream(Tracker(), "host01", "bash", False)
    assert isinstance(channel, ParamikoChannel)
    channel.send(f"(sleep {mark}) & sleep {mark}\n".encode())
    wait_for(lambda: len(remote_sleeps(bed, "host01", mark)) == 2, 10, "two remote sleeps")
    channel.terminate()
    assert channel.signalled is True
    assert channel.exit_status() == 255
    assert not remote_sleeps(bed, "host01", mark)
    channel.release()


def test_paramiko_pools_one_connection_per_host(paramiko_transport: Transport) -> None:
    from vmm_exec.transports.paramiko_transport import ParamikoTransport

    assert isinstance(paramiko_transport, ParamikoTransport)
    # $PPID of a session is sshd's process for the connection
    first = paramiko_transport.run(Tracker(), "host01", "echo $PPID", None, 10).stdout
    second = paramiko_transport.run(Tracker(), "host01", "echo $PPID", None, 10).stdout
    assert first == second and first.strip().isdigit()
    other = paramiko_transport.run(Tracker(), "host02", "echo $PPID", None, 10).stdout
    assert other != first
    assert [len(paramiko_transport._pool[h]) for h in ("host01", "host02")] == [1, 1]


def test_paramiko_many_threads_share_the_pool(paramiko_transport: Transport) -> None:
    """More concurrent commands than sshd's MaxSessions (10): more connections, no failure."""
    from vmm_exec.transports.paramiko_transport import MAX_CHANNELS, ParamikoTransport

    assert isinstance(paramiko_transport, ParamikoTransport)
    results: Dict[int, Execution] = {}
    count = 24

    def one(i: int) -> None:
        results[i] = paramiko_transport.run(Tracker(), "host01", f"sleep 0.5; echo {i}",
                                            None, 30)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert time.monotonic() - started < 10
    assert {i: (r.code, r.stdout) for i, r in results.items()} == {
        i: (0, f"{i}\n") for i in range(count)}
    # the extra connections went once idle
    assert len(paramiko_transport._pool["host01"]) == 1
    assert paramiko_transport._pool["host01"][0].channels == 0
    assert MAX_CHANNELS < 10


def test_paramiko_reconnects_after_the_host_came_back(paramiko_transport: Transport,
                                                      hosts_restored: SshBed) -> None:
    assert paramiko_transport.run(Tracker(), "host03", "true", None, 10).code == 0
    hosts_restored.kill("host03")
    hosts_restored.start("host03")
    result = paramiko_transport.run(Tracker(), "host03", "echo back", None, 10)
    assert (result.code, result.stdout) == (0, "back\n")


def test_paramiko_run_over_a_connection_lost_mid_command(paramiko_transport: Transport,
                                                         hosts_restored: SshBed) -> None:
    bed = hosts_restored
    mark = marker()
    outcome: List[Execution] = []
    thread = threading.Thread(target=lambda: outcome.append(
        paramiko_transport.run(Tracker(), "host03", f"sleep {mark}", None, 30)), daemon=True)
    thread.start()
    wait_for(lambda: bool(remote_sleeps(bed, "host03", mark)), 10, "the remote sleep")
    bed.kill("host03")
    thread.join(10)
    assert not thread.is_alive()
    assert outcome[0].code == 255
    assert "Connection to 127.0.0.63 closed by remote host." in outcome[0].stderr
