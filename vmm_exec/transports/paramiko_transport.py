"""The opt-in transport (``--transport paramiko``): SSH in process, over pooled connections.

One connection per host is opened lazily and shared by every action and thread
(an SSH connection multiplexes many channels); each command, stream or copy is
a channel on it. Settings come from ``~/.ssh/config`` (``HOME`` decides where
``~`` is): ``HostName``, ``Port``, ``User``, ``IdentityFile``,
``IdentitiesOnly``, ``UserKnownHostsFile``, ``HostKeyAlias``,
``ConnectTimeout`` and ``ProxyCommand``. Host keys must be in a known_hosts
file (``~/.ssh/known_hosts``, the configured ``UserKnownHostsFile`` files and
``/etc/ssh/ssh_known_hosts``): an unknown host is rejected, whatever
``StrictHostKeyChecking`` says. Keys of a running ssh-agent are offered too.

Stopping remote commands. Closing an SSH channel does not stop what it runs:
sshd only closes the pipes of the command, and a ``sleep 300`` never notices.
So :meth:`ParamikoChannel.terminate` (a stream's timeout, or the action's
:class:`~vmm_exec.transports.base.CancelScope` being cancelled, to which every
channel is registered), a ``run`` timeout and a cancelled ``run`` kill the
remote processes, without adding anything to what the command reads or writes:

1. The SSH ``signal`` channel request (RFC 4254 6.9), TERM, then KILL after a
   grace period if the channel is still open. OpenSSH's sshd (7.9 and later)
   answers it with ``killpg()`` of the session: the remote shell and
   everything it started (sshd runs each session in a session of its own, and
   a non-interactive shell keeps its children in its group). The request asks
   for a reply, so a refusal is known at once. sshd refuses it for root logins
   (no privilege separation) and for sessions under a ``ForceCommand``.
2. Hence every command is marked: the channel runs
   ``env VMM_EXEC_CHANNEL=<random> bash -s`` (for ``run``:
   ``env VMM_EXEC_CHANNEL=<random> "$SHELL" -c '<command>'``, the same login
   shell as ``ssh HOST COMMAND``), so every process it starts inherits the
   mark. When the signal is refused and the connection lives, another channel
   on the pooled connection TERMs (then KILLs) the processes whose
   ``/proc/PID/environ`` holds the mark, and their process groups. The only
   visible difference to the commands is that one environment variable.

Then the channel is closed. Where the connection itself is gone, nothing can be
reached; the stream's own mechanism (default mode: its process group learned
by a framed command and killed over a new connection by
:meth:`ParamikoTransport.kill_remote`) applies as for the OpenSSH transport.

Connection failures are reported like the ``ssh`` binary: exit status 255 and
its message on stderr (``ssh: connect to host H port P: Connection refused``),
so logs look the same whichever transport runs.
"""

from __future__ import annotations

import getpass
import logging
import os
import posixpath
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, cast

import paramiko
from paramiko.agent import AgentRequestHandler
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from vmm_exec.cancel import Cancelled, CancelScope, Registration
from vmm_exec.quoting import single_quoted
from vmm_exec.transports.base import (
    Execution,
    RemoteGroup,
    decode,
    encode,
    group_kill_command,
)
from vmm_exec.transports.channel import ERR, OUT, Channel
from vmm_exec.transports.local import DRAIN_GRACE, TERM_GRACE

DEFAULT_CONNECT_TIMEOUT = 30.0
OPEN_TIMEOUT = 30.0
KEEPALIVE_INTERVAL = 30
# sshd's default MaxSessions is 10: beyond this many channels, another connection
MAX_CHANNELS = 8
READ_SIZE = 65536
# how long a signal request waits for the server's answer
REPLY_TIMEOUT = 5.0
# after TERM (stream or cancellation), how long before KILL
KILL_GRACE = 2.0
# how long release() lets the remote shell exit after EOF before killing it
CLOSE_GRACE = 2.0
POLL = 0.05
KNOWN_HOSTS_GLOBAL = "/etc/ssh/ssh_known_hosts"
# the environment variable that marks the processes of one channel on the host
MARK_VARIABLE = "VMM_EXEC_CHANNEL"

# paramiko logs a lost connection as an error; unless the driver sets up logging,
# Python would print that on stderr: the failure is reported in the results instead
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def _close_quietly(closable: Any) -> None:
    """Close a channel/client/agent whose connection may already be gone."""
    try:
        closable.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass


