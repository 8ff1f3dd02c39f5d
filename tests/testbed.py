"""Real OpenSSH test hosts on loopback addresses, for the tests and the demo.

Every fake host is one ``sshd`` of its own, listening on its own loopback address
(127.0.0.2, 127.0.0.3, ...) on a free port, with a throwaway ed25519 host key. All
hosts accept one throwaway client key for one dedicated non-root user (``vmmtest``,
created when missing). Each host has its own directory ``<root>/hosts/<name>``: the
sshd ``ForceCommand`` is a small wrapper that ``cd``s there, exports
``TESTBED_HOST``/``TESTBED_ROOT``/``TESTBED_DIR``/``TESTBED_JOURNAL`` (and ``HOME`` =
the host's directory), records its session id in ``.sessions/`` and then runs the
original command with the user's shell (or the SFTP server, or a login shell), so a
relative path such as ``var/tmp/one`` is a different directory on every host, for
``ssh HOST cmd``, ``ssh HOST bash -s``, ``scp`` (SFTP or ``-O``) and paramiko alike.

The client side never touches the real ``~/.ssh``: :attr:`Testbed.ssh_config_path` is
a config mapping ``host01``... to the sshds (known host keys, so
``StrictHostKeyChecking yes`` holds; ``BatchMode``, ``IdentitiesOnly``);
:meth:`Testbed.client_env` puts tiny ``ssh``/``scp``/``sftp`` wrappers that add
``-F <config>`` first on ``PATH`` and sets ``HOME`` to :attr:`Testbed.client_home`,
whose ``.ssh/config`` is the same config (for libraries such as paramiko).

Everything started is stopped by PID: the sshd listeners (our children), and for a
host's sessions the processes found through ``/proc`` (holders of the host's
sockets, processes carrying the host's ``TESTBED_*`` environment, members of the
recorded sessions). Waits are bounded.

``python tests/testbed.py --hosts 4 --remotes DIR`` starts a test bed, prints
how to use it and runs until Ctrl-C or SIGTERM. Linux only; needs root.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

__all__ = ["Unavailable", "HostInfo", "Testbed", "ensure_openssh_server", "ensure_user",
           "host_names", "main"]

SSHD = "/usr/sbin/sshd"
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                "/usr/libexec/sftp-server", "/usr/lib/ssh/sftp-server")
DEFAULT_USER = "vmmtest"
DEFAULT_REMOTES_DIR = "var/tmp/one"
FIRST_ADDRESS = "127.0.0.2"
SESSIONS = ".sessions"
JOURNAL = "journal.jsonl"

# cheap and modern: one curve25519 exchange, AES-GCM (chacha20 as second choice);
# the server also accepts a few classic ones for clients such as older paramiko
CLIENT_KEX = "curve25519-sha256,curve25519-sha256@libssh.org"
CLIENT_CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com"
SERVER_KEX = CLIENT_KEX + ",ecdh-sha2-nistp256,diffie-hellman-group14-sha256"
SERVER_CIPHERS = CLIENT_CIPHERS + ",aes128-ctr,aes256-ctr"
SERVER_MACS = "hmac-sha2-256-etm@openssh.com,hmac-sha2-256,hmac-sha2-512"

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
INSTALL_TIMEOUT = 900.0


class Unavailable(RuntimeError):
    """No OpenSSH test bed can be had here (the message says why)."""


# --------------------------------------------------------------------------------------
# processes, through /proc
# --------------------------------------------------------------------------------------

def _stat(pid: int) -> Optional[Tuple[str, int, int, int]]:
    """(state, ppid, pgrp, session) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (PID 1 may not reap orphans here)."""
    info = _stat(pid)
    return info is not None and info[0] not in ("Z", "X")


def _pids() -> List[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _environ(pid: int) -> Set[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return set(handle.read().split(b"\0"))
    except OSError:
        return set()


def _socket_inodes(address: str, port: int) -> Set[str]:
    """Inodes of the TCP sockets whose local end is ``address:port``."""
    packed = socket.inet_aton(address)
    local = f"{int.from_bytes(packed, sys.byteorder):08X}:{port:04X}"
    inodes: Set[str] = set()
    try:
        with open("/proc/net/tcp", encoding="ascii") as handle:
            next(handle, None)
            for line in handle:
                fields = line.split()
                if len(fields) > 9 and fields[1] == local:
                    inodes.add(fields[9])
    except OSError:
        pass
    inodes.discard("0")
    return inodes


def _socket_holders(inodes: Set[str]) -> Set[int]:
    if not inodes:
        return set()
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders: Set[int] = set()
    for pid in _pids():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in wanted:
                    holders.add(pid)
                    break
            except OSError:
                continue
    return holders


def _wait_gone(pids: Iterable[int], timeout: float) -> Set[int]:
    """Wait (bounded) until none of ``pids`` is alive; return those still alive."""
    left = {pid for pid in pids if pid_alive(pid)}
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = {pid for pid in left if pid_alive(pid)}
    return left


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        if pid in (0, 1, os.getpid()):
            continue
        try:
            os.kill(pid, sig)
        except OSError:
            pass


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec_fn: the sshd listener gets SIGTERM if the starting thread dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------------------
# the machine: openssh-server, the user
# --------------------------------------------------------------------------------------

def _sftp_server() -> Optional[str]:
    for path in SFTP_SERVERS:
        if os.access(path, os.X_OK):
            return path
    return None


def _missing_tools() -> List[str]:
    missing = []
    if not os.access(SSHD, os.X_OK) or _sftp_server() is None:
        missing.append("openssh-server")
    if not all(shutil.which(tool) for tool in ("ssh", "scp", "ssh-keygen")):
        missing.append("openssh-client")
    return missing


def _sshd_listeners_on_public_ports() -> Set[int]:
    """sshd processes listening on port 22 or on a wildcard address (IPv4 or IPv6)."""
    inodes: Set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) <= 9 or fields[3] != "0A":
                        continue
                    address, _, port = fields[1].partition(":")
                    if int(port, 16) == 22 or set(address) == {"0"}:
                        inodes.add(fields[9])
        except OSError:
            continue
    holders = set()
    for pid in _socket_holders(inodes):
        try:
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("sshd"):
                holders.add(pid)
        except OSError:
            continue
    return holders


def ensure_openssh_server(timeout: float = INSTALL_TIMEOUT) -> None:
    """Install openssh-server (and client) with apt-get when missing.

    Raises :class:`Unavailable` when it is missing and cannot be installed. The
    package's maintainer scripts are kept from starting the system sshd
    (``policy-rc.d`` answering 101, ``RUNLEVEL=1``); an sshd that appears on port 22
    or on a wildcard address during the installation is stopped by PID all the same.
    """
    missing = _missing_tools()
    if not missing:
        return
    if sys.platform != "linux":
        raise Unavailable("the OpenSSH test bed needs Linux")
    if os.geteuid() != 0:
        raise Unavailable(f"{' and '.join(missing)} not installed and not root "
                          "(cannot apt-get install it)")
    if shutil.which("apt-get") is None:
        raise Unavailable(f"{' and '.join(missing)} not installed and no apt-get")
    before = _sshd_listeners_on_public_ports()
    policy = "/usr/sbin/policy-rc.d"
    own_policy = not os.path.exists(policy)
    if own_policy:
        with open(policy, "w", encoding="ascii") as handle:
            handle.write("#!/bin/sh\n# vmm_exec test bed: start no service while installing\n"
                         "exit 101\n")
        os.chmod(policy, 0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", RUNLEVEL="1")
    deadline = time.monotonic() + timeout
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]

    def run(argv: List[str]) -> subprocess.CompletedProcess[str]:
        left = max(1.0, deadline - time.monotonic())
        return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=left, check=False)

    try:
        result = run(install)
        if result.returncode != 0:
            update = run(["apt-get", "update", "-q"])
            if update.returncode != 0:
                raise Unavailable("apt-get update failed: " + update.stderr.strip()[-500:])
            result = run(install)
        if result.returncode != 0:
            raise Unavailable(f"apt-get install {' '.join(missing)} failed: "
                              + (result.stderr or result.stdout).strip()[-500:])
    except subprocess.TimeoutExpired:
        raise Unavailable(f"installing {' '.join(missing)} took over {timeout:g}s") from None
    finally:
        if own_policy:
            try:
                os.unlink(policy)
            except OSError:
                pass
        # a system sshd started by the package's scripts despite all that: stop it
        started = _sshd_listeners_on_public_ports() - before
        _signal_all(started, signal.SIGTERM)
        _signal_all(_wait_gone(started, STOP_TIMEOUT), signal.SIGKILL)
    still = _missing_tools()
    if still:
        raise Unavailable(f"{' and '.join(still)} still missing after apt-get install")


def _shadow_password(user: str) -> Optional[str]:
    try:
        with open("/etc/shadow", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split(":")
                if fields[0] == user and len(fields) > 1:
                    return fields[1]
    except OSError:
        pass
    return None


def ensure_user(user: str = DEFAULT_USER) -> pwd.struct_passwd:
    """The dedicated non-root login user: created when missing (shell ``/bin/sh``, a
    home directory), unlocked for key logins without a password (``usermod -p '*'``)."""
    if os.geteuid() != 0:
        raise Unavailable("the OpenSSH test bed needs root (sshd, the dedicated user)")
    try:
        entry: Optional[pwd.struct_passwd] = pwd.getpwnam(user)
    except KeyError:
        entry = None
    if entry is None:
        home = f"/var/lib/{user}"
        result = subprocess.run(
            ["useradd", "--system", "--user-group", "--create-home", "--home-dir", home,
             "--shell", "/bin/sh", "--comment", "vmm_exec test bed", user],
            capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0 and result.returncode != 9:  # 9: created meanwhile
            raise Unavailable(f"useradd {user} failed: {result.stderr.strip()}")
        entry = pwd.getpwnam(user)
    if entry.pw_uid == 0:
        raise Unavailable(f"the test bed user {user} must not be root")
    password = _shadow_password(user)
    if password is None or password.startswith("!"):
        result = subprocess.run(["usermod", "-p", "*", user], capture_output=True, text=True,
                                timeout=60, check=False)
        if result.returncode != 0:
            raise Unavailable(f"usermod -p '*' {user} failed: {result.stderr.strip()}")
    if not os.path.isdir(entry.pw_dir):  # sshd would complain on every login
        os.makedirs(entry.pw_dir, mode=0o755, exist_ok=True)
        os.chown(entry.pw_dir, entry.pw_uid, entry.pw_gid)
    return entry


# --------------------------------------------------------------------------------------
# the test bed
# --------------------------------------------------------------------------------------

def host_names(count: int) -> Tuple[str, ...]:
    """``host01``, ``host02``, ... ``count`` names."""
    return tuple(f"host{i:02d}" for i in range(1, count + 1))


@dataclass
class HostInfo:
    """One fake host: where it listens and what a client needs to reach it."""

    name: str
    address: str
    port: int
    user: str
    home: str            # the host's own working directory, <root>/hosts/<name>
    remotes_path: str    # <home>/<remotes_dir> (the scripts directory, relative on the host)
    key_path: str        # client private key (same for every host)
    known_hosts: str     # known_hosts file holding every host's key
    host_key_path: str   # the sshd's private host key
    host_public_key: str  # "ssh-ed25519 AAAA..."
    config_path: str     # sshd_config
    log_path: str        # sshd log (-E)
    sshd_pid: Optional[int] = None

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host (``[address]:port``)."""
        return f"[{self.address}]:{self.port}"

    @property
    def sessions_dir(self) -> str:
        return os.path.join(self.home, SESSIONS)


