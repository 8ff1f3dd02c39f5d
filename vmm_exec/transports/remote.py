"""One-shot remote commands: Ruby's ``SSHCommand`` and ``RemotesCommand``.

The ssh client is exec'd with an argv (no local shell), so values never pass
through a front-end shell; the text logged for oned stays the Ruby driver's.
"""

from __future__ import annotations

import time
from typing import List, Optional

from vmm_exec.quoting import bare
from vmm_exec.transports.base import Execution, Logger, Tracker
from vmm_exec.transports.local import capture, report, run_local

MAGIC_RC = 42
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


def run_ssh(tracker: Tracker, host: str, command: str, log: Logger, stdin: Optional[str] = None,
            timeout: Optional[float] = None, shown: Optional[str] = None) -> Execution:
    """``SSHCommand.run``: ``ssh -n HOST CMD`` without stdin, ``ssh HOST CMD`` with it."""
    result = capture(tracker, ssh_argv(host, command, no_stdin=stdin is None), stdin, timeout)
    return report(result, shown if shown is not None else command, log)


def remote_script_command(command: str) -> str:
    """The ``-x`` guard of ``RemotesCommand``: exit 42 when the script is missing."""
    script = command.split(" ")[0] if command.split(" ") else ""
    return (f'if [ -x "{script}" ]; then {command}; else'
            f'                              exit {MAGIC_RC}; fi')


def run_remotes_command(tracker: Tracker, command: str, host: str, remote_dir: str,
                        local_remotes: str, log: Logger, stdin: Optional[str], retries: int,
                        timeout: Optional[float]) -> Execution:
    """``RemotesCommand.run``: a missing script (exit 42) triggers a remotes update
    and a retry, at most ``retries`` times, one second apart."""
    remote = remote_script_command(command)
    shown = f"'{remote}'"
    result = run_ssh(tracker, host, remote, log, stdin, timeout, shown)
    while result.code != 0 and retries != 0:
        if result.code == MAGIC_RC:
            update_remotes(tracker, host, remote_dir, local_remotes, log)
        time.sleep(1)
        tracker.check()
        result = run_ssh(tracker, host, remote, log, stdin, timeout, shown)
        retries -= 1
    return result


def update_remotes(tracker: Tracker, host: str, remote_dir: str, local_remotes: str,
                   log: Logger) -> None:
    """``RemotesCommand.update_remotes``: ``mkdir -p`` the remote dir and ``scp -rp`` the tree."""
    log("Remote worker node files not found", True)
    log("Updating remotes", True)
    run_ssh(tracker, host, f"mkdir -p {bare(remote_dir)}", log)
    # through /bin/sh, like Ruby, so that the glob expands in the same order
    run_local(tracker, f"scp -rp {bare(local_remotes)}/* {bare(host + ':' + remote_dir)}", log)
