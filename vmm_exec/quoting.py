"""Shell quoting that is safe and, for ordinary values, byte-identical to the Ruby driver's.

The Ruby driver wraps step parameters in ``'...'`` without escaping and
passes POLL/snapshot/EXEC parameters unquoted, so a ``'``, a space or ``$()``
in a value breaks or injects into the remote shell. These helpers produce the
same text as Ruby whenever that text was already correct, and a correctly
quoted word otherwise; the scripts' argv is unchanged for ordinary values.
"""

from __future__ import annotations

import re
from typing import Optional

from vmm_exec.rubyisms import shell_escape

_BARE_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def single_quoted(value: str) -> str:
    """``'value'`` as Ruby's ``get_parameters`` writes it, with ``'`` escaped properly."""
    return "'" + value.replace("'", "'\\''") + "'"


def bare(value: str) -> str:
    """A word as Ruby interpolates it unquoted, quoted only when it would not survive the shell.

    An empty value stays empty (the word disappears, as in Ruby).
    """
    if value == "" or _BARE_SAFE.fullmatch(value):
        return value
    return single_quoted(value)


def shellwords(value: str) -> str:
    """Ruby ``Shellwords.escape`` (already safe for a POSIX shell)."""
    return shell_escape(value)


def heredoc_delimiter(body: str) -> str:
    """``EOT`` as the Ruby driver uses, unless the body contains that line.

    A body line equal to the delimiter would end the here-document early and
    run the rest of the body as shell commands; then a delimiter that does not
    occur in the body is chosen.
    """
    if "EOT" not in body:  # nearly always: no need to split the body into lines
        return "EOT"
    lines = set(body.split("\n"))
    if "EOT" not in lines:
        return "EOT"
    n = 0
    while f"EOT_{n}" in lines:
        n += 1
    return f"EOT_{n}"


_HOST_NAME = re.compile(r"[A-Za-z0-9_\[:][A-Za-z0-9_.:%@\[\]-]{0,254}")


def host_problem(host: str) -> Optional[str]:
    """Why ``host`` cannot be handed to ssh as a host name (None: it can).

    A host name reaches the ``ssh`` argv unquoted (as it did in Ruby), where a
    value starting with ``-`` is an option (``-oProxyCommand=...`` runs a
    command on the front-end). Names, FQDNs, IPv4/IPv6 addresses and
    ``user@host`` pass.
    """
    if _HOST_NAME.fullmatch(host):
        return None
    shown = host if len(host) <= 64 else host[:64] + "..."
    return f"invalid host name {shown!r}: expected a host name or an IP address"


_DRIVER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def name_problem(kind: str, name: str) -> Optional[str]:
    """Why ``name`` cannot be a driver or script name in a path (None: it can).

    VN_MAD, TM_MAD, DS_MAD and the TM/DS action word become path components
    (``vnm/<VN_MAD>/pre``, ``tm/<TM_MAD>/<action>``): a ``/``, ``..`` or shell
    syntax there would leave the directory or run in the shell.
    """
    if _DRIVER_NAME.fullmatch(name) and name not in (".", ".."):
        return None
    shown = name if len(name) <= 64 else name[:64] + "..."
    return f"invalid {kind} {shown!r}"


def one_line(text: str) -> str:
    """A value from the request placed in a line the driver writes: line breaks
    become blanks, so it cannot start a protocol line of its own."""
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


_SPECIAL_IN_DOUBLE_QUOTES = frozenset('"$`\\')


def check_operand(path: str) -> str:
    """``path`` as an operand of ``[ -x ... ]``: Ruby's double quotes when nothing in
    it is special there (every usual script path), single quotes otherwise."""
    if _SPECIAL_IN_DOUBLE_QUOTES.isdisjoint(path):
        return f'"{path}"'
    return single_quoted(path)
