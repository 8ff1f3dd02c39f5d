"""The one contract every SSH transport fulfils (OpenSSH binary, paramiko).

Everything above the transports (streams, one-shot commands, remotes update)
is written against :class:`Transport`; the same test suite runs against each
implementation.
"""

from __future__ import annotations

from typing import List, Optional, Union

from vmm_exec.transports.base import Execution, Tracker
from vmm_exec.transports.channel import Channel

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment]


class Transport(Protocol):
    """How commands reach a host."""

    name: str

    def open_stream(self, tracker: Tracker, host: str, shell: str,
                    forward: bool) -> Union[List[str], Channel]:
        """A connection running ``SHELL -s`` on ``host`` (argv of a client, or a Channel)."""

    def run(self, tracker: Tracker, host: str, command: str, stdin: Optional[str],
            timeout: Optional[float]) -> Execution:
        """One command on ``host``: ``ssh HOST CMD`` (``ssh -n`` when ``stdin`` is None).

        The returned ``Execution.command`` is the text to log (the remote command).
        Connection failures are an exit status 255 with the client's message on
        stderr, like OpenSSH.
        """

    def copy_remotes(self, tracker: Tracker, host: str, local_dir: str, remote_dir: str,
                     timeout: Optional[float]) -> Execution:
        """Copy the contents of ``local_dir`` into ``remote_dir`` on ``host`` (``scp -rp``)."""

    def kill_remote(self, host: str, pgid: int) -> None:
        """Kill a process group on ``host`` (the remote side of a cancelled stream)."""

    def close(self) -> None:
        """Release pooled connections (driver shutdown)."""
