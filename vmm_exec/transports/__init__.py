"""How commands reach a host: local processes, one-shot ssh, persistent streams.

Every transport returns an :class:`~vmm_exec.transports.base.Execution`
(exit code, stdout, stderr, the command text for logs) and puts what it starts
in the action's :class:`~vmm_exec.cancel.CancelScope` while it runs, so a
cancelled or timed-out action can be stopped wherever it runs.
"""

from vmm_exec.transports.api import Transport


def make_transport(name: str, strict: bool = False, max_connections: int = 15,
                   max_handshakes: int = 4) -> Transport:
    """The transport named on the command line (paramiko is imported only when chosen).

    In strict mode the command text is sent unchanged (no remote process-group
    announcement or marker). ``max_connections`` and ``max_handshakes`` bound
    paramiko's pool over all hosts (connections kept, key exchanges at once).
    """
    if name == "paramiko":
        from vmm_exec.transports.paramiko import ParamikoTransport

        return ParamikoTransport(kill_remote=not strict, max_connections=max_connections,
                                 max_handshakes=max_handshakes)
    from vmm_exec.transports.openssh import OpenSSHTransport

    return OpenSSHTransport(kill_remote=not strict)
