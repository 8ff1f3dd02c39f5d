"""Where things are and how the driver was asked to behave.

Mirrors what the Ruby driver and its bash wrapper (``one_vmm_exec`` +
``madcommon.sh``) derive from ``ONE_LOCATION``, the ``config`` file oned
writes, the rc files and the command line, so that the rest of the code reads
one immutable :class:`DriverConfig`.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

from vmm_exec import rubyisms

LOG = logging.getLogger(__name__)

DEFAULT_SCRIPTS_REMOTE_DIR = "/var/tmp/one"
KNOWN_HYPERVISORS = ("kvm", "qemu", "lxc", "firecracker")


@dataclass(frozen=True)
class Paths:
    """Filesystem layout, system-wide or self-contained (``ONE_LOCATION``)."""

    one_location: Optional[str]

    @property
    def remotes(self) -> str:
        """Local copy of the remote scripts (``@local_scripts_base_path``)."""
        if self.one_location is None:
            return "/var/lib/one/remotes"
        return f"{self.one_location}/var/remotes"

    @property
    def remotes_for_update(self) -> str:
        """What ``RemotesCommand.update_remotes`` copies from (note Ruby's trailing slash)."""
        if self.one_location is None:
            return "/var/lib/one/remotes"
        return f"{self.one_location}/var/remotes/"

    @property
    def var(self) -> str:
        """``VAR_LOCATION`` of the wrapper: the driver's working directory."""
        if self.one_location is None:
            return "/var/lib/one"
        return f"{self.one_location}/var"

    @property
    def config_file(self) -> str:
        if self.one_location is None:
            return "/var/lib/one/config"
        return f"{self.one_location}/var/config"

    @property
    def etc(self) -> str:
        if self.one_location is None:
            return "/etc/one"
        return f"{self.one_location}/etc"

    @property
    def log_dir(self) -> str:
        if self.one_location is None:
            return "/var/log/one"
        return f"{self.one_location}/var"

    @property
    def rc_files(self) -> List[str]:
        """The rc files the bash wrapper sources, in order."""
        return [f"{self.etc}/defaultrc", f"{self.etc}/vmm_exec/vmm_execrc"]


def read_one_config(path: str) -> Dict[str, Union[str, List[str]]]:
    """``DriverExecHelper#read_configuration``: tolerant ``KEY=VALUE`` reader.

    Keys are stripped and upper-cased; a repeated key becomes a list. A
    missing or unreadable file yields an empty dict and a note on stderr, as
    in Ruby.
    """
    config: Dict[str, Union[str, List[str]]] = {}
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
    except OSError as exc:
        LOG.warning("Error reading config: %s", exc)
        return config
    for line in text.split("\n"):
        name, sep, value = line.partition("=")
        if not sep or not name:
            continue
        key = rubyisms.strip(name).upper()
        value = rubyisms.strip(value)
        previous = config.get(key)
        if previous is None:
            config[key] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            config[key] = [previous, value]
    return config


def source_rc_file(path: str, environ: Mapping[str, str]) -> Dict[str, str]:
    """The environment after the rc file, as ``madcommon.sh``'s ``export_rc_vars`` leaves it.

    The file is shell, so bash sources it (exactly what the wrapper does):
    variables assigned at the start of a line are exported, and so is
    whatever the file exports itself or changes in the environment. Returns
    the variables that are new or changed.
    """
    if not os.path.isfile(path):
        return {}
    names = []
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            head, sep, _ = line.partition("=")
            if sep and head and all(c.isalnum() or c in "-_" for c in head) and head.isascii():
                names.append(head)
    script = ('. "$1" >/dev/null 2>&1; shift; for v in "$@"; do export "$v" 2>/dev/null; done; '
              'env -0')
    try:
        out = subprocess.run(["bash", "-c", script, "rc", path, *names], env=dict(environ),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    result = {}
    for item in out.decode("utf-8", "surrogateescape").split("\0"):
        key, sep, value = item.partition("=")
        if sep and key not in ("_", "SHLVL", "PWD", "OLDPWD") and environ.get(key) != value:
            result[key] = value
    return result


@dataclass(frozen=True)
class DriverConfig:
    """Everything an action needs to know about how the driver runs."""

    hypervisor: str
    retries: int = 0
    threads: int = 15
    local_actions: Mapping[str, Optional[str]] = field(default_factory=dict)
    delegate_actions: Mapping[str, Optional[str]] = field(
        default_factory=lambda: rubyisms.parse_actions_list("migrate"))
    shell: str = "bash"
    single_host: bool = True
    timeout: Optional[int] = None
    strict: bool = False
    transport: str = "openssh"
    paths: Paths = field(default_factory=lambda: Paths(None))
    scripts_remote_dir: str = DEFAULT_SCRIPTS_REMOTE_DIR
    live_disk_snapshots: Tuple[str, ...] = ()
    vnmad_local_actions: Tuple[str, ...] = ()
    hook_dirs: Tuple[str, ...] = ()
    # paramiko's pool over all hosts: connections kept (0: as many as threads) and
    # key exchanges at once
    max_connections: int = 0
    max_handshakes: int = 4

    @property
    def pool_size(self) -> int:
        """Pooled SSH connections kept over all hosts (``--max-connections``, else ``-t``)."""
        return self.max_connections if self.max_connections > 0 else self.threads

    @property
    def vmm_directory(self) -> str:
        return f"vmm/{self.hypervisor}"

    def action_is_local(self, action: str) -> bool:
        """``action_is_local?`` for the driver's own (-l) actions."""
        return action.upper() in self.local_actions

    def script_name(self, action: str, default: Optional[str] = None) -> str:
        """``action_script_name``: the -l rename, else ``default``, else the lower-cased action."""
        return self.local_actions.get(action.upper()) or default or action.lower()


def scripts_remote_dir(config: Mapping[str, Union[str, List[str]]]) -> str:
    """``SCRIPTS_REMOTE_DIR`` from oned's config file (the last one if repeated)."""
    value = config.get("SCRIPTS_REMOTE_DIR")
    if isinstance(value, list):
        value = value[-1]
    if not value:
        LOG.warning("SCRIPTS_REMOTE_DIR not set in oned's config file, using %s",
                    DEFAULT_SCRIPTS_REMOTE_DIR)
        return DEFAULT_SCRIPTS_REMOTE_DIR
    return value
