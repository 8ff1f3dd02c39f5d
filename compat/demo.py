"""A guided tour of vmm_exec talking to a simulated oned and simulated hosts.

    python compat/demo.py [--strict] [--keep] [--real-hosts]

Builds a compat world (fake host01/host02, fake action scripts), starts the
driver through ``vmm_exec.testing.simoned.SimulatedOned`` exactly as oned starts it,
and plays a short story: INIT, DEPLOY of VM 42 on host01, POLL, a live
MIGRATE to host02, a MIGRATE back that fails in the vmm migrate script (a
fault rule) and is rolled back, SHUTDOWN, FINALIZE.  It prints the
conversation, then the script calls each host received.  Payloads are the
corpus's own XML (compat/scenarios), with ``{WORLD}`` filled in.

With ``--real-hosts`` the same story runs against real OpenSSH hosts: a
``Testbed`` (``tests/testbed.py``) of two sshds on loopback addresses (root and
openssh-server needed), the fake remotes of ``tests/e2e/kit.py`` (journaling
python scripts), host01 starting with the remote scripts and host02 without
(the driver ships them with scp). Where the test bed cannot start, the demo
says why and falls back to the simulated hosts.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a file: make ``compat`` importable
    sys.path.insert(0, _ROOT)
# the real-host test bed lives with the tests (it is not part of the installed package)
sys.path.append(os.path.join(_ROOT, "tests"))

import argparse  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import textwrap  # noqa: E402
from typing import Any, Dict, List, Optional, Sequence  # noqa: E402

from compat import procs  # noqa: E402
from compat.fakes import common  # noqa: E402
from compat.normalize import read_journal  # noqa: E402
from compat.world import (  # noqa: E402
    build_world,
    copy_files_tree,
    driver_env,
    new_world_dir,
    subst,
)

SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios")
VM = "42"
ARGS = "-t 15 -r 0 kvm"
WIDTH = 100
#: The way back from host02 fails in the hypervisor's migrate script.
FAULTS = 'host02 vmm/kvm/migrate exit=1 stderr="ERROR: migration to host01 refused: no CPU"\n'


def payload(scenario: str, name: str, world: str, swap_hosts: bool = False) -> str:
    """A corpus payload with ``{WORLD}`` set (optionally host01 <-> host02)."""
    with open(os.path.join(SCENARIOS, scenario, name), encoding="utf-8") as f:
        xml = subst(f.read(), world)
    if swap_hosts:
        xml = xml.replace("host01", "\0").replace("host02", "host01").replace("\0", "host02")
    return xml


def stdout_lines(oned: Any) -> List[str]:
    """Every line the driver wrote so far (``lines`` attribute or method)."""
    lines = oned.lines
    return list(lines() if callable(lines) else lines)


def short(text: str, limit: int = WIDTH) -> str:
    return text if len(text) <= limit else text[:limit - 12] + f"...[{len(text)} chars]"


def chapter(title: str, story: str) -> None:
    print()
    print("=" * WIDTH)
    print(title)
    print(textwrap.fill(story, WIDTH, initial_indent="  ", subsequent_indent="  "))
    print("-" * WIDTH)


def show_received(oned: Any, since: int, world: str) -> int:
    """Print the driver's lines from index ``since``; return the new index."""
    lines = stdout_lines(oned)
    for line in lines[since:]:
        print("  oned <<  " + short(line.replace(world, "{WORLD}")))
    return len(lines)


def act(oned: Any, action: str, xml: str, world: str, seen: int) -> int:
    """Send one action for the VM, wait for its answer, print the exchange."""
    print(f"  oned >>  {action}  {VM} <base64 of {len(xml)} bytes of XML>")
    oned.send_action(action, VM, xml)
    answer = oned.wait_answer(VM, timeout=60.0, action=action)
    seen = show_received(oned, seen, world)
    verdict = "succeeded" if answer.result == "SUCCESS" else "FAILED"
    print(f"  => {action} {verdict}: {short(answer.info or '-', WIDTH - 20)}")
    return seen


def describe_stdin(value: Any, world: str) -> str:
    """What a script read: the stream, nothing, or which XML (base64 decoded)."""
    if value is None:
        return "nothing (it shares the ssh stream)"
    if value == "":
        return "nothing"
    decoded = common.decode_b64_text(value)
    text = decoded.text if decoded else value
    match = re.match(r"\s*<([A-Za-z_]+)", text)
    what = f"<{match.group(1)}> XML" if match else repr(short(text, 40))
    return f"{what}, {len(text)} chars" + (" (base64)" if decoded else "")


