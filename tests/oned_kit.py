"""A real oned (OpenNebula 7.5, ``../shared/oned``) with the port as its VM_MAD.

The kit (``setup.sh``, ``oned-run``, ``scenario.py``; see its README) unpacks a
stripped oned install, starts one oned per work directory with sshd test hosts on
loopback addresses and journaling stand-in remote scripts. This module is the
project's side of it: where the kit is, a driver executable that runs this
checkout, an :class:`OnedInstance` per (transport, mode) with its own ports and
addresses, and the views a test needs — oned's XML-RPC API, the stand-ins'
journal, fault switches, the driver's processes and what ``oned-run stop`` found
left behind.

The kit is looked up in ``$VMM_EXEC_ONED_KIT`` or ``<repo>/../shared/oned`` and
unpacked (``setup.sh``, idempotent, installs its Debian packages) into
``$VMM_EXEC_ONED_DIR`` (default ``/var/tmp/vmm_exec-oned``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from e2e.kit import wait_until

ROOT = Path(__file__).resolve().parent.parent
KIT = Path(os.environ.get("VMM_EXEC_ONED_KIT") or ROOT.parent / "shared" / "oned")
ONE_DIR = Path(os.environ.get("VMM_EXEC_ONED_DIR") or "/var/tmp/vmm_exec-oned")
SETUP_TIMEOUT = 600.0
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


class Unavailable(RuntimeError):
    """The kit cannot run here (the reason says why, in one line)."""


_setup_done: List[Path] = []


def ensure_kit() -> Path:
    """The unpacked oned install (``setup.sh`` run once per process)."""
    if _setup_done:
        return _setup_done[0]
    if not (KIT / "oned-run").is_file():
        raise Unavailable(f"no oned kit at {KIT} (a clone without ../shared/oned)")
    if sys.platform != "linux" or os.geteuid() != 0:
        raise Unavailable("the oned kit needs Linux and root (test hosts log in as root)")
    result = subprocess.run(["bash", str(KIT / "setup.sh"), str(ONE_DIR)],
                            stdin=subprocess.DEVNULL, capture_output=True,
                            timeout=SETUP_TIMEOUT)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).decode(errors="replace")[-2000:]
        raise RuntimeError(f"{KIT}/setup.sh failed (exit {result.returncode}):\n{tail}")
    _setup_done.append(ONE_DIR)
    return ONE_DIR


def _kit_module() -> Any:
    """The kit's ``scenario`` module (its ``One`` XML-RPC helper and state names)."""
    if str(KIT) not in sys.path:
        sys.path.insert(0, str(KIT))
    import scenario  # type: ignore[import-not-found]

    return scenario


def driver_executable(base: Path) -> Path:
    """A ``VM_MAD`` ``EXECUTABLE`` that runs this checkout's driver.

    oned execs it with ARGUMENTS as one argv element, closed fd 2 and every
    signal blocked; the port has to cope with all three itself, so the wrapper
    only points Python at this checkout and execs."""
    exe = base / "one-vmm-exec"
    exe.write_text("#!/bin/sh\n"
                   f"PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}} "
                   f"exec {sys.executable} -m vmm_exec \"$@\"\n")
    exe.chmod(0o755)
    return exe


