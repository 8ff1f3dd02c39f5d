"""Processes a driver left behind: found in /proc (this process adopts orphans of the
driver's tree where Linux allows) and killed, so that ``one-vmm-exec simulate`` never
leaves a script running after it returns."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from typing import Dict, List, Sequence, Tuple

from vmm_exec.testing.simoned import proc_stats

# Bounded clean-up of processes the driver left behind (see kill_leftovers).
LEFTOVER_ROUNDS = 20
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Adopt orphans of the driver's tree (Linux), so that scripts the driver started in
    sessions of their own and left behind can still be found and stopped at the end."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def process_table() -> Dict[int, Tuple[int, str, str]]:
    """pid -> (ppid, state, command name) from /proc; empty where there is no /proc."""
    return {pid: (int(fields[1]), fields[0].decode(), comm)
            for pid, comm, fields in proc_stats()}


def descendants(root: int) -> Dict[int, str]:
    """Living (non-zombie) descendants of ``root``: pid -> command name."""
    table = process_table()
    children: Dict[int, List[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: Dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in found or pid == root:
            continue
        _, state, comm = table[pid]
        if state != "Z":
            found[pid] = comm
        todo.extend(children.get(pid, []))
    return found


def reap_children() -> None:
    """Reap adopted orphans that exited (zombies whose parent is this process)."""
    me = os.getpid()
    for pid, (ppid, state, _) in process_table().items():
        if ppid == me and state == "Z":
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def kill_leftovers(known: Dict[int, str], spare: Sequence[int] = ()) -> Dict[int, str]:
    """SIGKILL every process of the driver's tree still alive (bounded); return them.

    ``known`` are the driver's descendants seen while it still ran (found even where
    this process cannot adopt orphans); the rest are found as our own descendants.
    Only called after the driver itself has been reaped, so our remaining descendants
    are processes the driver started, except ``spare`` (those that existed before it).
    """
    killed: Dict[int, str] = {}
    for _ in range(LEFTOVER_ROUNDS):
        alive = descendants(os.getpid())
        table = process_table()
        for pid, comm in known.items():
            if pid in table and table[pid][1] != "Z" and table[pid][2] == comm:
                alive.setdefault(pid, comm)
        for pid in spare:
            alive.pop(pid, None)
        if not alive:
            break
        for pid, comm in alive.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed[pid] = comm
        time.sleep(0.05)
        reap_children()
    reap_children()
    return killed
