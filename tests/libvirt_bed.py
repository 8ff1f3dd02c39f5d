"""Real libvirt "hosts" on one machine, for live-migration tests and the demo.

Every fake host (``host01``, ``host02``, ...) is one dedicated unprivileged user
(``lv-host01``, ...) running its own *session-mode* ``libvirtd`` with its own
``host_uuid``, so libvirt sees distinct hosts and really live-migrates QEMU guests
between them: client-managed (``migrate3``) and peer-to-peer (``migrateToURI3``).
Guests are TCG (``type='qemu'``) with no disk and no NIC; no KVM, no systemd, no D-Bus,
no root-owned libvirt state is needed.

Layout under the base directory (default: a fresh ``/tmp/vmmlv-*``, removed by
:meth:`LibvirtBed.stop`; it and its parents must be world-traversable):

``sock/<host>/libvirt-sock``
    the host's socket, group :data:`DEFAULT_GROUP` mode 0770 (dir 2750), so any member
    of the group (both endpoint users, ``extra_group_members``) can open any host:
    ``qemu+unix:///session?socket=<base>/sock/<host>/libvirt-sock``
    (:attr:`LibvirtBed.socket_dir_template` is that URI with ``{host}``).
``home/<host>/``
    the user's ``HOME`` (``.config/libvirt/{libvirtd,qemu}.conf``, ``.cache/libvirt``
    with the QEMU logs and pid files), ``libvirtd.log``, ``libvirtd.stdout``.
``shared/``
    mode 1777: the guests' serial files (0666: the target's QEMU runs as another uid
    and opens the same path) and the random RAM blobs.

Each ``libvirtd`` runs as ``setpriv --reuid --regid --init-groups --reset-env`` in a
session of its own (``start_new_session``, i.e. ``setsid``), followed by ``env`` that
points ``HOME``/``XDG_CONFIG_HOME``/``XDG_CACHE_HOME`` at the base directory (so the
users' passwd entries are never edited); the PID we hold is libvirtd's own (setpriv
and env exec). ``qemu.conf`` sets ``migration_host``/``migration_address`` to the
host's own loopback address (127.0.0.2, .3, ...; libvirt refuses exactly 127.0.0.1)
and a port range of its own below the kernel's ephemeral range (ports ``bind(0)``
never hands out, so the sshd test bed's random ports on the same addresses never
collide), ``stdio_handler = "file"`` (no virtlogd) and a short keepalive for the
daemons' own peer-to-peer connections.

Users and the group stay after :meth:`LibvirtBed.stop` (like the sshd test bed's
``vmmtest``), and so does ``extra_group_members``' membership of the group; every
process is stopped by PID (libvirtd first, then whatever the endpoint user still runs:
QEMUs, orphans of a crashed run), every guest destroyed and undefined (snapshot
metadata too), the directories removed. An ``atexit`` hook is the safety net; a
start kills what a crashed earlier run left of the same users (and its temporary base
directory). A lock per endpoint user (``/tmp/.vmm_exec-libvirt-bed.<user>.lock``) keeps
two beds (two pytest runs on the machine) from sharing a user: the second waits, at most
:data:`LOCK_TIMEOUT`, saying so on stderr. Every wait is bounded.

Worth knowing (libvirt 9.0, QEMU 7.2, this kind of machine):

- libvirt refuses to migrate a guest that has snapshot metadata (``cannot migrate
  domain with N snapshots``, VIR_ERR_OPERATION_INVALID); a migration has to dump it,
  delete it (``VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY``), migrate, and redefine it on
  the target (``VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE``, plus ``_CURRENT`` for the
  current one). :meth:`LibvirtBed.add_snapshot_metadata` makes such metadata.
- PID 1 here reaps orphans late (about 1.5 s), and libvirt waits for a QEMU to be
  really gone: a ``destroy()``, and the end of a migration on the source, cost that.
- The incoming guest on the target is PAUSED/STARTING_UP, then PAUSED/MIGRATION.
- libvirtd's log always has some harmless errors: no dnsmasq, no D-Bus, no DMI,
  ``/dev/kvm: Permission denied``.

The first QEMU capabilities probe costs seconds per daemon: :meth:`LibvirtBed.start`
does it once, in parallel, and keeps the result in :data:`DEFAULT_CAPS_CACHE` for the
next runs (libvirt re-probes by itself when QEMU or libvirt changed).

The test process uses libvirt-python (the project's ``[kvm]`` extra), imported
lazily; the hosts' ``/usr/bin/python3`` gets Debian's ``python3-libvirt``.

``python tests/libvirt_bed.py --hosts 2 --member vmmtest`` starts a bed, prints the
URIs and runs until Ctrl-C or SIGTERM. Linux only; needs root.
"""

from __future__ import annotations

import argparse
import atexit
import fcntl
import filecmp
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, TypeVar
from xml.sax.saxutils import escape, quoteattr

__all__ = ["Unavailable", "LibvirtHost", "LibvirtBed", "ensure_libvirt_packages",
           "ensure_event_loop", "libvirt_module", "main"]

LIBVIRTD = "/usr/sbin/libvirtd"
QEMU = "/usr/bin/qemu-system-x86_64"
T = TypeVar("T")
SYSTEM_PYTHON = "/usr/bin/python3"
PACKAGES = ("qemu-system-x86", "libvirt-daemon", "libvirt-daemon-driver-qemu",
            "libvirt-clients", "python3-libvirt")
