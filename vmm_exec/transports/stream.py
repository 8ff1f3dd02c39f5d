"""The persistent remote shell of an action: Ruby's ``SshStream`` / ``SshStreamCommand``.

One ``ssh HOST bash -s`` per host per action; each command is written to its
stdin and framed by end markers on stdout and stderr (``EOF_OUT``,
``ExitCode: N EOF_ERR``). Before each command a ``-x`` check of the script
runs in the same shell; exit 42 means the remote scripts are missing and
triggers the remotes update.

Where the Ruby stream could hang or be fooled, this one does better without
changing what oned sees: the end markers carry a per-stream nonce (a script
printing ``EOF_OUT`` cannot end its own command early), a stderr without final
newline no longer hides the end marker (the command ends at once instead of
waiting for ``-w``), writes happen in a thread (no deadlock between a big
here-document and a chatty script), and the connection's exit status is
observed directly rather than parsed from text.
"""

from __future__ import annotations

import os
import re
import secrets
import selectors
import signal
import subprocess
import threading
import time
from typing import Callable, List, Optional

from vmm_exec.quoting import heredoc_delimiter
from vmm_exec.transports.base import (
    Cancelled,
    Execution,
    Logger,
    Tracker,
    decode,
    encode,
    kill_group,
)

MAGIC_RC = 42
CLOSE_GRACE = 2.0

# Opens the connection: argv of the ssh client running SHELL -s on the host.
Opener = Callable[[str, str, bool], List[str]]


class SshStream:
    """A persistent shell on one host, framing one command at a time."""

    def __init__(self, host: str, shell: str, opener: Opener, tracker: Tracker,
                 forward: bool = False) -> None:
        self.host = host
        self.shell = shell
        self.forward = forward
        self._opener = opener
        self._tracker = tracker
        self._proc: Optional[subprocess.Popen] = None
        self._writer: Optional[threading.Thread] = None
        self._nonce = secrets.token_hex(6)
        self._eof_out = f"EOF_OUT_{self._nonce}\n".encode()
        self._eof_err = re.compile(rb"ExitCode: ([0-9]*) EOF_ERR_" + self._nonce.encode() + rb"\n")
        self._open_fds: List[int] = []
        self.opened = False
        self.alive = False
        self.out = b""
        self.err = b""
        self.timeout: Optional[float] = None

    # -- connection ---------------------------------------------------------
    def open(self) -> None:
        argv = self._opener(self.host, self.shell, self.forward)
        self._proc = self._tracker.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._open_fds = [self._proc.stdout.fileno(), self._proc.stderr.fileno()]
        for fd in self._open_fds:
            os.set_blocking(fd, False)
        self.opened = True
        self.alive = True
        self.out = b""
        self.err = b""

    def reset(self) -> None:
        """Forget a dead connection so that the next command opens a new one."""
        if self._proc is not None:
            self.kill()
        self.opened = False
        self.alive = False

    def close(self) -> None:
        """Ask the remote shell to exit, then make sure the client is gone."""
        proc = self._proc
        if proc is None:
            return
        if self.alive:
            self._join_writer(CLOSE_GRACE)
            try:
                assert proc.stdin is not None
                proc.stdin.write(b"\nexit\n")
                proc.stdin.flush()
            except (OSError, ValueError):
                pass
        self.alive = False
        self._finish(proc)

    def kill(self) -> None:
        """Stop the connection and everything it runs (Ruby HUPs the group)."""
        proc = self._proc
        if proc is None:
            return
        self.alive = False
        kill_group(proc, signal.SIGHUP)
        self._finish(proc)

    def _finish(self, proc: subprocess.Popen) -> None:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        try:
            proc.wait(CLOSE_GRACE)
        except subprocess.TimeoutExpired:
            kill_group(proc, signal.SIGKILL)
            try:
                proc.wait(CLOSE_GRACE)
            except subprocess.TimeoutExpired:
                pass
        self._tracker.release(proc)
        self._proc = None

    # -- commands -----------------------------------------------------------
    def _send(self, data: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        self._join_writer(None)

        def write() -> None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(data)
                proc.stdin.flush()
            except (OSError, ValueError):
                pass  # the connection is gone; the reader will see it

        self._writer = threading.Thread(target=write, daemon=True)
        self._writer.start()

    def _join_writer(self, timeout: Optional[float]) -> None:
        if self._writer is not None:
            self._writer.join(timeout)
            self._writer = None

    def exec(self, command: str, body: Optional[str] = None) -> None:
        """Start ``command`` (and its here-document body) if the shell is alive."""
        if not self.alive:
            return
        self.out = b""
        self.err = b""
        framed = (f'({command}); echo "ExitCode: $? EOF_ERR_{self._nonce}" 1>&2; '
                  f'echo "EOF_OUT_{self._nonce}"\n')
        self._send(encode(framed) + encode(body))

    def wait_for_command(self, timeout: Optional[float] = None) -> int:
        """Collect output until both end markers (or the connection's end, or timeout)."""
        if timeout is not None:
            self.timeout = timeout
        proc = self._proc
        code = -1
        done_out = done_err = False
        start = time.monotonic()
        with selectors.DefaultSelector() as selector:
            for fd in self._open_fds:
                selector.register(fd, selectors.EVENT_READ)
            while not (done_out and done_err) and self.alive and proc is not None:
                if self._tracker.cancelled:
                    raise Cancelled()
                events = selector.select(0.2)
                for key, _ in events:
                    fd = key.fd
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        selector.unregister(fd)
                        self._open_fds.remove(fd)
                        continue
                    if proc.stdout is not None and fd == proc.stdout.fileno():
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
                        not self._open_fds or (not events and proc.poll() is not None)):
                    # the client is gone (its pipes may stay open in a
                    # ControlMaster it forked, so its exit status decides)
                    code = self._connection_lost(proc)
                    break
                if self.timeout is not None and time.monotonic() - start > self.timeout:
                    self.err += b"\nTimeout Error"
                    self._join_writer(0.1)
                    self.kill()
                    break
        self._join_writer(1.0 if self.alive else 0.1)
        return code

    def _take_exit_code(self) -> Optional[int]:
        m = self._eof_err.search(self.err)
        if m is None:
            return None
        start = m.start()
        head = self.err[:start]
        if head and not head.endswith(b"\n"):
            head += b"\n"  # stderr without final newline: keep the marker on its own line
        digits = m.group(1)
        self.err = head + b"ExitCode: " + digits + self.err[m.end():]
        return int(digits) if digits else 0

    def _connection_lost(self, proc: subprocess.Popen) -> int:
        """The client exited: what Ruby reads as ``ExitSSHCode: N`` + ``Error connecting``."""
        try:
            rc = proc.wait(CLOSE_GRACE)
        except subprocess.TimeoutExpired:
            kill_group(proc, signal.SIGKILL)
            rc = proc.wait()
        if rc < 0:
            rc = 255
        if self.err and not self.err.endswith(b"\n"):
            self.err += b"\n"
        self.err += f"ExitSSHCode: {rc}\nError connecting to {self.host}".encode()
        self.alive = False
        self._finish(proc)
        if self._tracker.cancelled:
            raise Cancelled()
        return rc

    def exec_and_wait(self, command: str) -> int:
        self.exec(command)
        return self.wait_for_command()