def _free(port: int, kind: int = socket.SOCK_STREAM, addr: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        # as oned binds: a port whose last connections are in TIME_WAIT is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Call:
    """One stand-in call from the journal."""

    host: str      # "frontend" for the scripts run on oned's side
    script: str    # e.g. "vmm/kvm/deploy"
    rc: int
    argv: str      # as journaled: 'a' 'b' ...


@dataclass
class Proc:
    pid: int
    ppid: int
    cmdline: str
    environ: bytes

    def status(self, field: str) -> str:
        """A line of /proc/<pid>/status (e.g. ``SigBlk``); "" when gone."""
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith(field + ":"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return ""


def processes() -> List[Proc]:
    """Every process (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as raw:
                cmd = raw.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/environ", "rb") as raw:
                env = raw.read()
        except (OSError, ValueError, IndexError):
            continue
        found.append(Proc(int(entry), ppid, cmd, env))
    return found


class OnedInstance:
    """One oned of the kit, with the port as VM_MAD ``kvm``.

    ``index`` picks ports and host addresses that no other instance (nor the
    other test beds, on 127.0.0.x) uses: XML-RPC 26300+10i, monitord 41200+10i,
    hook manager 21000+10i, hosts one-h1..one-hN on 127.0.1.(10i+1..)."""

    HOSTS = ("one-h1", "one-h2", "one-h3")

    def __init__(self, base: Path, index: int, transport: str, mode: str,
                 extra_args: str = "-t 15 -r 0 kvm -p", ruby: bool = False) -> None:
        self.base = base
        self.work = base / "work"
        self.index = index
        self.transport = transport
        self.mode = mode
        self.port = 26300 + 10 * index
        self.monitor_port = 41200 + 10 * index
        self.hm_port = 21000 + 10 * index
        self.addresses = {name: (f"127.0.1.{10 * index + n + 1}", 2200 + 10 * index + n)
                          for n, name in enumerate(self.HOSTS)}
        words = []
        if mode == "strict":
            words += ["--compat", "strict"]
        if transport == "paramiko":
            words += ["--transport", "paramiko"]
        self.ruby = ruby  # the stock Ruby driver of the kit instead of the port
        self.arguments = extra_args if ruby else " ".join(words + extra_args.split())
        self.home = base / "home"
        self._one: Any = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, clean: bool = True) -> None:
        one_dir = ensure_kit()
        exe = "one_vmm_exec" if self.ruby else str(driver_executable(self.base))
        for port in (self.port, self.monitor_port, self.hm_port, self.hm_port + 1):
            if not _free(port):
                raise RuntimeError(f"port {port} on 127.0.0.1 is taken")
        # paramiko reads ~/.ssh/config: point it at the kit's (mapping one-h1... to the sshds)
        (self.home / ".ssh").mkdir(parents=True, exist_ok=True)
        link = self.home / ".ssh" / "config"
        if not link.is_symlink():
            link.symlink_to(self.work / "ssh" / "config")
        argv = [str(KIT / "oned-run"), "start", "--one", str(one_dir), "--work", str(self.work),
                "--exe", exe, f"--args={self.arguments}", "--port", str(self.port),
                "--monitor-port", str(self.monitor_port), "--hm-port", str(self.hm_port),
                "--debug", "--env", f"HOME={self.home}"]
        for name, (addr, port) in self.addresses.items():
            argv += ["--host", f"{name}={addr}:{port}"]
        if clean:
            argv.append("--clean")
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=START_TIMEOUT)
        if result.returncode != 0:
            out = (result.stdout + result.stderr).decode(errors="replace")[-3000:]
            raise RuntimeError(f"oned-run start failed (exit {result.returncode}):\n{out}")
        self._one = _kit_module().One.from_work(str(self.work))

    def stop(self) -> List[Tuple[int, str]]:
        """``oned-run stop``: oned gets SIGTERM (FINALIZE to the drivers); what it had to
        kill besides the dummy IM's monitoring clients is returned (``leftovers``)."""
        result = subprocess.run([str(KIT / "oned-run"), "stop", "--work", str(self.work)],
                                stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=STOP_TIMEOUT)
        if result.returncode != 0:
            out = (result.stdout + result.stderr).decode(errors="replace")[-3000:]
            raise RuntimeError(f"oned-run stop failed (exit {result.returncode}):\n{out}")
        return [(int(p), str(c)) for p, c in self.state().get("leftovers", [])]

    def kill_oned(self) -> None:
        """SIGKILL oned: its drivers only see stdin EOF."""
        pid = self.state()["oned_pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10,
                 "oned to die")

    def state(self) -> Dict[str, Any]:
        with open(self.work / "oned-run.json", encoding="utf-8") as fh:
            data: Dict[str, Any] = json.load(fh)
        return data

    # -- oned's API ----------------------------------------------------------------------

    @property
    def one(self) -> Any:
        """The kit's ``One``: ``one("one.vm.info", 3)``, ``one.wait_vm(...)``."""
        assert self._one is not None, "oned is not started"
        return self._one

    def host_id(self, name: str) -> int:
        pool = ET.fromstring(self.one("one.hostpool.info"))
        for host in pool.findall("HOST"):
            if host.findtext("NAME") == name:
                return int(host.findtext("ID") or -1)
        hid = int(self.one("one.host.allocate", name, "dummy", "kvm", -1))
        self.one.wait_host(hid, timeout=60)
        return hid

    def network(self) -> int:
        pool = ET.fromstring(self.one("one.vnpool.info", -2, -1, -1))
        for vn in pool.findall("VNET"):
            if vn.findtext("NAME") == "net0":
                return int(vn.findtext("ID") or -1)
        vnid = int(self.one("one.vn.allocate",
                            'NAME="net0"\nVN_MAD="dummy"\nBRIDGE="br0"\n'
                            'AR=[TYPE="IP4",IP="10.99.0.10",SIZE="200"]\n', -1))
        self.one.wait_vn(vnid, timeout=60)
        return vnid

    def new_vm(self, name: str) -> int:
        """A VM on hold (one NIC on net0, no disk): ``one.vm.deploy`` picks its host."""
        template = (f'NAME="{name}"\nCPU="0.1"\nVCPU="1"\nMEMORY="64"\n'
                    f'NIC=[NETWORK_ID="{self.network()}"]\n')
        vid = int(self.one("one.vm.allocate", template, True))
        self.one.wait_vm(vid, "HOLD", timeout=30)
        return vid

    def deploy(self, vid: int, host: str) -> None:
        self.one("one.vm.deploy", vid, self.host_id(host), False, -1, "")

    def migrate_live(self, vid: int, host: str) -> None:
        self.one("one.vm.migrate", vid, self.host_id(host), True, False, -1, 0)

    def vm(self, vid: int) -> Dict[str, Any]:
        """The kit's view (state, lcm, host, rstime, deploy_id, error) plus the
        history's last ACTION (what oned recorded it did)."""
        info: Dict[str, Any] = self.one.vm(vid)
        return info

    def wait_vm(self, vid: int, state: str, lcm: Optional[str] = None,
                host: Optional[str] = None, timeout: float = 60) -> Dict[str, Any]:
        got: Dict[str, Any] = self.one.wait_vm(vid, state, lcm, host, timeout=timeout)
        return got

    def wait_lcm(self, vid: int, lcm: str, timeout: float = 60) -> Dict[str, Any]:
        """Until the LCM state is ``lcm`` (also a *FAILURE one, which wait_vm refuses)."""
        found: Dict[str, Any] = wait_until(lambda: (lambda v: v if v["lcm"] == lcm else None)(
            self.vm(vid)), timeout, f"VM {vid} in {lcm}", interval=0.2)
        return found

    def vm_log(self, vid: int) -> str:
        try:
            return (self.work / "var" / "vms" / str(vid) / "vm.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- the stand-ins ---------------------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        return self.work / "journal" / "journal.log"

    def journal_lines(self) -> List[str]:
        try:
            return self.journal_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def calls(self, since: int = 0) -> List[Call]:
        """Stand-in calls journaled from line ``since`` on."""
        found = []
        for line in self.journal_lines()[since:]:
            fields = line.split(" ", 5)
            if len(fields) == 6 and fields[3].startswith("rc="):
                found.append(Call(fields[1], fields[2], int(fields[3][3:]),
                                  fields[5][len("argv:"):].strip()))
        return found

    def mark(self) -> int:
        """The journal position now, for :meth:`calls` of what follows."""
        return len(self.journal_lines())

    def fault(self, script: str, text: str = "") -> None:
        """``vmm/kvm/migrate`` fails (exit 1, ``text`` on stderr) until cleared."""
        path = self.work / "faults" / script.replace("/", ".")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def sleep(self, script: str, seconds: float) -> None:
        path = self.work / "faults" / (script.replace("/", ".") + ".sleep")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{seconds}\n")

    def clear_faults(self) -> None:
        folder = self.work / "faults"
        if folder.is_dir():
            for entry in folder.iterdir():
                entry.unlink()

    # -- processes -------------------------------------------------------------------------

    def tagged(self) -> List[Proc]:
        """Processes of this instance (``ONEKIT_DIR=<work>`` in their environment)."""
        tag = f"ONEKIT_DIR={self.work}".encode()
        return [p for p in processes() if tag in p.environ.split(b"\0")]

    def drivers(self) -> List[Proc]:
        """The port's driver processes under this oned."""
        return [p for p in self.tagged() if " -m vmm_exec" in p.cmdline]

    def driver(self, timeout: float = 20) -> Proc:
        found: List[Proc] = wait_until(self.drivers, timeout, "the driver process")
        assert len(found) == 1, [p.cmdline for p in found]
        return found[0]

    def descendants(self, pid: int) -> List[Proc]:
        table = processes()
        found, todo = [], [pid]
        while todo:
            parent = todo.pop()
            kids = [p for p in table if p.ppid == parent]
            found += kids
            todo += [k.pid for k in kids]
        return found

    def host_side(self, host: str) -> List[Proc]:
        """What runs in the sessions of test host ``host`` (sshd sets ONEKIT_HOST)."""
        tag = f"ONEKIT_HOST={host}".encode()
        return [p for p in self.tagged() if tag in p.environ.split(b"\0")
                and not p.cmdline.startswith("sshd")]

    def stop_host(self, host: str) -> None:
        """Stop test host ``host``'s sshd (the host is down: nothing listens)."""
        pid = int(self.state()["sshd_pids"][host])
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10,
                 f"the sshd of {host} to stop")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kinds(calls: Sequence[Call]) -> List[Tuple[str, str]]:
    """(host, script) of each call: the order and the places, without argv."""
    return [(c.host, c.script) for c in calls]
