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


# Field N of /proc/PID/stat, counted after the last ") " so that a command name
# with blanks or parentheses cannot shift the fields (pgrp is 3rd after it, ppid
# 2nd, starttime 20th), read by a shell function: ``read`` and ``set --`` are
# builtins of every POSIX shell, where ``$(sed | cut)`` cost three processes per
# field (a dozen per stream, six more per second of a running watchdog: most of
# what a host did for a short action). ``__vmm_f PID N`` sets ``__vmm_r`` to the
# field ('' when the process is gone).
STAT_FIELD_FUNCTION = (
    "__vmm_f() { __vmm_r=; read -r __vmm_r 2>/dev/null </proc/$1/stat || return 1; "
    "__vmm_r=${__vmm_r##*) }; __vmm_n=$2; set -- $__vmm_r; "
    "eval \"__vmm_r=\\${$__vmm_n}\"; }; "
)

# Shell text printing "PGID START" of the shell it runs in: the group of $$ and
# its leader's start time ($$ in a command substitution is the outer shell's, in
# bash and in dash).
IDENTIFY_GROUP = (STAT_FIELD_FUNCTION
                  + "__vmm_f $$ 3; g=$__vmm_r; __vmm_f \"$g\" 20; echo \"$g $__vmm_r\"")

# A stream's shell also gets a watchdog. WATCHDOG_START runs in the shell itself
# (not in a framed subshell), so the watchdog is the shell's own background job:
# the shell reaps it, and a disarmed watchdog leaves no orphan or zombie behind.
# It waits for the ssh session process (the parent of the group's leader) or the
# group's leader (the login shell that runs the stream's shell, or that shell
# itself) to end, both identified by their start times. If either ends while the
# watchdog is armed (the connection was cut: a timeout, a cancel, a lost
# front-end; or the session's process got a signal: sshd's answer to the SSH
# "signal" request, or a kill of the stream's group that missed the orphans,
# while a pooled paramiko connection keeps the session process alive), it TERMs
# the shell's process group, then KILLs it: no script outlives its connection
# or its shell, without another connection to the host and without any trace
# in what the scripts see. It ignores TERM (it is in the group);
# WATCHDOG_DISARM stops it before the shell exits on purpose. The variable names
# are the driver's own.
WATCHDOG_START = (
    STAT_FIELD_FUNCTION
    + "__vmm_f $$ 3; __vmm_g=$__vmm_r; __vmm_f \"$__vmm_g\" 2; __vmm_s=$__vmm_r; "
    "__vmm_f \"$__vmm_s\" 20; __vmm_u=$__vmm_r; __vmm_f \"$__vmm_g\" 20; __vmm_t=$__vmm_r; "
    "__vmm_w=; "
    "if [ -n \"$__vmm_g\" ] && [ -n \"$__vmm_u\" ] && [ -n \"$__vmm_t\" ] "
    "&& [ \"$__vmm_s\" != 1 ]; then "
    "( trap '' TERM; exec </dev/null >/dev/null 2>&1; "
    "while __vmm_f \"$__vmm_s\" 20 && [ \"$__vmm_r\" = \"$__vmm_u\" ] "
    "&& __vmm_f \"$__vmm_g\" 20 && [ \"$__vmm_r\" = \"$__vmm_t\" ]; do sleep 1; done; "
    "kill -TERM -$__vmm_g; sleep 2; kill -KILL -$__vmm_g ) & __vmm_w=$!; fi\n"
)
# framed after WATCHDOG_START: "PGID START" of the shell's group (read by it)
WATCHDOG_REPORT = "echo \"$__vmm_g $__vmm_t\""
WATCHDOG_DISARM = "kill -KILL $__vmm_w 2>/dev/null; wait $__vmm_w 2>/dev/null"

_GROUP = re.compile(r"([0-9]+) ([0-9]+)")


def parse_group(text: str) -> Optional[RemoteGroup]:
    """The output of :data:`IDENTIFY_GROUP` or :data:`WATCHDOG_REPORT`, or None."""
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
    return (f"{STAT_FIELD_FUNCTION}__vmm_f {pgid} 20; [ \"$__vmm_r\" = '{start}' ] || exit 0; "
            f"kill -TERM -{pgid} 2>/dev/null || exit 0; i=0; "
            f"while [ $i -lt 10 ]; do sleep 0.1; kill -0 -{pgid} 2>/dev/null || exit 0; "
            f"i=$((i+1)); done; kill -KILL -{pgid} 2>/dev/null; exit 0")
