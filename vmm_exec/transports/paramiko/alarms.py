"""Callbacks at a time, from one thread for the whole process.

A connection attempt is ended at its deadline by a callback; a
``threading.Timer`` per attempt is a thread per handshake in flight. One
thread serves every alarm instead, and runs only while some alarm is set.
Callbacks must be quick (they run one after another on that thread).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any, Callable, List, Optional, Tuple


class Alarm:
    """A scheduled callback; :meth:`cancel` before it runs and it never runs."""

    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Alarms:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: List[Tuple[float, int, Alarm]] = []
        self._order = itertools.count()
        self._thread: Optional[threading.Thread] = None

    def schedule(self, delay: float, callback: Callable[..., Any], *args: Any) -> Alarm:
        alarm = Alarm(callback, args)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), alarm))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="alarms")
                self._thread.start()
            self._cond.notify()
        return alarm

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._thread = None
                        return
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        alarm = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(wait)
            if not alarm.cancelled:
                try:
                    alarm.callback(*alarm.args)
                except Exception:  # noqa: BLE001 - an alarm must not stop the others
                    pass


_ALARMS = _Alarms()


def schedule(delay: float, callback: Callable[..., Any], *args: Any) -> Alarm:
    """Run ``callback(*args)`` in ``delay`` seconds (unless cancelled first)."""
    return _ALARMS.schedule(delay, callback, *args)
