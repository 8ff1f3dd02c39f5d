"""Finding the processes of a world through /proc (Linux only).

Every process started for a world carries ``COMPAT_WORLD=<world>`` in its
environment (the driver, fake ssh/scp, fake scripts, their shells), which is
how the runner knows when the driver's work is done and what to clean up.
"""

from __future__ import annotations

import os
import signal
from typing import Iterable, List, Optional, Set

from compat.fakes.remotes import FAKES_DIR

_SHELLS = ("sh", "bash", "dash")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _is_zombie(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    return stat[stat.rfind(b")") + 2:][:1] == b"Z"


def world_procs(world: str, exclude: Iterable[int] = ()) -> List[int]:
    """Live (non-zombie) pids whose environment has ``COMPAT_WORLD=world``."""
    marker = ("COMPAT_WORLD=" + world).encode()
    skip = set(exclude) | {os.getpid()}
    pids: List[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        pid = int(name)
        try:
            if marker not in _read(f"/proc/{pid}/environ").split(b"\0"):
                continue
            if _is_zombie(pid):
                continue
        except OSError:
            continue
        pids.append(pid)
    return pids


def _is_shell(pid: int) -> bool:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) in _SHELLS
    except OSError:
        return False


def _only_child(pid: int) -> Optional[int]:
    try:
        kids = _read(f"/proc/{pid}/task/{pid}/children").split()
    except OSError:
        return None
    return int(kids[0]) if len(kids) == 1 else None


def driver_pids(root_pid: int) -> Set[int]:
    """The driver: ``root_pid`` plus, while it is a shell wrapper that did not
    exec, its single child chain (a fake is never part of the driver).

    The driver process itself always carries COMPAT_WORLD; it must not count
    as "work in progress".
    """
    pids = {root_pid}
    current = root_pid
    for _ in range(4):
        if not _is_shell(current):
            break
        child = _only_child(current)
        if child is None:
            break
        try:
            cmdline = _read(f"/proc/{child}/cmdline")
        except OSError:
            break
        if FAKES_DIR.encode() in cmdline:
            break
        pids.add(child)
        current = child
    return pids


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    """Signal each pid, ignoring those already gone."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a whole process group, ignoring a group already gone."""
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass
