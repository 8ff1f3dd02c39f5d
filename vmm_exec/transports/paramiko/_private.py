"""Every use of paramiko's private or undocumented API, in one place.

paramiko sends only the channel requests it knows (exec, subsystem, ...),
waits for their answers without a bound, and offers no public way to be woken
by incoming data. What this package uses instead is below, and nowhere else;
``tests/test_paramiko_private.py`` pins it, so that a paramiko upgrade that
changes any of it fails there, clearly, rather than in an action.

What we rely on (paramiko 3.x to 5.x):

* ``Channel.lock``: held by paramiko's transport thread while it marks the
  channel closed, which it does before it sends its own CLOSE;
* ``Channel.closed``, ``active``, ``remote_chanid``, ``eof_received``;
* ``Channel.event`` / ``Channel.event_ready``: ``_request_success`` sets
  ``event_ready`` and the event; ``_request_failed`` closes the channel, which
  sets the event with ``event_ready`` false; so does any close (ours, the
  server's, the connection's end);
* ``Transport._send_user_message``: send a message, waiting out a key exchange;
* ``common.cMSG_CHANNEL_REQUEST`` and ``Message`` to build a request;
* ``Channel.in_buffer`` / ``in_stderr_buffer``, whose ``set_event`` sets the
  event when data or the end arrives;
* ``Transport.remote_version``: the server's banner, once it has been read.
* ``Channel.out_window_size``: bytes the server still accepts on a channel;
* ``Transport.completion_event``: set by the transport thread when the answer to a
  global request arrives (success or failure); ``cMSG_GLOBAL_REQUEST``.
"""

from __future__ import annotations

import threading
from typing import Optional, Sequence

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST, cMSG_GLOBAL_REQUEST
from paramiko.message import Message


def send_request(chan: paramiko.Channel, kind: str, fields: Sequence[str],
                 want_reply: bool) -> bool:
    """Send a channel request unless the channel is closed (False: nothing sent).

    paramiko has no API for requests it does not know (``signal``), and its own
    request methods wait for the answer without a bound. The check and the send
    happen under the channel's lock: paramiko marks a channel closed under that
    lock before it sends its CLOSE, so our request can never follow our CLOSE
    (sshd drops the whole connection for a request on a channel it has freed).
    The answer is armed here too (``event`` cleared) so that only an answer sent
    after this request can set it; :func:`reply` reads it.
    """
    message = Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(chan.remote_chanid)
    message.add_string(kind)
    message.add_boolean(want_reply)
    for value in fields:
        message.add_string(value)
    transport = chan.get_transport()
    with chan.lock:
        if chan.closed or not chan.active or transport is None or not transport.is_active():
            return False
        if want_reply:
            chan.event.clear()
            chan.event_ready = False
        transport._send_user_message(message)  # type: ignore[attr-defined]
    return True


def reply(chan: paramiko.Channel, timeout: float) -> Optional[bool]:
    """Wait up to ``timeout`` s for the answer to the request sent last: True accepted,
    False refused or the channel closed meanwhile, None no answer yet."""
    if not chan.event.wait(max(0.0, timeout)):
        return None
    return bool(chan.event_ready)


def wake_on_input(chan: paramiko.Channel, event: threading.Event) -> None:
    """Have paramiko set ``event`` whenever stdout or stderr data (or their end) arrives."""
    chan.in_buffer.set_event(event)
    chan.in_stderr_buffer.set_event(event)


def eof_received(chan: paramiko.Channel) -> bool:
    """The server sent EOF (sshd always does before closing a session it ended)."""
    return bool(chan.eof_received)


def banner_received(transport: Optional[paramiko.Transport]) -> bool:
    """The server's SSH banner has been read (for the ssh binary's timeout messages)."""
    return bool(getattr(transport, "remote_version", ""))


def send_keepalive(transport: paramiko.Transport) -> threading.Event:
    """Send ``keepalive@openssh.com`` asking for a reply, without waiting for it; the
    returned event is set when the reply (success or failure) arrives.

    paramiko's ``global_request(wait=True)`` blocks its caller until the answer, and
    with ``wait=False`` asks for no answer (a frozen host goes unnoticed). Its
    transport thread sets ``Transport.completion_event`` on
    ``_parse_request_success``/``_parse_request_failure``; this package sends no
    other global request, so the event is ours. ``_send_user_message`` may block
    (a key exchange, a full socket): call it where blocking harms nothing else.
    """
    event = threading.Event()
    message = Message()
    message.add_byte(cMSG_GLOBAL_REQUEST)
    message.add_string("keepalive@openssh.com")
    message.add_boolean(True)
    transport.completion_event = event
    transport._send_user_message(message)  # type: ignore[attr-defined]
    return event


def send_window(chan: paramiko.Channel) -> int:
    """Bytes the server's window still accepts on ``chan`` (a send up to that much
    does not wait for a window adjustment)."""
    return int(getattr(chan, "out_window_size", 0))
