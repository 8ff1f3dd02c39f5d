"""What the entry scripts say, and where it goes.

The driver reads a script's stderr: ``INFO: text``, ``ERROR: text`` and
``DEBUG: text`` lines become LOG lines for oned; on failure every other line
(stripped, concatenated) becomes the FAILURE answer's text. So progress and
steps go out as ``INFO:`` lines and the final human summary as one plain
line. Every line is kept to one physical line (libvirt messages can contain
newlines).

A detached recovery (started when the migration was cancelled) has no stderr
any more: it sends the same lines to syslog through ``logger -t
vmm_exec-migrate`` when that works, and appends them to a log file next to
the migration record.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from typing import IO, List, Optional

SYSLOG_TAG = "vmm_exec-migrate"


def one_line(text: str) -> str:
    """``text`` on a single line (newlines and runs of blanks collapsed)."""
    return " ".join(str(text).split())


class Output:
    """Thread-safe writer of the script's lines."""

    def __init__(self, stream: Optional[IO[str]] = None, syslog: bool = False,
                 log_file: Optional[str] = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._log_file = log_file
        self._logger: Optional[subprocess.Popen[bytes]] = None
        if syslog and shutil.which("logger"):
            try:
                self._logger = subprocess.Popen(
                    ["logger", "-t", SYSLOG_TAG], stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except OSError:
                self._logger = None
        #: every line written, for the tests and for the final summary
        self.lines: List[str] = []

    def info(self, text: str) -> None:
        self._emit("INFO: " + one_line(text))

    def error(self, text: str) -> None:
        self._emit("ERROR: " + one_line(text))

    def debug(self, text: str) -> None:
        self._emit("DEBUG: " + one_line(text))

    def summary(self, text: str) -> None:
        """The final, human line (plain: it becomes the FAILURE text)."""
        self._emit(one_line(text))

    def _emit(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)
            if self._stream is not None:
                try:
                    self._stream.write(line + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    self._stream = None
            if self._logger is not None and self._logger.stdin is not None:
                try:
                    self._logger.stdin.write((line + "\n").encode("utf-8", "replace"))
                    self._logger.stdin.flush()
                except (OSError, ValueError):
                    self._logger = None
            if self._log_file:
                try:
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                    fd = os.open(self._log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    with os.fdopen(fd, "a", encoding="utf-8") as fh:
                        fh.write(f"{stamp} [{os.getpid()}] {line}\n")
                except OSError:
                    self._log_file = None

    def close(self) -> None:
        with self._lock:
            logger, self._logger = self._logger, None
        if logger is not None:
            try:
                if logger.stdin is not None:
                    logger.stdin.close()
                logger.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
