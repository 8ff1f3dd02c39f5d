"""The stream's end-of-command marker on stderr, read without a regular expression.

``SshStream._take_exit_code`` finds ``ExitCode: <digits> EOF_ERR_<nonce>\\n`` with
``bytes.find``; this compares it with the regular expression it replaced (the
leftmost match) on arbitrary stderr around the marker.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from vmm_exec.transports.stream import SshStream

NONCE = "0a1b2c3d4e5f"
REFERENCE = re.compile(rb"ExitCode: ([0-9]*) EOF_ERR_" + NONCE.encode() + rb"\n")


def reference(err: bytes) -> Tuple[Optional[int], bytes]:
    """What the regular-expression version returned and left in ``err``."""
    m = REFERENCE.search(err)
    if m is None:
        return None, err
    head = err[:m.start()]
    if head and not head.endswith(b"\n"):
        head += b"\n"
    digits = m.group(1)
    return (int(digits) if digits else 0), head + b"ExitCode: " + digits + err[m.end():]


def ours(err: bytes) -> Tuple[Optional[int], bytes]:
    stream = SshStream.__new__(SshStream)
    stream._nonce = NONCE
    stream._eof_err = f" EOF_ERR_{NONCE}\n".encode()
    stream.err = err
    return stream._take_exit_code(), stream.err


PIECES = st.sampled_from([
    b"", b"\n", b"x", b"7", b"42", b"ExitCode: ", b"ExitCode:", b"ExitCode: 3",
    b" EOF_ERR_" + NONCE.encode() + b"\n", b" EOF_ERR_" + NONCE.encode(),
    b" EOF_ERR_ffffffffffff\n", b"ERROR: [1] boom\n", b"\xff\xfe", b"ExitCode: 12 ",
])


@settings(max_examples=500, deadline=None)
@given(st.lists(PIECES, max_size=10))
def test_exit_marker_is_read_like_the_regular_expression(pieces: list) -> None:
    err = b"".join(pieces)
    assert ours(err) == reference(err)


def test_exit_marker_examples() -> None:
    marker = b" EOF_ERR_" + NONCE.encode() + b"\n"
    assert ours(b"ERROR: no\nExitCode: 3" + marker) == (3, b"ERROR: no\nExitCode: 3")
    assert ours(b"no newline" + b"ExitCode: 0" + marker + b"tail") == (
        0, b"no newline\nExitCode: 0tail")
    assert ours(b"ExitCode: " + marker) == (0, b"ExitCode: ")
    assert ours(b"ExitCode: 5 EOF_ERR_other\n") == (None, b"ExitCode: 5 EOF_ERR_other\n")