DEFAULT_GROUP = "vmmlv"
BASE_PREFIX = "vmmlv-"   # a default base: <tmp>/vmmlv-XXXXXXXX
USER_PREFIX = "lv-"
FIRST_ADDRESS = "127.0.0.2"
FIRST_PORT = 30300        # below the ephemeral range (32768-60999): bind(0) never gives these
PORTS_PER_HOST = 20
DEFAULT_CAPS_CACHE = "/var/tmp/vmm_exec-libvirt-bed/capabilities"
BLOB_ADDRESS = 0x1000000  # where -device loader puts the random data in guest RAM (16 MiB)
KEEPALIVE = (2, 3)        # (interval s, count): a call to a hung daemon fails after ~8 s

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
PROBE_TIMEOUT = 60.0
INSTALL_TIMEOUT = 900.0
LOCK_TIMEOUT = 600.0
UNIX_PATH_MAX = 107


class Unavailable(RuntimeError):
    """No libvirt test bed can be had here (the message says why)."""


# --------------------------------------------------------------------------------------
# libvirt-python, lazily; one event loop per process
# --------------------------------------------------------------------------------------

_LOOP_LOCK = threading.Lock()
_LOOP_STARTED = False
_HELD_LOCK = threading.Lock()
_HELD: Set[str] = set()  # endpoint users locked by a bed of this process


def libvirt_module() -> Any:
    """The ``libvirt`` module of libvirt-python, or :class:`Unavailable`."""
    try:
        import libvirt  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise Unavailable("libvirt-python is not installed for this Python "
                          f"({sys.executable}); pip install -e '.[kvm]'") from None
    return libvirt


def _run_event_loop(lv: Any) -> None:  # pragma: no cover - a daemon thread
    while True:
        try:
            lv.virEventRunDefaultImpl()
        except Exception:  # noqa: BLE001 - keep the loop alive whatever happens
            time.sleep(0.1)


def ensure_event_loop() -> None:
    """Register libvirt's default event loop implementation once per process and run it
    in a daemon thread: keepalive (and so a bounded wait for a hung daemon), events and
    noticing a dead daemon all need it. Call it before opening any connection."""
    global _LOOP_STARTED
    lv = libvirt_module()
    with _LOOP_LOCK:
        if _LOOP_STARTED:
            return
        lv.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, args=(lv,), name="libvirt-event-loop",
                         daemon=True).start()
        _LOOP_STARTED = True


def _error_code(exc: BaseException) -> Optional[int]:
    getter = getattr(exc, "get_error_code", None)
    return getter() if getter is not None else None


# --------------------------------------------------------------------------------------
# processes, through /proc
# --------------------------------------------------------------------------------------

def _proc_state(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:][:1].decode() or None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (PID 1 may not reap orphans here)."""
    return _proc_state(pid) not in (None, "Z", "X")


def _uids(pid: int) -> Tuple[int, ...]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Uid:"):
                    return tuple(int(x) for x in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


def _pids_of_uid(uid: int) -> Set[int]:
    found = set()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid != me and uid in _uids(pid)[:2] and pid_alive(pid):
            found.add(pid)
    return found


def _cmdline(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [arg.decode("utf-8", "replace") for arg in handle.read().split(b"\0")]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


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


def _tail(path: str, size: int = 2000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------------------
# the machine: packages, group, users
# --------------------------------------------------------------------------------------

def _missing_packages(packages: Sequence[str]) -> List[str]:
    missing = []
    for package in packages:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                                capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0 or not result.stdout.endswith(" installed"):
            missing.append(package)
    return missing


def _service_pids() -> Set[int]:
    names = ("libvirtd", "virtlogd", "virtlockd", "virtqemud", "dnsmasq")
    return {pid for pid in (int(e) for e in os.listdir("/proc") if e.isdigit())
            if _comm(pid) in names}


def ensure_libvirt_packages(packages: Sequence[str] = PACKAGES,
                            timeout: float = INSTALL_TIMEOUT) -> None:
    """apt-get install (``--no-install-recommends``) what is missing of ``packages``.

    :class:`Unavailable` when something is missing and cannot be installed. No
    service may start meanwhile (``policy-rc.d`` answering 101 unless one exists,
    ``RUNLEVEL=1``); a libvirt daemon that appears during the installation all the same
    is stopped by PID. Not ``libvirt-daemon-system``: nothing here needs it.
    """
    try:
        missing = _missing_packages(packages)
    except (OSError, subprocess.SubprocessError):
        missing = [p for p in packages]
        if shutil.which("dpkg-query") is None:
            raise Unavailable("no dpkg here: install " + " ".join(packages)) from None
    if not missing:
        return
    if os.geteuid() != 0:
        raise Unavailable(f"{' '.join(missing)} not installed and not root")
    if shutil.which("apt-get") is None:
        raise Unavailable(f"{' '.join(missing)} not installed and no apt-get")
    before = _service_pids()
    policy = "/usr/sbin/policy-rc.d"
    own_policy = not os.path.exists(policy)
    if own_policy:
        with open(policy, "w", encoding="ascii") as handle:
            handle.write("#!/bin/sh\n# vmm_exec libvirt test bed: start no service while "
                         "installing\nexit 101\n")
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
        started = _service_pids() - before
        _signal_all(started, signal.SIGTERM)
        _signal_all(_wait_gone(started, STOP_TIMEOUT), signal.SIGKILL)
    still = _missing_packages(packages)
    if still:
        raise Unavailable(f"{' '.join(still)} still missing after apt-get install")


def _run_checked(argv: List[str], what: str, ok: Tuple[int, ...] = (0,)) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode not in ok:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip()}")


def ensure_group(group: str) -> int:
    """The shared group (a system group, created when missing); its gid."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        pass
    _run_checked(["groupadd", "--system", group], f"groupadd {group}", ok=(0, 9))
    return grp.getgrnam(group).gr_gid