SESSION_WRAPPER = r"""#!/bin/sh
# vmm_exec test bed: the ForceCommand of every fake host's sshd.
# Arguments: ROOT HOST. Runs the session in ROOT/hosts/HOST, with the original
# command, untouched standard streams and the command's exit status.
TESTBED_ROOT=$1
TESTBED_HOST=$2
TESTBED_DIR=$TESTBED_ROOT/hosts/$TESTBED_HOST
TESTBED_JOURNAL=$TESTBED_ROOT/journal.jsonl
HOME=$TESTBED_DIR
export TESTBED_ROOT TESTBED_HOST TESTBED_DIR TESTBED_JOURNAL HOME
cd "$TESTBED_DIR" || exit 255
# record this session (sid) so that kill_host finds what it runs
set -f
read -r stat < /proc/$$/stat
set -- ${stat##*) }
{ echo "$4" > "$TESTBED_DIR/.sessions/$$"; } 2>/dev/null
set +f
if [ -z "${SSH_ORIGINAL_COMMAND+set}" ]; then
    exec "${SHELL:-/bin/sh}" -l
fi
if [ "$SSH_ORIGINAL_COMMAND" = "@SFTP@" ]; then
    exec @SFTP@
fi
exec "${SHELL:-/bin/sh}" -c "$SSH_ORIGINAL_COMMAND"
"""


