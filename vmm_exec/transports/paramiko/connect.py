"""Connecting: sockets, host keys, authentication, keepalives, and the ssh binary's words.

A connection attempt is bounded as a whole (``ConnectTimeout``, and the
action's deadline when it has one) and can be aborted from another thread
(DRIVER_CANCEL, driver shutdown): :class:`Attempt` shuts its socket down,
which ends paramiko's handshake at once, whatever phase it is in.

Failures are reported as the ``ssh`` binary reports them (its message, exit
status 255), so logs look the same whichever transport runs.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from typing import Any, Optional, Set, Union, cast

import paramiko

import vmm_exec.transports.paramiko._private as _private
import vmm_exec.transports.paramiko.alarms as alarms
from vmm_exec.cancel import Cancelled
from vmm_exec.transports.paramiko.config import HostSettings
from vmm_exec.transports.paramiko.filecache import FileCache

POLL = 0.1


def close_quietly(closable: Any) -> None:
    """Close a channel/client/agent whose connection may already be gone."""
    try:
        closable.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass


def line(text: str) -> str:
    """The ssh binary ends its messages with CR LF."""
    return text + "\r\n"


class Deadline:
    """When an action's time is up (None: no bound of its own)."""

    def __init__(self, timeout: Optional[float]) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout

    def left(self) -> Optional[float]:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def bound(self, limit: float) -> float:
        """``limit``, or less if the deadline comes first."""
        left = self.left()
        return limit if left is None else min(limit, left)

    @property
    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


class ConnectFailure(Exception):
    """No usable connection or channel; ``message`` is what the ssh binary would print."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TimedOut(Exception):
    """The action's deadline passed before its command could start."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


# -- the ssh binary's words ----------------------------------------------------------

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


def socket_error(settings: HostSettings, exc: BaseException) -> str:
    where = f"ssh: connect to host {settings.hostname} port {settings.port}"
    if isinstance(exc, socket.gaierror):
        return line(f"ssh: Could not resolve hostname {settings.hostname}: "
                    f"{exc.strerror or exc}")
    if isinstance(exc, socket.timeout):
        return line(f"{where}: Connection timed out")
    if isinstance(exc, OSError) and exc.strerror:
        return line(f"{where}: {exc.strerror}")
    return line(f"{where}: {exc}")


def connect_error(settings: HostSettings, exc: BaseException) -> str:
    """The ssh binary's words for a failed connection."""
    if isinstance(exc, _UnknownHostKey):
        return (line(f"No {exc.key_type} host key is known for {exc.name} and you have "
                     "requested strict checking.") + line("Host key verification failed."))
    if isinstance(exc, paramiko.BadHostKeyException):
        return (line("@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@")
                + line("@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @")
                + line("@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@")
                + line(f"Host key for {exc.hostname} has changed and you have requested "
                       "strict checking.")
                + line("Host key verification failed."))
    if isinstance(exc, paramiko.BadAuthenticationType):
        allowed = ",".join(exc.allowed_types) or "publickey"
        return line(f"{settings.user}@{settings.hostname}: Permission denied ({allowed}).")
    if isinstance(exc, paramiko.AuthenticationException) or (
            isinstance(exc, paramiko.SSHException)
            and "No authentication methods available" in str(exc)):
        return line(f"{settings.user}@{settings.hostname}: Permission denied (publickey).")
    if isinstance(exc, (EOFError, paramiko.SSHException)):
        return line(f"Connection closed by {settings.hostname} port {settings.port}"
                    + (f" ({exc})" if str(exc) else ""))
    return socket_error(settings, exc)


def timeout_message(settings: HostSettings, phase: str) -> str:
    """What ssh prints when ``ConnectTimeout`` runs out in ``phase``."""
    where = f"{settings.hostname} port {settings.port}"
    if phase == "tcp":
        return line(f"ssh: connect to host {where}: Connection timed out")
    if phase == "banner":
        return (line("Connection timed out during banner exchange")
                + line(f"Connection to {where} timed out"))
    return line(f"Connection to {where} timed out")


