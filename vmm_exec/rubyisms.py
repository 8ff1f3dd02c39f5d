"""Ruby core behaviours the original driver relies on, reproduced exactly.

The Ruby driver's observable behaviour (ids, splitting, base64, quoting) comes
from Ruby's String and pack semantics, which differ from Python's in small but
visible ways; every such rule lives here so that the rest of the code can stay
Pythonic and the rules can be property-tested against their documented form.
"""

from __future__ import annotations

import base64
import re
from typing import Dict, List, Optional

# Ruby's String#strip treats NUL as whitespace; Python's str.strip() also strips
# Unicode spaces, which Ruby does not.
RUBY_STRIP_CHARS = "\0\t\n\v\f\r "
# Characters matched by Ruby's regexp \s and by the awk-style String#split(' ').

_RUBY_WS_RUN = re.compile(r"[ \t\n\v\f\r]+")
_RUBY_WS_CHARS = " \t\n\v\f\r"
_PY_ONLY_WS = "\x1c\x1d\x1e\x1f"  # whitespace to str.split(), not to Ruby
_TO_I = re.compile(r"[ \t\n\v\f\r]*([+-]?)(?:0[dD](?=[0-9]))?([0-9]+(?:_[0-9]+)*)")
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64_ALPHABET)}
_SHELL_SAFE = re.compile(r"[^A-Za-z0-9_\-.,:+/@\n]")


def strip(text: str) -> str:
    """Ruby ``String#strip``."""
    return text.strip(RUBY_STRIP_CHARS)


def to_i(text: str) -> int:
    """Ruby ``String#to_i``: leading digits (underscores between digits allowed), else 0.

    A base-10 prefix ``0d``/``0D`` is skipped, as Ruby's ``rb_cstr_to_inum`` does.
    """
    m = _TO_I.match(text)
    if not m:
        return 0
    value = big_int(m.group(2).replace("_", ""))
    return -value if m.group(1) == "-" else value


# CPython refuses int(str) and str(int) past this many digits (a guard against
# quadratic conversions); Ruby's bignums have no such limit.
_DIGITS_AT_ONCE = 4000


def big_int(digits: str) -> int:
    """``int(digits)`` for decimal digits of any length, in pieces below CPython's limit."""
    if len(digits) <= _DIGITS_AT_ONCE:
        return int(digits)
    half = len(digits) // 2
    scale: int = 10 ** (len(digits) - half)
    return big_int(digits[:half]) * scale + big_int(digits[half:])


