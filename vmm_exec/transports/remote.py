"""One-shot remote commands: Ruby's ``SSHCommand`` and ``RemotesCommand``.

Written against :class:`~vmm_exec.transports.api.Transport`; the text logged
for oned stays the Ruby driver's.
"""

from __future__ import annotations

import time
from typing import Optional

from vmm_exec.cancel import CancelScope
from vmm_exec.quoting import bare, check_operand
from vmm_exec.rubyisms import split_words
from vmm_exec.transports.api import Transport
from vmm_exec.transports.base import Execution, Logger
from vmm_exec.transports.local import report
from vmm_exec.transports.openssh import ssh_argv

__all__ = ["run_ssh", "run_remotes_command", "update_remotes", "remote_script_command",
           "ssh_argv", "MAGIC_RC"]

MAGIC_RC = 42


def run_ssh(transport: Transport, scope: CancelScope, host: str, command: str, log: Logger,
            stdin: Optional[str] = None, timeout: Optional[float] = None,
            shown: Optional[str] = None) -> Execution:
    """``SSHCommand.run``: one remote command, its failure logged like ``GenericCommand``."""
    result = transport.run(scope, host, command, stdin, timeout)
    return report(result, shown if shown is not None else command, log)


def remote_script_command(command: str) -> str:
    """The ``-x`` guard of ``RemotesCommand``: exit 42 when the script is missing."""
    words = split_words(command)
    script = words[0] if words else ""
    return (f'if [ -x {check_operand(script)} ]; then {command}; else'
            f'                              exit {MAGIC_RC}; fi')


def run_remotes_command(transport: Transport, scope: CancelScope, command: str, host: str,
                        remote_dir: str, local_remotes: str, log: Logger, stdin: Optional[str],
                        retries: int, timeout: Optional[float],
                        update_timeout: Optional[float] = None) -> Execution:
    """``RemotesCommand.run``: a missing script (exit 42) triggers a remotes update
    (each of its commands bounded by ``update_timeout``) and a retry, at most
    ``retries`` times, one second apart."""
    remote = remote_script_command(command)
    shown = f"'{remote}'"
    result = run_ssh(transport, scope, host, remote, log, stdin, timeout, shown)
    while result.code != 0 and retries != 0:
        if result.code == MAGIC_RC:
            update_remotes(transport, scope, host, remote_dir, local_remotes, log,
                           update_timeout)
        time.sleep(1)
        scope.check()
        result = run_ssh(transport, scope, host, remote, log, stdin, timeout, shown)
        retries -= 1
    return result


def update_remotes(transport: Transport, scope: CancelScope, host: str, remote_dir: str,
                   local_remotes: str, log: Logger, timeout: Optional[float] = None) -> None:
    """``RemotesCommand.update_remotes``: ``mkdir -p`` the remote dir and copy the tree.

    ``timeout`` bounds each of the two commands (default mode passes ``-w``;
    the Ruby driver waits as long as they take).
    """
    log("Remote worker node files not found", True)
    log("Updating remotes", True)
    run_ssh(transport, scope, host, f"mkdir -p {bare(remote_dir)}", log, timeout=timeout)
    result = transport.copy_remotes(scope, host, local_remotes, remote_dir, timeout)
    report(result, result.command, log)