class ConnectFailure(Exception):
    """No usable connection; ``message`` is what the ssh binary would print."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------------------
# ~/.ssh/config
# --------------------------------------------------------------------------------------

@dataclass
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


def host_settings(host: str) -> HostSettings:
    """Look ``host`` up in ``$HOME/.ssh/config`` (missing file: defaults)."""
    home = os.path.expanduser("~")
    path = os.path.join(home, ".ssh", "config")
    config = paramiko.SSHConfig()
    if os.path.isfile(path):
        config = paramiko.SSHConfig.from_path(path)
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
    try:
        timeout = float(options.get("connecttimeout") or DEFAULT_CONNECT_TIMEOUT)
    except ValueError:
        timeout = DEFAULT_CONNECT_TIMEOUT
    proxy = options.get("proxycommand")
    jump = options.get("proxyjump")
    return HostSettings(
        alias=host, hostname=hostname, port=port,
        user=str(options.get("user") or getpass.getuser()),
        identity_files=identities, known_hosts=known,
        host_key_alias=options.get("hostkeyalias") or None,
        proxy_command=None if proxy in (None, "", "none") else str(proxy),
        proxy_jump=None if jump in (None, "", "none") else str(jump),
        connect_timeout=timeout,
        identities_only=_yes(options.get("identitiesonly", "no")))


# --------------------------------------------------------------------------------------
# connecting
# --------------------------------------------------------------------------------------

_KEY_NAMES = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA", "ssh-dss": "DSA"}


def _key_type(name: str) -> str:
    if name.startswith("ecdsa-"):
        return "ECDSA"
    return _KEY_NAMES.get(name, name.upper())


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, name: str, key_type: str) -> None:
        super().__init__(f"unknown host key for {name}")
        self.name = name
        self.key_type = key_type


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """``RejectPolicy`` that remembers what was rejected, for OpenSSH's message."""

    def __init__(self, alias: Optional[str] = None) -> None:
        self.alias = alias

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise _UnknownHostKey(self.alias or hostname, _key_type(key.get_name()))


def _line(text: str) -> str:
    """The ssh binary ends its messages with CR LF."""
    return text + "\r\n"


def _socket_error(settings: HostSettings, exc: BaseException) -> str:
    where = f"ssh: connect to host {settings.hostname} port {settings.port}"
    if isinstance(exc, socket.gaierror):
        return _line(f"ssh: Could not resolve hostname {settings.hostname}: "
                     f"{exc.strerror or exc}")
    if isinstance(exc, socket.timeout):
        return _line(f"{where}: Connection timed out")
    if isinstance(exc, OSError) and exc.strerror:
        return _line(f"{where}: {exc.strerror}")
    return _line(f"{where}: {exc}")


def _connect_error(settings: HostSettings, exc: BaseException) -> str:
    """The ssh binary's words for a failed connection."""
    if isinstance(exc, _UnknownHostKey):
        return (_line(f"No {exc.key_type} host key is known for {exc.name} and you have "
                      "requested strict checking.") + _line("Host key verification failed."))
    if isinstance(exc, paramiko.BadHostKeyException):
        return (_line("@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@")
                + _line("@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @")
                + _line("@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@")
                + _line(f"Host key for {exc.hostname} has changed and you have requested "
                        "strict checking.")
                + _line("Host key verification failed."))
    if isinstance(exc, paramiko.BadAuthenticationType):
        allowed = ",".join(exc.allowed_types) or "publickey"
        return _line(f"{settings.user}@{settings.hostname}: Permission denied ({allowed}).")
    if isinstance(exc, paramiko.AuthenticationException) or (
            isinstance(exc, paramiko.SSHException)
            and "No authentication methods available" in str(exc)):
        return _line(f"{settings.user}@{settings.hostname}: Permission denied (publickey).")
    if isinstance(exc, (EOFError, paramiko.SSHException)):
        return _line(f"Connection closed by {settings.hostname} port {settings.port}"
                     + (f" ({exc})" if str(exc) else ""))
    return _socket_error(settings, exc)