def print_journal(world: str) -> None:
    """The script calls each host received, in call order, plus connections."""
    by_host: Dict[str, List[str]] = {}
    connections: List[str] = []
    for entry in read_journal(world):
        if "script" in entry:
            args = " ".join(shlex.quote(a.replace(world, "{WORLD}")) for a in entry["argv"])
            by_host.setdefault(entry["host"], []).append(
                f"{entry['script']} {args}".rstrip() + "\n          stdin: "
                + describe_stdin(entry["stdin"], world))
        elif "ssh" in entry:
            connections.append(" ".join(["ssh", *entry["opts"], entry["ssh"], entry["cmd"]]))
        else:
            connections.append(" ".join(["scp", *entry.get("scp", [])]))
    chapter("Journal", "What the simulated machines ran, host by host, in call order "
                       "('frontend' is oned's machine: tm scripts and local actions).")
    for host in sorted(by_host):
        print(f"  [{host}]")
        for n, call in enumerate(by_host[host], 1):
            print(f"    {n:2}. {call}")
    print("  [connections opened by the driver]")
    for line in connections:
        print("    " + short(line.replace(world, "{WORLD}"), WIDTH - 4))


def fake_payloads(world: str) -> Dict[str, str]:
    """The story's requests for the simulated hosts (corpus XML, ``{WORLD}`` set)."""
    return {
        "DEPLOY": payload("deploy_basic", "deploy.xml", world),
        "POLL": payload("poll_basic", "msg.xml", world),
        "MIGRATE": payload("migrate_basic", "msg.xml", world),
        "MIGRATE_BACK": payload("migrate_fail_vmm", "msg.xml", world, True),
        "SHUTDOWN": payload("shutdown_basic", "msg.xml", world).replace("host01", "host02"),
    }


def run_story(oned: Any, world: str, payloads: Optional[Dict[str, str]] = None) -> int:
    """The conversation; returns the driver's exit status."""
    xml = payloads if payloads is not None else fake_payloads(world)
    chapter("INIT", "oned starts the driver with its ARGUMENTS as one argv element and "
                    "fd 2 closed, then sends INIT.")
    print("  oned >>  INIT")
    seen = show_received(oned, 0, world)

    chapter("DEPLOY", "VM 42 boots on host01: context ISO (tm, on the front-end), "
                      "network pre, deployment file copied over ssh, vmm deploy, network post.")
    seen = act(oned, "DEPLOY", xml["DEPLOY"], world, seen)

    chapter("POLL", "oned asks for monitoring data; the poll script answers.")
    seen = act(oned, "POLL", xml["POLL"], world, seen)

    chapter("MIGRATE host01 -> host02", "Live migration: tm premigrate, network pre on "
            "host02, vmm migrate on host01, network clean on host01, post on host02, "
            "tm postmigrate.")
    seen = act(oned, "MIGRATE", xml["MIGRATE"], world, seen)

    chapter("MIGRATE host02 -> host01 (fails)", "The migrate script on host02 exits 1 "
            "(fault rule: " + FAULTS.strip() + "). Watch the rollback: tm failmigrate "
            "(and, in default mode, the network set up on host01 is cleaned).")
    seen = act(oned, "MIGRATE", xml["MIGRATE_BACK"], world, seen)

    chapter("SHUTDOWN", "The VM is still on host02: shut it down and clean its network.")
    seen = act(oned, "SHUTDOWN", xml["SHUTDOWN"], world, seen)

    chapter("FINALIZE", "oned stops the driver; stdin stays open until it exits.")
    print("  oned >>  FINALIZE")
    code = oned.finalize(timeout=30.0)
    show_received(oned, seen, world)
    print(f"  => driver exited with status {code}")
    return code


# ---------------------------------------------------------------------------
# --real-hosts: the same story on real OpenSSH hosts (tests/testbed.py)
# ---------------------------------------------------------------------------
def host_files(bed: Any, world: Any) -> None:
    """What the story left in each host's directory (scripts and bookkeeping aside)."""
    for name, info in bed.hosts.items():
        found = []
        for top, dirs, files in os.walk(info.home):
            rel_top = os.path.relpath(top, info.home)
            dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel_top, d))
                       not in (".sessions", "var/tmp/one")]
            found += [os.path.normpath(os.path.join(rel_top, f)) for f in files]
        shipped = os.path.isdir(info.remotes_path)
        print(f"  [{name}] {info.address}:{info.port}, dir {info.home}")
        print(f"    remote scripts in var/tmp/one: {'yes' if shipped else 'no'}")
        for rel in sorted(found):
            print(f"    {rel}")


