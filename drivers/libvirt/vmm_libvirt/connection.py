"""libvirt connections whose every call is bounded.

A libvirt client without an event loop waits forever for a daemon that hangs
(SIGSTOP, a stuck host): every call, ``close()`` included. So, once per
process, libvirt's default event loop implementation is registered and run in
a daemon thread, and each connection gets client keepalives
(``setKeepAlive``): a daemon that stops answering is given up after about
interval x (count + 1) seconds and every pending call fails. Opening a
connection is bounded separately (the open runs in a thread; when it does not
finish in time, the thread is abandoned).

Domains are looked up by UUID only (a name may belong to another domain on
the other host), and the helpers treat ``VIR_ERR_NO_DOMAIN`` and
``VIR_ERR_OPERATION_INVALID`` as "gone": libvirt cleans up a failed
migration concurrently, so a domain can vanish, or stop, between two calls.

libvirt's default error handler prints every error to stderr, where the
driver would take it for the failure text: it is replaced by a silent one;
errors reach us as exceptions.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

import libvirt

T = TypeVar("T")

_loop_lock = threading.Lock()
_loop_started = False

#: error codes meaning "that domain is not there (any more) / not in that state"
GONE_CODES = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)
#: the driver does not implement the call (e.g. job queries on the test driver)
UNSUPPORTED_CODES = (libvirt.VIR_ERR_NO_SUPPORT,)


class ConnectError(Exception):
    """A libvirt daemon could not be reached (in time)."""


def _ignore_errors(_ctx: Any, _err: Any) -> None:
    return None


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread (once)."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(_ignore_errors, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-event-loop", daemon=True).start()
        _loop_started = True


def error_code(exc: BaseException) -> Optional[int]:
    if isinstance(exc, libvirt.libvirtError):
        code = exc.get_error_code()
        return int(code) if code is not None else None
    return None


def describe_error(exc: BaseException) -> str:
    """libvirt's message (one line), or the exception's text."""
    if isinstance(exc, libvirt.libvirtError):
        msg = exc.get_error_message() or str(exc)
    else:
        msg = str(exc) or type(exc).__name__
    return " ".join(msg.split())


def gone_ok(fn: Callable[[], T], default: Optional[T] = None) -> Optional[T]:
    """``fn()``, or ``default`` when the domain is gone or not in that state."""
    try:
        return fn()
    except libvirt.libvirtError as exc:
        if error_code(exc) in GONE_CODES:
            return default
        raise


def call_bounded(fn: Callable[[], T],
                 timeout: float) -> Tuple[bool, Optional[T], Optional[BaseException]]:
    """Run ``fn`` in a thread for at most ``timeout`` s: ``(finished, result, error)``.

    For calls that must not delay us even against a hung daemon (the abort on
    SIGTERM). An unfinished thread is abandoned (it is a daemon thread).
    """
    box: Dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name="libvirt-bounded-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return False, None, None
    return True, box.get("result"), box.get("error")


def open_connection(uri: str, timeout: float, keepalive: Tuple[int, int]) -> Any:
    """A read-write connection to ``uri``, opened within ``timeout`` s, with keepalives."""
    start_event_loop()
    finished, conn, error = call_bounded(lambda: libvirt.open(uri), timeout)
    if not finished:
        raise ConnectError(f"no answer from {uri} within {timeout:g} s")
    if error is not None:
        raise ConnectError(describe_error(error))
    if conn is None:
        raise ConnectError(f"cannot connect to {uri}")
    try:
        conn.setKeepAlive(keepalive[0], keepalive[1])
    except libvirt.libvirtError as exc:
        # drivers without a daemon (test://) have no keepalive; they cannot hang either
        if error_code(exc) not in UNSUPPORTED_CODES:
            raise ConnectError(describe_error(exc)) from None
    return conn


class Endpoint:
    """One libvirt host: its name (for messages), URI and current connection."""

    def __init__(self, name: str, uri: str, connect_timeout: float = 20.0,
                 keepalive: Tuple[int, int] = (2, 3)) -> None:
        self.name = name
        self.uri = uri
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.conn: Any = None
        self.error = ""

    def connect(self) -> bool:
        """(Re)connect unless the current connection is alive; False with ``error`` set."""
        if self.alive():
            return True
        self.conn = None
        try:
            self.conn = open_connection(self.uri, self.connect_timeout, self.keepalive)
        except ConnectError as exc:
            self.error = str(exc)
            return False
        self.error = ""
        return True

    def connect_retrying(self, wait: float, pause: float = 1.0) -> bool:
        """:meth:`connect`, retried for up to ``wait`` s (a daemon restarting)."""
        deadline = time.monotonic() + wait
        while True:
            if self.connect():
                return True
            if time.monotonic() + pause > deadline:
                return False
            time.sleep(pause)

    def alive(self) -> bool:
        if self.conn is None:
            return False
        try:
            return bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

    def lookup(self, uuid: str) -> Any:
        """The domain with this UUID, or None. Connection errors propagate."""
        if self.conn is None:
            raise ConnectError(self.error or f"not connected to {self.uri}")
        try:
            return self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def lookup_name(self, name: str) -> Any:
        """The domain called ``name``, or None (to learn a UUID, or spot a clash)."""
        if self.conn is None:
            raise ConnectError(self.error or f"not connected to {self.uri}")
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
