#!/usr/bin/env python3
"""Storms of actions on real sshd hosts: throughput, driver CPU and footprint.

    sudo python3 benchmarks/storm.py [--hosts 8] [--vms 200] [--mix deploy]
                                     [--transport all] [--threads 15]

Starts ``--hosts`` real sshds on loopback addresses (tests/testbed.py: root,
one non-root ssh user, trivial ``/bin/sh`` remote scripts already on every
host), then for each transport (plain OpenSSH, OpenSSH with ControlMaster,
paramiko) starts the driver as oned does (``-t THREADS -r 0 kvm``), writes
one request per VM at once (a storm, as after oned restarts) and waits for
every answer. Prints, per transport: actions/s, driver CPU per action (its
own, and its reaped children's: the ssh processes), peak RSS, peak threads,
fds and established connections to the hosts, p50/p99 answer latency, and
whether every request was answered exactly once. The ``ssh HOST true``
floor (sequential, both without and with ControlMaster) is measured in the
same run on the same hosts.

Figures are printed, never asserted: the targets of issue 12 are shown next
to them. ``--profile DIR`` samples the driver with py-spy (when installed)
into ``DIR/<transport>.txt``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from e2e.kit import World, remote_script_paths  # noqa: E402
from testbed import Testbed, Unavailable  # noqa: E402

from vmm_exec.testing.simoned import proc_stats  # noqa: E402

TRANSPORTS = ("openssh", "openssh-cm", "paramiko")
# the Ruby driver, where an OpenNebula tree with it is installed (--ruby DIR)
RUBY_TRANSPORTS = ("ruby", "ruby-cm")
RUBY_DEFAULT = "/var/tmp/vmm_exec-oned"
MIXES = {
    "deploy": {"DEPLOY": 1},
    "shutdown": {"SHUTDOWN": 1},
    "migrate": {"MIGRATE": 1},
    "mixed": {"DEPLOY": 2, "SHUTDOWN": 1, "MIGRATE": 1},
}
SAMPLE = 0.25          # seconds between resource samples
SETTLE = 1.0           # after the last answer, how long to watch for duplicates
TRIVIAL = {"deploy": 'echo "one-$$"', "poll": "echo STATE=a CPU=1.0 MEMORY=1024"}


# -- the world ----------------------------------------------------------------------

def trivial_remotes(dest: str) -> None:
    """The remotes tree with every script a one-liner of ``/bin/sh``."""
    for rel in remote_script_paths():
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        body = TRIVIAL.get(os.path.basename(rel), "exit 0")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f"#!/bin/sh\n{body}\n")
        os.chmod(path, 0o755)
    for top, dirs, _files in os.walk(dest):
        for name in dirs:
            os.chmod(os.path.join(top, name), 0o755)


def controlmaster_bin(bed: Testbed, where: str) -> str:
    """``ssh``/``scp`` wrappers whose config multiplexes (ControlMaster auto, persisting
    60 s); returns their directory (put first on PATH)."""
    sockets = tempfile.mkdtemp(prefix="cm-", dir="/tmp")  # unix socket paths are short
    atexit.register(shutil.rmtree, sockets, True)
    os.makedirs(where, exist_ok=True)
    text = Path(bed.ssh_config_path).read_text(encoding="utf-8")
    text = text.replace("ControlMaster no", "ControlMaster auto").replace(
        "ControlPath none", f"ControlPath {sockets}/%C\n    ControlPersist 60")
    config = os.path.join(where, "ssh_config_cm")
    Path(config).write_text(text, encoding="utf-8")
    bindir = os.path.join(where, "bin")
    os.makedirs(bindir, exist_ok=True)
    for tool in ("ssh", "scp", "sftp"):
        real = shutil.which(tool, path="/usr/bin:/bin") or f"/usr/bin/{tool}"
        path = os.path.join(bindir, tool)
        Path(path).write_text(f"#!/bin/sh\nexec {shlex.quote(real)} -F "
                              f"{shlex.quote(config)} \"$@\"\n", encoding="utf-8")
        os.chmod(path, 0o755)
    return bindir


def stop_masters(bindir: str, hosts: Sequence[str]) -> None:
    """Ask every host's ControlMaster to exit (the next storm starts cold)."""
    for host in hosts:
        subprocess.run([os.path.join(bindir, "ssh"), "-O", "exit", host],
                       capture_output=True, timeout=10, check=False)