def ensure_member(user: str, group: str) -> None:
    """``user`` (which must exist) in ``group`` as a supplementary group."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no such user: {user}") from None
    info = grp.getgrnam(group)
    if user in info.gr_mem or entry.pw_gid == info.gr_gid:
        return
    _run_checked(["usermod", "-a", "-G", group, user], f"usermod -a -G {group} {user}")


def ensure_endpoint_user(user: str, group: str) -> pwd.struct_passwd:
    """The endpoint's dedicated system user (no home, no login shell), in ``group``."""
    try:
        entry: Optional[pwd.struct_passwd] = pwd.getpwnam(user)
    except KeyError:
        entry = None
    if entry is None:
        _run_checked(["useradd", "--system", "--user-group", "--no-create-home",
                      "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                      "--groups", group, "--comment", "vmm_exec libvirt test bed", user],
                     f"useradd {user}", ok=(0, 9))
        entry = pwd.getpwnam(user)
    if entry.pw_uid == 0:
        raise Unavailable(f"the endpoint user {user} must not be root")
    ensure_member(user, group)
    return entry


# --------------------------------------------------------------------------------------
# the test bed
# --------------------------------------------------------------------------------------

@dataclass
class LibvirtHost:
    """One fake libvirt host."""

    name: str
    user: str
    uid: int
    gid: int
    address: str         # migration_host/migration_address
    port_min: int
    port_max: int
    home: str            # <base>/home/<name>
    sock_dir: str        # <base>/sock/<name>
    host_uuid: str

    @property
    def socket(self) -> str:
        return os.path.join(self.sock_dir, "libvirt-sock")

    @property
    def uri(self) -> str:
        return f"qemu+unix:///session?socket={self.socket}"

    @property
    def config_dir(self) -> str:
        return os.path.join(self.home, ".config")

    @property
    def cache_dir(self) -> str:
        return os.path.join(self.home, ".cache")

    @property
    def caps_dir(self) -> str:
        return os.path.join(self.cache_dir, "libvirt", "qemu", "cache", "capabilities")

    @property
    def log_path(self) -> str:
        return os.path.join(self.home, "libvirtd.log")

    @property
    def stdout_path(self) -> str:
        return os.path.join(self.home, "libvirtd.stdout")


def _write(path: str, text: str, mode: int, owner: Optional[Tuple[int, int]] = None) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)


