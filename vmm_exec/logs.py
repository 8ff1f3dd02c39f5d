"""The driver's own diagnostics: Python logging on its stderr.

oned starts a driver with file descriptor 2 closed; the CLI gives it the debug
log (``ONE_MAD_DEBUG``) or ``/dev/null`` before anything is logged. Nothing
logged here ever reaches oned: the protocol is stdout only.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional, TextIO

FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"

_handler: Optional[logging.Handler] = None


def setup(stream: Optional[TextIO] = None, debug: bool = False) -> None:
    """Send the package's log records (and warnings of the libraries) to ``stream``.

    Idempotent: a second call replaces the handler.
    """
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    _handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(_handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("vmm_exec").setLevel(logging.DEBUG if debug else logging.INFO)