def run_real_hosts(opts: argparse.Namespace) -> Optional[int]:
    """The story on a test bed of two real sshds; None if it cannot start (fall back)."""
    try:
        from testbed import Testbed, Unavailable

        from tests.e2e.kit import World, format_journal
    except ImportError as exc:
        print(f"real hosts unavailable: {exc}")
        return None
    bed = Testbed(names=("host01", "host02"), keep=opts.keep)
    try:
        bed.start()
    except Unavailable as exc:
        print(f"real hosts unavailable: {exc}")
        return None
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"the real-hosts test bed failed to start: {exc}")
        return None
    world: Any = None
    try:
        world = World(bed, name="demo")
        # host02 has no scripts yet: the driver ships them (scp) when it first needs them
        world.reset_hosts(with_remotes=("host01",))
        world.set_faults(FAULTS)
        args = ("--compat strict " if opts.strict else "") + ARGS
        print(f"test bed: {bed.root}  (two sshds, user {bed.user})")
        for name, info in bed.hosts.items():
            scripts = "with" if name == "host01" else "WITHOUT"
            print(f"  {name}: {info.address}:{info.port}, {scripts} remote scripts")
        print(f"world: {world.root}\ndriver: python -m vmm_exec {args}")
        payloads = {
            "DEPLOY": world.deploy_xml(VM, "host01"),
            "POLL": world.poll_xml(VM, "host01"),
            "MIGRATE": world.migrate_xml(VM, "host01", "host02"),
            "MIGRATE_BACK": world.migrate_xml(VM, "host02", "host01"),
            "SHUTDOWN": world.shutdown_xml(VM, "host02"),
        }
        with world.start_driver(args) as oned:
            code = run_story(oned, world.root, payloads)
        chapter("Journal", "What the real hosts ran, host by host, in call order "
                           "('frontend' is oned's machine: tm scripts): when (after the "
                           "first call), script, VM, argv, what it read, how it ended.")
        print(format_journal(world.journal(), world.root, WIDTH))
        chapter("Hosts", "What the story left in each host's own directory "
                         "(REMOTE_DEPLOYMENT_FILE and the VM's files are relative paths).")
        host_files(bed, world)
        return 0 if code == 0 else 1
    except (TimeoutError, RuntimeError, AssertionError) as error:
        print(f"\nthe story stopped: {error}", file=sys.stderr)
        return 1
    finally:
        if world is not None:
            world.stop_drivers()
        bed.stop()
        if opts.keep:
            print(f"\ntest bed kept at {bed.root}")


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n\n")[0])
    parser.add_argument("--strict", action="store_true",
                        help="run the driver with --compat strict (Ruby transcripts)")
    parser.add_argument("--keep", action="store_true", help="keep the world directory")
    parser.add_argument("--real-hosts", action="store_true",
                        help="run the story on real OpenSSH hosts (tests/testbed.py: needs "
                             "root and openssh-server); falls back to the simulated hosts")
    opts = parser.parse_args(list(argv))
    if opts.real_hosts:
        real = run_real_hosts(opts)
        if real is not None:
            return real
        print("falling back to the simulated hosts\n")
    from vmm_exec.testing.simoned import SimulatedOned  # the project's simulated oned

    world = new_world_dir()
    try:
        build_world(world, faults=FAULTS)
        copy_files_tree(os.path.join(SCENARIOS, "deploy_basic", "files"), world)
        env = driver_env(world, {VM})
        args = ("--compat strict " if opts.strict else "") + ARGS
        print(f"world: {world}\ndriver: python -m vmm_exec {args}")
        with SimulatedOned(args, env=env, cwd=world).start() as oned:
            code = run_story(oned, world)
        print_journal(world)
        return 0 if code == 0 else 1
    except (TimeoutError, RuntimeError) as error:
        print(f"\nthe story stopped: {error}", file=sys.stderr)
        return 1
    finally:
        procs.kill_pids(procs.world_procs(world))
        if opts.keep:
            print(f"\nworld kept at {world}")
        else:
            shutil.rmtree(world, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