# -- one attempt ----------------------------------------------------------------------

CANCELLED = "cancelled"
CLOSED = "closed"
EXPIRED = "expired"

_Endpoint = Union[socket.socket, paramiko.ProxyCommand]


class Attempt:
    """One connection attempt, which another thread may abort.

    Aborting shuts the socket down (a ProxyCommand is stopped): the TCP connect
    loop and paramiko's handshake both end at once. The socket itself is closed
    by the connecting thread only, so its descriptor cannot be reused under it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoint: Optional[_Endpoint] = None
        self._done = False
        self.reason: Optional[str] = None
        self.phase = "tcp"

    def attach(self, endpoint: _Endpoint) -> None:
        with self._lock:
            self._endpoint = endpoint
            aborted = self.reason is not None
        if aborted:
            _shut(endpoint)

    def abort(self, reason: str) -> None:
        """Stop the attempt (idempotent; nothing happens once it has finished)."""
        with self._lock:
            if self._done or self.reason is not None:
                return
            self.reason = reason
            endpoint = self._endpoint
        if endpoint is not None:
            _shut(endpoint)

    def finish(self) -> Optional[str]:
        """The attempt is over: no abort from now on; why it was aborted, if it was."""
        with self._lock:
            self._done = True
            return self.reason


def _shut(endpoint: _Endpoint) -> None:
    if isinstance(endpoint, socket.socket):
        try:
            endpoint.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    else:
        close_quietly(endpoint)


def _tcp_connect(settings: HostSettings, attempt: Attempt, until: float) -> socket.socket:
    """A connected TCP socket; a non-blocking connect, so that an abort is seen at once.

    (Name resolution is not abortable; the resolver's own timeouts bound it.)
    """
    infos = socket.getaddrinfo(settings.hostname, settings.port, type=socket.SOCK_STREAM)
    last: Optional[BaseException] = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            while code in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
                if attempt.reason is not None:
                    raise OSError(errno.ECANCELED, "aborted")
                left = until - time.monotonic()
                if left <= 0:
                    raise socket.timeout("timed out")
                if poller.poll(int(min(POLL, left) * 1000) + 1):
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code != 0:
                raise OSError(code, os.strerror(code))
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except socket.timeout:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            if attempt.reason is not None:
                raise
            last = exc
    raise last if last is not None else OSError(errno.EHOSTUNREACH, "No address")


def connect(settings: HostSettings, deadline: Deadline, attempt: Attempt) -> paramiko.SSHClient:
    """A new authenticated connection.

    Raises :class:`ConnectFailure` with ssh's message, :class:`TimedOut` when the
    action's deadline ends the attempt, :class:`~vmm_exec.cancel.Cancelled` when it
    was aborted as ``CANCELLED``.
    """
    if settings.proxy_jump is not None:
        raise ConnectFailure(line(f"ssh: {settings.alias}: ProxyJump is not supported by the "
                                  "paramiko transport (use ProxyCommand)"))
    left = deadline.left()
    # which bound ends the attempt: the action's (a timeout) or ConnectTimeout (a failure)
    action_bound = left is not None and left <= settings.connect_timeout
    limit = deadline.bound(settings.connect_timeout)
    # paramiko's own waits get a little more: the timer below ends the attempt first
    slack = limit + 1.0
    until = time.monotonic() + limit
    timer = alarms.schedule(limit, attempt.abort, EXPIRED)  # no thread per attempt
    client: Optional[paramiko.SSHClient] = None
    endpoint: Optional[_Endpoint] = None
    try:
        try:
            if settings.proxy_command is not None:
                endpoint = paramiko.ProxyCommand(settings.proxy_command)
            else:
                endpoint = _tcp_connect(settings, attempt, until)
            attempt.attach(endpoint)
            attempt.phase = "banner"
            client = paramiko.SSHClient()
            _load_host_keys(client, settings)
            identities = [p for p in settings.identity_files if os.path.isfile(p)]
            agent = bool(os.environ.get("SSH_AUTH_SOCK")) and not settings.identities_only
            client.connect(settings.hostname, port=settings.port, username=settings.user,
                           key_filename=cast(Any, identities or None),
                           look_for_keys=not settings.identity_files, allow_agent=agent,
                           sock=cast(Any, endpoint), timeout=slack, banner_timeout=slack,
                           auth_timeout=slack, transport_factory=aead_first_transport)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if client is not None and _private.banner_received(client.get_transport()):
                attempt.phase = "after banner"
            reason = attempt.finish()
            _discard(client, endpoint)
            if reason == CANCELLED:
                raise Cancelled() from None
            if reason == CLOSED:
                raise ConnectFailure(line(f"ssh: connect to host {settings.hostname} port "
                                          f"{settings.port}: transport closed")) from None
            if reason == EXPIRED or isinstance(exc, socket.timeout):
                message = timeout_message(settings, attempt.phase)
                if action_bound:
                    raise TimedOut(message) from None
                raise ConnectFailure(message) from None
            if endpoint is None:
                raise ConnectFailure(socket_error(settings, exc)) from None
            raise ConnectFailure(connect_error(settings, exc)) from None
        except BaseException:
            attempt.finish()
            _discard(client, endpoint)
            raise
    finally:
        timer.cancel()
    reason = attempt.finish()
    if reason is not None:  # aborted just as it succeeded: the socket is shut down
        _discard(client, endpoint)
        if reason == CANCELLED:
            raise Cancelled()
        raise (TimedOut if action_bound and reason == EXPIRED else ConnectFailure)(
            timeout_message(settings, "after banner"))
    return client


# Ciphers with their own integrity check (AES-GCM, done in one OpenSSL call per
# packet) before the CTR + HMAC pairs paramiko prefers: an HMAC is computed in
# Python per packet, a few percent of the driver's CPU per action. Only the order
# changes; a server without them negotiates the others as before.
AEAD_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def aead_first_transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    offered = list(options.ciphers)
    options.ciphers = tuple([c for c in AEAD_CIPHERS if c in offered]
                            + [c for c in offered if c not in AEAD_CIPHERS])
    return transport


def _discard(client: Optional[paramiko.SSHClient], endpoint: Optional[_Endpoint]) -> None:
    if client is not None:
        close_quietly(client)
    if endpoint is not None:
        close_quietly(endpoint)


def _parse_known_hosts(path: str) -> paramiko.HostKeys:
    known = paramiko.HostKeys()
    try:
        known.load(path)
    except (OSError, paramiko.SSHException, ValueError):
        pass  # what was read before the bad line stays, as before
    return known


# every known_hosts file parsed once per version of it (see filecache)
_KNOWN_HOSTS: FileCache[paramiko.HostKeys] = FileCache(_parse_known_hosts)


def _load_host_keys(client: paramiko.SSHClient, settings: HostSettings) -> None:
    """Give the client the known keys of this host only: paramiko looks up
    ``host_key_name`` (the alias's keys go under it, as OpenSSH looks up the alias
    only); a name's keys from several files keep the files' order."""
    keys = client.get_host_keys()
    wanted = settings.host_key_alias or settings.host_key_name
    added: Set[str] = set()
    for path in settings.known_hosts:
        known = _KNOWN_HOSTS.get(path)
        found = known.lookup(wanted) if known is not None else None
        if found is None:
            continue
        for key_type in found.keys():
            if key_type not in added:  # the first file's key of a type is the one used
                added.add(key_type)
                keys.add(settings.host_key_name, key_type, found[key_type])
    client.set_missing_host_key_policy(_RejectUnknown(settings.host_key_alias))
