"""The one contract every SSH transport fulfils (OpenSSH binary, paramiko).

Everything above the transports (streams, one-shot commands, remotes update)
is written against :class:`Transport`; the same test suite runs against each
implementation.
"""

from __future__ import annotations

from typing import AbstractSet, Optional, Protocol

from vmm_exec.cancel import CancelScope
from vmm_exec.transports.base import Execution, RemoteGroup
from vmm_exec.transports.channel import Channel


class Transport(Protocol):
    """How commands reach a host.

    Every process or channel a method starts belongs to ``scope`` (cancelling
    the scope stops it, locally and on the host) and is released from the
    scope when it ends. Connection failures are reported, not raised: an exit
    status 255 with the client's message on stderr, like OpenSSH.
    """

    name: str
    #: whether :meth:`kill_remote` leaves no trace in what the Ruby driver's
    #: transcript shows (paramiko: another channel of a pooled connection; OpenSSH:
    #: another ``ssh`` process, which a journaling ``ssh`` would record). Strict mode
    #: kills a cancelled stream's remote group only where it is silent.
    silent_remote_kill: bool

    def open_stream(self, scope: CancelScope, host: str, shell: str,
                    forward: bool, timeout: Optional[float] = None) -> Channel:
        """A connection running ``SHELL -s`` on ``host``.

        ``timeout`` bounds connecting and starting the shell, where the transport
        waits for them (a channel that could not be had within it reports the
        failure like any other). May raise ``OSError`` when the client cannot even
        be started.
        """

    def run(self, scope: CancelScope, host: str, command: str, stdin: Optional[str],
            timeout: Optional[float]) -> Execution:
        """One command on ``host``: ``ssh HOST CMD`` (``ssh -n`` when ``stdin`` is None).

        The returned ``Execution.command`` is the text to log (the remote command).
        """

    def copy_remotes(self, scope: CancelScope, host: str, local_dir: str, remote_dir: str,
                     timeout: Optional[float]) -> Execution:
        """Copy the contents of ``local_dir`` into ``remote_dir`` on ``host`` (``scp -rp``)."""

    def kill_remote(self, host: str, group: RemoteGroup) -> None:
        """Kill a process group on ``host`` if it is still the one identified
        (the remote side of a cancelled stream); bounded, never raises."""

    def warm_hosts(self) -> AbstractSet[str]:
        """Hosts this transport holds an open connection to, where an action starts
        without a key exchange (the scheduler's connection affinity); cheap, no lock
        shared with the scheduler, and may be out of date by the time it is used."""

    def close(self) -> None:
        """Release pooled connections (driver shutdown)."""
