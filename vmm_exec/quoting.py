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
    lines = set(body.split("\n"))
    if "EOT" not in lines:
        return "EOT"
    n = 0
    while f"EOT_{n}" in lines:
        n += 1
    return f"EOT_{n}"


_HOST_NAME = re.compile(r"[A-Za-z0-9_\[:][A-Za-z0-9_.:%\[\]-]{0,254}")


def host_problem(host: str) -> Optional[str]:
    """Why ``host`` cannot be handed to ssh as a host name (None: it can).

    A host name reaches the ``ssh`` argv unquoted (as it did in Ruby), where a
    value starting with ``-`` is an option (``-oProxyCommand=...`` runs a
    command on the front-end). Names, FQDNs and IPv4/IPv6 addresses pass.
    """
    if _HOST_NAME.fullmatch(host):
        return None
    shown = host if len(host) <= 64 else host[:64] + "..."
    return f"invalid host name {shown!r}: expected a host name or an IP address"
