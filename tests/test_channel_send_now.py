"""ProcessChannel.send_now: writes in the caller's thread only what cannot block."""

from __future__ import annotations

import time

from vmm_exec.cancel import CancelScope
from vmm_exec.transports.channel import OUT, ProcessChannel


def _collect(channel: ProcessChannel, size: int, timeout: float = 10.0) -> bytes:
    got = b""
    end = time.monotonic() + timeout
    while len(got) < size and time.monotonic() < end:
        for name, chunk in channel.receive(0.2):
            if name == OUT:
                got += chunk
    return got


def test_a_here_document_of_some_kib_is_written_at_once() -> None:
    scope = CancelScope()
    channel = ProcessChannel(scope, ["cat"])
    try:
        data = bytes(range(256)) * 80  # 20 KiB: more than one page, less than the pipe
        assert channel.send_now(data)
        assert _collect(channel, len(data)) == data
    finally:
        channel.terminate()
        channel.release()


def test_a_full_pipe_is_left_to_a_writer() -> None:
    scope = CancelScope()
    channel = ProcessChannel(scope, ["sleep", "30"])  # never reads its input
    try:
        chunk = b"x" * 16384
        accepted = 0
        while channel.send_now(chunk) and accepted < 64:
            accepted += 1
        assert 0 < accepted < 64  # the pipe took a few, then send_now refused
        assert not channel.send_now(b"y" * 5000)
    finally:
        channel.terminate()
        channel.release()