def _install_dir(path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


class LibvirtBed:
    """Session libvirtds of dedicated users, one per fake host (see the module doc).

    ``names``: the hosts; ``addresses``: their loopback addresses (default 127.0.0.2,
    .3, ...); ``base``: the directory (default a fresh temporary one, removed by
    :meth:`stop`; a given one keeps existing, only what the bed made in it goes);
    ``extra_group_members``: existing users added to ``group`` so that they may open
    every host's socket; ``caps_cache``: where QEMU capabilities are kept across runs
    (None: nowhere).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, names: Sequence[str] = ("host01", "host02"),
                 addresses: Optional[Sequence[str]] = None, base: Optional[str] = None,
                 extra_group_members: Iterable[str] = (), group: str = DEFAULT_GROUP,
                 first_port: int = FIRST_PORT, ports_per_host: int = PORTS_PER_HOST,
                 caps_cache: Optional[str] = DEFAULT_CAPS_CACHE,
                 keepalive: Tuple[int, int] = KEEPALIVE, log_level: int = 3) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError("host names must be given, each once")
        for name in names:
            if not name or not all(c.islower() or c.isdigit() or c in "-_" for c in name) \
                    or len(USER_PREFIX + name) > 32:
                raise ValueError(f"bad host name for a user name: {name!r}")
        self.names: Tuple[str, ...] = tuple(names)
        if addresses is None:
            first = int.from_bytes(socket.inet_aton(FIRST_ADDRESS), "big")
            addresses = [socket.inet_ntoa((first + i).to_bytes(4, "big"))
                         for i in range(len(self.names))]
        addresses = list(addresses)
        if len(addresses) != len(self.names):
            raise ValueError("one address per host")
        for address in addresses:
            socket.inet_aton(address)
            if not address.startswith("127.") or address == "127.0.0.1":
                raise ValueError(f"{address}: a loopback address other than 127.0.0.1 "
                                 "(libvirt refuses 127.0.0.1 as migration_host)")
        if len(set(addresses)) != len(addresses):
            raise ValueError("the addresses must differ")
        if ports_per_host < 1 or first_port < 1024 \
                or first_port + ports_per_host * len(self.names) > 65535:
            raise ValueError("bad migration port range")
        self.addresses: Tuple[str, ...] = tuple(addresses)
        self.extra_group_members: Tuple[str, ...] = tuple(extra_group_members)
        self.group = group
        self.first_port = first_port
        self.ports_per_host = ports_per_host
        self.caps_cache = caps_cache
        self.keepalive = keepalive
        self.log_level = log_level
        self._given_base = base
        self.base = ""
        self.hosts: Dict[str, LibvirtHost] = {}
        self.timings: Dict[str, float] = {}
        self._procs: Dict[str, subprocess.Popen[bytes]] = {}
        self._frozen: Set[str] = set()
        self._conns: Dict[str, Any] = {}
        self._locks: Dict[str, Any] = {}  # endpoint user -> its open lock file
        self._lock = threading.RLock()
        self._started = False
        self._gid = -1

    # paths -----------------------------------------------------------------------------

    @property
    def shared_dir(self) -> str:
        """Mode 1777: serial files, random RAM blobs."""
        return os.path.join(self.base, "shared")

    @property
    def socket_dir_template(self) -> str:
        """The URI of any host, ``{host}`` standing for its name (``.format(host=...)``)."""
        return f"qemu+unix:///session?socket={self.base}/sock/{{host}}/libvirt-sock"

    uri_template = socket_dir_template

    @property
    def socket_path_template(self) -> str:
        """The socket path of any host, ``{host}`` standing for its name."""
        return f"{self.base}/sock/{{host}}/libvirt-sock"

    def uri(self, name: str) -> str:
        return self._host(name).uri

    def socket_path(self, name: str) -> str:
        return self._host(name).socket

    def host_uuid(self, name: str) -> str:
        return self._host(name).host_uuid

    def log_path(self, name: str) -> str:
        return self._host(name).log_path

    def serial_path(self, vm_name: str) -> str:
        return os.path.join(self.shared_dir, f"{vm_name}.serial")

    def domain_log(self, name: str, vm_name: str) -> str:
        """The QEMU log of ``vm_name`` on ``name``."""
        return os.path.join(self._host(name).cache_dir, "libvirt", "qemu", "log",
                            f"{vm_name}.log")

    def _host(self, name: str) -> LibvirtHost:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in this libvirt test bed") from None

    # lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> LibvirtBed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LibvirtBed:
        """Install what is missing, set up users and directories, start every daemon,
        probe QEMU once; :class:`Unavailable` if that cannot work here."""
        with self._lock:
            if self._started:
                return self
            if sys.platform != "linux":
                raise Unavailable("the libvirt test bed needs Linux")
            if os.geteuid() != 0:
                raise Unavailable("the libvirt test bed needs root (users, daemons)")
            began = time.monotonic()
            libvirt_module()
            ensure_libvirt_packages()
            for tool in (LIBVIRTD, QEMU, SYSTEM_PYTHON):
                if not os.access(tool, os.X_OK):
                    raise Unavailable(f"{tool} missing after the installation")
            if shutil.which("setpriv") is None:
                raise Unavailable("setpriv (util-linux) missing")
            ensure_event_loop()
            self.timings["install"] = time.monotonic() - began
            self._gid = ensure_group(self.group)
            for member in self.extra_group_members:
                ensure_member(member, self.group)
            self._started = True
            atexit.register(self.stop)
            try:
                self._prepare()
                began = time.monotonic()
                for name in self.names:
                    self._spawn(name)
                for name in self.names:
                    self._await_ready(name, READY_TIMEOUT)
                self.timings["daemons"] = time.monotonic() - began
                began = time.monotonic()
                self._probe_all()
                self.timings["probe"] = time.monotonic() - began
            except BaseException:
                self.stop()
                raise
            return self

    def _prepare(self) -> None:
        if self._given_base is None:
            self.base = tempfile.mkdtemp(prefix=BASE_PREFIX)
        else:
            self.base = os.path.abspath(self._given_base)
            os.makedirs(self.base, exist_ok=True)
        self._check_paths()
        os.chmod(self.base, 0o755)
        for sub in ("home", "sock"):
            _install_dir(os.path.join(self.base, sub), 0o755)
        _install_dir(self.shared_dir, 0o1777)
        self._lock_users()
        for index, name in enumerate(self.names):
            user = USER_PREFIX + name
            entry = ensure_endpoint_user(user, self.group)
            self._kill_user_processes(entry.pw_uid)  # left by a crashed earlier run
            port_min = self.first_port + index * self.ports_per_host
            host = LibvirtHost(
                name=name, user=user, uid=entry.pw_uid, gid=entry.pw_gid,
                address=self.addresses[index], port_min=port_min,
                port_max=port_min + self.ports_per_host - 1,
                home=os.path.join(self.base, "home", name),
                sock_dir=os.path.join(self.base, "sock", name),
                host_uuid=str(uuidlib.uuid4()))
            self.hosts[name] = host
            self._write_host(host)

    def _check_paths(self) -> None:
        """Unix socket paths are short: the QEMU monitor socket is the longest,
        ``<home>/.config/libvirt/qemu/lib/domain-NNN-<20 chars>/monitor.sock``."""
        for name in self.names:
            longest = os.path.join(self.base, "home", name, ".config", "libvirt", "qemu",
                                   "lib", "domain-9999-" + "x" * 20, "monitor.sock")
            if len(longest) > UNIX_PATH_MAX:
                raise ValueError(f"base directory {self.base} is too long for unix sockets")
        parent = self.base
        while parent != os.path.dirname(parent):
            parent = os.path.dirname(parent)
            if not os.stat(parent).st_mode & 0o001:
                raise ValueError(f"{parent} is not traversable by the endpoint users")

    def _lock_users(self) -> None:
        """One lock per endpoint user (in a fixed order: no deadlock between beds), held
        until :meth:`stop`: a second bed on the machine waits (bounded) for the first.
        What a crashed earlier holder left is removed: its processes, its temporary
        base directory (named in the lock file)."""
        for user in sorted(USER_PREFIX + name for name in self.names):
            with _HELD_LOCK:
                if user in _HELD:
                    raise RuntimeError(f"endpoint user {user} is in use by another "
                                       "LibvirtBed of this process (stop it first)")
                _HELD.add(user)
            self._locks[user] = None
            path = os.path.join(tempfile.gettempdir(), f".vmm_exec-libvirt-bed.{user}.lock")
            handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - kept until stop()
            deadline = time.monotonic() + LOCK_TIMEOUT
            told = False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    handle.seek(0)
                    owner = handle.read().strip()
                    if time.monotonic() > deadline:
                        handle.close()
                        raise RuntimeError(
                            f"endpoint user {user} busy for {LOCK_TIMEOUT:g}s: another "
                            f"libvirt test bed uses it ({owner})") from None
                    if not told:
                        print(f"libvirt test bed: waiting for {user}, in use by another "
                              f"bed ({owner})", file=sys.stderr, flush=True)
                        told = True
                    time.sleep(0.2)
            handle.seek(0)
            previous = handle.read().split()
            if len(previous) >= 2 and previous[1] != self.base:
                stale = previous[1]
                if os.path.dirname(stale) == tempfile.gettempdir() and \
                        os.path.basename(stale).startswith(BASE_PREFIX):
                    shutil.rmtree(stale, ignore_errors=True)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid={os.getpid()} {self.base}\n")
            handle.flush()
            self._locks[user] = handle

    def _write_host(self, host: LibvirtHost) -> None:
        owner = (host.uid, host.gid)
        _install_dir(host.home, 0o700, *owner)
        for sub in (".config", ".config/libvirt", ".cache", ".cache/libvirt",
                    ".cache/libvirt/qemu", ".cache/libvirt/qemu/cache",
                    ".cache/libvirt/qemu/cache/capabilities"):
            _install_dir(os.path.join(host.home, sub), 0o700, *owner)
        _install_dir(host.sock_dir, 0o2750, host.uid, self._gid)
        conf = os.path.join(host.config_dir, "libvirt")
        _write(os.path.join(conf, "libvirtd.conf"), "\n".join([
            f"# vmm_exec libvirt test bed: fake host {host.name}",
            f'host_uuid = "{host.host_uuid}"',
            f'unix_sock_dir = "{host.sock_dir}"',
            f'unix_sock_group = "{self.group}"',
            'unix_sock_rw_perms = "0770"',
            f'log_outputs = "{self.log_level}:file:{host.log_path}"',
        ]) + "\n", 0o600, owner)
        _write(os.path.join(conf, "qemu.conf"), "\n".join([
            f"# vmm_exec libvirt test bed: fake host {host.name}",
            'stdio_handler = "file"',
            f'migration_address = "{host.address}"',
            f'migration_host = "{host.address}"',
            f"migration_port_min = {host.port_min}",
            f"migration_port_max = {host.port_max}",
            "keepalive_interval = 2",
            "keepalive_count = 3",
        ]) + "\n", 0o600, owner)
        if self.caps_cache and os.path.isdir(self.caps_cache):
            for entry in os.listdir(self.caps_cache):
                if entry.endswith(".xml"):
                    target = os.path.join(host.caps_dir, entry)
                    shutil.copyfile(os.path.join(self.caps_cache, entry), target)
                    os.chown(target, *owner)
                    os.chmod(target, 0o600)

    def _save_caps(self, host: LibvirtHost) -> None:
        if not self.caps_cache:
            return
        try:
            os.makedirs(self.caps_cache, mode=0o755, exist_ok=True)
            for entry in os.listdir(host.caps_dir):
                source = os.path.join(host.caps_dir, entry)
                target = os.path.join(self.caps_cache, entry)
                if not entry.endswith(".xml") or (
                        os.path.exists(target) and filecmp.cmp(source, target, shallow=False)):
                    continue
                temporary = f"{target}.{os.getpid()}.tmp"
                shutil.copyfile(source, temporary)
                os.chmod(temporary, 0o644)
                os.replace(temporary, target)
        except OSError:
            pass  # only a cache

    def stop(self) -> None:
        """Destroy and undefine every guest, stop every daemon and every process of the
        endpoint users (by PID), remove the directories; users and group stay."""
        with self._lock:
            if not self._started:
                return
            self._started = False
            atexit.unregister(self.stop)
            for name in list(self._frozen):
                self.thaw_daemon(name)
            try:
                self.destroy_all()
            except Exception:  # noqa: BLE001 - teardown goes on; the processes die below
                pass
            for name in self.hosts:
                self.stop_daemon(name)
            for host in self.hosts.values():
                self._kill_user_processes(host.uid)
            self._conns.clear()
            if self.base:
                if self._given_base is None:
                    shutil.rmtree(self.base, ignore_errors=True)
                else:
                    for sub in ("home", "sock", "shared"):
                        shutil.rmtree(os.path.join(self.base, sub), ignore_errors=True)
            for user, handle in self._locks.items():
                if handle is not None:
                    handle.close()  # releases the flock
                with _HELD_LOCK:
                    _HELD.discard(user)
            self._locks.clear()

    def _kill_user_processes(self, uid: int) -> None:
        """SIGKILL whatever ``uid`` runs (a few rounds for forks; bounded)."""
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            pids = _pids_of_uid(uid)
            if not pids:
                return
            _signal_all(pids, signal.SIGKILL)
            _wait_gone(pids, 1.0)

    # daemons -----------------------------------------------------------------------------

    def _spawn(self, name: str) -> None:
        host = self.hosts[name]
        argv = ["setpriv", f"--reuid={host.user}", f"--regid={host.gid}", "--init-groups",
                "--reset-env", "--", "/usr/bin/env", f"HOME={host.home}",
                f"XDG_CONFIG_HOME={host.config_dir}", f"XDG_CACHE_HOME={host.cache_dir}",
                "LC_ALL=C", LIBVIRTD]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        with open(host.stdout_path, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    env=env, cwd=host.home, start_new_session=True,
                                    close_fds=True)
        self._procs[name] = proc
        self._frozen.discard(name)

    def _await_ready(self, name: str, timeout: float) -> None:
        """Wait (bounded) until the daemon answers on its socket."""
        lv = libvirt_module()
        host = self.hosts[name]
        proc = self._procs[name]
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name}: libvirtd exited with {proc.returncode}; log:\n"
                                   f"{_tail(host.log_path)}\n{_tail(host.stdout_path, 800)}")
            if os.path.exists(host.socket):
                try:
                    conn = lv.open(host.uri)
                except lv.libvirtError:
                    conn = None
                if conn is not None:
                    conn.setKeepAlive(*self.keepalive)
                    self._conns[name] = conn
                    return
            if time.monotonic() >= deadline:
                self.kill_daemon(name)
                raise RuntimeError(f"{name}: libvirtd not answering on {host.socket} within "
                                   f"{timeout:g}s; log:\n{_tail(host.log_path)}")
            time.sleep(0.05)

    def _probe_all(self) -> None:
        """The QEMU capabilities probe, once per daemon, in parallel (seconds each
        unless cached); then keep the result for the next runs."""
        errors: List[str] = []

        def probe(name: str, conn: Any) -> None:
            try:
                conn.getCapabilities()  # probes every qemu-system-* (x86_64, i386)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{name}: {exc}")

        # the threads must not take self._lock (start() holds it): each gets its conn
        threads = [threading.Thread(target=probe, args=(name, self._conn(name)), daemon=True)
                   for name in self.names]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + PROBE_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            errors.append(f"no answer within {PROBE_TIMEOUT:g}s")
        if errors:
            raise RuntimeError("QEMU capabilities probe failed: " + "; ".join(errors))
        for host in self.hosts.values():
            self._save_caps(host)

    def running(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def daemon_pid(self, name: str) -> Optional[int]:
        """libvirtd's PID on ``name``, None while it is down."""
        self._host(name)
        proc = self._procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def start_daemon(self, name: str, timeout: float = READY_TIMEOUT) -> int:
        """(Re)start ``name``'s libvirtd (a frozen one is thawed); wait until it answers.
        Guests whose QEMU survived are picked up again by the new daemon."""
        with self._lock:
            self._host(name)
            if self.running(name):
                if name in self._frozen:
                    self.thaw_daemon(name)
                return self._procs[name].pid
            self._drop_conn(name)
            self._spawn(name)
            self._await_ready(name, timeout)
            return self._procs[name].pid

    def stop_daemon(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM ``name``'s libvirtd (SIGCONT too, should it be frozen), bounded wait,
        then SIGKILL. Its guests' QEMUs go on running."""
        with self._lock:
            self._host(name)
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                _signal_all([proc.pid], signal.SIGCONT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
            self._frozen.discard(name)
            self._drop_conn(name)

    def kill_daemon(self, name: str) -> None:
        """SIGKILL ``name``'s libvirtd (a crash). Its guests' QEMUs go on running."""
        with self._lock:
            self._host(name)
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
            self._frozen.discard(name)
            self._drop_conn(name)

    def freeze_daemon(self, name: str) -> None:
        """SIGSTOP ``name``'s libvirtd (a hung daemon): its socket still accepts, nothing
        answers; clients with keepalive give up after ~interval*(count+1) s."""
        with self._lock:
            pid = self.daemon_pid(name)
            if pid is None:
                raise RuntimeError(f"{name}: libvirtd is not running")
            os.kill(pid, signal.SIGSTOP)
            self._frozen.add(name)

    def thaw_daemon(self, name: str) -> None:
        """SIGCONT ``name``'s libvirtd. The bed's own connection to it is dropped: its
        keepalive may have given up during the freeze without the event loop having
        marked it dead yet (seen on a loaded CI machine), so the next call reconnects."""
        with self._lock:
            pid = self.daemon_pid(name)
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
            self._frozen.discard(name)
            self._drop_conn(name)

    def frozen(self, name: str) -> bool:
        return name in self._frozen

    def processes(self, name: str) -> Set[int]:
        """Every live process the endpoint user of ``name`` runs."""
        return _pids_of_uid(self._host(name).uid)

    def qemu_pids(self, name: str, vm_name: Optional[str] = None) -> Set[int]:
        """The QEMU processes of ``name``'s user (of guest ``vm_name`` only, if given)."""
        found = set()
        for pid in self.processes(name):
            if not _comm(pid).startswith("qemu-system"):
                continue
            if vm_name is not None:
                argv = _cmdline(pid)
                wanted = "guest=" + vm_name.replace(",", ",,")
                if not any(a == wanted or a.startswith(wanted + ",") for a in argv):
                    continue
            found.add(pid)
        return found

    # connections -----------------------------------------------------------------------

    def connect(self, name: str, keepalive: Optional[Tuple[int, int]] = None) -> Any:
        """A new libvirt-python connection to ``name`` (the caller closes it), with
        keepalive (default :data:`KEEPALIVE`), so a call to a hung daemon fails instead
        of blocking for good."""
        lv = libvirt_module()
        ensure_event_loop()
        conn = lv.open(self._host(name).uri)
        interval, count = keepalive or self.keepalive
        conn.setKeepAlive(interval, count)
        return conn

    def _conn(self, name: str) -> Any:
        """The bed's own connection to ``name`` (reopened once it died)."""
        with self._lock:
            conn = self._conns.get(name)
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except Exception:  # noqa: BLE001 - a dead connection; open a new one
                    pass
            self._conns[name] = self.connect(name)
            return self._conns[name]

    def _on_conn(self, name: str, call: Callable[[Any], T]) -> T:
        """``call`` on the bed's connection to ``name``; once more on a new connection if
        the first one turned out dead (closed by its keepalive while the daemon was
        frozen; the error is then an internal one, not the domain's)."""
        conn = self._conn(name)
        try:
            return call(conn)
        except libvirt_module().libvirtError:
            try:
                alive = bool(conn.isAlive())
            except Exception:  # noqa: BLE001 - as dead as it gets
                alive = False
            if alive:
                raise
        with self._lock:
            if self._conns.get(name) is conn:
                self._drop_conn(name)
        return call(self._conn(name))

    def _drop_conn(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        if conn is None:
            return
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - the daemon is gone; nothing to close
            pass

    # guests ------------------------------------------------------------------------------

    def random_blob(self, mib: int) -> str:
        """A file of ``mib`` MiB of random data in the shared directory (made once)."""
        path = os.path.join(self.shared_dir, f"random-{mib}M.bin")
        if not os.path.exists(path):
            temporary = f"{path}.{os.getpid()}.tmp"
            with open(temporary, "wb") as handle:
                for _ in range(mib):
                    handle.write(os.urandom(1 << 20))
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        return path

    def guest_xml(self, vm_name: str, uuid: str, ram_mib: int = 128,
                  random_ram_mib: int = 64) -> str:
        """A TCG guest: no disk, no NIC, no video, serial to a shared file; with
        ``random_ram_mib``, that much random data loaded into its RAM at
        :data:`BLOB_ADDRESS` (``-device loader``), so a throttled migration takes
        seconds (untouched RAM is zero pages, which cost nothing to send)."""
        if random_ram_mib < 0 or ram_mib < 16:
            raise ValueError("bad guest memory sizes")
        if random_ram_mib and (BLOB_ADDRESS >> 20) + random_ram_mib > ram_mib:
            raise ValueError(f"{random_ram_mib} MiB of random data at 16 MiB do not fit "
                             f"into {ram_mib} MiB of RAM")
        serial = self.serial_path(vm_name)
        if not os.path.exists(serial):
            open(serial, "a", encoding="ascii").close()
        os.chmod(serial, 0o666)
        namespace = extra = ""
        if random_ram_mib:
            blob = self.random_blob(random_ram_mib)
            namespace = " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"
            loader = f"loader,file={blob},addr={BLOB_ADDRESS:#x},force-raw=on"
            extra = ("\n  <qemu:commandline>\n    <qemu:arg value='-device'/>\n"
                     f"    <qemu:arg value={quoteattr(loader)}/>\n  </qemu:commandline>")
        return f"""<domain type='qemu'{namespace}>
  <name>{escape(vm_name)}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{ram_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <bios rebootTimeout='-1'/>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{QEMU}</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path={quoteattr(serial)}/>
      <target port='0'/>
    </serial>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>{extra}
</domain>
"""

    def define_guest(self, name: str, vm_name: str, *, ram_mib: int = 128,
                     random_ram_mib: int = 64, start: bool = True) -> str:
        """Define (persistent) a TCG guest :meth:`guest_xml` on ``name`` and start it
        unless ``start`` is false; its UUID."""
        uuid = str(uuidlib.uuid4())
        xml = self.guest_xml(vm_name, uuid, ram_mib=ram_mib, random_ram_mib=random_ram_mib)
        conn = self._conn(name)
        began = time.monotonic()
        dom = conn.defineXML(xml)
        self.timings.setdefault("first_define", time.monotonic() - began)
        if start:
            began = time.monotonic()
            dom.create()
            self.timings[f"start:{vm_name}"] = time.monotonic() - began
        return uuid

    def domain(self, name: str, uuid: str) -> Any:
        """The domain ``uuid`` on ``name`` (the bed's connection), or None."""
        lv = libvirt_module()
        try:
            return self._on_conn(name, lambda conn: conn.lookupByUUIDString(uuid))
        except lv.libvirtError as exc:
            if _error_code(exc) == lv.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def guest_state(self, name: str, uuid: str) -> Optional[Tuple[int, int, bool]]:
        """``(state, reason, persistent)`` of guest ``uuid`` on ``name``; None if that
        host does not have it (also when libvirt removes it meanwhile)."""
        lv = libvirt_module()
        gone = (lv.VIR_ERR_NO_DOMAIN, lv.VIR_ERR_OPERATION_INVALID)
        def read(conn: Any) -> Tuple[int, int, bool]:
            dom = conn.lookupByUUIDString(uuid)
            state, reason = dom.state()
            return state, reason, bool(dom.isPersistent())

        try:
            return self._on_conn(name, read)
        except lv.libvirtError as exc:
            if _error_code(exc) in gone:
                return None
            raise

    def add_snapshot_metadata(self, name: str, vm_name: str, snap_name: str,
                              description: str = "") -> str:
        """Snapshot *metadata* for guest ``vm_name`` on ``name`` (what a migration must
        carry over); the snapshot's name.

        A disk-less guest cannot have a real snapshot in libvirt 9.0 (an internal one
        needs a qcow2 disk, an external one a disk or a memory file that the other host
        could not use), so this redefines one: ``snapshotCreateXML`` with
        ``VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE`` and a ``<domainsnapshot>`` that embeds
        the guest's current domain XML (state ``shutoff``, no memory, no disks).
        """
        lv = libvirt_module()
        dom = self._conn(name).lookupByName(vm_name)
        domain_xml = dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE)
        # the embedded <domain> must not repeat the XML declaration; keep it as is
        xml = (f"<domainsnapshot>\n  <name>{escape(snap_name)}</name>\n"
               f"  <description>{escape(description)}</description>\n"
               f"  <state>shutoff</state>\n  <creationTime>{int(time.time())}</creationTime>\n"
               f"  <memory snapshot='no'/>\n  <disks/>\n{domain_xml}</domainsnapshot>\n")
        snapshot = dom.snapshotCreateXML(xml, lv.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
        return str(snapshot.getName())

    def snapshot_names(self, name: str, uuid: str) -> List[str]:
        """The snapshot metadata names of guest ``uuid`` on ``name`` (sorted)."""
        dom = self.domain(name, uuid)
        if dom is None:
            return []
        return sorted(str(s.getName()) for s in dom.listAllSnapshots(0))

    def destroy_all(self, timeout: float = 30.0) -> None:
        """Destroy and undefine (snapshot metadata, managed save too) every guest of
        every running, unfrozen host; all at once (a QEMU's exit takes libvirt up to
        ~2 s here: PID 1 reaps the orphaned QEMU late and libvirt waits for that)."""
        lv = libvirt_module()
        gone = (lv.VIR_ERR_NO_DOMAIN, lv.VIR_ERR_OPERATION_INVALID)
        flags = (lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                 | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                 | lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        errors: List[BaseException] = []

        def remove(dom: Any) -> None:
            for action in (dom.destroy, lambda: dom.undefineFlags(flags)):
                try:
                    action()
                except lv.libvirtError as exc:
                    if _error_code(exc) not in gone:
                        errors.append(exc)
                        return

        threads = []
        for name in self.hosts:
            if not self.running(name) or name in self._frozen:
                continue
            try:
                domains = self._conn(name).listAllDomains(0)
            except lv.libvirtError:
                continue
            threads += [threading.Thread(target=remove, args=(dom,), daemon=True)
                        for dom in domains]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            raise RuntimeError(f"guests not destroyed within {timeout:g}s")
        if errors:
            raise errors[0]

    # description ---------------------------------------------------------------------------

    def describe(self) -> Dict[str, Any]:
        """Everything a client needs, JSON-ready."""
        return {
            "base": self.base,
            "group": self.group,
            "uri_template": self.socket_dir_template,
            "hosts": {name: {"user": h.user, "uid": h.uid, "address": h.address,
                             "migration_ports": [h.port_min, h.port_max],
                             "host_uuid": h.host_uuid, "uri": h.uri,
                             "libvirtd_pid": self.daemon_pid(name), "log": h.log_path}
                      for name, h in self.hosts.items()},
        }


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/libvirt_bed.py",
        description="Start real libvirt fake hosts (session libvirtds) until Ctrl-C/SIGTERM.")
    parser.add_argument("--hosts", type=int, default=2, help="number of hosts (host01...)")
    parser.add_argument("--base", help="directory (default: a temporary one, removed)")
    parser.add_argument("--member", action="append", default=[], metavar="USER",
                        help=f"an existing user to add to the group {DEFAULT_GROUP} "
                        "(repeatable)")
    args = parser.parse_args(argv)
    if not 1 <= args.hosts <= 50:
        parser.error("--hosts must be between 1 and 50")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    bed = LibvirtBed(tuple(f"host{i:02d}" for i in range(1, args.hosts + 1)), base=args.base,
                     extra_group_members=args.member)
    try:
        bed.start()
    except Unavailable as exc:
        print(f"libvirt test bed unavailable: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"libvirt test bed failed to start: {exc}", file=sys.stderr)
        return 1
    try:
        facts = bed.describe()
        with open(os.path.join(bed.base, "libvirt_bed.json"), "w", encoding="utf-8") as handle:
            json.dump(facts, handle, indent=2)
        print(f"# vmm_exec libvirt test bed: {len(bed.hosts)} hosts up, base {bed.base}")
        for name, host in bed.hosts.items():
            print(f"#   {name}  user {host.user}  migration {host.address}:"
                  f"{host.port_min}-{host.port_max}  libvirtd {bed.daemon_pid(name)}")
            print(f"    {host.uri}")
        print(f"# URI of any host: {bed.socket_dir_template}")
        print("# Ctrl-C or SIGTERM stops everything", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        bed.stop()
        print("# libvirt test bed stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
