"""``ParamikoTransport``: the :class:`~vmm_exec.transports.api.Transport` over pooled
paramiko connections.

Each command, stream or copy is a channel on a pooled connection to its host
(:mod:`.pool`); a stream that forwards the agent gets a connection of its own.

Bounds. ``run`` and ``copy_remotes`` with a ``timeout`` bound everything
together: waiting for a connection slot, connecting, opening the channel and
the command; ``open_stream`` bounds the same up to the shell's start with its
``timeout``. Without one, ``ConnectTimeout``, :data:`~.pool.OPEN_TIMEOUT` and
the keepalives bound the waits. A connection attempt is interruptible: the
action's scope aborts it while it runs, and :meth:`ParamikoTransport.close`
aborts every attempt and closes every connection.

Cancellation. The kill of a command is registered with the action's scope only
once the command runs (its exec or subsystem request was accepted) and removed
as soon as it is over; a request that went unanswered may have started its
command all the same, so its marked processes are then killed in the
background (:mod:`.kill`).
"""

from __future__ import annotations

import functools
import os
import threading
from typing import AbstractSet, Callable, List, Optional, Set, Tuple

import paramiko
from paramiko.agent import AgentRequestHandler

from vmm_exec.cancel import Cancelled, CancelScope, detach
from vmm_exec.transports.base import Execution, RemoteGroup, decode, encode, group_kill_command
from vmm_exec.transports.channel import OUT, Channel
from vmm_exec.transports.local import DRAIN_GRACE, TERM_GRACE
from vmm_exec.transports.paramiko.channel import (
    FailedChannel,
    ParamikoChannel,
    Reader,
    shutdown_write,
)
from vmm_exec.transports.paramiko.config import HostSettings, host_settings
from vmm_exec.transports.paramiko.connect import (
    CANCELLED,
    CLOSED,
    Attempt,
    ConnectFailure,
    Deadline,
    TimedOut,
    close_quietly,
    connect,
    line,
)
from vmm_exec.transports.paramiko.kill import (
    KILL_GRACE,
    Stopper,
    kill_marked_command,
    marked_command,
    new_mark,
    stream_command,
)
from vmm_exec.transports.paramiko.pool import (
    MAX_HANDSHAKES,
    MAX_POOLED,
    OPEN_TIMEOUT,
    Connection,
    Pool,
    Session,
    Unstarted,
)
from vmm_exec.transports.paramiko.session import ACCEPTED, NO_ANSWER, Requests, lost, status
from vmm_exec.transports.paramiko.sftp import Copier

# a remote kill is best effort and must not outlive a cancel by much
KILL_TIMEOUT = 15.0


