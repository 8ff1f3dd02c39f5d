"""The persistent remote shell of an action: Ruby's ``SshStream`` / ``SshStreamCommand``.

One ``ssh HOST bash -s`` per host per action; each command is written to its
stdin and framed by end markers on stdout and stderr (``EOF_OUT``,
``ExitCode: N EOF_ERR``). Before each command a ``-x`` check of the script
runs in the same shell; exit 42 means the remote scripts are missing and
triggers the remotes update. Ruby sends the check as a command of its own;
default mode sends it with the command (:class:`StreamCommand`).

Where the Ruby stream could hang or be fooled, this one does better without
changing what oned sees: the end markers carry a per-stream nonce (a script
printing ``EOF_OUT`` cannot end its own command early), a stderr without final
newline no longer hides the end marker (the command ends at once instead of
waiting for ``-w``), writes happen in a thread (no deadlock between a big
here-document and a chatty script), and the connection's exit status is
observed directly rather than parsed from text.
"""

from __future__ import annotations

import functools
import re
import secrets
import threading
import time
from typing import Callable, Optional, Set

from vmm_exec.cancel import Cancelled, CancelScope, Registration, detach
from vmm_exec.quoting import check_operand, heredoc_delimiter
from vmm_exec.transports.base import (
    WATCHDOG_DISARM,
    WATCHDOG_REPORT,
    WATCHDOG_START,
    Execution,
    Logger,
    RemoteGroup,
    decode,
    encode,
    parse_group,
)
from vmm_exec.transports.channel import OUT, Channel

MAGIC_RC = 42
CLOSE_GRACE = 2.0
EXIT_PREFIX = b"ExitCode: "


# Opens the connection for (host, shell, forward): a channel running SHELL -s
# on the host (may raise OSError when the client cannot be started).
Opener = Callable[[str, str, bool], Channel]


