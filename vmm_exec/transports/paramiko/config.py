"""``~/.ssh/config`` → :class:`HostSettings`: what the connection to one host uses.

``HOME`` decides where ``~`` is. Read: ``HostName``, ``Port``, ``User``,
``IdentityFile``, ``IdentitiesOnly``, ``UserKnownHostsFile``,
``GlobalKnownHostsFile``, ``HostKeyAlias``, ``ConnectTimeout``,
``ProxyCommand``, ``ProxyJump`` (refused later, by name),
``ServerAliveInterval`` and ``ServerAliveCountMax``.
"""

from __future__ import annotations

import getpass
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import paramiko

from vmm_exec.transports.paramiko.filecache import FileCache, identity

DEFAULT_CONNECT_TIMEOUT = 30.0
# Keepalives cannot be turned off: the pool relies on them to notice a host that
# stopped answering (a frozen host keeps the TCP connection up for ever).
DEFAULT_ALIVE_INTERVAL = 5.0
DEFAULT_ALIVE_COUNT = 3
KNOWN_HOSTS_GLOBAL = "/etc/ssh/ssh_known_hosts"


@dataclass(frozen=True)
class HostSettings:
    """What ``~/.ssh/config`` says about one host, as used to connect."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: List[str] = field(default_factory=list)
    known_hosts: List[str] = field(default_factory=list)
    host_key_alias: Optional[str] = None
    proxy_command: Optional[str] = None
    proxy_jump: Optional[str] = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    identities_only: bool = False
    alive_interval: float = DEFAULT_ALIVE_INTERVAL
    alive_count: int = DEFAULT_ALIVE_COUNT

    @property
    def host_key_name(self) -> str:
        """The name looked up in known_hosts (``[host]:port`` off port 22, as OpenSSH)."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def _yes(value: Any) -> bool:
    return str(value).strip().lower() in ("yes", "true", "on")


def _words(value: Any) -> List[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value).split()


def _positive(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


_MATCH = re.compile(r"^\s*match\b", re.IGNORECASE | re.MULTILINE)


def _parse_config(path: str) -> Tuple[paramiko.SSHConfig, bool]:
    """The parsed file, and whether it has ``Match`` blocks (``Match exec`` runs a
    command per lookup: such a file's lookups are never kept)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        text = fh.read()
    return paramiko.SSHConfig.from_text(text), bool(_MATCH.search(text))


# parsed once per version of the file (see filecache), and each host's settings
# kept for that version: paramiko's lookup walks every Host block (80 hosts: about
# as long as the rest of a connection's set-up)
_CONFIGS: FileCache[Tuple[paramiko.SSHConfig, bool]] = FileCache(_parse_config)
_SETTINGS: Dict[Tuple[Any, ...], HostSettings] = {}
_SETTINGS_LIMIT = 4096
_SETTINGS_LOCK = threading.Lock()


def host_settings(host: str) -> HostSettings:
    """Look ``host`` up in ``$HOME/.ssh/config`` (missing file: defaults)."""
    home = os.path.expanduser("~")
    path = os.path.join(home, ".ssh", "config")
    user = getpass.getuser()
    key = (path, identity(path), host, home, user)
    with _SETTINGS_LOCK:
        known = _SETTINGS.get(key)
    if known is not None:
        return known
    config, dynamic = _CONFIGS.get(path) or (paramiko.SSHConfig(), False)
    settings = _settings(config, host, home, user)
    if not dynamic:
        with _SETTINGS_LOCK:
            if len(_SETTINGS) >= _SETTINGS_LIMIT:
                _SETTINGS.clear()
            _SETTINGS[key] = settings
    return settings


def _settings(config: paramiko.SSHConfig, host: str, home: str, user: str) -> HostSettings:
    options: Dict[str, Any] = dict(config.lookup(host))
    hostname = str(options.get("hostname") or host)
    try:
        port = int(options.get("port") or 22)
    except ValueError:
        port = 22
    identities = [os.path.expanduser(p) for p in _words(options.get("identityfile"))]
    known = [os.path.join(home, ".ssh", "known_hosts")]
    for name in _words(options.get("userknownhostsfile")):
        name = os.path.expanduser(name)
        if name not in known:
            known.append(name)
    for name in _words(options.get("globalknownhostsfile")) or [KNOWN_HOSTS_GLOBAL]:
        name = os.path.expanduser(name)
        if name not in known:
            known.append(name)
    proxy = options.get("proxycommand")
    jump = options.get("proxyjump")
    return HostSettings(
        alias=host, hostname=hostname, port=port,
        user=str(options.get("user") or user),
        identity_files=identities, known_hosts=known,
        host_key_alias=options.get("hostkeyalias") or None,
        proxy_command=None if proxy in (None, "", "none") else str(proxy),
        proxy_jump=None if jump in (None, "", "none") else str(jump),
        connect_timeout=_positive(options.get("connecttimeout"), DEFAULT_CONNECT_TIMEOUT),
        identities_only=_yes(options.get("identitiesonly", "no")),
        alive_interval=_positive(options.get("serveraliveinterval"), DEFAULT_ALIVE_INTERVAL),
        alive_count=int(_positive(options.get("serveralivecountmax"), DEFAULT_ALIVE_COUNT)))
