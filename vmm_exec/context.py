"""The state of one running action: Ruby's ``VmmAction`` instance.

``@data`` (the values step parameters resolve to and the infos of finished
steps), the action's persistent streams to the host and the migration
target, the network views, and where its LOG lines go. Runners read it; the
engine creates and closes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from vmm_exec import rubyisms
from vmm_exec.cancel import CancelScope
from vmm_exec.config import DriverConfig
from vmm_exec.hooks import Hook
from vmm_exec.masking import Masker, identity
from vmm_exec.message import Message
from vmm_exec.protocol import Gate, Writer
from vmm_exec.quoting import host_problem
from vmm_exec.request import StepError
from vmm_exec.transports.api import Transport
from vmm_exec.transports.base import RemoteGroup
from vmm_exec.transports.channel import Channel
from vmm_exec.transports.remote import update_remotes
from vmm_exec.transports.stream import SshStream, StreamCommand

# driver-level bounds where no -w is given (default mode): a healthy host gets a
# stream ready in well under a second and copies the remotes tree in seconds
CONNECTION_BOUND = 60.0
UPDATE_BOUND = 300.0

# Message fields copied into the step data (``get_data`` in Ruby).
DATA_FIELDS = {
    "host": "HOST",
    "deploy_id": "DEPLOY_ID",
    "checkpoint_file": "CHECKPOINT_FILE",
    "local_dfile": "LOCAL_DEPLOYMENT_FILE",
    "remote_dfile": "REMOTE_DEPLOYMENT_FILE",
    "dest_host": "MIGR_HOST",
    "disk_target_path": "DISK_TARGET_PATH",
    "tm_command": "TM_COMMAND",
}


@dataclass(frozen=True)
class Services:
    """What every action of one driver shares."""

    config: DriverConfig
    writer: Writer
    transport: Transport
    hooks: Sequence[Hook] = ()


class ActionContext:
    """State of one running action: ``@data``, streams, network views, output gate."""

    def __init__(self, services: Services, action: str, msg_id: str, message: Message,
                 scope: CancelScope, gate: Gate, payload: str = "") -> None:
        self.config = services.config
        self.transport = services.transport
        self.writer = services.writer
        self.msg_id = msg_id
        self.action = action
        self.message = message
        self.scope = scope
        self.gate = gate
        # default mode: no secret of the request in anything written for it
        self.mask: Callable[[str], str] = (
            identity if self.config.strict else Masker.for_message(message, payload))
        self.data: Dict[str, Optional[str]] = {}
        for name, path in DATA_FIELDS.items():
            if message.element(path) is not None:
                self.data[name] = message.text(path)
        self.data["vm"] = rubyisms.strict_encode64(
            message.element_xml("VM").encode("utf-8", "surrogateescape"))
        self._streams: Dict[bool, StreamCommand] = {}
        self._vnm: Dict[bool, Tuple[List[str], str]] = {}
        # -d names the Ruby method (attach_disk), not the protocol word (ATTACHDISK)
        self.forward = False

    # -- data ---------------------------------------------------------------
    @property
    def default_timeout(self) -> Optional[float]:
        """The -w timeout where Ruby applies none (network, tm, ds); default mode bounds all."""
        return None if self.config.strict else self.config.timeout

    @property
    def connection_timeout(self) -> Optional[float]:
        """What bounds getting a stream ready: connecting, identifying, the ``-x`` check.

        ``-w`` in both modes (Ruby could wait there forever, the action never
        answered); without ``-w``, default mode still bounds it (a frozen host
        must not hold an action), strict mode does not.
        """
        if self.config.timeout is not None:
            return self.config.timeout
        return None if self.config.strict else CONNECTION_BOUND

    @property
    def update_timeout(self) -> Optional[float]:
        """What bounds each command of a remotes update (``mkdir``, the copy)."""
        if self.config.timeout is not None:
            return self.config.timeout
        return None if self.config.strict else UPDATE_BOUND

    def value(self, name: str) -> str:
        """A symbol's value, ``nil.to_s`` (empty) when unknown."""
        value = self.data.get(name)
        return "" if value is None else value

    def log(self, message: str, all_lines: bool = True) -> None:
        self.writer.log(self.msg_id, self.mask(message), all_lines, self.gate)

    def hook_data(self) -> Dict[str, Optional[str]]:
        data = dict(self.data)
        data["vm_id"] = self.msg_id
        data["failed_info_text"] = rubyisms.strip(self.data.get("failed_info") or "")
        return data

    # -- resources ----------------------------------------------------------
    def vnm_view(self, destination: bool) -> Tuple[List[str], str]:
        if destination not in self._vnm:
            self._vnm[destination] = self.message.vnm_view()
        return self._vnm[destination]

    def stream(self, destination: bool) -> StreamCommand:
        """The action's persistent shell on the host (or the migration target)."""
        if destination and not self.value("dest_host"):
            raise StepError("this step runs on the migration target but MIGR_HOST is empty")
        if destination not in self._streams:
            host = self.value("dest_host" if destination else "host")
            problem = host_problem(host) if host else None
            if problem is not None:
                raise StepError(problem)

            def opener(h: str, shell: str, forward: bool) -> Channel:
                return self.transport.open_stream(self.scope, h, shell, forward,
                                                  timeout=self.connection_timeout)

            killer: Optional[Callable[[RemoteGroup], None]] = None
            # strict mode: only where the kill leaves no trace in Ruby's transcript
            if not self.config.strict or self.transport.silent_remote_kill:
                def killer(group: RemoteGroup, h: str = host) -> None:
                    self.transport.kill_remote(h, group)

            stream = SshStream(host, self.config.shell, opener, self.scope,
                               forward=self.forward, remote_killer=killer,
                               identify_timeout=self.connection_timeout)

            def refresh(h: str = host) -> None:
                update_remotes(self.transport, self.scope, h, self.config.scripts_remote_dir,
                               self.config.paths.remotes_for_update, self.log,
                               self.update_timeout)

            self._streams[destination] = StreamCommand(
                stream, self.config.scripts_remote_dir, self.log, refresh,
                reconnect=not self.config.strict, merge_check=not self.config.strict)
        return self._streams[destination]

    def close(self) -> None:
        for command in self._streams.values():
            try:
                command.close()
            except Exception:  # noqa: BLE001 - closing must never fail an action
                pass
