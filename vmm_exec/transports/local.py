"""Commands run on the front-end: Ruby's ``LocalCommand`` / ``GenericCommand#run``."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
from typing import IO, Callable, Dict, List, Optional, Sequence, Union

from vmm_exec.cancel import CancelScope, detach
from vmm_exec.transports.base import Execution, Logger, decode, encode

TERM_GRACE = 5.0
# After the command exits, how long to keep reading output that its leftover
# children may still hold open (Ruby joins its reader threads for 0.1 s).
DRAIN_GRACE = 0.5
# On a cancel, how long to wait for the killed command's stderr to reach its end
# before the remote side is killed with what it announced there.
ABORT_DRAIN = 0.5


class _Drain(threading.Thread):
    """Drains the command's stdout and stderr (one thread for both) so that no
    amount of output can block the child; ``ended[i]`` is set at pipe i's end."""

    def __init__(self, pipes: Sequence[IO[bytes]]) -> None:
        super().__init__(daemon=True)
        self.pipes = list(pipes)
        self.chunks: List[List[bytes]] = [[] for _ in self.pipes]
        self.ended = [threading.Event() for _ in self.pipes]

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            for index, pipe in enumerate(self.pipes):
                selector.register(pipe.fileno(), selectors.EVENT_READ, index)
            while selector.get_map():
                for key, _events in selector.select():
                    try:
                        chunk = os.read(key.fd, 65536)
                    except OSError:
                        chunk = b""
                    if chunk:
                        self.chunks[key.data].append(chunk)
                    else:
                        selector.unregister(key.fd)
                        self._close(key.data)
        finally:
            selector.close()
            for index in range(len(self.pipes)):
                self._close(index)

    def _close(self, index: int) -> None:
        # the drain owns the pipes: closing one from another thread while a read
        # is blocked would let the fd number be reused under it
        if not self.ended[index].is_set():
            try:
                self.pipes[index].close()
            except OSError:
                pass
            self.ended[index].set()

    def text(self, index: int) -> str:
        return decode(b"".join(self.chunks[index]))


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
    except (BrokenPipeError, OSError, ValueError):
        pass  # the command does not read its input
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _feed_soon(pipe: IO[bytes], data: bytes) -> None:
    """Write the command's input and close it: at once when the pipe takes it all
    (nearly always: scripts get a few KiB), else the rest from a thread."""
    fd = pipe.fileno()
    written = 0
    try:
        os.set_blocking(fd, False)
        while written < len(data):
            written += os.write(fd, data[written:])
    except BlockingIOError:
        os.set_blocking(fd, True)
        threading.Thread(target=_feed, args=(pipe, data[written:]), daemon=True).start()
        return
    except OSError:
        pass  # the command does not read its input
    try:
        pipe.close()
    except OSError:
        pass


def capture(scope: CancelScope, argv: Union[str, Sequence[str]], stdin: Optional[str],
            timeout: Optional[float], env: Optional[Dict[str, str]] = None,
            on_abort: Optional[Callable[[str], None]] = None) -> Execution:
    """Run a command in its own process group, feeding ``stdin``, collecting output.

    A string command goes through ``/bin/sh -c`` (as Ruby's ``popen3`` with a
    string). Output of any size is drained concurrently. The command is over
    when its process exits; output still held open by children it left behind
    is read for a short grace period only, so such a child cannot hang the
    action. On timeout the whole group gets TERM (then KILL), as in Ruby.
    ``on_abort`` is called with the stderr read so far when the command is
    timed out or cancelled while it runs (the ssh transport uses it to kill
    the remote side); it is unregistered from the scope as soon as the
    command has ended.
    """
    shell_argv = ["/bin/sh", "-c", argv] if isinstance(argv, str) else list(argv)
    text = argv if isinstance(argv, str) else " ".join(argv)
    try:
        proc = scope.spawn(shell_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env)
    except OSError as exc:
        # what /bin/sh would have said and returned (Ruby ran every command through it)
        return Execution(text, 127, "", f"{shell_argv[0]}: {exc.strerror}\n")
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    drain = _Drain((proc.stdout, proc.stderr))
    drain.start()
    _feed_soon(proc.stdin, encode(stdin))
    registration = None
    if on_abort is not None:
        abort = on_abort

        def stderr_so_far() -> str:
            # a cancel kills the local process first: what it wrote before dying is
            # in the pipe, and the reader reaches its end at once (the ssh transport's
            # group marker, written just before the command started, must not be lost
            # in the pipe buffer); bounded, for a child that keeps the pipe open
            drain.ended[1].wait(ABORT_DRAIN)
            return drain.text(1)

        registration = scope.on_cancel(lambda: abort(stderr_so_far()), "remote side")
    timed_out = False
    try:
        rc = scope.wait(proc, timeout)
        if rc is None:
            timed_out = True
            scope.signal_group(proc, signal.SIGTERM)
            if registration is not None:
                registration.remove()
                seen = drain.text(1)
                detach(lambda: abort(seen), "remote side of a timed-out command")
            rc = scope.stop(proc, TERM_GRACE)
    finally:
        if registration is not None:
            registration.remove()
        if proc.returncode is None:  # an exception: leave nothing running
            scope.stop(proc, 0)
    drain.join(DRAIN_GRACE)
    scope.check()
    code = rc if rc >= 0 else 255
    return Execution(text, code, drain.text(0), drain.text(1), timed_out)


def run_local(scope: CancelScope, command: str, log: Logger, stdin: Optional[str] = None,
              timeout: Optional[float] = None) -> Execution:
    """``LocalCommand.run``: logs the failure and its stderr, or the timeout."""
    result = capture(scope, command, stdin, timeout)
    return report(result, command, log)


def report(result: Execution, command: str, log: Logger) -> Execution:
    """``GenericCommand#run``'s logging of a finished command."""
    if result.timed_out:
        message = f"Timeout executing {command}"
        log(message, True)
        return Execution(command, 255, "", message, True)
    if result.code != 0:
        log(f"Command execution failed (exit code: {result.code}): {command}", True)
        log(result.stderr, True)
    return result