def _write(path: str, text: str, mode: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)


def _chown_tree(path: str, uid: int, gid: int) -> None:
    os.lchown(path, uid, gid)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(top, name), uid, gid)


def _keygen(path: str, comment: str) -> str:
    for name in (path, path + ".pub"):
        if os.path.exists(name):
            os.unlink(name)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=True)
    with open(path + ".pub", encoding="ascii") as handle:
        return " ".join(handle.read().split()[:2])


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _banner(address: str, port: int, timeout: float) -> bool:
    """True if an SSH server answers on address:port with its banner."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _tail(path: str, size: int = 2000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


_OPTIONAL_SERVER_OPTIONS: Optional[List[str]] = None


class Testbed:
    """Real sshds on loopback addresses, one per fake host (see the module doc).

    ``names``: the hosts; ``root``: the test bed directory (default: a fresh temporary
    directory, removed by :meth:`stop` unless ``keep``); ``remotes``: a tree copied to
    ``<host>/<remotes_dir>`` of every host except those in ``without_remotes``.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, names: Sequence[str] = ("host01", "host02"), root: Optional[str] = None,
                 remotes: Optional[str] = None, without_remotes: Iterable[str] = (),
                 user: str = DEFAULT_USER, remotes_dir: str = DEFAULT_REMOTES_DIR,
                 first_address: str = FIRST_ADDRESS, keep: bool = False,
                 verify: bool = True) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError("host names must be given, each once")
        self.names: Tuple[str, ...] = tuple(names)
        self.without_remotes = frozenset(without_remotes)
        unknown = self.without_remotes - set(self.names)
        if unknown:
            raise ValueError(f"without_remotes names unknown hosts: {sorted(unknown)}")
        if remotes is not None and not os.path.isdir(remotes):
            raise ValueError(f"remotes is not a directory: {remotes}")
        self.remotes = remotes
        self.user = user
        self.remotes_dir = remotes_dir.strip("/")
        self.first_address = first_address
        self.keep = keep
        self.verify = verify
        self._given_root = root
        self.root = ""
        self.hosts: Dict[str, HostInfo] = {}
        self._procs: Dict[str, subprocess.Popen[bytes]] = {}
        self._started = False
        self._lock = threading.RLock()
        self._uid = -1
        self._gid = -1
        self._sftp = ""

    # paths -----------------------------------------------------------------------------

    @property
    def ssh_config_path(self) -> str:
        return os.path.join(self.root, "client", "ssh_config")

    @property
    def known_hosts_path(self) -> str:
        return os.path.join(self.root, "client", "known_hosts")

    @property
    def key_path(self) -> str:
        return os.path.join(self.root, "client", "id_ed25519")

    @property
    def client_bin(self) -> str:
        """Directory of the ``ssh``/``scp``/``sftp`` wrappers that add ``-F config``."""
        return os.path.join(self.root, "client", "bin")

    @property
    def client_home(self) -> str:
        """A ``HOME`` whose ``.ssh/config`` and ``.ssh/known_hosts`` are the test bed's."""
        return os.path.join(self.root, "client", "home")

    @property
    def journal_path(self) -> str:
        """A file every host's user may append to (JSON lines, by convention)."""
        return os.path.join(self.root, JOURNAL)

    # lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Testbed:
        """Set everything up and start every host; :class:`Unavailable` if impossible."""
        with self._lock:
            if self._started:
                return self
            if sys.platform != "linux":
                raise Unavailable("the OpenSSH test bed needs Linux")
            if os.geteuid() != 0:
                raise Unavailable("the OpenSSH test bed needs root (sshd, the dedicated user)")
            ensure_openssh_server()
            entry = ensure_user(self.user)
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            self._started = True
            atexit.register(self.stop)
            try:
                self._prepare()
                self._start_all()
                self._write_client_side()
                if self.verify:
                    self._verify()
            except BaseException:
                self.stop()
                raise
            return self

    def tcp_endpoints(self) -> Set[str]:
        """The hosts' sshd endpoints as /proc/net/tcp writes them (ADDR:PORT in hex),
        to count connections to the hosts."""
        found = set()
        for info in self.hosts.values():
            packed = socket.inet_aton(info.address)
            found.add(f"{int.from_bytes(packed, sys.byteorder):08X}:{info.port:04X}")
        return found

    def stop(self) -> None:
        """Stop every sshd and every session process (by PID); remove a temporary root."""
        with self._lock:
            if not self._started:
                return
            self._started = False
            atexit.unregister(self.stop)
            for name in self.hosts:
                self._stop_listener(name, STOP_TIMEOUT)
            for name in self.hosts:
                self._kill_sessions(name, gentle=True)
            if self.root and self._given_root is None and not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)

    def _prepare(self) -> None:
        if self._given_root is None:
            self.root = tempfile.mkdtemp(prefix="vmm-testbed-")
        else:
            self.root = os.path.abspath(self._given_root)
            os.makedirs(self.root, exist_ok=True)
            self._check_reachable(self.root)
        root = self.root
        os.chmod(root, 0o755)  # the user traverses it
        for sub in ("bin", "client", "sshd", "hosts"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        os.chmod(os.path.join(root, "client"), 0o700)
        os.chmod(os.path.join(root, "hosts"), 0o755)
        self._sftp = _sftp_server() or "internal-sftp"  # ensure_openssh_server checked
        wrapper = os.path.join(root, "bin", "testbed-session")
        _write(wrapper, SESSION_WRAPPER.replace("@SFTP@", self._sftp), 0o755)
        os.chmod(os.path.join(root, "bin"), 0o755)
        os.chmod(os.path.join(root, "sshd"), 0o755)
        # journal
        open(self.journal_path, "a", encoding="utf-8").close()
        os.chown(self.journal_path, self._uid, self._gid)
        os.chmod(self.journal_path, 0o664)
        # client key, authorized by every host
        client_pub = _keygen(self.key_path, "vmm_exec-testbed-client")
        authorized = os.path.join(root, "sshd", "authorized_keys")
        _write(authorized, client_pub + "\n", 0o644)
        # hosts
        base = int.from_bytes(socket.inet_aton(self.first_address), "big")
        for index, name in enumerate(self.names):
            address = socket.inet_ntoa((base + index).to_bytes(4, "big"))
            if not address.startswith("127."):
                raise ValueError(f"{address} is not a loopback address")
            sshd_dir = os.path.join(root, "sshd", name)
            os.makedirs(sshd_dir, exist_ok=True)
            os.chmod(sshd_dir, 0o755)
            host_key = os.path.join(sshd_dir, "host_ed25519")
            public = _keygen(host_key, f"vmm_exec-testbed-{name}")
            home = os.path.join(root, "hosts", name)
            info = HostInfo(
                name=name, address=address, port=_free_port(address), user=self.user,
                home=home, remotes_path=os.path.join(home, self.remotes_dir),
                key_path=self.key_path, known_hosts=self.known_hosts_path,
                host_key_path=host_key, host_public_key=public,
                config_path=os.path.join(sshd_dir, "sshd_config"),
                log_path=os.path.join(sshd_dir, "sshd.log"))
            self.hosts[name] = info
            os.makedirs(os.path.join(home, SESSIONS), exist_ok=True)
            if self.remotes is not None and name not in self.without_remotes:
                self._copy_remotes(name, self.remotes)
            _chown_tree(home, self._uid, self._gid)
            os.chmod(home, 0o755)
            self._write_sshd_config(info)

    def _check_reachable(self, path: str) -> None:
        """The user must traverse every directory above the root (the root itself is
        made traversable)."""
        parent = os.path.dirname(path)
        while True:
            st = os.stat(parent)
            if not (st.st_mode & 0o001 or (st.st_uid == self._uid and st.st_mode & 0o100)
                    or (st.st_gid == self._gid and st.st_mode & 0o010)):
                raise ValueError(f"the test bed user {self.user} cannot reach {path}: "
                                 f"{parent} is not traversable for it")
            if parent == os.path.dirname(parent):
                return
            parent = os.path.dirname(parent)

    def _copy_remotes(self, name: str, source: str) -> None:
        target = self.hosts[name].remotes_path
        os.makedirs(target, exist_ok=True)
        shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)

    def populate(self, name: str, remotes: str) -> None:
        """Copy a remotes tree into ``name``'s scripts directory (owned by the user)."""
        self._copy_remotes(name, remotes)
        _chown_tree(self.hosts[name].home, self._uid, self._gid)

    def _server_options(self) -> List[str]:
        """Options that only newer sshds know, kept when this sshd accepts them."""
        global _OPTIONAL_SERVER_OPTIONS
        if _OPTIONAL_SERVER_OPTIONS is None:
            kept = []
            for option in ("PerSourcePenalties no",):
                probe = subprocess.run([SSHD, "-t", "-f", "/dev/null", "-o",
                                        option.replace(" ", "="), "-o",
                                        f"HostKey={next(iter(self.hosts.values())).host_key_path}"],
                                       capture_output=True, text=True, timeout=30, check=False)
                if "Bad configuration option" not in probe.stderr and \
                        "Unsupported option" not in probe.stderr:
                    kept.append(option)
            _OPTIONAL_SERVER_OPTIONS = kept
        return _OPTIONAL_SERVER_OPTIONS

    def _write_sshd_config(self, info: HostInfo) -> None:
        wrapper = os.path.join(self.root, "bin", "testbed-session")
        authorized = os.path.join(self.root, "sshd", "authorized_keys")
        force = " ".join(shlex.quote(part) for part in (wrapper, self.root, info.name))
        lines = [
            f"# vmm_exec test bed: fake host {info.name}",
            f"ListenAddress {info.address}:{info.port}",
            f"HostKey {info.host_key_path}",
            "PidFile none",
            "UsePAM no",
            "PermitRootLogin no",
            f"AllowUsers {self.user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            f"AuthorizedKeysFile {authorized}",
            "StrictModes no",
            "HostKeyAlgorithms ssh-ed25519",
            "PubkeyAcceptedAlgorithms ssh-ed25519",
            f"KexAlgorithms {SERVER_KEX}",
            f"Ciphers {SERVER_CIPHERS}",
            f"MACs {SERVER_MACS}",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PermitTunnel no",
            "AllowAgentForwarding yes",
            "PermitUserEnvironment no",
            "LoginGraceTime 20",
            "MaxStartups 100",
            "MaxSessions 100",
            "MaxAuthTries 6",
            "LogLevel INFO",
            f"Subsystem sftp {self._sftp}",
            f"ForceCommand exec {force}",
        ]
        lines[1:1] = self._server_options()
        _write(info.config_path, "\n".join(lines) + "\n", 0o644)

    def _client_config(self) -> str:
        blocks = []
        for info in self.hosts.values():
            blocks.append("\n".join([
                f"Host {info.name}",
                f"    HostName {info.address}",
                f"    Port {info.port}",
                f"    User {info.user}",
                f"    IdentityFile {info.key_path}",
                "    IdentitiesOnly yes",
                f"    UserKnownHostsFile {info.known_hosts}",
                "    GlobalKnownHostsFile /dev/null",
                "    StrictHostKeyChecking yes",
                "    CheckHostIP no",
                "    UpdateHostKeys no",
                "    BatchMode yes",
                "    HostKeyAlgorithms ssh-ed25519",
                f"    KexAlgorithms {CLIENT_KEX}",
                f"    Ciphers {CLIENT_CIPHERS}",
                "    ConnectTimeout 5",
                "    ControlMaster no",
                "    ControlPath none",
                "    LogLevel ERROR",
            ]))
        return "# vmm_exec test bed\n" + "\n\n".join(blocks) + "\n"

    def _write_client_side(self) -> None:
        known = "".join(f"{info.known_hosts_name} {info.host_public_key}\n"
                        for info in self.hosts.values())
        _write(self.known_hosts_path, known, 0o644)
        config = self._client_config()
        _write(self.ssh_config_path, config, 0o644)
        dot_ssh = os.path.join(self.client_home, ".ssh")
        os.makedirs(dot_ssh, mode=0o700, exist_ok=True)
        _write(os.path.join(dot_ssh, "config"), config, 0o600)
        _write(os.path.join(dot_ssh, "known_hosts"), known, 0o600)
        os.makedirs(self.client_bin, exist_ok=True)
        quoted = shlex.quote(self.ssh_config_path)
        for tool in ("ssh", "scp", "sftp"):
            real = shutil.which(tool) or f"/usr/bin/{tool}"
            _write(os.path.join(self.client_bin, tool),
                   f"#!/bin/sh\nexec {shlex.quote(real)} -F {quoted} \"$@\"\n", 0o755)
        _write(os.path.join(self.root, "env.sh"),
               f"export PATH={shlex.quote(self.client_bin)}:\"$PATH\"\n"
               f"export HOME={shlex.quote(self.client_home)}\n"
               f"export TESTBED_SSH_CONFIG={quoted}\n", 0o644)

    # hosts -----------------------------------------------------------------------------

    def _spawn(self, name: str) -> None:
        info = self.hosts[name]
        argv = [SSHD, "-D", "-f", info.config_path, "-E", info.log_path]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent, close_fds=True)
        self._procs[name] = proc
        info.sshd_pid = proc.pid

    def _start_all(self) -> None:
        """Start every sshd, then wait for all; a port taken meanwhile gets another one."""
        pending = list(self.names)
        for attempt in range(3):
            for name in pending:
                self._spawn(name)
            retry = []
            for name in pending:
                if not self._await_ready(name, READY_TIMEOUT, port_taken_ok=attempt < 2):
                    info = self.hosts[name]
                    info.port = _free_port(info.address)
                    self._write_sshd_config(info)
                    retry.append(name)
            if not retry:
                return
            pending = retry

    def _await_ready(self, name: str, timeout: float, port_taken_ok: bool = False) -> bool:
        """Wait (bounded) until the sshd answers; False if its port was taken (when
        ``port_taken_ok``), RuntimeError with the sshd log on any other failure."""
        info = self.hosts[name]
        proc = self._procs[name]
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                self._reap(name, 1.0)
                log = _tail(info.log_path)
                if port_taken_ok and "Address already in use" in log:
                    return False
                raise RuntimeError(f"{name}: sshd exited with {proc.returncode}; "
                                   f"sshd log:\n{log}")
            if _banner(info.address, info.port, 0.5):
                return True
            if time.monotonic() >= deadline:
                self._stop_listener(name, 1.0)
                raise RuntimeError(f"{name}: sshd not answering on {info.address}:{info.port} "
                                   f"within {timeout:g}s; sshd log:\n{_tail(info.log_path)}")
            time.sleep(0.02)

    def _verify(self) -> None:
        """One real login per host, in parallel: a broken setup fails here, clearly."""
        procs = {name: subprocess.Popen(self.ssh_argv(name, "echo $TESTBED_HOST", no_stdin=True),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for name in self.names}
        errors = []
        for name, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            if proc.returncode != 0 or out.decode().strip() != name:
                errors.append(f"{name}: ssh exited {proc.returncode}: "
                              f"{err.decode(errors='replace').strip()}; sshd log:\n"
                              f"{_tail(self.hosts[name].log_path, 800)}")
        if errors:
            raise RuntimeError("test bed login check failed:\n" + "\n".join(errors))

    def start_host(self, name: str, timeout: float = READY_TIMEOUT) -> None:
        """(Re)start ``name``'s sshd on the same address and port; wait until it answers."""
        with self._lock:
            self._check(name)
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is None:
                return
            self._spawn(name)
            self._await_ready(name, timeout)
            self.hosts[name].sshd_pid = self._procs[name].pid

    def stop_host(self, name: str, sessions: bool = False) -> None:
        """Make ``name`` unreachable: its sshd stops, new connections are refused.
        Open sessions go on unless ``sessions`` (then they are killed too)."""
        with self._lock:
            self._check(name)
            self._stop_listener(name, STOP_TIMEOUT)
            if sessions:
                self._kill_sessions(name, gentle=False)

    def kill_host(self, name: str) -> None:
        """SIGKILL ``name``'s sshd, its connections and every process of its sessions."""
        with self._lock:
            self._check(name)
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.kill()
            self._kill_sessions(name, gentle=False)
            self._reap(name, STOP_TIMEOUT)

    def running(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def _check(self, name: str) -> None:
        if not self._started:
            raise RuntimeError("the test bed is not started")
        if name not in self.hosts:
            raise KeyError(f"no host {name!r} in this test bed")

    def _reap(self, name: str, timeout: float) -> None:
        proc = self._procs.get(name)
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        self.hosts[name].sshd_pid = None

    def _stop_listener(self, name: str, timeout: float) -> None:
        proc = self._procs.get(name)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._reap(name, timeout)

    def host_pids(self, name: str) -> Set[int]:
        """Live processes of ``name``: its sshd listener and connections (holders of its
        sockets), the processes of its recorded sessions, and processes carrying its
        ``TESTBED_ROOT``/``TESTBED_HOST`` environment."""
        sshds, sessions = self._host_processes(name)
        return sshds | sessions

    def _host_processes(self, name: str) -> Tuple[Set[int], Set[int]]:
        """(sshd listener and connections, session processes) of ``name``, alive."""
        info = self.hosts[name]
        sshds = _socket_holders(_socket_inodes(info.address, info.port))
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            sshds.add(proc.pid)
        pids: Set[int] = set()
        marks = {b"TESTBED_ROOT=" + os.fsencode(self.root),
                 b"TESTBED_HOST=" + os.fsencode(name)}
        sids: Dict[int, str] = {}  # recorded session id -> its file
        try:
            entries = os.listdir(info.sessions_dir)
        except OSError:
            entries = []
        for entry in entries:
            path = os.path.join(info.sessions_dir, entry)
            try:
                with open(path, encoding="ascii") as handle:
                    sid = int(handle.read().strip() or 0)
            except (OSError, ValueError):
                continue
            # a live leader without this host's environment: the session ended and its
            # number went to someone else (while members live, a sid is not reused)
            if sid > 1 and not (pid_alive(sid) and not marks <= _environ(sid)):
                sids[sid] = path
        found: Set[int] = set()
        me = os.getpid()
        for pid in _pids():
            state = _stat(pid)
            if pid == me or state is None or state[0] in ("Z", "X"):
                continue
            if state[3] in sids:
                pids.add(pid)
                found.add(state[3])
            elif marks <= _environ(pid):
                pids.add(pid)
        for sid, path in sids.items():
            if sid not in found:  # nothing left of that session
                try:
                    os.unlink(path)
                except OSError:
                    pass
        sshds.discard(me)
        pids.discard(me)
        return ({pid for pid in sshds if pid_alive(pid)},
                {pid for pid in pids - sshds if pid_alive(pid)})

    def _kill_sessions(self, name: str, gentle: bool) -> None:
        """Kill what is left of ``name`` (bounded: a few rounds, forks included).

        Not ``gentle`` (a crash): the sessions are frozen first, then the sshd side is
        killed, then the sessions, so nothing more (not even an exit status of a killed
        command) reaches a client: its connection just breaks.
        """
        deadline = time.monotonic() + STOP_TIMEOUT
        first = gentle
        while time.monotonic() < deadline:
            sshds, sessions = self._host_processes(name)
            if not sshds and not sessions:
                break
            if first:
                _signal_all(sshds | sessions, signal.SIGTERM)
                _wait_gone(sshds | sessions, 1.0)
                first = False
                continue
            _signal_all(sessions, signal.SIGSTOP)
            _signal_all(sshds, signal.SIGKILL)
            _wait_gone(sshds, 1.0)
            _signal_all(sessions, signal.SIGKILL)
            _wait_gone(sessions, 1.0)
        info = self.hosts[name]
        try:
            for entry in os.listdir(info.sessions_dir):
                os.unlink(os.path.join(info.sessions_dir, entry))
        except OSError:
            pass

    # client side -----------------------------------------------------------------------

    def client_env(self, base: Optional[Mapping[str, str]] = None,
                   home: bool = True) -> Dict[str, str]:
        """``base`` (default ``os.environ``) with the ssh/scp wrappers first on ``PATH``,
        ``HOME`` = :attr:`client_home` (unless ``home`` is false) and
        ``TESTBED_SSH_CONFIG`` = the config."""
        env = dict(os.environ if base is None else base)
        path = env.get("PATH", os.defpath)
        env["PATH"] = self.client_bin + (os.pathsep + path if path else "")
        if home:
            env["HOME"] = self.client_home
        env["TESTBED_SSH_CONFIG"] = self.ssh_config_path
        return env

    def ssh_argv(self, name: str, *command: str, no_stdin: bool = False) -> List[str]:
        """``ssh -F <config> [-n] NAME [COMMAND...]`` with the real ssh binary."""
        argv = [shutil.which("ssh") or "ssh", "-F", self.ssh_config_path]
        if no_stdin:
            argv.append("-n")
        return [*argv, name, *command]

    def read_journal(self) -> List[Any]:
        """The journal's JSON lines, decoded (a line that is not JSON comes as a str)."""
        records: List[Any] = []
        try:
            with open(self.journal_path, encoding="utf-8") as handle:
                for line in handle:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        records.append(line)
        except OSError:
            pass
        return records

    def describe(self) -> Dict[str, Any]:
        """Everything a client needs, JSON-ready (written to ``<root>/testbed.json``)."""
        return {
            "root": self.root,
            "ssh_config": self.ssh_config_path,
            "client_bin": self.client_bin,
            "client_home": self.client_home,
            "journal": self.journal_path,
            "user": self.user,
            "remotes_dir": self.remotes_dir,
            "hosts": {name: {"address": i.address, "port": i.port, "user": i.user,
                             "home": i.home, "remotes_path": i.remotes_path,
                             "key_path": i.key_path, "known_hosts": i.known_hosts,
                             "sshd_pid": i.sshd_pid}
                      for name, i in self.hosts.items()},
        }


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/testbed.py",
        description="Start real OpenSSH fake hosts on loopback addresses until Ctrl-C/SIGTERM.")
    parser.add_argument("--hosts", type=int, default=2, help="number of hosts (host01...)")
    parser.add_argument("--remotes", help="remotes tree copied into every host's "
                        "scripts directory")
    parser.add_argument("--without-remotes", action="append", default=[], metavar="HOST",
                        help="a host that starts without remote scripts (repeatable)")
    parser.add_argument("--remotes-dir", default=DEFAULT_REMOTES_DIR,
                        help="scripts directory, relative to each host's directory")
    parser.add_argument("--root", help="test bed directory (default: a new temporary one, "
                        "removed at the end)")
    parser.add_argument("--user", default=DEFAULT_USER, help="the hosts' login user")
    parser.add_argument("--keep", action="store_true", help="keep the directory at the end")
    args = parser.parse_args(argv)
    if args.hosts < 1 or args.hosts > 200:
        parser.error("--hosts must be between 1 and 200")

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    bed = Testbed(host_names(args.hosts), root=args.root, remotes=args.remotes,
                  without_remotes=args.without_remotes, user=args.user,
                  remotes_dir=args.remotes_dir, keep=args.keep)
    try:
        bed.start()
    except Unavailable as exc:
        print(f"test bed unavailable: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"test bed failed to start: {exc}", file=sys.stderr)
        return 1
    try:
        facts = bed.describe()
        with open(os.path.join(bed.root, "testbed.json"), "w", encoding="utf-8") as handle:
            json.dump(facts, handle, indent=2)
        print(f"# vmm_exec test bed: {len(bed.hosts)} hosts up, root {bed.root}")
        for name, info in bed.hosts.items():
            remotes = "no remote scripts" if (args.remotes is None
                                              or name in bed.without_remotes) else "remotes"
            print(f"#   {name}  {info.address}:{info.port}  user {info.user}  "
                  f"dir {info.home}  ({remotes})")
        print(f"TESTBED_SSH_CONFIG={bed.ssh_config_path}")
        print(f"# use it: . {os.path.join(bed.root, 'env.sh')}   (or ssh -F CONFIG host01 ...)")
        print(f"export PATH={shlex.quote(bed.client_bin)}:\"$PATH\"")
        print(f"export HOME={shlex.quote(bed.client_home)}")
        print("# Ctrl-C or SIGTERM stops everything", flush=True)
        ready = os.path.join(bed.root, "ready")
        open(ready, "w", encoding="ascii").close()
        while not stop.wait(0.5):
            pass
    finally:
        bed.stop()
        print("# test bed stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
