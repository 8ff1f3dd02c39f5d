#!/usr/bin/env python3
"""A real live migration failing and being recovered, told host by host.

    python3 drivers/libvirt/demo.py [--fault qemu|cancel|daemon] [--keep]

Two libvirt hosts on this machine (two session libvirtds of their own users,
``tests/libvirt_bed.py``) reached over real sshds (``tests/testbed.py``); a
64 MiB TCG guest ``one-42`` with 48 MiB of random RAM and two snapshots on
host01; the driver started as oned starts it, with the libvirt framework
installed by its ``install.sh`` (so MIGRATE runs it instead of the stock
script). The migration is throttled so that the fault hits mid-transfer:

- ``qemu`` (default): host02's incoming QEMU is killed;
- ``cancel``: oned cancels the action (DRIVER_CANCEL);
- ``daemon``: host02's libvirtd is killed, then restarted, then ``recover`` runs.

Printed: what each host had before, what failed, what the framework said it
did (the LOG lines and the answer oned got), and what each host has after.
Needs root (users, daemons, sshds); installs QEMU/libvirt/openssh if missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from typing import Any, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

WIDTH = 100
VM = 42
THROTTLE = "--bandwidth 8"


def chapter(title: str, text: str = "") -> None:
    print("\n" + "=" * WIDTH + f"\n{title}")
    if text:
        print("  " + text)
    print("-" * WIDTH)


def host_view(lvbed: Any, bed: Any, host: str) -> List[str]:
    lines = []
    conn = bed.connect(host)
    try:
        for dom in conn.listAllDomains(0):
            state, reason = dom.state()
            names = {1: "running", 3: "paused", 5: "shut off"}
            snaps = sorted(s.getName() for s in dom.listAllSnapshots(0))
            current = dom.snapshotCurrent().getName() if dom.hasCurrentSnapshot() else None
            lines.append(f"{dom.name()}  uuid {dom.UUIDString()}  "
                         f"{names.get(state, f'state {state}')} (reason {reason})  "
                         f"snapshots {snaps or 'none'}" + (f", current {current}" if current
                                                           else ""))
    finally:
        conn.close()
    return lines or ["(no domain)"]


def show_hosts(lvbed: Any, bed: Any) -> None:
    for host in ("host01", "host02"):
        if not bed.running(host):
            print(f"  [{host}] libvirtd is down")
            continue
        print(f"  [{host}]")
        for line in host_view(lvbed, bed, host):
            print(f"     {line}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", choices=("qemu", "cancel", "daemon"), default="qemu")
    parser.add_argument("--keep", action="store_true", help="keep the hosts' directories")
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("this demo needs root: it creates users and starts libvirtds and sshds")
        return 2
    import libvirt_bed as lvbed
    from testbed import Testbed

    from tests.e2e.kit import World

    sshd = Testbed(names=("host01", "host02"), keep=opts.keep)
    sshd.start()
    bed = lvbed.LibvirtBed(names=("host01", "host02"), extra_group_members=(sshd.user,))
    bed.start()
    lv = lvbed.libvirt_module()
    lv.registerErrorHandler(lambda *_a: None, None)
    try:
        world = World(sshd, name="libvirt-demo")
        subprocess.run(["sh", os.path.join(HERE, "install.sh"), world.remotes], check=True,
                       capture_output=True, timeout=30)
        for top, dirs, _files in os.walk(os.path.join(world.remotes, "vmm_exec")):
            for entry in dirs:
                os.chmod(os.path.join(top, entry), 0o755)
        world.reset_hosts(with_remotes=("host01", "host02"))
        state_dir = os.path.join(world.root, "libvirt-state")
        os.makedirs(state_dir)
        os.chmod(state_dir, 0o1777)
        for host in ("host01", "host02"):
            remote = world.host_path(host, "var", "tmp", "one")
            os.makedirs(os.path.join(remote, "etc", "vmm", "kvm"), exist_ok=True)
            with open(os.path.join(remote, "etc", "vmm", "kvm", "kvmrc"), "w") as handle:
                handle.write(f"export LIBVIRT_URI='{bed.uri(host)}'\n"
                             f"export MIGRATE_OPTIONS='{THROTTLE}'\n")
            with open(os.path.join(remote, "vmm_exec", "libvirt", "libvirtrc"), "w") as handle:
                handle.write(f"VMM_EXEC_DEST_URI='{bed.uri_template}'\n"
                             f"VMM_EXEC_STATE_DIR='{state_dir}'\nVMM_EXEC_PROGRESS_INTERVAL=1\n")
            for top, dirs, files in os.walk(remote):
                for entry in dirs + files:
                    shutil.chown(os.path.join(top, entry), sshd.user)
        name = f"one-{VM}"
        uuid = bed.define_guest("host01", name, random_ram_mib=48)
        dom = bed.domain("host01", uuid)
        dom.undefine()  # transient, like OpenNebula's domains
        bed.add_snapshot_metadata("host01", name, "snap-0")
        bed.add_snapshot_metadata("host01", name, "snap-1")

        chapter("Before", "two libvirt hosts (session libvirtds) reached over real sshds; "
                          f"MIGRATE_OPTIONS='{THROTTLE}' (MiB/s) so the fault hits mid-transfer")
        show_hosts(lvbed, bed)
        xml = world.migrate_xml(VM, "host01", "host02").replace(
            "<SHARED><![CDATA[NO]]></SHARED>", "<SHARED><![CDATA[YES]]></SHARED>")
        with world.start_driver("-t 15 -r 0 kvm") as oned:
            oned.send_action("MIGRATE", VM, xml)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                stats = dom.jobStats()
                if stats.get("type") == lv.VIR_DOMAIN_JOB_UNBOUNDED and \
                        stats.get("memory_processed", 0) >= 12 << 20:
                    break
                time.sleep(0.1)
            done = stats.get("memory_processed", 0) >> 20
            chapter("What failed")
            if opts.fault == "qemu":
                pids = bed.qemu_pids("host02", name)
                for pid in pids:
                    os.kill(pid, 9)
                print(f"  after {done} MiB: killed host02's incoming QEMU (pid "
                      f"{', '.join(map(str, sorted(pids)))})")
            elif opts.fault == "cancel":
                oned.cancel(VM)
                print(f"  after {done} MiB: oned cancelled the action (DRIVER_CANCEL {VM})")
            else:
                bed.kill_daemon("host02")
                print(f"  after {done} MiB: host02's libvirtd was killed")
            if opts.fault == "cancel":
                time.sleep(8)  # the background recovery on host01
            else:
                oned.wait_answer(VM, timeout=120, action="MIGRATE")
            chapter("What oned got", "the LOG lines of VM 42 and the answer (the framework's "
                                     "INFO lines and its summary)")
            for line in oned.lines:
                if f" {VM} " in line:
                    print("  " + line[:400])
            oned.finalize(timeout=60)
        if opts.fault == "daemon":
            bed.start_daemon("host02")
            chapter("Recover", "host02's libvirtd is back; the operator (or a fail hook) "
                               "runs recover on host01")
            out = world.ssh("host01", "var/tmp/one/vmm_exec/libvirt/recover --hypervisor kvm "
                                      f"{name} host01 host02", timeout=120)
            print("  " + (out.stderr or out.stdout).strip().replace("\n", "\n  "))
        time.sleep(2)
        chapter("After")
        show_hosts(lvbed, bed)
    finally:
        bed.stop()
        sshd.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