def ssh_floor(env: Dict[str, str], hosts: Sequence[str], rounds: int) -> float:
    """Seconds per sequential ``ssh HOST true`` (over the hosts in turn)."""
    ssh = shutil.which("ssh", path=env["PATH"]) or "ssh"
    start = time.monotonic()
    for index in range(rounds):
        subprocess.run([ssh, hosts[index % len(hosts)], "true"], env=env, timeout=30,
                       check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return (time.monotonic() - start) / rounds


# -- measuring a process -------------------------------------------------------------

def proc_status(pid: int) -> Dict[str, int]:
    values: Dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return values


def _cpu(fields: Sequence[bytes]) -> Tuple[float, float]:
    """(own, reaped children's) CPU seconds from the ``stat`` fields after the name."""
    tick = os.sysconf("SC_CLK_TCK")
    return ((int(fields[11]) + int(fields[12])) / tick,
            (int(fields[13]) + int(fields[14])) / tick)


def cpu_seconds(pid: int) -> Tuple[float, float]:
    """(own, reaped children's) CPU seconds of ``pid``."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0.0, 0.0
    return _cpu(data[data.rfind(b")") + 2:].split())


def hosts_cpu(bed: Testbed) -> float:
    """CPU seconds of the hosts' sshds and everything under them (handshakes, shells,
    scripts): live processes' own and reaped children's time, the listeners' reaped
    sessions included. A session alive at both readings is counted from its start."""
    children: Dict[int, List[int]] = {}
    cpu: Dict[int, float] = {}
    for pid, _, fields in proc_stats():  # one reading of /proc for both
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = sum(_cpu(fields))
    todo = [info.sshd_pid for info in bed.hosts.values() if info.sshd_pid is not None]
    total = 0.0
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def established_to(endpoints: Set[str]) -> int:
    """Established TCP connections whose remote end is one of ``endpoints`` (client
    sides: the driver's, its ssh processes', ControlMaster processes')."""
    count = 0
    try:
        with open("/proc/net/tcp", encoding="ascii") as handle:
            next(handle, None)
            for line in handle:
                fields = line.split(None, 4)
                if len(fields) > 3 and fields[3] == "01" and fields[2] in endpoints:
                    count += 1
    except OSError:
        pass
    return count


@dataclass
class Peaks:
    threads: int = 0
    fds: int = 0
    connections: int = 0


class Sampler(threading.Thread):
    """Peak threads, fds and connections of the driver, every :data:`SAMPLE` s."""

    def __init__(self, pid: int, endpoints: Set[str]) -> None:
        super().__init__(daemon=True, name="sampler")
        self.pid = pid
        self.endpoints = endpoints
        self.peaks = Peaks()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE):
            self.sample()

    def sample(self) -> None:
        status = proc_status(self.pid)
        self.peaks.threads = max(self.peaks.threads, status.get("Threads", 0))
        self.peaks.fds = max(self.peaks.fds, fd_count(self.pid))
        self.peaks.connections = max(self.peaks.connections, established_to(self.endpoints))


# -- the driver, as oned runs it -----------------------------------------------------

