"""Fake scp: local -> fake host copies into ``<world>/hosts/HOST``.

This is what the driver's "update remotes" path (``mkdir`` + ``scp -rp``)
uses when a host starts without remote scripts (``HOST noremotes``).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import List, Tuple

from compat.fakes import common
from compat.fakes.ssh import NO_ROUTE

#: Options that take an argument (scp's getopt set).
ARG_OPTIONS = frozenset("cFiJloPSXD")


def split_operands(args: List[str]) -> List[str]:
    """The source/target operands, options and their arguments dropped."""
    operands: List[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and len(arg) > 1:
            if len(arg) == 2 and arg[-1] in ARG_OPTIONS:
                i += 1
        else:
            operands.append(arg)
        i += 1
    return operands


def split_destination(dest: str) -> Tuple[str, str]:
    """``[user@]HOST:PATH`` -> (HOST, PATH)."""
    host, path = dest.split(":", 1)
    return (host.split("@", 1)[1] if "@" in host else host), path


def copy_into(source: str, target: str) -> None:
    """Copy like ``scp -rp``: into ``target`` when it is a directory."""
    dest = target
    if os.path.isdir(target):
        dest = os.path.join(target, os.path.basename(source.rstrip("/")))
    if os.path.isdir(source):
        shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        shutil.copy2(source, dest)


def main(argv: List[str]) -> int:
    """Run one fake scp invocation; return its exit status."""
    world = common.world_from_env()
    common.journal_append(world, {"host": "frontend", "scp": list(argv)})
    operands = split_operands(argv)
    if len(operands) < 2:
        sys.stderr.write("usage: scp [-346ABCOpqRrsTv] source ... target\n")
        return 1
    faults = common.load_faults(world)
    if ":" not in operands[-1]:
        sys.stderr.write("compat scp: only local -> remote copies supported\n")
        return 1
    host, path = split_destination(operands[-1])
    if host in faults.unreachable:
        sys.stderr.write(NO_ROUTE % host + "lost connection\n")
        return 255
    target = path if os.path.isabs(path) else os.path.join(world, "hosts", host, path)
    rc = 0
    for source in operands[:-1]:
        if not os.path.exists(source):
            sys.stderr.write(f"scp: {source}: No such file or directory\n")
            rc = 1
            continue
        copy_into(source, target)
    return rc
