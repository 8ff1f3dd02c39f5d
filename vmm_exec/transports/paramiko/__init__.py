"""The opt-in transport (``--transport paramiko``): SSH in process, over pooled connections.

One connection per host is opened lazily and shared by every action and
thread (more when sshd's ``MaxSessions`` requires); each command, stream or
copy is a channel on it. Host keys must be in a known_hosts file
(``~/.ssh/known_hosts``, the configured ``UserKnownHostsFile`` files and
``/etc/ssh/ssh_known_hosts``): an unknown host is rejected, whatever
``StrictHostKeyChecking`` says. Keys of a running ssh-agent are offered too.

Modules, by concern:

* :mod:`.config`: ``~/.ssh/config`` → :class:`HostSettings`;
* :mod:`.connect`: connecting (bounded, abortable), host keys, keepalives,
  the ssh binary's error messages;
* :mod:`.pool`: pooled connections per host, learning ``MaxSessions``;
* :mod:`.session`: one channel's requests, one at a time;
* :mod:`.channel`: the stream's channel, the reader, the failed channel;
* :mod:`.kill`: stopping remote commands (SSH signal, marks);
* :mod:`.sftp`: the ``scp -rp`` equivalent;
* :mod:`.transport`: :class:`ParamikoTransport`;
* :mod:`._private`: every use of paramiko's private API.
"""

from __future__ import annotations

import logging

from vmm_exec.transports.paramiko.channel import ParamikoChannel
from vmm_exec.transports.paramiko.config import HostSettings, host_settings
from vmm_exec.transports.paramiko.transport import ParamikoTransport

# paramiko logs a lost connection as an error; unless the driver sets up logging,
# Python would print that on stderr: the failure is reported in the results instead
logging.getLogger("paramiko").addHandler(logging.NullHandler())

__all__ = ["HostSettings", "ParamikoChannel", "ParamikoTransport", "host_settings"]