class Driver:
    """The driver process with a lean reader: answer lines and their arrival times
    (the simulated oned keeps a full transcript, too costly for thousands)."""

    def __init__(self, args: str, env: Dict[str, str], cwd: str,
                 command: Sequence[str] = (sys.executable, "-m", "vmm_exec")) -> None:
        env = dict(env, PYTHONPATH=str(ROOT))
        argv = ["/bin/sh", "-c", 'exec 2>&- "$@"', "sh", *command, args]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=cwd, env=env, start_new_session=True)
        self.answers: Dict[str, List[Tuple[str, str, float]]] = {}
        self.count = 0
        self.failures: List[str] = []
        self.cond = threading.Condition()
        self.eof = False
        self.reader = threading.Thread(target=self._read, daemon=True, name="reader")
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            words = raw.decode("utf-8", "replace").split(" ", 3)
            if len(words) >= 3 and words[0] != "LOG" and words[1] in ("SUCCESS", "FAILURE"):
                now = time.monotonic()
                if words[1] == "FAILURE" and len(words) > 3:
                    self.failures.append(words[3].strip()[:200])
                with self.cond:
                    self.answers.setdefault(words[2], []).append((words[0], words[1], now))
                    self.count += 1
                    self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_count(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.count < count and not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return self.count >= count

    def finalize(self, timeout: float = 60.0) -> int:
        try:
            self.send(b"FINALIZE\n")
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


# -- one storm -----------------------------------------------------------------------

@dataclass
class Result:
    transport: str
    vms: int
    hosts: int
    elapsed: float
    answered: int
    exactly_once: bool
    failures: int
    cpu: float
    children_cpu: float
    rss_kib: int
    hosts_cpu: float  # the hosts' sshds and what they ran (same machine: same CPUs)
    peaks: Peaks
    latencies: List[float] = field(default_factory=list)
    reasons: List[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.vms / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def requests(world: World, hosts: Sequence[str], vms: int, mix: Dict[str, int],
             first_vm: int) -> List[Tuple[int, str, bytes]]:
    """(vm, action, line) for every VM, actions interleaved by the mix's weights."""
    wheel = [action for action, weight in mix.items() for _ in range(weight)]
    result = []
    for index in range(vms):
        vm = first_vm + index
        host = hosts[index % len(hosts)]
        action = wheel[index % len(wheel)]
        if action == "DEPLOY":
            xml = world.deploy_xml(vm, host)
        elif action == "SHUTDOWN":
            xml = world.shutdown_xml(vm, host)
        else:
            xml = world.migrate_xml(vm, host, hosts[(index + 1) % len(hosts)])
        line = f"{action}  {vm} {base64.b64encode(xml.encode()).decode()}\n".encode()
        result.append((vm, action, line))
    return result


def storm(world: World, bed: Testbed, transport: str, hosts: Sequence[str], vms: int,
          mix: Dict[str, int], threads: int, extra: str, cm_bin: str, first_vm: int,
          timeout: float, profile: Optional[str], cprofile: Optional[str]) -> Result:
    env = world.driver_env()
    option = "--transport paramiko" if transport == "paramiko" else "--transport openssh"
    command: Sequence[str] = (sys.executable, "-m", "vmm_exec")
    if transport.startswith("ruby"):
        option, extra = "", ""
        command = (os.path.join(world.one, "lib", "mads", "one_vmm_exec"),)
        env["RUBYLIB"] = os.path.join(world.one, "lib", "ruby")
    elif cprofile:
        command = (sys.executable, str(ROOT / "benchmarks" / "profile_driver.py"))
        env["VMM_PROFILE_OUT"] = os.path.join(cprofile, f"{transport}.prof")
    if transport.endswith("-cm"):
        env["PATH"] = cm_bin + os.pathsep + env["PATH"]
    env.pop("ONE_MAD_DEBUG", None)
    args = " ".join(f"{option} {extra} -t {threads} -r 0 kvm".split())
    work = requests(world, hosts, vms, mix, first_vm)
    driver = Driver(args, env, world.var, command)
    sampler: Optional[Sampler] = None
    spy: Optional[subprocess.Popen[bytes]] = None
    try:
        driver.send(b"INIT\n")
        if not driver.wait_count(1, 30):
            raise RuntimeError("the driver did not answer INIT")
        sampler = Sampler(driver.proc.pid, bed.tcp_endpoints())
        sampler.start()
        if profile:
            spy = start_spy(driver.proc.pid, os.path.join(profile, f"{transport}.txt"))
        cpu0, children0 = cpu_seconds(driver.proc.pid)
        hosts0 = hosts_cpu(bed)
        sent: Dict[str, float] = {}
        start = time.monotonic()
        for vm, _action, line in work:
            sent[str(vm)] = time.monotonic()
            driver.send(line)
        driver.wait_count(vms + 1, timeout)
        elapsed = time.monotonic() - start
        time.sleep(SETTLE)
        sampler.sample()
        cpu1, children1 = cpu_seconds(driver.proc.pid)
        hosts1 = hosts_cpu(bed)
        rss = proc_status(driver.proc.pid).get("VmHWM", -1)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        if sampler is not None:
            sampler.stopped.set()
        driver.finalize()
    with driver.cond:
        answers = {vm: items for vm, items in driver.answers.items() if vm != "-"}
    wanted = {str(vm) for vm, _a, _l in work}
    exactly_once = set(answers) == wanted and all(len(v) == 1 for v in answers.values())
    latencies = [items[0][2] - sent[vm] for vm, items in answers.items() if vm in sent]
    failures = sum(1 for items in answers.values() for item in items if item[1] != "SUCCESS")
    return Result(transport, vms, len(hosts), elapsed, sum(map(len, answers.values())),
                  exactly_once, failures, cpu1 - cpu0, children1 - children0, rss,
                  hosts1 - hosts0, sampler.peaks if sampler else Peaks(), latencies,
                  sorted(set(driver.failures))[:3])


def start_spy(pid: int, output: str) -> Optional[subprocess.Popen[bytes]]:
    spy = shutil.which("py-spy")
    if spy is None:
        print("(py-spy not installed: no profile)")
        return None
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw",
                             "--rate", "1000", "--gil", "--threads", "--output", output],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# -- reporting -----------------------------------------------------------------------

def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                   .splitlines() if line.startswith("MemTotal"))
    except (OSError, StopIteration, ValueError):
        mem = 0
    return (f"{os.cpu_count()} CPUs ({model}), {mem / 1024 / 1024:.1f} GiB RAM, "
            f"Python {sys.version.split()[0]}")


