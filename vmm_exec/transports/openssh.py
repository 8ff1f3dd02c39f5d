"""The default transport: the OpenSSH ``ssh``/``scp`` binaries.

Using the binaries means oneadmin's ``~/.ssh/config``, ControlMaster and agent
apply exactly as with the Ruby driver. The client is exec'd with an argv (no
front-end shell), except for ``scp`` whose glob the Ruby driver let ``/bin/sh``
expand.
"""

from __future__ import annotations

import re
from typing import List, Optional

from vmm_exec.quoting import bare
from vmm_exec.transports.base import Execution, Tracker
from vmm_exec.transports.local import capture

FORWARD_AGENT_OPTIONS = ["-o", "ForwardAgent=yes", "-o", "ControlMaster=no", "-o",
                         "ControlPath=none"]


def ssh_argv(host: str, command: Optional[str] = None, *, no_stdin: bool = False,
             forward: bool = False) -> List[str]:
    """The OpenSSH client call: ``ssh [-n] [forwarding options] HOST [COMMAND]``."""
    argv = ["ssh"]
    if no_stdin:
        argv.append("-n")
    if forward:
        argv.extend(FORWARD_AGENT_OPTIONS)
    argv.append(host)
    if command is not None:
        argv.append(command)
    return argv


PGID_MARKER = "VMMEXEC_PGID"
_PGID_LINE = re.compile(PGID_MARKER + r" ([0-9]*)\n")


class OpenSSHTransport:
    """``kill_remote``: one-shot commands announce their remote process group
    (a marker line on stderr, removed again) so that a timeout or a cancel can
    kill them on the host; off in strict mode, where the command text must
    stay the Ruby driver's."""

    name = "openssh"

    def __init__(self, kill_remote: bool = True) -> None:
        self.kill_remote_commands = kill_remote

    def open_stream(self, tracker: Tracker, host: str, shell: str, forward: bool) -> List[str]:
        return ssh_argv(host, f"{shell} -s", forward=forward)

    def run(self, tracker: Tracker, host: str, command: str, stdin: Optional[str],
            timeout: Optional[float]) -> Execution:
        if not self.kill_remote_commands:
            result = capture(tracker, ssh_argv(host, command, no_stdin=stdin is None), stdin,
                             timeout)
            result.command = command
            return result
        pgid = "$(cut -d' ' -f5 /proc/$$/stat 2>/dev/null)"
        announced = f"printf '{PGID_MARKER} %s\\n' \"{pgid}\" >&2; {command}"
        killed: List[str] = []

        def abort(stderr: str) -> None:
            m = _PGID_LINE.search(stderr)
            if m and m.group(1) and not killed:
                killed.append(m.group(1))
                kill_remote_group(self, host, int(m.group(1)))

        result = capture(tracker, ssh_argv(host, announced, no_stdin=stdin is None), stdin,
                         timeout, on_abort=abort)
        result.stderr = _PGID_LINE.sub("", result.stderr, count=1)
        result.command = command
        return result

    def copy_remotes(self, tracker: Tracker, host: str, local_dir: str, remote_dir: str,
                     timeout: Optional[float]) -> Execution:
        # through /bin/sh, like Ruby, so that the glob expands in the same order
        command = f"scp -rp {bare(local_dir)}/* {bare(host + ':' + remote_dir)}"
        return capture(tracker, command, None, timeout)

    def kill_remote(self, host: str, pgid: int) -> None:
        """TERM, then KILL, a process group on ``host`` over a new connection."""
        kill_remote_group(self, host, pgid)

    def close(self) -> None:
        pass


def remote_kill_command(pgid: int) -> str:
    """TERM then KILL a process group; portable to dash (no ``--`` for its kill)."""
    return (f"kill -TERM -{pgid} 2>/dev/null; sleep 1; "
            f"kill -KILL -{pgid} 2>/dev/null; true")


def kill_remote_group(transport: OpenSSHTransport, host: str, pgid: int) -> None:
    """Best effort, bounded: the action being killed may already be cancelled,
    so this runs under a tracker of its own."""
    try:
        plain = OpenSSHTransport(kill_remote=False)
        plain.run(Tracker(), host, remote_kill_command(pgid), None, 15.0)
    except Exception:  # noqa: BLE001 - killing is best effort
        pass
