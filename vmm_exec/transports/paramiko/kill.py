"""Stopping what a channel runs on the host.

Closing an SSH channel does not stop its command: sshd only closes the
command's pipes, and a ``sleep 300`` never notices. So:

1. The SSH ``signal`` request (RFC 4254 6.9), TERM, then KILL after a grace
   period if the channel is still open. OpenSSH's sshd (7.9 and later) answers
   it with ``killpg()`` of the session: the remote shell and everything it
   started (sshd runs each session in a session of its own, and a
   non-interactive shell keeps its children in its group). The request asks
   for a reply, so a refusal is known at once. sshd refuses it for root logins
   (no privilege separation) and for sessions under a ``ForceCommand``.
2. Hence every command is marked: the channel runs
   ``env VMM_EXEC_CHANNEL=<random> bash -s`` (for ``run``:
   ``env VMM_EXEC_CHANNEL=<random> "$SHELL" -c '<command>'``, the same login
   shell as ``ssh HOST COMMAND``), so every process it starts inherits the
   mark. When the signal did not end the channel and the connection lives,
   another channel TERMs (then KILLs) the processes whose ``/proc/PID/environ``
   holds the mark, and their process groups. The only visible difference to
   the commands is that one environment variable.

A host that does not answer the signal request at all is not waited for: the
marked kill then runs in the background (bounded), on another connection.
"""

from __future__ import annotations

import secrets
import threading
from typing import Callable, Optional

from vmm_exec.quoting import single_quoted
from vmm_exec.transports.base import STAT_FIELD_FUNCTION
from vmm_exec.transports.paramiko.session import ACCEPTED, NO_ANSWER, Requests, wait_closed

# how long a signal request waits for the server's answer
REPLY_TIMEOUT = 3.0
# after TERM (stream or cancellation), how long before KILL
KILL_GRACE = 2.0
# the environment variable that marks the processes of one channel on the host
MARK_VARIABLE = "VMM_EXEC_CHANNEL"

# Kills a channel's marked processes over another channel; its argument says whether
# to wait for that (False: the host did not answer, run it in the background).
Fallback = Callable[[bool], None]


def send_signal(requests: Requests, name: str, timeout: float = REPLY_TIMEOUT) -> str:
    """The SSH ``signal`` request; ``ACCEPTED`` when the server says it delivered it.

    A refusal makes paramiko close the channel.
    """
    return requests.request("signal", name, timeout=timeout)


def stop_remote(requests: Requests, grace: float, fallback: Optional[Fallback] = None,
                on_no_answer: Optional[Callable[[], None]] = None) -> Optional[bool]:
    """Kill what the channel runs on the host (TERM, KILL after ``grace``), then close it.

    Returns whether the server accepted the signal (None: the channel was over
    already). When the channel is not over after the signals (refused, or a
    process ignoring TERM outlived the shell, after which sshd refuses KILL) and
    the connection lives, ``fallback`` kills the channel's marked processes over
    another channel. ``on_no_answer`` learns that the server did not answer.
    """
    chan = requests.chan
    if chan.closed:
        return None
    answer = send_signal(requests, "TERM")
    delivered = answer == ACCEPTED
    # over: the server closed the channel, i.e. nothing holds its output any more
    over = delivered and wait_closed(chan, grace)
    if delivered and not over and send_signal(requests, "KILL") == ACCEPTED:
        # (sshd refuses once the shell itself is gone: then the marks do it)
        over = wait_closed(chan, 1.0)
    transport = chan.get_transport()
    alive = transport is not None and transport.is_active()
    requests.close()
    if answer == NO_ANSWER and on_no_answer is not None:
        on_no_answer()
    if not over and alive and fallback is not None:
        try:
            fallback(answer != NO_ANSWER)
        except Exception:  # noqa: BLE001 - killing is best effort
            pass
    return delivered


class Stopper:
    """Stops the remote side of one channel and closes it, one caller at a time
    (a cancel may race with the command's own end or timeout)."""

    def __init__(self, requests: Requests, fallback: Optional[Fallback],
                 on_no_answer: Optional[Callable[[], None]] = None) -> None:
        self.requests = requests
        self._fallback = fallback
        self._on_no_answer = on_no_answer
        self._lock = threading.Lock()
        self.signalled: Optional[bool] = None

    def stop(self, grace: float) -> None:
        with self._lock:
            result = stop_remote(self.requests, grace, self._fallback, self._on_no_answer)
            if result is not None:
                self.signalled = result

    def close(self) -> None:
        with self._lock:
            self.requests.close()


def new_mark() -> str:
    return secrets.token_hex(8)


def stream_command(shell: str, mark: str) -> str:
    """``SHELL -s`` as the Ruby driver runs it, its processes marked in their environment."""
    return f"env {MARK_VARIABLE}={mark} {shell} -s"


def marked_command(command: str, mark: str) -> str:
    """``command`` for the login shell as ``ssh HOST COMMAND`` gives it, marked likewise."""
    return f'env {MARK_VARIABLE}={mark} "${{SHELL:-/bin/sh}}" -c {single_quoted(command)}'


def kill_marked_command(mark: str) -> str:
    """Shell text: TERM every process carrying ``mark`` and its process group, KILL
    what is left after a second (GNU grep reads the environments in /proc)."""
    return (f"{STAT_FIELD_FUNCTION}m='{MARK_VARIABLE}={mark}'; "
            "marked() { grep -lsxzF \"$m\" /proc/[0-9]*/environ | cut -d/ -f3; }; "
            "hit() { p=$(marked); [ -n \"$p\" ] || return 1; "
            "g=$(for x in $p; do __vmm_f $x 3 && echo \"$__vmm_r\"; "
            "done | sort -u); kill -$1 $p 2>/dev/null; "
            "for x in $g; do kill -$1 -$x 2>/dev/null; done; return 0; }; "
            "hit TERM || exit 0; i=0; while [ $i -lt 10 ]; do "
            "[ -n \"$(marked)\" ] || exit 0; sleep 0.1; i=$((i+1)); done; hit KILL; exit 0")