def decimal(value: int) -> str:
    """``str(value)`` (Ruby's ``to_s``) for integers of any size."""
    if -10 ** _DIGITS_AT_ONCE < value < 10 ** _DIGITS_AT_ONCE:
        return str(value)
    if value < 0:
        return "-" + decimal(-value)
    width = len(decimal(value >> (value.bit_length() // 2)))  # about half the digits
    high, low = divmod(value, 10 ** width)
    return decimal(high) + decimal(low).rjust(width, "0")


def integer(digits: str) -> Optional[int]:
    """Ruby ``Kernel#Integer`` on a string of decimal digits, or None where it raises.

    A leading zero makes Ruby read the number as octal, so ``"042"`` is 34 and
    ``"09"`` raises; the original driver uses this on ids found in script stderr.
    """
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    if len(digits) > 1 and digits[0] == "0":
        if any(c in "89" for c in digits):
            return None
        return int(digits, 8)
    return big_int(digits)


def split_words(text: str) -> List[str]:
    """Ruby ``String#split`` / ``split(' ')``: awk-style split on ASCII whitespace runs."""
    return [w for w in _RUBY_WS_RUN.split(text) if w]


def split_regex_ws(text: str) -> List[str]:
    r"""Ruby ``String#split(/\s+/)``: a leading empty field is kept, trailing ones dropped.

    ``str.split()`` does the same in C for text whose only whitespace is Ruby's
    (ASCII without \x1c-\x1f, which Python also splits on): a request line with
    its base64 payload, several KiB, is split many times faster than by the regex.
    """
    if text.isascii() and not any(c in text for c in _PY_ONLY_WS):
        fields = text.split()
        if fields and text[0] in _RUBY_WS_CHARS:
            fields.insert(0, "")  # Ruby keeps the leading empty field
        return fields
    fields = _RUBY_WS_RUN.split(text)
    while fields and fields[-1] == "":
        fields.pop()
    return fields


def each_line(text: str) -> List[str]:
    """Ruby ``String#each_line``: lines keep their ``\\n`` terminator."""
    if not text:
        return []
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def shell_escape(value: str) -> str:
    """Ruby ``Shellwords.escape``: backslash everything but a small safe set."""
    if value == "":
        return "''"
    escaped = _SHELL_SAFE.sub(lambda m: "\\" + m.group(0), value)
    return escaped.replace("\n", "'\n'")


def decode64(data: str) -> bytes:
    """Ruby ``Base64.decode64`` (``unpack('m')``): skips non-alphabet bytes and stops at padding.

    Ported from the documented behaviour of Ruby's pack.c: four-character
    groups are decoded while they last; a ``=`` in the third or fourth position
    ends decoding; a trailing partial group yields the bytes it fully covers.
    """
    out = bytearray()
    chars = data
    n = len(chars)
    i = 0

    def next_value(stop_at_pad: bool) -> tuple[int, int, bool]:
        """Return (value or -1, new index, hit_padding)."""
        j = i
        while j < n:
            c = chars[j]
            v = _B64_VALUE.get(c, -1)
            if v != -1:
                return v, j + 1, False
            if stop_at_pad and c == "=":
                return -1, j, True
            j += 1
        return -1, j, False

    a = b = c = -1
    while i < n:
        a = b = c = -1
        a, i, _ = next_value(False)
        if a == -1:
            break
        b, i, _ = next_value(False)
        if b == -1:
            break
        c, i, pad = next_value(True)
        if c == -1:
            break
        d, i, pad = next_value(True)
        if d == -1:
            break
        out.append(((a << 2) | (b >> 4)) & 0xFF)
        out.append(((b << 4) | (c >> 2)) & 0xFF)
        out.append(((c << 6) | d) & 0xFF)
        a = -1
    if a != -1 and b != -1:
        out.append(((a << 2) | (b >> 4)) & 0xFF)
        if c != -1:
            out.append(((b << 4) | (c >> 2)) & 0xFF)
    return bytes(out)


def encode64(data: bytes) -> str:
    """Ruby ``Base64.encode64``: 60-column lines, each ending in ``\\n``."""
    flat = base64.b64encode(data).decode("ascii")
    return "".join(flat[i:i + 60] + "\n" for i in range(0, len(flat), 60))


def strict_encode64(data: bytes) -> str:
    """Ruby ``Base64.strict_encode64``: no line breaks."""
    return base64.b64encode(data).decode("ascii")


def parse_actions_list(text: str) -> Dict[str, Optional[str]]:
    """``OpenNebulaDriver.parse_actions_list``.

    ``"deploy,poll=poll_local"`` → ``{"DEPLOY": None, "POLL": "poll_local"}``.
    """
    actions: Dict[str, Optional[str]] = {}
    for item in re.split(r"[ \t\n\v\f\r]*,[ \t\n\v\f\r]*", text):
        item = strip(item)
        m = re.search(r"([^=]+)(=(.*))?", item)
        if not m:
            continue
        script = strip(m.group(3)) if m.group(2) is not None else None
        actions[m.group(1).upper()] = script
    return actions


def dirname(path: str) -> str:
    """Ruby ``File.dirname``: trailing slashes ignored, ``"."`` when there is no slash,
    several leading slashes count as one root."""
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    stripped = path.rstrip("/")
    if not stripped:
        return "/" if path else "."
    head, sep, _ = stripped.rpartition("/")
    if not sep:
        return "."
    head = head.rstrip("/")
    return head or "/"


def first_byte_signed(char: str) -> int:
    """``char.unpack('c').first``: the first UTF-8 byte of ``char`` as a signed 8-bit value."""
    data = char.encode("utf-8", "surrogateescape")[:1]
    if not data:
        raise ValueError("empty string")
    value = data[0]
    return value - 256 if value > 127 else value
