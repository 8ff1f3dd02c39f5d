"""The driver process: read oned's requests, schedule them, answer.

A reader thread turns stdin lines into scheduler calls; the main thread waits
for the end: FINALIZE with all work done (exit 0), stdin EOF (oned is gone:
stop every child, exit 255 like the Ruby driver) or SIGTERM (same, exit 143).
A malformed line never stops the loop.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import BinaryIO, List, Optional

from vmm_exec import message as messages
from vmm_exec.actions import ACTIONS
from vmm_exec.cancel import join_detached
from vmm_exec.config import DriverConfig
from vmm_exec.context import Services
from vmm_exec.engine import perform
from vmm_exec.hooks import hook_dirs, load_hooks
from vmm_exec.protocol import (
    RESULT_SUCCESS,
    ActionLine,
    DriverCancel,
    Empty,
    Finalize,
    Init,
    Malformed,
    Request,
    Writer,
    parse_line,
)
from vmm_exec.scheduler import Job, Scheduler
from vmm_exec.transports import make_transport

LOG = logging.getLogger(__name__)

EXIT_EOF = 255
# at exit, how long to wait for remote kills still running in the background
DETACHED_DEADLINE = 5.0

# A VMM action is called with (id, drv_message): ActionManager drops any other arity.
ACTION_ARITY = 2


def excerpt(line: str, keep: int = 80) -> str:
    """A request line for the debug log: its start only (payloads carry secrets)."""
    text = repr(line[:keep])
    return text if len(line) <= keep else f"{text}... ({len(line)} characters)"


def host_of(request: Request) -> Optional[str]:
    """The HOST of a request, for single-host scheduling (nothing decoded is kept).

    It raises unless the payload passed the XML well-formedness check: the
    action need not check it again (``Job.host_read``)."""
    return messages.peek_text(request.payload, "HOST")


class Driver:
    def __init__(self, config: DriverConfig, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self.config = config
        self.stdin = stdin
        self.writer = Writer(stdout)
        self.transport = make_transport(config.transport, config.strict,
                                        config.pool_size, config.max_handshakes)
        self.scheduler = Scheduler(config.threads, config.single_host, self._execute, host_of,
                                   warm=self.transport.warm_hosts)
        errors: List[str] = []
        hooks = load_hooks(hook_dirs(config.paths, config.hook_dirs), errors)
        for error in errors:
            LOG.warning("hook file ignored: %s", error)
        self.services = Services(config, self.writer, self.transport, tuple(hooks))
        self._done = threading.Event()
        self.exit_code = 0

    def _execute(self, job: Job) -> None:
        perform(self.services, job.request, job.scope, job.gate, well_formed=job.host_read)

    # -- request loop ---------------------------------------------------------
    def handle(self, line: str) -> None:
        command = parse_line(line)
        if isinstance(command, Empty):
            return
        if isinstance(command, Malformed):
            LOG.warning("Malformed message: %s", excerpt(command.line))
        elif isinstance(command, Init):
            if command.args:
                LOG.warning("INIT takes no arguments, ignored: %s", excerpt(line.strip()))
            elif not self.scheduler.finalizing:
                self.writer.send("INIT", RESULT_SUCCESS)
        elif isinstance(command, Finalize):
            self.scheduler.finalize()
            threading.Thread(target=self._await_finalize, daemon=True,
                             name="finalize").start()
        elif isinstance(command, DriverCancel):
            self.scheduler.cancel(command.action_id)
            self.writer.log(command.action_id,
                            f"Driver command for {command.action_id} cancelled")
        elif isinstance(command, ActionLine):
            self._accept(command)

    def _accept(self, command: ActionLine) -> None:
        if command.action not in ACTIONS:
            LOG.warning("Unknown action %r, ignored", command.action)
            return
        if len(command.args) != ACTION_ARITY:
            LOG.warning("%s expects an id and a payload, got %d argument(s); ignored",
                        command.action, len(command.args))
            return
        request = Request(command.action, command.action_id, command.args[0], command.args[1])
        if self.scheduler.submit(request) is None:
            LOG.warning("%s %s received after FINALIZE, ignored", request.action,
                        request.msg_id)

    def _await_finalize(self) -> None:
        self.scheduler.wait_finished()
        self._finish(0)

    def _read_loop(self) -> None:
        try:
            while not self._done.is_set():
                raw = self.stdin.readline()
                if not raw:
                    break
                try:
                    self.handle(raw.decode("utf-8", "surrogateescape"))
                except Exception:  # noqa: BLE001 - one bad line never stops the driver
                    LOG.exception("Error handling %s", excerpt(raw.decode("utf-8", "replace")))
        except (OSError, ValueError):
            pass
        if not self._done.is_set():
            LOG.info("stdin closed: oned is gone, stopping all actions")
            self.scheduler.stop_all()
            self._finish(EXIT_EOF)

    def _finish(self, code: int) -> None:
        if not self._done.is_set():
            self.exit_code = code
            self._done.set()

    def terminate(self, code: int = 128 + signal.SIGTERM) -> None:
        if not self._done.is_set():
            self.scheduler.stop_all()
            self._finish(code)

    def run(self) -> int:
        reader = threading.Thread(target=self._read_loop, daemon=True, name="oned-reader")
        reader.start()
        self._done.wait()
        return self.exit_code


# SIGTERM (oned stopping), SIGINT (an operator's Ctrl-C), SIGHUP (a closed terminal):
# each stops everything like stdin EOF, and the driver exits 128 + the signal
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_driver(config: DriverConfig) -> int:
    driver = Driver(config, sys.stdin.buffer, sys.stdout.buffer)

    def on_signal(signum: int, frame: object) -> None:
        threading.Thread(target=driver.terminate, args=(128 + signum,), daemon=True,
                         name=f"signal-{signum}").start()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    code = driver.run()
    # remote kills of timed-out commands still on their way (each bounded)
    still = join_detached(DETACHED_DEADLINE)
    if still:
        LOG.warning("%d remote kill(s) still running at exit", still)
    driver.transport.close()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    # The reader thread may still be blocked in stdin.readline(); a normal
    # interpreter shutdown would then abort on the stdin buffer lock.
    os._exit(code)