class StreamCommand:
    """``SshStreamCommand``: runs framed commands on a lazily opened stream and logs them."""

    def __init__(self, stream: SshStream, remote_dir: str, log: Logger,
                 update_remotes: Callable[[], None], reconnect: bool = False) -> None:
        self.stream = stream
        self.reconnect = reconnect
        self.remote_dir = remote_dir
        self.log = log
        self._update_remotes = update_remotes
        self.timeout: Optional[float] = None

    def run(self, command: str, stdin: Optional[str], base_cmd: Optional[str],
            timeout: Optional[float] = None, check_timeout: Optional[float] = None) -> Execution:
        """Run ``command`` fed by a here-document of ``stdin``; ``command`` is what gets logged.

        ``timeout`` sticks to the stream once given, as in Ruby, where a later
        network step on the same stream inherits the ``-w`` of an earlier vmm
        step; ``check_timeout`` overrides the timeout of the ``-x`` check.
        """
        if timeout is not None:
            self.timeout = timeout
        if self.reconnect and self.stream.opened and not self.stream.alive:
            self.stream.reset()
        if not self.stream.opened:
            self.stream.open()
        if base_cmd is not None:
            script = re.match(r"\S*", base_cmd)
            target = script.group(0) if script else ""
            check = (f'if [ ! -x "{target}" ];                           then exit {MAGIC_RC} '
                     f'1>&2;                         fi')
            self.stream.exec(check)
            if self.stream.wait_for_command(check_timeout) == MAGIC_RC:
                self._update_remotes()
        body = None
        shown = command
        if stdin is not None:
            delimiter = heredoc_delimiter(stdin)
            shown = f"cat << '{delimiter}' | {command}"
            body = f"{stdin}\n{delimiter}\n"
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