class SshStream:
    """A persistent shell on one host, framing one command at a time."""

    def __init__(self, host: str, shell: str, opener: Opener, scope: CancelScope,
                 forward: bool = False,
                 remote_killer: Optional[Callable[[RemoteGroup], None]] = None,
                 identify_timeout: Optional[float] = None, watchdog: bool = True) -> None:
        self.host = host
        self._identify_timeout = identify_timeout
        # Given a remote process group id, kills it over another connection:
        # killing the local ssh client does not stop what runs on the host.
        self._remote_killer = remote_killer
        self.remote_group: Optional[RemoteGroup] = None
        self._kill_registration: Optional[Registration] = None
        # the remote shell runs a watchdog, disarmed on close
        self._armed = False
        self._watchdog_enabled = watchdog
        # the client's exit status when the identification found the connection lost
        self._lost_code: Optional[int] = None
        self.shell = shell
        self.forward = forward
        self._opener = opener
        self._scope = scope
        self._channel: Optional[Channel] = None
        self._writer: Optional[threading.Thread] = None
        self._nonce = secrets.token_hex(6)
        self._eof_out = f"EOF_OUT_{self._nonce}\n".encode()
        # the end of a command's stderr: ``ExitCode: <digits>`` + this marker (found
        # with bytes.find: a regular expression per stream cost a compile per action)
        self._eof_err = f" EOF_ERR_{self._nonce}\n".encode()
        self._missing = f"MISSING_{self._nonce}".encode()
        self._ended: Set[str] = set()
        self.opened = False
        self.alive = False
        self.out = b""
        self.err = b""
        self.timeout: Optional[float] = None

    # -- connection ---------------------------------------------------------
    def open(self, identify_timeout: Optional[float] = None) -> None:
        self._ended = set()
        self._lost_code = None
        self.opened = True
        self.out = b""
        self.err = b""
        try:
            self._channel = self._opener(self.host, self.shell, self.forward)
        except OSError as exc:
            # like a client that could not start: the stream is dead from the outset
            self.alive = False
            self.err = (f"{exc.strerror or exc}\nExitSSHCode: 127\n"
                        f"Error connecting to {self.host}").encode()
            return
        self.alive = True
        if self._watchdog_enabled:
            self._identify(identify_timeout if identify_timeout is not None
                           else self._identify_timeout)

    def _identify(self, timeout: Optional[float]) -> None:
        """Learn the remote shell's process group and start its watchdog.

        A line for the shell and a framed command (see
        :data:`~vmm_exec.transports.base.WATCHDOG_START`): no script runs and
        nothing of it is logged (the output is consumed here), so the Ruby
        transcript is unchanged. With a remote killer
        (default mode) the group's kill is also registered with the scope, from
        now until the shell is closed, killed or lost.
        """
        self.exec(WATCHDOG_REPORT, before=WATCHDOG_START)  # one write, one packet
        code = self.wait_for_command(once=timeout)
        group = parse_group(decode(self.out)) if code == 0 else None
        self._armed = group is not None
        if not self.alive:
            # the connection was lost already: the first real command reports it,
            # with the client's status, as if it had been the first one sent
            self._lost_code = code
        if self.alive:
            # a dead stream keeps its error text for the command that follows
            self.out = b""
            self.err = b""
        if group is not None and self.alive and self._remote_killer is not None:
            self.remote_group = group
            # the group is bound now: the action thread may forget it while a cancel runs
            self._kill_registration = self._scope.on_cancel(
                functools.partial(self._remote_killer, group), f"stream {self.host}")

    def _forget_remote(self) -> None:
        """The remote shell is over: its group id may be reused, never kill it again."""
        self.remote_group = None
        registration, self._kill_registration = self._kill_registration, None
        if registration is not None:
            registration.remove()

    def _kill_remote(self) -> None:
        """Kill the remote shell's group in the background: a host that stopped
        answering must not hold the action beyond its timeout."""
        group, killer = self.remote_group, self._remote_killer
        self._forget_remote()
        if group is not None and killer is not None:
            detach(functools.partial(killer, group), f"kill stream on {self.host}")

    def reset(self) -> None:
        """Forget a dead connection so that the next command opens a new one."""
        if self._channel is not None:
            self.kill()
        self.opened = False
        self.alive = False

    def close(self) -> None:
        """Ask the remote shell to exit, then make sure the connection is gone."""
        channel = self._channel
        if channel is None:
            return
        if self.alive:
            self._join_writer(CLOSE_GRACE)
            disarm = f"{WATCHDOG_DISARM}; " if self._armed else ""
            channel.send(encode(f"\n{disarm}exit\n"))
        self.alive = False
        self._forget_remote()  # the shell exits
        self._finish(channel)

    def kill(self) -> None:
        """Stop the connection and everything it runs (Ruby HUPs the group)."""
        channel = self._channel
        if channel is None:
            return
        self.alive = False
        channel.terminate()
        self._kill_remote()
        self._finish(channel)

    def _finish(self, channel: Channel) -> None:
        channel.release()
        self._channel = None

    # -- commands -----------------------------------------------------------
    def _send(self, data: bytes) -> None:
        channel = self._channel
        if channel is None:
            return
        self._join_writer(None)
        if channel.send_now(data):  # most commands: no thread
            return
        self._writer = threading.Thread(target=channel.send, args=(data,), daemon=True)
        self._writer.start()

    def _join_writer(self, timeout: Optional[float]) -> None:
        if self._writer is not None:
            self._writer.join(timeout)
            self._writer = None

    def exec(self, command: str, body: Optional[str] = None,
             unless_missing: Optional[str] = None, before: str = "") -> None:
        """Start ``command`` (and its here-document body) if the shell is alive.

        ``unless_missing``: a script (a ``[ -x ]`` operand) checked first, in the
        same round trip: when it is not executable the command does not run and
        :meth:`missing` tells so after :meth:`wait_for_command`. ``before``: shell
        lines sent ahead of the framed command, in the same write."""
        if not self.alive:
            return
        self.out = b""
        self.err = b""
        if unless_missing is not None:
            command = (f"if [ ! -x {unless_missing} ]; then echo {self._missing.decode()}"
                       f" 1>&2; exit {MAGIC_RC}; fi; {command}")
        framed = (f'({command}); echo "ExitCode: $? EOF_ERR_{self._nonce}" 1>&2; '
                  f'echo "EOF_OUT_{self._nonce}"\n')
        self._send(encode(before + framed) + encode(body))

    def missing(self, code: int) -> bool:
        """After a command started ``unless_missing``: its script was missing (the
        marker line is taken out of stderr, wherever the shell put it)."""
        if code != MAGIC_RC:
            return False
        line = self._missing + b"\n"
        if self.err.startswith(line):
            at = 0
        else:
            at = self.err.find(b"\n" + line) + 1
            if at == 0:  # not there: the command itself exited 42
                return False
        self.err = self.err[:at] + self.err[at + len(line):]
        return True

    def wait_for_command(self, timeout: Optional[float] = None,
                         once: Optional[float] = None) -> int:
        """Collect output until both end markers (or the connection's end, or timeout).

        ``timeout`` sticks to the stream (Ruby's ``@timeout``): later waits without
        one inherit it. ``once`` bounds this wait only (the ``-x`` check and the
        identification, which must not change how long scripts may run).
        """
        if timeout is not None:
            self.timeout = timeout
        limit = once if once is not None else self.timeout
        if not self.alive and self._lost_code is not None:
            code, self._lost_code = self._lost_code, None
            return code
        channel = self._channel
        code = -1
        done_out = done_err = False
        start = time.monotonic()
        while not (done_out and done_err) and self.alive and channel is not None:
            if self._scope.cancelled:
                raise Cancelled()
            chunks = channel.receive(0.2)
            for name, chunk in chunks:
                if not chunk:
                    self._ended.add(name)
                elif name == OUT:
                    self.out += chunk
                    if not done_out and self._eof_out in self.out:
                        self.out = self.out.replace(self._eof_out, b"", 1)
                        done_out = True
                else:
                    self.err += chunk
                    if not done_err:
                        found = self._take_exit_code()
                        if found is not None:
                            code, done_err = found, True
            if not (done_out and done_err) and (
                    len(self._ended) == 2 or (not chunks and channel.exit_status() is not None)):
                # the connection is gone (an ssh client's pipes may stay open
                # in a ControlMaster it forked, so its exit status decides)
                code = self._connection_lost(channel)
                break
            if limit is not None and time.monotonic() - start > limit:
                self.err += b"\nTimeout Error"
                self._join_writer(0.1)
                self.kill()
                break
        self._join_writer(1.0 if self.alive else 0.1)
        return code

    def _take_exit_code(self) -> Optional[int]:
        err = self.err
        end = err.find(self._eof_err)
        while end >= 0:
            digits_at = end
            while digits_at > 0 and 48 <= err[digits_at - 1] <= 57:  # 0-9
                digits_at -= 1
            start = digits_at - len(EXIT_PREFIX)
            if start >= 0 and err.startswith(EXIT_PREFIX, start):
                head = err[:start]
                if head and not head.endswith(b"\n"):
                    head += b"\n"  # stderr without final newline: the marker on its own line
                digits = err[digits_at:end]
                self.err = head + EXIT_PREFIX + digits + err[end + len(self._eof_err):]
                return int(digits) if digits else 0
            end = err.find(self._eof_err, end + 1)
        return None

    def _connection_lost(self, channel: Channel) -> int:
        """The connection ended: what Ruby reads as ``ExitSSHCode: N`` + ``Error connecting``."""
        rc = channel.wait(CLOSE_GRACE)
        if rc is None:
            channel.terminate()
            rc = channel.wait(CLOSE_GRACE)
        if rc is None:
            rc = 255
        if self.err and not self.err.endswith(b"\n"):
            self.err += b"\n"
        self.err += f"ExitSSHCode: {rc}\nError connecting to {self.host}".encode()
        self.alive = False
        self._forget_remote()
        self._finish(channel)
        if self._scope.cancelled:
            raise Cancelled()
        return rc

    def exec_and_wait(self, command: str) -> int:
        self.exec(command)
        return self.wait_for_command()


