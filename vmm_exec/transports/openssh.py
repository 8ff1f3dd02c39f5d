"""The default transport: the OpenSSH ``ssh``/``scp`` binaries.

Using the binaries means oneadmin's ``~/.ssh/config``, ControlMaster and agent
apply exactly as with the Ruby driver. The client is exec'd with an argv (no
front-end shell), except for ``scp`` whose glob the Ruby driver let ``/bin/sh``
expand.
"""

from __future__ import annotations

import re
from typing import AbstractSet, List, Optional

from vmm_exec.cancel import CancelScope
from vmm_exec.quoting import bare
from vmm_exec.transports.base import (
    IDENTIFY_GROUP,
    Execution,
    RemoteGroup,
    group_kill_command,
    parse_group,
)
from vmm_exec.transports.channel import ProcessChannel
from vmm_exec.transports.local import capture

FORWARD_AGENT_OPTIONS = ["-o", "ForwardAgent=yes", "-o", "ControlMaster=no", "-o",
                         "ControlPath=none"]
# a remote kill is best effort and must not outlive a cancel by much
KILL_TIMEOUT = 15.0


def ssh_argv(host: str, command: Optional[str] = None, *, no_stdin: bool = False,
             forward: bool = False) -> List[str]:
    """The OpenSSH client call: ``ssh [-n] [forwarding options] HOST [COMMAND]``.

    Refuses a host that ssh would read as an option (callers check first).
    """
    if host.startswith("-"):
        raise ValueError(f"invalid host name {host!r}")
    argv = ["ssh"]
    if no_stdin:
        argv.append("-n")
    if forward:
        argv.extend(FORWARD_AGENT_OPTIONS)
    argv.append(host)
    if command is not None:
        argv.append(command)
    return argv


GROUP_MARKER = "VMMEXEC_PGID"
_GROUP_LINE = re.compile(GROUP_MARKER + r" ([0-9]* [0-9]*)\n")


def announced(command: str) -> str:
    """``command`` preceded by a marker line on stderr naming its remote process group."""
    return f"echo \"{GROUP_MARKER} $({IDENTIFY_GROUP})\" >&2; {command}"


class OpenSSHTransport:
    """``kill_remote``: one-shot commands announce their remote process group
    (a marker line on stderr, removed again) so that a timeout or a cancel can
    kill them on the host; off in strict mode, where the command text must
    stay the Ruby driver's."""

    name = "openssh"
    silent_remote_kill = False

    def __init__(self, kill_remote: bool = True) -> None:
        self.kill_remote_commands = kill_remote

    def open_stream(self, scope: CancelScope, host: str, shell: str,
                    forward: bool, timeout: Optional[float] = None) -> ProcessChannel:
        # ``timeout`` is not needed: the ssh process is bounded by the stream itself
        return ProcessChannel(scope, ssh_argv(host, f"{shell} -s", forward=forward))

    def run(self, scope: CancelScope, host: str, command: str, stdin: Optional[str],
            timeout: Optional[float]) -> Execution:
        if not self.kill_remote_commands:
            result = capture(scope, ssh_argv(host, command, no_stdin=stdin is None), stdin,
                             timeout)
            result.command = command
            return result
        killed: List[RemoteGroup] = []

        def abort(stderr: str) -> None:
            m = _GROUP_LINE.search(stderr)
            group = parse_group(m.group(1)) if m else None
            if group is not None and not killed:
                killed.append(group)
                self.kill_remote(host, group)

        result = capture(scope, ssh_argv(host, announced(command), no_stdin=stdin is None),
                         stdin, timeout, on_abort=abort)
        result.stderr = _GROUP_LINE.sub("", result.stderr, count=1)
        result.command = command
        return result

    def copy_remotes(self, scope: CancelScope, host: str, local_dir: str, remote_dir: str,
                     timeout: Optional[float]) -> Execution:
        # through /bin/sh, like Ruby, so that the glob expands in the same order
        if host.startswith("-"):
            raise ValueError(f"invalid host name {host!r}")
        command = f"scp -rp {bare(local_dir)}/* {bare(host + ':' + remote_dir)}"
        return capture(scope, command, None, timeout)

    def kill_remote(self, host: str, group: RemoteGroup) -> None:
        """TERM, then KILL, a process group on ``host`` over a new connection.

        Runs in a shielded scope: the action whose command is being killed is
        usually cancelled already. Bounded by :data:`KILL_TIMEOUT`.
        """
        try:
            capture(CancelScope.shielded("remote kill"),
                    ssh_argv(host, group_kill_command(group), no_stdin=True), None,
                    KILL_TIMEOUT)
        except Exception:  # noqa: BLE001 - killing is best effort
            pass

    def warm_hosts(self) -> AbstractSet[str]:
        # a ControlMaster, if the user's ssh config makes one, is ssh's own business
        return frozenset()

    def close(self) -> None:
        pass