def report(result: Result, threads: int) -> None:
    per = result.cpu / result.vms * 1000 if result.vms else 0.0
    kids = result.children_cpu / result.vms * 1000 if result.vms else 0.0
    hosts = result.hosts_cpu / result.vms * 1000 if result.vms else 0.0
    bound = 2 * threads + 10
    print(f"  {result.transport:<11} {result.rate:7.1f} act/s  "
          f"CPU {per:5.1f} ms/act (+{kids:.1f} ssh, hosts {hosts:.1f})  "
          f"RSS {result.rss_kib / 1024:6.1f} MB  "
          f"threads {result.peaks.threads:4d}{'' if result.peaks.threads <= bound else '!'}  "
          f"fds {result.peaks.fds:4d}  conns {result.peaks.connections:4d}  "
          f"p50 {result.pct(0.5):6.2f} s  p99 {result.pct(0.99):6.2f} s  "
          f"answers {result.answered}/{result.vms}"
          f"{' once each' if result.exactly_once else ' NOT once each'}"
          f"{f', {result.failures} FAILURE' if result.failures else ''}")
    for reason in result.reasons:
        print(f"      FAILURE: {reason}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--mix", choices=sorted(MIXES), default="deploy")
    parser.add_argument("--transport", choices=(*TRANSPORTS, *RUBY_TRANSPORTS, "all"),
                        action="append", help="repeatable; default: all (of this port)")
    parser.add_argument("--ruby", metavar="DIR", default=RUBY_DEFAULT,
                        help="an OpenNebula tree with lib/mads/one_vmm_exec.rb, for the "
                             "ruby and ruby-cm transports (default %(default)s)")
    parser.add_argument("--threads", type=int, default=15)
    parser.add_argument("--driver-args", default="",
                        help="extra driver options, e.g. '--ssh-pool 8'")
    parser.add_argument("--floor-rounds", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for the answers of one storm")
    parser.add_argument("--profile", metavar="DIR", help="py-spy raw profiles here")
    parser.add_argument("--cprofile", metavar="DIR",
                        help="run the driver under benchmarks/profile_driver.py (cProfile, "
                             "CPU time, every thread): DIR/<transport>.prof")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("storm.py starts sshds and needs root", file=sys.stderr)
        return 2
    chosen = args.transport or ["all"]
    transports = [t for c in chosen for t in (TRANSPORTS if c == "all" else (c,))]
    # not host_names(): the corpus payloads' VM id 42 is replaced everywhere it stands
    # alone, so a host called host42 would become host1041
    names = tuple(f"h{index:03d}" for index in range(1, args.hosts + 1))
    with tempfile.TemporaryDirectory(prefix="storm-remotes-") as tree:
        os.chmod(tree, 0o755)
        trivial_remotes(tree)
        bed = Testbed(names=names, remotes=tree)
        try:
            bed.start()
        except Unavailable as exc:
            print(f"no test bed: {exc}", file=sys.stderr)
            return 2
        try:
            world = World(bed, name="storm")
            shutil.rmtree(world.remotes)
            shutil.copytree(tree, world.remotes)
            cm_bin = controlmaster_bin(bed, os.path.join(world.root, "cm-client"))
            if any(t.startswith("ruby") for t in transports):
                for part in ("lib", "share"):
                    os.symlink(os.path.join(args.ruby, part), os.path.join(world.one, part))
            for where in (args.profile, args.cprofile):
                if where:
                    os.makedirs(where, exist_ok=True)
            print(f"machine: {machine()}")
            print(f"storm: {args.vms} VMs ({args.mix}) on {args.hosts} hosts, "
                  f"-t {args.threads} -r 0 kvm {args.driver_args}".rstrip())
            plain_env = bed.client_env()
            cm_env = dict(plain_env, PATH=cm_bin + os.pathsep + plain_env["PATH"])
            floor = ssh_floor(plain_env, names, args.floor_rounds)
            ssh_floor(cm_env, names, len(names))  # masters up
            floor_cm = ssh_floor(cm_env, names, args.floor_rounds)
            stop_masters(cm_bin, names)
            print(f"floor: ssh HOST true {floor * 1000:.1f} ms ({1 / floor:.1f}/s sequential), "
                  f"with ControlMaster {floor_cm * 1000:.1f} ms ({1 / floor_cm:.1f}/s)")
            for number, transport in enumerate(transports):
                result = storm(world, bed, transport, names, args.vms, MIXES[args.mix],
                               args.threads, args.driver_args, cm_bin,
                               1000 + number * args.vms, args.timeout, args.profile,
                               args.cprofile)
                if transport.endswith("-cm"):  # the next storm must not count its masters
                    stop_masters(cm_bin, names)
                report(result, args.threads)
            print(f"targets: threads <= 2 x -t + 10 = {2 * args.threads + 10}; CPU/DEPLOY "
                  "<= 4 ms (ControlMaster), <= 6 ms (paramiko); peak RSS <= 120 MB "
                  "(2,000 VMs, 80 hosts, paramiko)")
        finally:
            bed.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
