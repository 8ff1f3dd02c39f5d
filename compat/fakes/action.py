"""Behaviour of every fake action script (vmm, vnm, tm, datastore).

Started as ``action SCRIPT_PATH ARGS...`` by the two-line wrappers of the
fake remotes tree.  Journals the call, then behaves as the world's faults
say; by default it succeeds with output shaped like the real script's.
"""

from __future__ import annotations

import os
import sys
import time
from typing import List, Optional

from compat.fakes import common

POLL_LINE = (
    "STATE=a CPU=1.5 MEMORY=524288 NETRX=1024 NETTX=2048 "
    "DISKRDBYTES=4096 DISKWRBYTES=8192 DISKRDIOPS=10 DISKWRIOPS=20"
)


def script_name(script_path: str) -> str:
    """``.../vmm/kvm/deploy`` -> ``vmm/kvm/deploy`` (relative to remotes)."""
    return "/".join(script_path.split("/")[-3:])


def default_stdout(script: str, argv: List[str], vm: Optional[str]) -> str:
    """What the real script prints on success (only where the driver uses it)."""
    category = script.split("/", 1)[0]
    name = script.rsplit("/", 1)[-1]
    vm_text = vm if vm is not None else "X"
    if category == "vmm":
        if name == "deploy":
            return f"one-{vm_text}\n"
        if name in ("poll", "poll_local"):
            return POLL_LINE + "\n"
        if name == "snapshot_create":
            return "snap-%s\n" % (argv[1] if len(argv) > 1 else "X")
    if category == "datastore" and name == "backup":
        return f"backup-{vm_text} 1024\n"
    return ""


def reads_stream() -> bool:
    """True when our stdin is the persistent ssh stream itself.

    Reading it would eat the driver's next commands, so such a call's stdin
    is journaled as ``null`` and left alone.
    """
    stream = os.environ.get("COMPAT_STREAM_STDIN")
    if not stream:
        return False
    try:
        return os.readlink("/proc/self/fd/0") == stream
    except OSError:
        return False


def _with_newline(text: str, nonl: bool) -> str:
    if text and not nonl and not text.endswith("\n"):
        return text + "\n"
    return text


def main(argv: List[str]) -> int:
    """Run one fake script call; return its exit status."""
    if not argv:
        sys.stderr.write("usage: action SCRIPT_PATH [ARGS...]\n")
        return 2
    script = script_name(argv[0])
    args = argv[1:]
    world = common.world_from_env()
    host = os.environ.get("COMPAT_HOST") or "frontend"
    stdin: Optional[str] = None
    if not reads_stream():
        if sys.stdin is None:
            sys.stderr.write("compat action: stdin is closed\n")
            return 1
        stdin = sys.stdin.buffer.read().decode("utf-8", "backslashreplace")
    vm = common.derive_vm(args, stdin, common.vm_candidates_from_env())
    common.journal_append(world, {"host": host, "script": script, "argv": args, "stdin": stdin})

    rule = common.select_rule(common.load_faults(world), host, script, vm, world)
    if rule is None:
        sys.stdout.write(default_stdout(script, args, vm))
        sys.stdout.flush()
        return 0
    params = rule.params
    if "sleep" in params:
        time.sleep(float(params["sleep"]))
    nonl = params.get("nonl") == "1"
    out = params.get("stdout")
    if out is None:
        # string comparison on purpose: "exit=00" exits 0 without output
        out = default_stdout(script, args, vm) if params.get("exit", "0") == "0" else ""
    else:
        out = _with_newline(out, nonl)
    sys.stdout.write(out)
    sys.stdout.flush()
    sys.stderr.write(_with_newline(params.get("stderr", ""), nonl))
    sys.stderr.flush()
    return int(params.get("exit", "0"))
