"""Secrets out of what the driver writes: CONTEXT passwords, keys and tokens, whole requests.

A VM's CONTEXT carries root passwords, SSH keys and tokens; the Ruby driver
writes them to oned's log when a command fails (ATTACHDISK passes the whole
base64 request as an argument, and a failed command is logged with its
arguments). In default mode every line the driver writes for an action goes
through :class:`Masker` first; what scripts receive is never changed. Strict
mode keeps the Ruby transcripts byte-identical and masks nothing.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional

from vmm_exec import rubyisms
from vmm_exec.message import Message
from vmm_exec.xmlcompat import XmlError

MASK = "********"

# CONTEXT variables holding secrets: PASSWORD, ROOT_PASSWORD, CRYPTED_PASSWORD_BASE64,
# SSH_PUBLIC_KEY, ..._TOKEN, ..._SECRET, PRIVATE_KEY, ...
SECRET_NAME = re.compile(r"PASSW(OR)?D|SSH_.*KEY|PRIVATE_KEY|(^|_)TOKEN($|_)|SECRET",
                         re.IGNORECASE)
# a flag such as TOKEN = "YES" asks for a secret, it is not one
NOT_SECRET = frozenset(("YES", "NO", "TRUE", "FALSE", "ON", "OFF"))
# shorter values would mask ordinary words everywhere
MIN_SECRET = 4
MIN_PAYLOAD = 32


class Masker:
    """Replaces known secrets in text: longest first, each occurrence."""

    def __init__(self, secrets: Iterable[str], payloads: Iterable[str] = ()) -> None:
        found = {s for s in secrets
                 if len(s) >= MIN_SECRET and s.upper() not in NOT_SECRET}
        self._payloads = sorted({p for p in payloads if len(p) >= MIN_PAYLOAD},
                                key=len, reverse=True)
        ordered = sorted(found, key=len, reverse=True)
        self._pattern: Optional[re.Pattern[str]] = (
            re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None)

    @classmethod
    def for_message(cls, message: Message, payload: str) -> Masker:
        """Secrets of the request's CONTEXT; the request and the VM as base64 (in
        which those secrets are encoded) are replaced whole."""
        vm = message.element_xml("VM").encode("utf-8", "surrogateescape")
        return cls(context_secrets(message),
                   (payload, rubyisms.strict_encode64(vm), rubyisms.encode64(vm)))

    def __call__(self, text: str) -> str:
        for payload in self._payloads:
            if payload in text:
                text = text.replace(payload, f"<base64 data, {len(payload)} bytes, not logged>")
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return text


def context_secrets(message: Message) -> List[str]:
    """Values of the CONTEXT variables named like secrets (raw and stripped)."""
    context = message.element("VM/TEMPLATE/CONTEXT")
    if context is None:
        return []
    values: List[str] = []
    for child in context.elements():
        if not SECRET_NAME.search(child.name):
            continue
        try:
            value = child.text
        except XmlError:
            continue
        if value:
            values.append(value)
            stripped = rubyisms.strip(value)
            if stripped != value and stripped:
                values.append(stripped)
            # a multi-line key may be logged line by line
            values.extend(line for line in value.splitlines() if len(line) >= 16)
    return values


def identity(text: str) -> str:
    return text