class ParamikoTransport:
    """SSH through paramiko: pooled connections, channels per command.

    ``kill_remote=False`` (strict mode) sends the command text unchanged: no
    marks, so only the SSH signal can stop one-shot remote commands (as
    ``make_transport`` does for OpenSSH with ``OpenSSHTransport(kill_remote=not
    strict)``). A stream's shell is still killed by its process group on a
    cancel, in both modes: that kill is another channel, invisible to oned and
    to the scripts, and without it a root login (sshd refuses it the SSH signal)
    on a pooled connection would keep a cancelled script running until the
    connection closes.
    """

    name = "paramiko"
    silent_remote_kill = True

    def __init__(self, kill_remote: bool = True,
                 settings: Callable[[str], HostSettings] = host_settings,
                 max_connections: int = MAX_POOLED,
                 max_handshakes: int = MAX_HANDSHAKES) -> None:
        self.mark_commands = kill_remote
        self._settings = settings
        self._lock = threading.Lock()
        self._attempts: Set[Attempt] = set()
        self._dedicated: Set[Connection] = set()
        self.pool = Pool(self._connect, max_connections, max_handshakes)

    # -- connections ------------------------------------------------------------
    def _connect(self, host: str, deadline: Deadline, scope: CancelScope) -> Connection:
        """A new connection; the scope aborts the attempt while it runs."""
        settings = self._settings(host)
        attempt = Attempt()
        with self._lock:
            self._attempts.add(attempt)
        try:
            with scope.on_cancel(functools.partial(attempt.abort, CANCELLED),
                                 f"connect {host}"):
                client = connect(settings, deadline, attempt)
        finally:
            with self._lock:
                self._attempts.discard(attempt)
        conn = Connection(client, settings)
        conn.host = host
        return conn

    def _stopper(self, session: Session, mark: Optional[str]) -> Stopper:
        """Kills the session's remote side: the SSH signal, else the ``mark``."""
        host = session.conn.host

        def fallback(wait: bool) -> None:
            if mark is not None:
                self.kill_marked(host, mark, wait)

        return Stopper(session.requests, fallback if mark is not None else None,
                       functools.partial(self.pool.retire, session.conn))

    def _end(self, session: Session) -> None:
        """The session's channel is over: give its slot (or its own connection) back."""
        if session.pooled:
            self.pool.release(session.conn, opened=True)
        else:
            self._drop_dedicated(session.conn)

    def _drop_dedicated(self, conn: Connection) -> None:
        with self._lock:
            self._dedicated.discard(conn)
        conn.close()

    def warm_hosts(self) -> AbstractSet[str]:
        return self.pool.warm_hosts

    def close(self) -> None:
        """Abort connection attempts, close every connection; returns at once."""
        with self._lock:
            attempts = list(self._attempts)
            dedicated = list(self._dedicated)
            self._dedicated.clear()
        for attempt in attempts:
            attempt.abort(CLOSED)
        self.pool.close()
        for conn in dedicated:
            conn.close()

    # -- streams ----------------------------------------------------------------
    def open_stream(self, scope: CancelScope, host: str, shell: str, forward: bool,
                    timeout: Optional[float] = None) -> Channel:
        scope.check()
        deadline = Deadline(timeout)
        mark = new_mark()
        command = stream_command(shell, mark) if self.mark_commands else f"{shell} -s"
        agent: Optional[AgentRequestHandler] = None
        try:
            if forward:
                session, agent = self._open_forwarded(scope, host, command, deadline)
            else:
                session = self.pool.start(host, deadline, scope, "exec", (command,))
        except (ConnectFailure, TimedOut) as exc:
            scope.check()
            return FailedChannel(exc.message or line(f"ssh: connect to host {host}: "
                                                     "Connection timed out"))
        except Unstarted as exc:
            if self.mark_commands:
                self.kill_marked(host, mark, wait=False)
            scope.check()
            return FailedChannel(exc.message)
        channel = ParamikoChannel(self, session, mark, agent=agent)
        # registered only now that the shell runs; removed by release()
        channel.registration = scope.on_cancel(channel.terminate, f"channel {host}")
        if scope.cancelled:
            channel.release()
            raise Cancelled()
        return channel

    def _open_forwarded(self, scope: CancelScope, host: str, command: str,
                        deadline: Deadline) -> Tuple[Session, Optional[AgentRequestHandler]]:
        """Like ``ssh -o ForwardAgent=yes -o ControlMaster=no``: a connection of its own
        (sshd grants agent forwarding once per connection, and the pooled one must not
        expose the agent to other actions)."""
        conn = self._connect(host, deadline, scope)
        with self._lock:
            self._dedicated.add(conn)
        transport = conn.transport
        try:
            if transport is None:
                raise paramiko.SSHException("not connected")
            chan = transport.open_session(timeout=deadline.bound(OPEN_TIMEOUT))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._drop_dedicated(conn)
            if deadline.expired:
                raise TimedOut() from None
            raise ConnectFailure(line(f"channel 0: open failed: {exc}")) from None
        requests = Requests(chan)
        agent: Optional[AgentRequestHandler] = None
        try:
            if os.environ.get("SSH_AUTH_SOCK"):
                agent = AgentRequestHandler(chan)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        answer = requests.request("exec", command, timeout=deadline.bound(OPEN_TIMEOUT),
                                  scope=scope)
        if answer == ACCEPTED:
            return Session(conn, chan, requests, pooled=False), agent
        requests.close()
        if agent is not None:
            close_quietly(agent)
        message = conn.loss_message() if not conn.alive() else line(
            "exec request failed on channel 0")
        self._drop_dedicated(conn)
        if answer == NO_ANSWER:
            raise Unstarted(line(f"Timeout, server {conn.settings.hostname} not responding."))
        raise ConnectFailure(message)

    # -- one-shot commands ------------------------------------------------------
    def run(self, scope: CancelScope, host: str, command: str, stdin: Optional[str],
            timeout: Optional[float]) -> Execution:
        return self._run(scope, host, command, stdin, timeout, self.mark_commands)

    def _run(self, scope: CancelScope, host: str, command: str, stdin: Optional[str],
             timeout: Optional[float], mark_it: bool, priority: bool = False) -> Execution:
        scope.check()
        deadline = Deadline(timeout)
        mark = new_mark()
        remote = marked_command(command, mark) if mark_it else command
        try:
            session = self.pool.start(host, deadline, scope, "exec", (remote,), priority)
        except ConnectFailure as exc:
            scope.check()
            return Execution(command, 255, "", exc.message)
        except TimedOut:
            scope.check()
            return Execution(command, 255, "", "", timed_out=True)
        except Unstarted as exc:
            if mark_it:
                self.kill_marked(host, mark, wait=False)
            scope.check()
            if deadline.expired:
                return Execution(command, 255, "", "", timed_out=True)
            return Execution(command, 255, "", exc.message)
        stopper = self._stopper(session, mark if mark_it else None)
        try:
            # registered only now that the command runs; removed when it is over
            with scope.on_cancel(functools.partial(stopper.stop, KILL_GRACE),
                                 f"command {host}"):
                result = self._collect(scope, session, stopper, command, stdin, deadline)
        finally:
            stopper.close()
            self.pool.release(session.conn, opened=True)
        if scope.cancelled:
            raise Cancelled()
        return result

    def _collect(self, scope: CancelScope, session: Session, stopper: Stopper, command: str,
                 stdin: Optional[str], deadline: Deadline) -> Execution:
        chan = session.chan
        reader = Reader(chan)
        out: List[bytes] = []
        err: List[bytes] = []
        if stdin is None:
            shutdown_write(chan)  # ssh -n
        else:
            threading.Thread(target=_feed, args=(chan, encode(stdin)), daemon=True).start()

        def collect(wait: float) -> None:
            for name, data in reader.poll(wait):
                (out if name == OUT else err).append(data)

        timed_out = False
        # the command is over when its exit status (or the channel's end) arrives
        while not chan.exit_status_ready() and not scope.cancelled:
            left = deadline.left()
            if left is not None and left <= 0:
                timed_out = True
                break
            collect(0.2 if left is None else min(0.2, left))
        if timed_out or scope.cancelled:
            stopper.stop(TERM_GRACE if timed_out else KILL_GRACE)
        # output still held open by children it left behind: a short grace only
        drain = Deadline(DRAIN_GRACE)
        while not reader.done and not drain.expired:
            collect(drain.bound(0.2))
        collect(0.0)
        code = status(chan) if chan.exit_status_ready() else 255
        if lost(chan) and not (timed_out or scope.cancelled):
            err.append(encode(session.conn.loss_message()))
        return Execution(command, code, decode(b"".join(out)), decode(b"".join(err)), timed_out)

    # -- remote kills -------------------------------------------------------------
    def kill_remote(self, host: str, group: RemoteGroup) -> None:
        """TERM, then KILL, a process group on ``host`` (a channel of a pooled connection).

        Bounded by :data:`KILL_TIMEOUT`; in the background when the host has just left
        a request unanswered (the caller must not wait for a host that does not answer).
        """
        self._kill(host, group_kill_command(group), self.pool.responsive(host))

    def kill_marked(self, host: str, mark: str, wait: bool = True) -> None:
        """Kill the processes of a channel by its mark (servers refusing SSH signals)."""
        self._kill(host, kill_marked_command(mark), wait and self.pool.responsive(host))

    def _kill(self, host: str, command: str, wait: bool) -> None:
        def work() -> None:
            try:
                self._run(CancelScope.shielded("remote kill"), host, command, None,
                          KILL_TIMEOUT, False, priority=True)
            except Exception:  # noqa: BLE001 - killing is best effort
                pass

        if wait:
            work()
        else:
            # the driver waits for detached kills (bounded) before it exits
            detach(work, f"remote kill {host}")

    # -- remotes copy -------------------------------------------------------------
    def copy_remotes(self, scope: CancelScope, host: str, local_dir: str, remote_dir: str,
                     timeout: Optional[float]) -> Execution:
        """``scp -rp LOCAL/* HOST:DIR`` over SFTP: contents, modes and times."""
        shown = f"sftp put -r {local_dir}/* {host}:{remote_dir}"
        scope.check()
        deadline = Deadline(timeout)
        try:
            session = self.pool.start(host, deadline, scope, "subsystem", ("sftp",))
        except ConnectFailure as exc:
            scope.check()
            return Execution(shown, 255, "", exc.message)
        except (TimedOut, Unstarted) as exc:
            scope.check()
            if deadline.expired:
                return Execution(shown, 255, "", "", timed_out=True)
            return Execution(shown, 255, "", exc.message)
        stopped = threading.Event()

        def stop() -> None:
            stopped.set()
            session.requests.close()

        # registered only now that the SFTP server runs; removed when the copy is over
        registration = scope.on_cancel(stop, f"sftp {host}")
        left = deadline.left()
        timer = threading.Timer(left, stop) if left is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        errors: List[str] = []
        try:
            if scope.cancelled:
                raise Cancelled()
            sftp = paramiko.SFTPClient(session.chan)
            Copier(sftp, scope, errors).run(local_dir, remote_dir or ".")
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not stopped.is_set():
                errors.append(f"sftp: {host}: lost connection ({exc})")
        finally:
            registration.remove()
            if timer is not None:
                timer.cancel()
            session.requests.close()
            self.pool.release(session.conn, opened=True)
        if scope.cancelled:
            raise Cancelled()
        if stopped.is_set():
            return Execution(shown, 255, "", "".join(line(e) for e in errors), timed_out=True)
        return Execution(shown, 1 if errors else 0, "", "".join(line(e) for e in errors))


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    try:
        if data:
            chan.sendall(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the command does not read its input, or the channel is gone
    finally:
        shutdown_write(chan)
