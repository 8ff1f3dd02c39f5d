"""Pins the private paramiko API the paramiko transport relies on.

Everything the transport uses beyond paramiko's public API goes through
``vmm_exec/transports/paramiko/_private.py``. These tests check, without any
network, that it still exists and behaves as that module says, so that a
paramiko upgrade that changes it fails here, by name, rather than in an action.
"""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any, Callable, List, Tuple

import pytest

paramiko = pytest.importorskip("paramiko")

from paramiko.common import cMSG_CHANNEL_FAILURE, cMSG_CHANNEL_REQUEST  # noqa: E402
from paramiko.message import Message  # noqa: E402

from vmm_exec.transports.paramiko import _private  # noqa: E402
from vmm_exec.transports.paramiko.session import (  # noqa: E402
    ACCEPTED,
    LOST,
    NO_ANSWER,
    NOT_SENT,
    REFUSED,
    Requests,
)


class FakeTransport:
    """Just enough of a paramiko Transport for a Channel: records what is sent."""

    def __init__(self) -> None:
        self.sent: List[bytes] = []
        self.active = True

    def _send_user_message(self, message: Message) -> None:
        self.sent.append(message.asbytes())

    def is_active(self) -> bool:
        return self.active

    def _unlink_channel(self, chanid: int) -> None:
        pass


def open_channel(remote_id: int = 7) -> Tuple[Any, FakeTransport]:
    """A paramiko Channel as paramiko leaves it once the server confirmed the open."""
    transport = FakeTransport()
    chan = paramiko.Channel(3)
    chan.transport = transport
    chan.remote_chanid = remote_id
    chan.active = True
    return chan, transport


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def parse_request(data: bytes) -> Tuple[int, str, bool, List[str]]:
    message = Message(data)
    assert message.get_byte() == cMSG_CHANNEL_REQUEST
    remote = message.get_int()
    kind = message.get_text()
    want_reply = message.get_boolean()
    fields = []
    while message.get_remainder():
        fields.append(message.get_text())
    return remote, kind, want_reply, fields


# -- what exists ------------------------------------------------------------------------

def test_the_private_names_exist() -> None:
    chan = paramiko.Channel(0)
    for name in ("lock", "event", "event_ready", "closed", "active", "remote_chanid",
                 "eof_received", "in_buffer", "in_stderr_buffer"):
        assert hasattr(chan, name), f"paramiko.Channel lost {name!r}"
    assert isinstance(chan.event, threading.Event)
    assert chan.event_ready is False
    assert hasattr(chan.lock, "acquire") and hasattr(chan.lock, "release")
    for name in ("_request_success", "_request_failed", "_set_closed", "_close_internal"):
        assert callable(getattr(paramiko.Channel, name, None)), f"Channel.{name} is gone"
    assert callable(getattr(paramiko.Transport, "_send_user_message", None))
    assert isinstance(cMSG_CHANNEL_REQUEST, bytes) and len(cMSG_CHANNEL_REQUEST) == 1
    assert callable(getattr(chan.in_buffer, "set_event", None))
    # Channel.out_window_size: what the server's window still takes (0 until opened)
    assert _private.send_window(chan) == 0 and isinstance(chan.out_window_size, int)
    # Transport.remote_version: the server's banner, "" until read
    source = inspect.getsource(paramiko.Transport.__init__)
    assert "self.remote_version" in source


def test_public_api_the_transport_needs() -> None:
    params = inspect.signature(paramiko.SSHClient.connect).parameters
    for name in ("sock", "timeout", "banner_timeout", "auth_timeout", "look_for_keys",
                 "allow_agent", "key_filename"):
        assert name in params, f"SSHClient.connect lost {name!r}"
    assert "timeout" in inspect.signature(paramiko.Transport.open_session).parameters
    assert "wait" in inspect.signature(paramiko.Transport.global_request).parameters
    for name in ("exit_status_ready", "recv_exit_status", "recv_ready", "recv_stderr_ready",
                 "shutdown_write", "sendall"):
        assert callable(getattr(paramiko.Channel, name, None)), f"Channel.{name} is gone"
    assert hasattr(paramiko, "ChannelException") and hasattr(paramiko, "ProxyCommand")


# -- how the answers reach us -----------------------------------------------------------

def test_request_success_sets_the_ready_flag_and_the_event() -> None:
    chan, _ = open_channel()
    chan.event.clear()
    chan.event_ready = False
    chan._request_success(Message())
    assert chan.event.is_set() and chan.event_ready is True
    assert _private.reply(chan, 0) is True


def test_request_failure_closes_the_channel_and_sets_the_event_not_ready() -> None:
    chan, transport = open_channel()
    chan.event.clear()
    chan.event_ready = False
    chan._request_failed(Message())
    assert chan.event.is_set() and chan.event_ready is False
    assert chan.closed
    assert _private.reply(chan, 0) is False
    # and paramiko said so to the server: EOF and CLOSE
    assert len(transport.sent) == 2


def test_a_close_sets_the_event_not_ready() -> None:
    chan, _ = open_channel()
    chan.event.clear()
    chan.event_ready = False
    with chan.lock:
        chan._set_closed()
    assert chan.event.is_set() and not chan.event_ready


