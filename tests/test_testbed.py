"""The OpenSSH test bed: real sshds on loopback addresses, real ssh/scp/paramiko clients.

Every wait is bounded; the module runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Set

import pytest
import testbed as tbmod
from testbed import Testbed, pid_alive

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the test bed needs Linux")

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("host01", "host02", "host03", "host04")

HELLO = """#!/bin/sh
printf '{"host": "%s", "script": "hello", "args": "%s"}\\n' "$TESTBED_HOST" "$*" \\
    >> "$TESTBED_JOURNAL"
echo "hello from $TESTBED_HOST"
"""


def _remotes_tree(base: Path) -> Path:
    tree = base / "remotes"
    (tree / "vmm" / "kvm").mkdir(parents=True)
    (tree / "hello.sh").write_text(HELLO)
    (tree / "hello.sh").chmod(0o755)
    (tree / "vmm" / "kvm" / "deploy").write_text("#!/bin/sh\necho deploy \"$@\"\n")
    (tree / "vmm" / "kvm" / "deploy").chmod(0o750)
    os.utime(tree / "vmm" / "kvm" / "deploy", (1_000_000_000, 1_000_000_000))
    return tree


@pytest.fixture(scope="module")
def remotes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _remotes_tree(tmp_path_factory.mktemp("testbed"))


@pytest.fixture(scope="module")
def bed(make_testbed: Callable[..., Testbed], remotes: Path) -> Iterator[Testbed]:
    """host01..host04, all with remote scripts except host03."""
    started = time.monotonic()
    tb = make_testbed(names=NAMES, remotes=str(remotes), without_remotes=("host03",))
    print(f"\ntest bed of {len(NAMES)} hosts started in {time.monotonic() - started:.2f}s")
    yield tb
    tb.stop()


def run(tb: Testbed, *argv: str, stdin: Optional[bytes] = None, timeout: float = 20,
        env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess[bytes]:
    """A plain client command (``ssh``/``scp`` from PATH = the test bed's wrappers)."""
    return subprocess.run(list(argv), input=stdin if stdin is not None else b"",
                          capture_output=True, timeout=timeout,
                          env=env if env is not None else tb.client_env())


def ssh(tb: Testbed, host: str, command: str, stdin: Optional[bytes] = None,
        env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess[bytes]:
    return run(tb, "ssh", host, command, stdin=stdin, env=env)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s")
        time.sleep(0.02)


def cmdline(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def sleeps_of(tb: Testbed, host: str, seconds: str) -> Set[int]:
    return {pid for pid in tb.host_pids(host) if cmdline(pid)[:2] == ["sleep", seconds]}


# --------------------------------------------------------------------------------------
# sessions: environment, directory, streams, exit codes
# --------------------------------------------------------------------------------------

def test_every_host_answers_in_its_own_directory(bed: Testbed) -> None:
    for name in NAMES:
        info = bed.hosts[name]
        result = ssh(bed, name, 'echo "$TESTBED_HOST"; pwd; id -un; echo "$TESTBED_JOURNAL"')
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().splitlines() == [
            name, info.home, bed.user, bed.journal_path]
        assert result.stderr == b""
        assert info.address.startswith("127.") and info.address != "127.0.0.1"
    assert len({info.address for info in bed.hosts.values()}) == len(NAMES)


def test_session_fixture(testbed: Testbed, remotes: Path) -> None:
    assert sorted(testbed.hosts) == list(NAMES)
    assert not Path(testbed.hosts["host01"].remotes_path).exists()
    testbed.populate("host01", str(remotes))
    result = ssh(testbed, "host01", "var/tmp/one/hello.sh")
    assert result.stdout == b"hello from host01\n"


def test_ssh_argv_and_minus_n(bed: Testbed) -> None:
    result = subprocess.run(bed.ssh_argv("host04", "echo", "$TESTBED_HOST", no_stdin=True),
                            capture_output=True, timeout=20)
    assert (result.returncode, result.stdout) == (0, b"host04\n")


def test_exit_codes_and_standard_streams_pass_through(bed: Testbed) -> None:
    assert ssh(bed, "host01", "exit 7").returncode == 7
    assert ssh(bed, "host01", "true").returncode == 0
    assert ssh(bed, "host01", "kill -9 $$").returncode == 255  # killed by a signal
    data = bytes(range(256)) * 64
    result = ssh(bed, "host02", "cat; echo to-stderr >&2; exit 3", stdin=data)
    assert result.returncode == 3
    assert result.stdout == data
    assert result.stderr == b"to-stderr\n"


def test_persistent_stream(bed: Testbed) -> None:
    proc = subprocess.Popen(["ssh", "host02", "bash", "-s"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=bed.client_env())
    assert proc.stdin is not None and proc.stdout is not None
    try:
        lines = []
        for command in ("echo $TESTBED_HOST", "pwd", "mkdir -p var && cd var",
                        "pwd", "X=42", "echo x=$X", "echo err >&2"):
            proc.stdin.write(f"{command}; echo ::done::\n".encode())
            proc.stdin.flush()
            while True:
                line = proc.stdout.readline().decode().rstrip("\n")
                assert line != "", "stream closed early"
                if line == "::done::":
                    break
                lines.append(line)
        home = bed.hosts["host02"].home
        assert lines == ["host02", home, f"{home}/var", "x=42"]
        proc.stdin.write(b"exit 5\n")
        proc.stdin.close()
        assert proc.wait(timeout=10) == 5
        assert proc.stderr is not None and proc.stderr.read() == b"err\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_relative_paths_resolve_per_host(bed: Testbed) -> None:
    for name in NAMES:
        assert ssh(bed, name, f"mkdir -p var/tmp/mark && echo {name} > var/tmp/mark/who"
                   ).returncode == 0
    for name in NAMES:
        who = Path(bed.hosts[name].home, "var/tmp/mark/who")
        assert who.read_text() == f"{name}\n"
        assert who.stat().st_uid == bed._uid
        result = ssh(bed, name, "cat var/tmp/mark/who")
        assert result.stdout.decode() == f"{name}\n"


def test_remotes_present_except_on_the_host_without(bed: Testbed) -> None:
    for name in NAMES:
        result = ssh(bed, name, "var/tmp/one/hello.sh a b")
        if name == "host03":
            assert result.returncode == 127
            assert not Path(bed.hosts[name].remotes_path, "hello.sh").exists()
        else:
            assert (result.returncode, result.stdout) == (0, f"hello from {name}\n".encode())
    records = [r for r in bed.read_journal() if isinstance(r, dict) and r.get("script")]
    assert {r["host"] for r in records} >= {"host01", "host02", "host04"}
    assert all(r["args"] == "a b" for r in records)
    deploy = Path(bed.hosts["host01"].remotes_path, "vmm/kvm/deploy")
    assert deploy.stat().st_mode & 0o777 == 0o750


# --------------------------------------------------------------------------------------
# scp
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True], ids=["sftp", "scp-O"])
def test_scp_lands_in_the_hosts_own_directory(bed: Testbed, remotes: Path,
                                              legacy: bool) -> None:
    target = "var/tmp/one" if not legacy else "var/tmp/legacy"
    assert ssh(bed, "host03", f"mkdir -p {target}").returncode == 0
    option = "-O " if legacy else ""
    # through /bin/sh, as the driver does, so that the glob expands locally
    result = run(bed, "sh", "-c", f"scp {option}-rp {remotes}/* host03:{target}")
    assert result.returncode == 0, result.stderr
    landed = Path(bed.hosts["host03"].home, target)
    assert (landed / "hello.sh").read_text() == HELLO
    deploy = landed / "vmm" / "kvm" / "deploy"
    assert deploy.stat().st_mode & 0o777 == 0o750      # -p: modes
    assert int(deploy.stat().st_mtime) == 1_000_000_000  # -p: times
    for other in ("host01", "host02", "host04"):
        assert not Path(bed.hosts[other].home, "var/tmp/legacy").exists()
    result = ssh(bed, "host03", f"{target}/hello.sh")
    assert result.stdout == b"hello from host03\n"


# --------------------------------------------------------------------------------------
# unreachable, killed
# --------------------------------------------------------------------------------------

def test_unreachable_host_is_refused_quickly_and_comes_back(bed: Testbed) -> None:
    port = bed.hosts["host04"].port
    bed.stop_host("host04")
    try:
        assert not bed.running("host04")
        started = time.monotonic()
        result = ssh(bed, "host04", "true")
        elapsed = time.monotonic() - started
        assert result.returncode == 255
        assert b"Connection refused" in result.stderr
        assert elapsed < 2.0
    finally:
        bed.start_host("host04")
    assert bed.hosts["host04"].port == port
    assert ssh(bed, "host04", "echo $TESTBED_HOST").stdout == b"host04\n"


def test_kill_host_kills_its_sessions(bed: Testbed) -> None:
    client = subprocess.Popen(["ssh", "host02", "sleep 57"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=bed.client_env())
    stream = subprocess.Popen(["ssh", "host02", "bash", "-s"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env=bed.client_env())
    assert stream.stdin is not None
    stream.stdin.write(b"sleep 56; echo status=$?\n")
    stream.stdin.flush()
    # a detached one too (own session, output elsewhere): found by its environment
    assert ssh(bed, "host02", "setsid sleep 58 </dev/null >/dev/null 2>&1 &").returncode == 0
    other = subprocess.Popen(["ssh", "host01", "sleep 57"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=bed.client_env())
    try:
        wait_for(lambda: len(sleeps_of(bed, "host02", "57")) == 1, 10, "remote sleep 57")
        wait_for(lambda: len(sleeps_of(bed, "host02", "58")) == 1, 10, "remote sleep 58")
        wait_for(lambda: len(sleeps_of(bed, "host01", "57")) == 1, 10, "host01 sleep")
        wait_for(lambda: len(sleeps_of(bed, "host02", "56")) == 1, 10, "stream sleep")
        victims = (sleeps_of(bed, "host02", "57") | sleeps_of(bed, "host02", "58")
                   | sleeps_of(bed, "host02", "56"))
        survivor = sleeps_of(bed, "host01", "57")
        sshd = bed.hosts["host02"].sshd_pid
        assert sshd is not None
        started = time.monotonic()
        bed.kill_host("host02")
        assert time.monotonic() - started < 3.0
        assert not any(pid_alive(pid) for pid in victims | {sshd})
        assert bed.host_pids("host02") == set()
        assert client.wait(timeout=10) == 255
        # a crash: the stream breaks, no status of the killed command gets through
        out, _ = stream.communicate(timeout=10)
        assert (stream.returncode, out) == (255, b"")
        assert all(pid_alive(pid) for pid in survivor)  # another host is not touched
        result = ssh(bed, "host02", "true")
        assert result.returncode == 255 and b"Connection refused" in result.stderr
    finally:
        for proc in (client, other, stream):
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
        bed.start_host("host02")
    assert ssh(bed, "host02", "echo $TESTBED_HOST").stdout == b"host02\n"
    bed.stop_host("host01", sessions=True)
    bed.start_host("host01")
    assert not any(pid_alive(pid) for pid in survivor)


# --------------------------------------------------------------------------------------
# client side: paramiko facts, the real ~/.ssh untouched
# --------------------------------------------------------------------------------------

def test_paramiko_with_the_host_facts(bed: Testbed) -> None:
    paramiko = pytest.importorskip("paramiko")
    info = bed.hosts["host01"]
    client = paramiko.SSHClient()
    client.load_host_keys(info.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(info.address, port=info.port, username=info.user,
                   key_filename=info.key_path, look_for_keys=False, allow_agent=False,
                   timeout=10)
    try:
        _, out, _ = client.exec_command("echo $TESTBED_HOST; pwd", timeout=10)
        assert out.read().decode().splitlines() == ["host01", info.home]
        assert out.channel.recv_exit_status() == 0
        sftp = client.open_sftp()
        sftp.putfo(__import__("io").BytesIO(b"via sftp\n"), "paramiko.txt")
        sftp.close()
        assert Path(info.home, "paramiko.txt").read_bytes() == b"via sftp\n"
    finally:
        client.close()


def test_client_home_for_paramiko_transport(bed: Testbed, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    pytest.importorskip("paramiko")
    from vmm_exec.transports.paramiko import host_settings

    monkeypatch.setenv("HOME", bed.client_home)
    settings = host_settings("host02")
    info = bed.hosts["host02"]
    assert (settings.hostname, settings.port, settings.user) == (
        info.address, info.port, info.user)
    assert settings.identity_files == [info.key_path]
    assert info.known_hosts in settings.known_hosts
    assert settings.identities_only


def test_real_home_is_not_touched(bed: Testbed) -> None:
    real = Path(os.path.expanduser("~")) / ".ssh"
    before = sorted((p.name, p.stat().st_mtime) for p in real.iterdir()) \
        if real.is_dir() else None
    env = bed.client_env()
    assert env["PATH"].split(os.pathsep)[0] == bed.client_bin
    assert env["HOME"] == bed.client_home
    assert ssh(bed, "host01", "true", env=bed.client_env(home=False)).returncode == 0
    after = sorted((p.name, p.stat().st_mtime) for p in real.iterdir()) \
        if real.is_dir() else None
    assert before == after


def test_connection_cost(bed: Testbed) -> None:
    times = []
    for _ in range(6):
        started = time.monotonic()
        assert ssh(bed, "host01", "true").returncode == 0
        times.append(time.monotonic() - started)
    median = statistics.median(times)
    print(f"\nssh host01 true: median {median * 1000:.0f} ms, best {min(times) * 1000:.0f} ms")
    assert median < 0.6  # ~0.13 s here; loose for slow CI machines


def test_listens_on_its_loopback_addresses_only(bed: Testbed) -> None:
    public = tbmod._sshd_listeners_on_public_ports()
    for info in bed.hosts.values():
        assert info.sshd_pid is not None and info.sshd_pid not in public
        assert tbmod._socket_holders(tbmod._socket_inodes(info.address, info.port)) >= {
            info.sshd_pid}
        config = Path(info.config_path).read_text()
        assert f"ListenAddress {info.address}:{info.port}\n" in config
        assert config.count("ListenAddress") == 1


# --------------------------------------------------------------------------------------
# teardown, CLI
# --------------------------------------------------------------------------------------

def test_stop_leaves_no_process(make_testbed: Callable[..., Testbed]) -> None:
    tb = make_testbed(names=("host01", "host02"))
    clients = [subprocess.Popen(["ssh", name, "sleep 59"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=tb.client_env()) for name in tb.names]
    try:
        wait_for(lambda: all(sleeps_of(tb, name, "59") for name in tb.names), 10,
                 "remote sleeps")
        pids: Set[int] = set()
        for name in tb.names:
            pids |= tb.host_pids(name)
        listeners = {tb.hosts[name].sshd_pid for name in tb.names}
        assert listeners <= pids
        assert len(pids) >= 2 * 3  # listener, connection sshd(s), sleep per host
        root = tb.root
        started = time.monotonic()
        tb.stop()
        print(f"\nstop with open sessions: {time.monotonic() - started:.2f}s")
        assert not [pid for pid in pids if pid_alive(pid)]
        assert not os.path.exists(root)
        for proc in clients:
            assert proc.wait(timeout=10) == 255
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_cli_runs_until_sigterm() -> None:
    tbmod.ensure_openssh_server()
    # the user must traverse the root's parents (pytest's tmp_path is 0700)
    parent = Path(tempfile.mkdtemp(prefix="vmm-testbed-cli-"))
    parent.chmod(0o755)
    root = parent / "bed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "testbed.py"), "--hosts", "2",
                             "--root", str(root), "--without-remotes", "host02"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT))
    try:
        wait_for(lambda: (root / "ready").exists() or proc.poll() is not None, 30,
                 "test bed CLI ready")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        facts = json.loads((root / "testbed.json").read_text())
        result = subprocess.run(["ssh", "-F", facts["ssh_config"], "host02",
                                 "echo $TESTBED_HOST"], capture_output=True, timeout=20)
        assert result.stdout == b"host02\n"
        env = dict(os.environ)
        env["PATH"] = facts["client_bin"] + os.pathsep + env.get("PATH", "")
        result = subprocess.run(["ssh", "host01", "pwd"], capture_output=True, timeout=20,
                                env=env)
        assert result.stdout.decode().strip() == facts["hosts"]["host01"]["home"]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        text = out.decode()
        assert f"TESTBED_SSH_CONFIG={facts['ssh_config']}" in text
        assert "test bed stopped" in text
        for host in facts["hosts"].values():
            assert not pid_alive(host["sshd_pid"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(parent, ignore_errors=True)


def test_root_must_be_reachable_by_the_user(tmp_path: Path) -> None:
    tbmod.ensure_openssh_server()
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    tb = Testbed(names=("host01",), root=str(closed / "bed"))
    with pytest.raises(ValueError, match="cannot reach"):
        tb.start()
    assert not tb.running("host01")