class StreamCommand:
    """``SshStreamCommand``: runs framed commands on a lazily opened stream and logs them.

    ``merge_check`` (default mode): the ``-x`` check of the script goes in the
    command's own round trip, ahead of it in the same subshell, instead of one
    of its own: half the round trips of an action (on a WAN link, half its
    latency; on the front-end, fewer wake-ups and, with paramiko, packets).
    A missing script prints a per-stream marker and skips the command, which
    runs again after the remotes update, so scripts see what they saw before.
    Strict mode keeps Ruby's separate check, text and all.
    """

    def __init__(self, stream: SshStream, remote_dir: str, log: Logger,
                 update_remotes: Callable[[], None], reconnect: bool = False,
                 merge_check: bool = False) -> None:
        self.stream = stream
        self.reconnect = reconnect
        self.remote_dir = remote_dir
        self.log = log
        self._update_remotes = update_remotes
        self.timeout: Optional[float] = None
        self.merge_check = merge_check

    def run(self, command: str, stdin: Optional[str], base_cmd: Optional[str],
            timeout: Optional[float] = None, check_timeout: Optional[float] = None) -> Execution:
        """Run ``command`` fed by a here-document of ``stdin``; ``command`` is what gets logged.

        ``timeout`` sticks to the stream once given, as in Ruby, where a later
        network step on the same stream inherits the ``-w`` of an earlier vmm
        step; ``check_timeout`` bounds the connection, the identification and a
        separate ``-x`` check only (None: they inherit the stream's timeout, as
        in Ruby); a merged check shares the command's ``timeout``.
        """
        if timeout is not None:
            self.timeout = timeout
        if self.reconnect and self.stream.opened and not self.stream.alive:
            self.stream.reset()
        if not self.stream.opened:
            self.stream.open(check_timeout if check_timeout is not None else self.timeout)
        guard: Optional[str] = None  # the script checked in the command's round trip
        if base_cmd is not None:
            script = re.match(r"\S*", base_cmd)
            operand = check_operand(script.group(0) if script else "")
            # a stream found dead when it opened reports its end to the first command
            # and -1 to the next, as Ruby's check and command do: same text both ways
            if self.merge_check and self.stream.alive:
                guard = operand
            else:
                check = (f'if [ ! -x {operand} ];                           '
                         f'then exit {MAGIC_RC} 1>&2;                         fi')
                self.stream.exec(check)
                if self.stream.wait_for_command(once=check_timeout) == MAGIC_RC:
                    self._update_remotes()
        body = None
        shown = command
        if stdin is not None:
            delimiter = heredoc_delimiter(stdin)
            shown = f"cat << '{delimiter}' | {command}"
            body = f"{stdin}\n{delimiter}\n"
        self.stream.exec(shown, body, unless_missing=guard)
        code = self.stream.wait_for_command(self.timeout)
        if guard is not None and self.stream.missing(code):
            self._update_remotes()
            self.stream.exec(shown, body)
            code = self.stream.wait_for_command(self.timeout)
        out = decode(self.stream.out)
        err = decode(self.stream.err)
        if code != 0:
            self.log(f"Command execution fail (exit code: {code}): {shown}", True)
        self.log(err, True)
        return Execution(shown, code, out, err, timed_out=err.endswith("\nTimeout Error"))

    def close(self) -> None:
        self.stream.close()
