#!/usr/bin/env python3
"""What queued requests cost: the driver's memory with thousands of requests waiting.

    python3 benchmarks/queue_memory.py [--queued 3000 10000] [--hosts 1 100]

oned can send far more requests than the driver runs at once (one action per
host, ``-t`` at a time). The real driver is started through the simulated oned
with ``-t 1 -l poll`` and a POLL script that blocks until the benchmark ends, so
every request but the first stays queued; the requests carry a realistic VM
(about 6 KB of XML, 8 KB of base64). After the driver has read every line
(a DRIVER_CANCEL of an unknown id, answered by the reader thread in order, marks
the end), the driver's peak RSS (VmHWM) is compared with its peak before the
burst. Target: growth ≤ 1.5 × the raw bytes of the queued lines.

Reproducible: no network, no randomness; numbers vary with the Python build.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmm_exec.testing.simoned import SimulatedOned  # noqa: E402

TARGET = 1.5


def make_world(root: Path) -> Dict[str, str]:
    one = root / "one"
    (one / "var").mkdir(parents=True)
    (one / "var" / "config").write_text("SCRIPTS_REMOTE_DIR=/var/tmp/one\n")
    script = one / "var" / "remotes" / "vmm" / "kvm" / "poll"
    script.parent.mkdir(parents=True)
    # blocks (bounded) until the benchmark is done: everything else stays queued
    script.write_text(f"#!/bin/sh\ni=0\nwhile [ ! -e {root}/go ] && [ $i -lt 600 ]; do "
                      "sleep 0.1; i=$((i+1)); done\necho STATE=a\n")
    script.chmod(0o755)
    return dict(os.environ, ONE_LOCATION=str(one), PRIORITY="0")


def vm_xml(vm: int, host: str) -> str:
    """A VM document shaped like oned's (history, disks, NICs, context), ~6 KB."""
    disks = "".join(
        f"<DISK><ALLOW_ORPHANS><![CDATA[FORMAT]]></ALLOW_ORPHANS><CLONE><![CDATA[YES]]></CLONE>"
        f"<DATASTORE><![CDATA[default]]></DATASTORE><DATASTORE_ID>1</DATASTORE_ID>"
        f"<DEV_PREFIX><![CDATA[vd]]></DEV_PREFIX><DISK_ID>{d}</DISK_ID><DISK_TYPE>FILE"
        f"</DISK_TYPE><DRIVER><![CDATA[qcow2]]></DRIVER><FORMAT>qcow2</FORMAT>"
        f"<IMAGE><![CDATA[ubuntu-22.04-{d}]]></IMAGE><IMAGE_ID>{d + 3}</IMAGE_ID>"
        f"<SIZE>10240</SIZE><SOURCE>/var/lib/one//datastores/1/{vm:08x}{d}</SOURCE>"
        f"<TARGET>vd{'abcd'[d]}</TARGET><TM_MAD>qcow2</TM_MAD><TYPE>FILE</TYPE></DISK>"
        for d in range(3))
    nics = "".join(
        f"<NIC><AR_ID>0</AR_ID><BRIDGE>br{n}</BRIDGE><BRIDGE_TYPE>linux</BRIDGE_TYPE>"
        f"<IP>10.0.{n}.{vm % 250}</IP><MAC>02:00:0a:00:{n:02x}:{vm % 250:02x}</MAC>"
        f"<MODEL>virtio</MODEL><NAME>NIC{n}</NAME><NETWORK>net{n}</NETWORK>"
        f"<NETWORK_ID>{n}</NETWORK_ID><NIC_ID>{n}</NIC_ID><SECURITY_GROUPS>0"
        f"</SECURITY_GROUPS><TARGET>one-{vm}-{n}</TARGET><VN_MAD>bridge</VN_MAD></NIC>"
        for n in range(2))
    context = ("<CONTEXT><DISK_ID>3</DISK_ID><ETH0_IP>10.0.0.1</ETH0_IP><NETWORK>YES"
               "</NETWORK><SSH_PUBLIC_KEY><![CDATA[ssh-ed25519 "
               + "A" * 68 + " oneadmin@frontend]]></SSH_PUBLIC_KEY><TARGET>hdd</TARGET>"
               "<START_SCRIPT_BASE64><![CDATA[" + "QmFzZTY0" * 40 + "]]></START_SCRIPT_BASE64>"
               "</CONTEXT>")
    history = (f"<HISTORY_RECORDS><HISTORY><OID>{vm}</OID><SEQ>0</SEQ><HOSTNAME>{host}"
               f"</HOSTNAME><HID>1</HID><CID>0</CID><STIME>1700000000</STIME><ETIME>0</ETIME>"
               f"<VM_MAD><![CDATA[kvm]]></VM_MAD><TM_MAD><![CDATA[qcow2]]></TM_MAD>"
               f"<DS_ID>0</DS_ID><ACTION>0</ACTION></HISTORY></HISTORY_RECORDS>")
    monitoring = "<MONITORING>" + "".join(
        f"<M{i}>{i * 17}</M{i}>" for i in range(60)) + "</MONITORING>"
    user_template = ("<USER_TEMPLATE><DESCRIPTION><![CDATA[" + "web frontend of the shop " * 60
                     + "]]></DESCRIPTION><LOGO><![CDATA[images/logos/ubuntu.png]]></LOGO>"
                     "<SCHED_REQUIREMENTS><![CDATA[ID!=\"3\"]]></SCHED_REQUIREMENTS>"
                     "</USER_TEMPLATE>")
    template = (f"<TEMPLATE><AUTOMATIC_DS_REQUIREMENTS><![CDATA[(\"CLUSTERS/ID\" @> 0)]]>"
                f"</AUTOMATIC_DS_REQUIREMENTS>{context}<CPU><![CDATA[1]]></CPU>{disks}"
                f"<GRAPHICS><LISTEN><![CDATA[0.0.0.0]]></LISTEN><PORT>{5900 + vm}</PORT>"
                f"<TYPE><![CDATA[VNC]]></TYPE></GRAPHICS><MEMORY><![CDATA[2048]]></MEMORY>"
                f"{nics}<OS><ARCH><![CDATA[x86_64]]></ARCH></OS><VMID>{vm}</VMID></TEMPLATE>")
    return (f"<VMM_DRIVER_ACTION_DATA><HOST>{host}</HOST><MIGR_HOST/><DEPLOY_ID>one-{vm}"
            f"</DEPLOY_ID><VM><ID>{vm}</ID><UID>0</UID><GID>0</GID><NAME>vm-{vm}</NAME>"
            f"<STATE>3</STATE><LCM_STATE>3</LCM_STATE>{monitoring}{template}{user_template}"
            f"{history}</VM>"
            f"</VMM_DRIVER_ACTION_DATA>")