def _open_socket(settings: HostSettings) -> Any:
    if settings.proxy_command is not None:
        return paramiko.ProxyCommand(settings.proxy_command)
    sock = socket.create_connection((settings.hostname, settings.port),
                                    timeout=settings.connect_timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect(settings: HostSettings) -> paramiko.SSHClient:
    """A new authenticated connection, or :class:`ConnectFailure` with ssh's message."""
    if settings.proxy_jump is not None:
        raise ConnectFailure(_line(f"ssh: {settings.alias}: ProxyJump is not supported by the "
                                   "paramiko transport (use ProxyCommand)"))
    try:
        sock = _open_socket(settings)
    except (OSError, paramiko.SSHException) as exc:
        raise ConnectFailure(_socket_error(settings, exc)) from None
    client = paramiko.SSHClient()
    keys = client.get_host_keys()
    # with a HostKeyAlias, OpenSSH looks up the alias only
    known = paramiko.HostKeys() if settings.host_key_alias else keys
    for path in settings.known_hosts:
        if os.path.isfile(path):
            try:
                known.load(path)
            except (OSError, paramiko.SSHException, ValueError):
                pass
    if settings.host_key_alias:
        for key_type, key in (known.lookup(settings.host_key_alias) or {}).items():
            keys.add(settings.host_key_name, key_type, key)
    client.set_missing_host_key_policy(_RejectUnknown(settings.host_key_alias))
    identities = [p for p in settings.identity_files if os.path.isfile(p)]
    agent = bool(os.environ.get("SSH_AUTH_SOCK")) and not settings.identities_only
    try:
        client.connect(settings.hostname, port=settings.port, username=settings.user,
                       key_filename=cast(Any, identities or None),
                       look_for_keys=not settings.identity_files, allow_agent=agent,
                       sock=sock, timeout=settings.connect_timeout,
                       banner_timeout=settings.connect_timeout,
                       auth_timeout=settings.connect_timeout)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        client.close()
        try:
            sock.close()
        except OSError:
            pass
        raise ConnectFailure(_connect_error(settings, exc)) from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(KEEPALIVE_INTERVAL)
    return client


class _Connection:
    """A connection and the channels this process has open on it."""

    def __init__(self, client: paramiko.SSHClient, settings: HostSettings) -> None:
        self.client = client
        self.settings = settings
        self.channels = 0
        self.capacity = MAX_CHANNELS

    @property
    def transport(self) -> Optional[paramiko.Transport]:
        return self.client.get_transport()

    def alive(self) -> bool:
        transport = self.transport
        return transport is not None and transport.is_active()

    def close(self) -> None:
        _close_quietly(self.client)


# --------------------------------------------------------------------------------------
# remote signals and reading a channel
# --------------------------------------------------------------------------------------

def send_signal(chan: paramiko.Channel, name: str, timeout: float = REPLY_TIMEOUT) -> bool:
    """The SSH ``signal`` request; True when the server says it delivered it.

    OpenSSH's sshd answers with ``killpg`` of the session (the remote command
    and its process group). paramiko has no API for it, so the request is
    built here; a refusal makes paramiko close the channel.
    """
    transport = chan.get_transport()
    if chan.closed or transport is None or not transport.is_active():
        return False
    message = Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(chan.remote_chanid)
    message.add_string("signal")
    message.add_boolean(True)
    message.add_string(name)
    chan.event.clear()
    chan.event_ready = False
    try:
        transport._send_user_message(message)  # type: ignore[attr-defined]  # no public API
    except (OSError, EOFError, paramiko.SSHException):
        return False
    chan.event.wait(timeout)
    return bool(chan.event_ready)


def wait_closed(chan: paramiko.Channel, timeout: float) -> bool:
    """Wait until the server closed the channel (command over, output drained)."""
    deadline = time.monotonic() + timeout
    while not chan.closed:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if not chan.status_event.is_set():
            chan.status_event.wait(min(left, 0.5))
        else:
            time.sleep(min(left, POLL))
    return True


def stop_remote(chan: paramiko.Channel, grace: float,
                fallback: Optional[Callable[[], None]] = None) -> Optional[bool]:
    """Kill what ``chan`` runs on the host (TERM, KILL after ``grace``), then close it.

    Returns whether the server accepted the signal (None: the channel was over
    already). When the channel is not over after the signals (refused, or a
    process ignoring TERM outlived the shell, after which sshd refuses KILL) and
    the connection lives, ``fallback`` kills the channel's marked processes over
    another channel.
    """
    if chan.closed:
        return None
    delivered = send_signal(chan, "TERM")
    # over: the server closed the channel, i.e. nothing holds its output any more
    over = delivered and wait_closed(chan, grace)
    if delivered and not over and send_signal(chan, "KILL"):
        # (sshd refuses once the shell itself is gone: then the marks do it)
        over = wait_closed(chan, 1.0)
    transport = chan.get_transport()
    alive = transport is not None and transport.is_active()
    _close_quietly(chan)
    if not over and alive and fallback is not None:
        try:
            fallback()
        except Exception:  # noqa: BLE001 - killing is best effort
            pass
    return delivered


class _Stopper:
    """Stops the remote side of one channel and closes it, one caller at a time
    (a cancellation hook may race with the command's own end): nothing is ever
    sent on a channel this side has closed."""

    def __init__(self, chan: paramiko.Channel,
                 fallback: Optional[Callable[[], None]]) -> None:
        self.chan = chan
        self._fallback = fallback
        self._lock = threading.Lock()
        self.signalled: Optional[bool] = None

    def stop(self, grace: float) -> None:
        with self._lock:
            result = stop_remote(self.chan, grace, self._fallback)
            if result is not None:
                self.signalled = result

    def close(self) -> None:
        with self._lock:
            _close_quietly(self.chan)


def new_mark() -> str:
    return secrets.token_hex(8)


def stream_command(shell: str, mark: str) -> str:
    """``SHELL -s`` as the Ruby driver runs it, its processes marked in their environment."""
    return f"env {MARK_VARIABLE}={mark} {shell} -s"


def marked_command(command: str, mark: str) -> str:
    """``command`` for the login shell as ``ssh HOST COMMAND`` gives it, marked likewise."""
    return f'env {MARK_VARIABLE}={mark} "${{SHELL:-/bin/sh}}" -c {single_quoted(command)}'


def kill_marked_command(mark: str) -> str:
    """Shell text: TERM every process carrying ``mark`` and its process group, KILL
    what is left after a second (GNU grep reads the environments in /proc)."""
    return (f"m='{MARK_VARIABLE}={mark}'; "
            "marked() { grep -lsxzF \"$m\" /proc/[0-9]*/environ | cut -d/ -f3; }; "
            "hit() { p=$(marked); [ -n \"$p\" ] || return 1; "
            "g=$(for x in $p; do sed 's/.*) //' /proc/$x/stat 2>/dev/null | cut -d' ' -f3; "
            "done | sort -u); kill -$1 $p 2>/dev/null; "
            "for x in $g; do kill -$1 -$x 2>/dev/null; done; return 0; }; "
            "hit TERM || exit 0; i=0; while [ $i -lt 10 ]; do "
            "[ -n \"$(marked)\" ] || exit 0; sleep 0.1; i=$((i+1)); done; hit KILL; exit 0")


class _Reader:
    """Non-blocking reads of a channel's stdout and stderr, woken by paramiko's buffers.

    Both buffers share one event that paramiko sets when data (or the end)
    arrives, so waiting costs nothing and never spins.
    """

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self.ready = threading.Event()
        chan.in_buffer.set_event(self.ready)
        chan.in_stderr_buffer.set_event(self.ready)
        self.ended: Set[str] = set()

    @property
    def done(self) -> bool:
        return len(self.ended) == 2

    def poll(self, timeout: float) -> List[Tuple[str, bytes]]:
        if self.done:
            return []
        chunks = self._available()
        if chunks:
            return chunks
        self.ready.wait(timeout)
        return self._available()

    def _pending(self) -> bool:
        return self.chan.recv_ready() or self.chan.recv_stderr_ready()

    def _available(self) -> List[Tuple[str, bytes]]:
        chan = self.chan
        # seen before reading: whatever came before the end is in the buffers now
        ended = bool(chan.eof_received) or chan.closed
        chunks: List[Tuple[str, bytes]] = []
        for _ in range(32):
            got = False
            if chan.recv_ready():
                data = chan.recv(READ_SIZE)
                if data:
                    chunks.append((OUT, data))
                    got = True
            if chan.recv_stderr_ready():
                data = chan.recv_stderr(READ_SIZE)
                if data:
                    chunks.append((ERR, data))
                    got = True
            if not got:
                break
        if ended and not self._pending():
            for name in (OUT, ERR):
                if name not in self.ended:
                    self.ended.add(name)
                    chunks.append((name, b""))
        return chunks


def _lost(chan: paramiko.Channel) -> bool:
    """The connection died under the channel (no EOF: sshd always sends one)."""
    return chan.closed and not chan.eof_received


def _status(chan: paramiko.Channel) -> int:
    """The ssh binary's exit status: the command's, or 255 (signal, lost connection)."""
    code = chan.exit_status
    return code if code >= 0 else 255


# --------------------------------------------------------------------------------------
# the stream channel
# --------------------------------------------------------------------------------------

class ParamikoChannel:
    """A :class:`~vmm_exec.transports.channel.Channel` over an SSH session channel."""

    def __init__(self, owner: ParamikoTransport, conn: _Connection, chan: paramiko.Channel,
                 mark: str, dedicated: bool = False,
                 agent: Optional[AgentRequestHandler] = None) -> None:
        self._owner = owner
        self._conn = conn
        self.chan = chan
        self.mark = mark
        self._dedicated = dedicated
        self._agent = agent
        self._reader = _Reader(chan)
        self._lock = threading.Lock()
        self._terminated = False
        self._released = False
        self._reported_loss = False
        self.registration: Optional[Registration] = None
        host = conn.settings.alias
        self._stopper = _Stopper(chan, (lambda: owner.kill_marked(host, mark))
                                 if owner.mark_commands else None)

    @property
    def signalled(self) -> Optional[bool]:
        """Whether sshd took the SSH signal (None: not terminated, or already over)."""
        return self._stopper.signalled

    def send(self, data: bytes) -> None:
        try:
            self.chan.sendall(data)
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the channel is gone; the reader will see it

    def receive(self, timeout: float) -> List[Tuple[str, bytes]]:
        if self._reader.done:
            wait_closed(self.chan, timeout)
            return []
        chunks = self._reader.poll(timeout)
        if self._reader.done and not self._reported_loss and not self._terminated:
            wait_closed(self.chan, 0.2)
            if _lost(self.chan):
                # what the ssh binary prints when the server goes away
                self._reported_loss = True
                message = f"Connection to {self._conn.settings.hostname} closed by remote host."
                chunks.insert(len(chunks) - 1, (ERR, encode(_line(message))))
        return chunks

    def exit_status(self) -> Optional[int]:
        return _status(self.chan) if self.chan.closed else None

    def wait(self, timeout: float) -> Optional[int]:
        wait_closed(self.chan, timeout)
        return self.exit_status()

    def close_input(self) -> None:
        try:
            self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def terminate(self) -> None:
        """Kill the remote shell's process group (SSH signal, else by its mark), close."""
        with self._lock:
            if self._terminated:
                return
            self._terminated = True
        self._stopper.stop(KILL_GRACE)

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        if self.registration is not None:
            self.registration.remove()
        if not self.chan.closed:
            self.close_input()
            if not wait_closed(self.chan, CLOSE_GRACE):
                self.terminate()
        self._stopper.close()
        if self._agent is not None:
            _close_quietly(self._agent)
        if self._dedicated:
            self._owner._drop_dedicated(self._conn)
        else:
            self._owner._unreserve(self._conn)


class _FailedChannel:
    """The stream's view of a connection that could not be made: ssh's message, 255."""

    def __init__(self, message: str) -> None:
        self._pending: List[Tuple[str, bytes]] = [(ERR, encode(message)), (OUT, b""),
                                                   (ERR, b"")]

    def send(self, data: bytes) -> None:
        pass

    def receive(self, timeout: float) -> List[Tuple[str, bytes]]:
        chunks, self._pending = self._pending, []
        return chunks

    def exit_status(self) -> Optional[int]:
        return 255

    def wait(self, timeout: float) -> Optional[int]:
        return 255

    def close_input(self) -> None:
        pass

    def terminate(self) -> None:
        pass

    def release(self) -> None:
        pass


# --------------------------------------------------------------------------------------
# the transport
# --------------------------------------------------------------------------------------

class ParamikoTransport:
    """SSH through paramiko: pooled connections, channels per command.

    ``kill_remote=False`` (strict mode) sends the command text unchanged: no
    marks, so only the SSH signal can stop remote commands (as ``make_transport``
    does for OpenSSH with ``OpenSSHTransport(kill_remote=not strict)``).
    """

    name = "paramiko"

    def __init__(self, kill_remote: bool = True,
                 settings: Callable[[str], HostSettings] = host_settings) -> None:
        # False (strict mode): the remote command text stays the Ruby driver's, so
        # no marks; only the SSH signal can then stop remote commands
        self.mark_commands = kill_remote
        self._settings = settings
        self._lock = threading.Lock()
        self._host_locks: Dict[str, threading.Lock] = {}
        self._pool: Dict[str, List[_Connection]] = {}
        self._dedicated: Set[_Connection] = set()
        # the last failed connection attempt per host: (when, the failure)
        self._failures: Dict[str, Tuple[float, ConnectFailure]] = {}

    # -- the pool -----------------------------------------------------------
    def _host_lock(self, host: str) -> threading.Lock:
        with self._lock:
            return self._host_locks.setdefault(host, threading.Lock())

    def _connect(self, host: str) -> _Connection:
        settings = self._settings(host)
        return _Connection(connect(settings), settings)

    def _reserve(self, host: str) -> _Connection:
        """A live pooled connection with room for one more channel (counted).

        Callers that queued for the host while a connection attempt failed share
        that failure instead of each waiting for a connect timeout in turn.
        """
        asked = time.monotonic()
        with self._host_lock(host):
            failed = self._failures.get(host)
            if failed is not None and failed[0] >= asked:
                raise ConnectFailure(failed[1].message)
            with self._lock:
                conns = self._pool.setdefault(host, [])
                for conn in [c for c in conns if not c.alive()]:
                    conns.remove(conn)
                    conn.close()
                for conn in conns:
                    if conn.channels < conn.capacity:
                        conn.channels += 1
                        return conn
            try:
                conn = self._connect(host)
            except ConnectFailure as exc:
                self._failures[host] = (time.monotonic(), exc)
                raise
            self._failures.pop(host, None)
            with self._lock:
                conn.channels = 1
                self._pool.setdefault(host, []).append(conn)
            return conn

    def _unreserve(self, conn: _Connection) -> None:
        with self._lock:
            conn.channels = max(0, conn.channels - 1)
            conns = self._pool.get(conn.settings.alias, [])
            # extra connections (opened when the first was full) go once idle
            if conn.channels == 0 and conn in conns and conns.index(conn) > 0:
                conns.remove(conn)
                conn.close()

    def _open_session(self, conn: _Connection) -> paramiko.Channel:
        transport = conn.transport
        if transport is None:
            raise paramiko.SSHException("not connected")
        return transport.open_session(timeout=OPEN_TIMEOUT)

    def _open(self, host: str) -> Tuple[_Connection, paramiko.Channel]:
        """A session channel on a pooled connection (reconnecting once if it died)."""
        failure = ""
        for _ in range(3):
            conn = self._reserve(host)
            try:
                return conn, self._open_session(conn)
            except paramiko.ChannelException as exc:
                # MaxSessions reached: this connection is full
                with self._lock:
                    conn.channels = max(0, conn.channels - 1)
                    conn.capacity = max(1, conn.channels)
                failure = f"channel: open failed: {exc.text}"
            except (OSError, EOFError, paramiko.SSHException) as exc:
                with self._lock:
                    conn.channels = max(0, conn.channels - 1)
                conn.close()
                failure = f"Connection to {conn.settings.hostname} closed: {exc}"
        raise ConnectFailure(_line(failure))

    def close(self) -> None:
        with self._lock:
            conns = [c for cs in self._pool.values() for c in cs] + list(self._dedicated)
            self._pool.clear()
            self._dedicated.clear()
        for conn in conns:
            conn.close()

    # -- streams ------------------------------------------------------------
    def open_stream(self, scope: CancelScope, host: str, shell: str,
                    forward: bool) -> Channel:
        scope.check()
        agent: Optional[AgentRequestHandler] = None
        try:
            if forward:
                # like ``ssh -o ForwardAgent=yes -o ControlMaster=no``: a connection
                # of its own (sshd grants agent forwarding once per connection, and
                # the pooled one must not expose the agent to other actions)
                conn = self._connect(host)
                with self._lock:
                    self._dedicated.add(conn)
                try:
                    chan = self._open_session(conn)
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    self._drop_dedicated(conn)
                    raise ConnectFailure(_line(f"channel: open failed: {exc}")) from None
            else:
                conn, chan = self._open(host)
        except ConnectFailure as exc:
            return _FailedChannel(exc.message)
        mark = new_mark()
        try:
            if forward and os.environ.get("SSH_AUTH_SOCK"):
                agent = AgentRequestHandler(chan)
            chan.exec_command(stream_command(shell, mark) if self.mark_commands
                              else f"{shell} -s")
        except (OSError, EOFError, paramiko.SSHException) as exc:
            _close_quietly(chan)
            if forward:
                self._drop_dedicated(conn)
            else:
                self._unreserve(conn)
            return _FailedChannel(_line(f"exec request failed on channel: {exc}"))
        channel = ParamikoChannel(self, conn, chan, mark, dedicated=forward, agent=agent)
        channel.registration = scope.on_cancel(channel.terminate, f"channel {host}")
        if scope.cancelled:
            channel.release()
            raise Cancelled()
        return channel

    def _drop_dedicated(self, conn: _Connection) -> None:
        with self._lock:
            self._dedicated.discard(conn)
        conn.close()

    # -- one-shot commands --------------------------------------------------
    def run(self, scope: CancelScope, host: str, command: str, stdin: Optional[str],
            timeout: Optional[float]) -> Execution:
        return self._run(scope, host, command, stdin, timeout, self.mark_commands)

    def _run(self, scope: CancelScope, host: str, command: str, stdin: Optional[str],
             timeout: Optional[float], mark_it: bool) -> Execution:
        scope.check()
        try:
            conn, chan = self._open(host)
        except ConnectFailure as exc:
            scope.check()
            return Execution(command, 255, "", exc.message)
        mark = new_mark()
        stopper = _Stopper(chan, (lambda: self.kill_marked(host, mark)) if mark_it else None)
        try:
            result = self._execute(scope, conn, stopper,
                                   marked_command(command, mark) if mark_it else command,
                                   command, stdin, timeout)
        finally:
            stopper.close()
            self._unreserve(conn)
        if scope.cancelled:
            raise Cancelled()
        return result

    def _execute(self, scope: CancelScope, conn: _Connection, stopper: _Stopper,
                 remote: str, command: str, stdin: Optional[str],
                 timeout: Optional[float]) -> Execution:
        chan = stopper.chan
        reader = _Reader(chan)

        def kill() -> None:
            stopper.stop(KILL_GRACE)

        scope.check()
        try:
            chan.exec_command(remote)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            return Execution(command, 255, "", _line(f"exec request failed on channel: {exc}"))
        # registered only now that the command runs; removed when it is over
        with scope.on_cancel(kill, f"command {conn.settings.alias}"):
            return self._collect(scope, conn, stopper, reader, command, stdin, timeout)

    def _collect(self, scope: CancelScope, conn: _Connection, stopper: _Stopper,
                 reader: _Reader, command: str, stdin: Optional[str],
                 timeout: Optional[float]) -> Execution:
        chan = stopper.chan
        out: List[bytes] = []
        err: List[bytes] = []
        if stdin is None:
            _shutdown_write(chan)  # ssh -n
        else:
            threading.Thread(target=_feed, args=(chan, encode(stdin)), daemon=True).start()

        def collect(wait: float) -> None:
            for name, data in reader.poll(wait):
                (out if name == OUT else err).append(data)

        deadline = None if timeout is None else time.monotonic() + timeout
        timed_out = False
        # the command is over when its exit status (or the channel's end) arrives
        while not chan.status_event.is_set() and not scope.cancelled:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                timed_out = True
                break
            collect(0.2 if left is None else min(0.2, left))
        if timed_out or scope.cancelled:
            stopper.stop(TERM_GRACE if timed_out else KILL_GRACE)
        # output still held open by children it left behind: a short grace only
        drain_until = time.monotonic() + DRAIN_GRACE
        while not reader.done and time.monotonic() < drain_until:
            collect(max(0.0, min(0.2, drain_until - time.monotonic())))
        collect(0.0)
        code = _status(chan) if chan.status_event.is_set() else 255
        if _lost(chan) and not (timed_out or scope.cancelled):
            err.append(encode(_line(f"Connection to {conn.settings.hostname} "
                                    "closed by remote host.")))
        return Execution(command, code, decode(b"".join(out)), decode(b"".join(err)), timed_out)

    def kill_remote(self, host: str, group: RemoteGroup) -> None:
        """TERM, then KILL, a process group on ``host`` (a channel of the pooled connection)."""
        try:
            self._run(CancelScope.shielded("remote kill"), host, group_kill_command(group),
                      None, 15.0, False)
        except Exception:  # noqa: BLE001 - killing is best effort
            pass

    def kill_marked(self, host: str, mark: str) -> None:
        """Kill the processes of a channel by its mark (servers refusing SSH signals)."""
        try:
            self._run(CancelScope.shielded("marked kill"), host, kill_marked_command(mark),
                      None, 15.0, False)
        except Exception:  # noqa: BLE001 - killing is best effort
            pass

    # -- remotes copy ---------------------------------------------------------
    def copy_remotes(self, scope: CancelScope, host: str, local_dir: str, remote_dir: str,
                     timeout: Optional[float]) -> Execution:
        """``scp -rp LOCAL/* HOST:DIR`` over SFTP: contents, modes and times."""
        shown = f"sftp put -r {local_dir}/* {host}:{remote_dir}"
        scope.check()
        try:
            conn, chan = self._open(host)
        except ConnectFailure as exc:
            scope.check()
            return Execution(shown, 255, "", exc.message)
        stopped = threading.Event()

        def stop() -> None:
            stopped.set()
            _close_quietly(chan)

        registration = scope.on_cancel(stop, f"sftp {host}")
        timer = threading.Timer(timeout, stop) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        errors: List[str] = []
        try:
            if scope.cancelled:
                raise Cancelled()
            chan.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(chan)
            _Copier(sftp, scope, errors).run(local_dir, remote_dir or ".")
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not stopped.is_set():
                errors.append(f"sftp: {host}: lost connection ({exc})")
        finally:
            registration.remove()
            if timer is not None:
                timer.cancel()
            _close_quietly(chan)
            self._unreserve(conn)
        if scope.cancelled:
            raise Cancelled()
        if stopped.is_set():
            return Execution(shown, 255, "", "".join(_line(e) for e in errors), timed_out=True)
        return Execution(shown, 1 if errors else 0, "", "".join(_line(e) for e in errors))


def _shutdown_write(chan: paramiko.Channel) -> None:
    try:
        chan.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        pass


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    try:
        if data:
            chan.sendall(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the command does not read its input, or the channel is gone
    finally:
        _shutdown_write(chan)


class _Copier:
    """The recursive copy of ``scp -rp``; errors are collected and the copy goes on."""

    def __init__(self, sftp: paramiko.SFTPClient, scope: CancelScope, errors: List[str]) -> None:
        self.sftp = sftp
        self.scope = scope
        self.errors = errors

    def run(self, local_dir: str, remote_dir: str) -> None:
        try:
            # the shell glob LOCAL/*: no dot files at the top
            names = sorted(n for n in os.listdir(local_dir) if not n.startswith("."))
        except OSError as exc:
            self.errors.append(f"sftp: {local_dir}: {exc.strerror}")
            return
        if not names:
            self.errors.append(f"sftp: {local_dir}/*: No such file or directory")
            return
        self._makedirs(remote_dir)
        for name in names:
            self._put(os.path.join(local_dir, name), posixpath.join(remote_dir, name))

    def _makedirs(self, path: str) -> None:
        """``mkdir -p`` (update_remotes does one first; a direct call may not)."""
        if self._is_dir(path):
            return
        parent = posixpath.dirname(path.rstrip("/"))
        if parent and parent != path:
            self._makedirs(parent)
        try:
            self.sftp.mkdir(path)
        except OSError:
            pass  # reported by the puts that follow

    def _is_dir(self, path: str) -> bool:
        try:
            mode = self.sftp.stat(path).st_mode
        except OSError:
            return False
        return mode is not None and stat.S_ISDIR(mode)

    def _put(self, local: str, remote: str) -> None:
        self.scope.check()
        try:
            st = os.stat(local)  # symlinks are followed, as scp -r does
        except OSError as exc:
            self.errors.append(f"sftp: {local}: {exc.strerror}")
            return
        mode = stat.S_IMODE(st.st_mode)
        try:
            if stat.S_ISDIR(st.st_mode):
                if not self._is_dir(remote):
                    self.sftp.mkdir(remote, mode | 0o700)
                for name in sorted(os.listdir(local)):
                    self._put(os.path.join(local, name), posixpath.join(remote, name))
            elif stat.S_ISREG(st.st_mode):
                self.sftp.put(local, remote, confirm=False)
            else:
                self.errors.append(f"sftp: {local}: not a regular file")
                return
            self.sftp.chmod(remote, mode)
            self.sftp.utime(remote, (st.st_atime, st.st_mtime))
        except OSError as exc:
            if self.sftp.sock.closed:
                raise  # the connection is gone: the whole copy failed
            self.errors.append(f"sftp: {remote}: {exc.strerror or exc}")
