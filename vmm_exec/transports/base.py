"""What every transport shares: results, logging hooks, remote process groups."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

# A transport reports to oned through this: (message, all_lines) → LOG lines,
# i.e. DriverExecHelper#log bound to the action's id.
Logger = Callable[[str, bool], None]


@dataclass
class Execution:
    """Outcome of one command, the fields of Ruby's ``GenericCommand``.

    ``code`` is the exit status (255 for a signal or an internal error, -1 when
    a stream died before the command ran, as in Ruby).
    """

    command: str
    code: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False


def decode(data: bytes) -> str:
    """Script output as text; undecodable bytes survive the round trip to stdout."""
    return data.decode("utf-8", "surrogateescape")


def encode(text: Optional[str]) -> bytes:
    return (text or "").encode("utf-8", "surrogateescape")


# -- remote process groups ----------------------------------------------------
@dataclass(frozen=True)
class RemoteGroup:
    """A process group on a host, identified for killing it later.

    A PID alone is not an identity: once the group is gone, the number may
    be handed to another process. ``start`` is the leader's start time (field
    22 of ``/proc/PID/stat``); the kill checks it first, so a reused number is
    never signalled.
    """

    pgid: int
    start: str


# Shell text printing "PGID START" of the shell it runs in: the group of $$
# and its leader's start time. The stat line is cut after the last ") " so
# that a command name with blanks or parentheses cannot shift the fields
# (pgrp is the 3rd field after it, starttime the 20th). $$ in the command
# substitution is the outer shell's, in bash and in dash.
IDENTIFY_GROUP = (
    "g=$(sed 's/.*) //' /proc/$$/stat 2>/dev/null | cut -d' ' -f3); "
    "echo \"$g $(sed 's/.*) //' /proc/$g/stat 2>/dev/null | cut -d' ' -f20)\""
)

_GROUP = re.compile(r"([0-9]+) ([0-9]+)")


def parse_group(text: str) -> Optional[RemoteGroup]:
    """The output of :data:`IDENTIFY_GROUP`, or None if it is not one."""
    m = _GROUP.fullmatch(text.strip())
    if m is None or int(m.group(1)) <= 1:
        return None
    return RemoteGroup(int(m.group(1)), m.group(2))


def group_kill_command(group: RemoteGroup) -> str:
    """TERM a remote process group if its leader is the one we saw; KILL what is left.

    Nothing is sent when the leader is gone or another process has its PID.
    After TERM the group is watched every 0.1 s for a second; members still
    there get KILL (a group keeps its id while any member lives, so the id
    seen 0.1 s earlier is still ours). Portable to dash (``kill -SIG -PGID``:
    its kill has no ``--``).
    """
    pgid = group.pgid
    start = re.sub(r"[^0-9]", "", group.start)
    return (f"[ \"$(sed 's/.*) //' /proc/{pgid}/stat 2>/dev/null | cut -d' ' -f20)\""
            f" = '{start}' ] || exit 0; kill -TERM -{pgid} 2>/dev/null || exit 0; i=0; "
            f"while [ $i -lt 10 ]; do sleep 0.1; kill -0 -{pgid} 2>/dev/null || exit 0; "
            f"i=$((i+1)); done; kill -KILL -{pgid} 2>/dev/null; exit 0")