def memory_kib(pid: int) -> Dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    return values


def run(queued: int, hosts: int) -> Dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = make_world(Path(tmp))
        with SimulatedOned(["-t", "1", "-l", "poll", "kvm"], env=env, cwd=tmp,
                           write_timeout=60).start() as oned:
            assert oned.pid is not None
            # one request through the whole path first, so that imports and caches
            # are part of the baseline, not of the queue
            oned.send_action("POLL", 999999, vm_xml(999999, "warmup"))
            (Path(tmp) / "go").touch()
            assert oned.wait_answer(999999, timeout=60).success
            (Path(tmp) / "go").unlink()
            time.sleep(0.2)
            before = memory_kib(oned.pid)
            lines: List[str] = []
            raw = 0
            for vm in range(queued):
                payload = base64.b64encode(vm_xml(vm, f"host{vm % hosts:03d}").encode())
                raw += len(payload) + len(f"POLL  {vm} \n")
                lines.append(payload.decode())
            started = time.monotonic()
            for vm, payload in enumerate(lines):
                oned.send_raw(f"POLL  {vm} {payload}")
            del lines
            oned.send_raw("DRIVER_CANCEL 424242")
            oned.wait_lines(lambda seen: "LOG I 424242 Driver command for 424242 cancelled"
                            in seen, 300)
            read_in = time.monotonic() - started
            after = memory_kib(oned.pid)
            (Path(tmp) / "go").touch()
            oned.close_stdin()
            oned.wait_exit(60)
    grown = (after["VmHWM"] - before["VmHWM"]) * 1024
    return {"queued": queued, "hosts": hosts, "raw_mb": raw / 2**20,
            "before_mb": before["VmHWM"] / 1024, "peak_mb": after["VmHWM"] / 1024,
            "rss_mb": after["VmRSS"] / 1024, "grown_mb": grown / 2**20,
            "ratio": grown / raw, "seconds": read_in}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", type=int, nargs="+", default=[3000, 10000])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 100])
    args = parser.parse_args()
    print(f"{'queued':>7} {'hosts':>5} {'raw MB':>7} {'base MB':>8} {'peak MB':>8} "
          f"{'growth':>7} {'× raw':>6} {'read s':>6}  target ≤ {TARGET} × raw")
    worst = 0.0
    for queued in args.queued:
        for hosts in args.hosts:
            r = run(queued, hosts)
            worst = max(worst, r["ratio"])
            print(f"{r['queued']:>7} {r['hosts']:>5} {r['raw_mb']:>7.1f} "
                  f"{r['before_mb']:>8.1f} {r['peak_mb']:>8.1f} {r['grown_mb']:>7.1f} "
                  f"{r['ratio']:>6.2f} {r['seconds']:>6.1f}", flush=True)
    print(f"worst: {worst:.2f} × raw ({'met' if worst <= TARGET else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