def test_no_answer_is_none() -> None:
    chan, _ = open_channel()
    chan.event.clear()
    assert _private.reply(chan, 0.01) is None


def test_buffers_wake_the_reader() -> None:
    chan, _ = open_channel()
    event = threading.Event()
    _private.wake_on_input(chan, event)
    assert not event.is_set()
    chan.in_stderr_buffer.feed(b"x")
    assert event.is_set()
    event.clear()
    chan.in_buffer.close()
    assert event.is_set()


def test_eof_and_banner() -> None:
    chan, _ = open_channel()
    assert not _private.eof_received(chan)
    chan._handle_eof(Message())
    assert _private.eof_received(chan)
    assert not _private.banner_received(None)


# -- our requests -----------------------------------------------------------------------

def test_send_request_builds_an_rfc4254_channel_request() -> None:
    chan, transport = open_channel(remote_id=42)
    assert _private.send_request(chan, "signal", ["TERM"], want_reply=True)
    assert parse_request(transport.sent[-1]) == (42, "signal", True, ["TERM"])
    assert not chan.event.is_set() and chan.event_ready is False  # armed


def test_no_request_on_a_closed_channel() -> None:
    chan, transport = open_channel()
    chan.close()
    before = len(transport.sent)
    assert not _private.send_request(chan, "signal", ["TERM"], want_reply=True)
    assert len(transport.sent) == before


def test_send_request_waits_for_the_transport_thread_marking_the_channel_closed() -> None:
    """The closed check and the send are one step under the channel's lock."""
    chan, transport = open_channel()
    with chan.lock:
        chan._set_closed()  # as paramiko's transport thread does, before sending CLOSE
    assert not _private.send_request(chan, "exec", ["true"], want_reply=True)
    assert transport.sent == []


def _answer_later(chan: Any, how: str) -> threading.Thread:
    def answer() -> None:
        wait_until(lambda: bool(chan.transport.sent))  # the request is out: answer it
        if how == "success":
            chan._request_success(Message())
        else:
            message = Message()
            message.add_byte(cMSG_CHANNEL_FAILURE)
            chan._request_failed(message)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("how,expected", [("success", ACCEPTED), ("failure", REFUSED)])
def test_requests_reads_the_answer(how: str, expected: str) -> None:
    chan, transport = open_channel()
    thread = _answer_later(chan, how)
    assert Requests(chan).request("exec", "true", timeout=5) == expected
    thread.join(5)


def test_an_unanswered_request_stops_further_requests() -> None:
    """A late answer could be taken for the next request's: none is sent after it."""
    chan, transport = open_channel()
    requests = Requests(chan)
    assert requests.request("signal", "TERM", timeout=0.05) == NO_ANSWER
    assert requests.stale
    sent = len(transport.sent)
    chan._request_success(Message())  # the late answer
    assert requests.request("signal", "KILL", timeout=0.05) == NOT_SENT
    assert len(transport.sent) == sent


def test_a_request_on_a_dead_connection_is_lost() -> None:
    chan, transport = open_channel()
    transport.active = False
    assert Requests(chan).request("signal", "TERM", timeout=0.05) == LOST
    assert transport.sent == []


def test_requests_are_sent_one_at_a_time() -> None:
    """Two threads asking at once: the second request goes out after the first answer."""
    chan, transport = open_channel()
    requests = Requests(chan)
    results: List[str] = []
    first = threading.Thread(target=lambda: results.append(
        requests.request("exec", "true", timeout=5)))
    first.start()
    wait_until(lambda: bool(transport.sent))
    second = threading.Thread(target=lambda: results.append(
        requests.request("signal", "TERM", timeout=5)))
    second.start()
    second.join(0.3)
    assert second.is_alive() and len(transport.sent) == 1  # waits for the first answer
    chan._request_success(Message())
    first.join(5)
    wait_until(lambda: len(transport.sent) == 2)
    chan._request_success(Message())
    second.join(5)
    assert results == [ACCEPTED, ACCEPTED]
    assert [parse_request(m)[1] for m in transport.sent] == ["exec", "signal"]


def test_keepalive_probe_asks_for_a_reply_and_any_answer_sets_its_event() -> None:
    """``send_keepalive``: a global request with want_reply; paramiko's transport thread
    sets ``completion_event`` on REQUEST_SUCCESS and on REQUEST_FAILURE alike."""
    from paramiko.common import cMSG_GLOBAL_REQUEST

    for parse in ("_parse_request_success", "_parse_request_failure"):
        assert "self.completion_event.set()" in inspect.getsource(
            getattr(paramiko.Transport, parse)), f"Transport.{parse} no longer sets the event"
    transport = FakeTransport()
    transport.completion_event = None  # type: ignore[attr-defined]
    transport._log = lambda *args: None  # type: ignore[attr-defined]
    event = _private.send_keepalive(transport)  # type: ignore[arg-type]
    assert transport.completion_event is event  # type: ignore[attr-defined]
    sent = Message(transport.sent[0])
    assert sent.get_byte() == cMSG_GLOBAL_REQUEST
    assert sent.get_text() == "keepalive@openssh.com"
    assert sent.get_boolean() is True
    paramiko.Transport._parse_request_failure(transport, Message())
    assert event.is_set()
