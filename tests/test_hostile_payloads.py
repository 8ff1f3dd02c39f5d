"""Payloads a production cloud (or an attacker) can send: large, deep, entity-laden.

Ruby's REXML has no size or depth limit, so the driver must accept what it
accepts; entity declarations are refused (REXML would expand them; we do not
guess) without ever expanding one.
"""

from __future__ import annotations

import base64
import resource
import subprocess
import sys
import time

import pytest

from vmm_exec import message
from vmm_exec.message import MessageError


def encoded(xml: str) -> str:
    return base64.b64encode(xml.encode()).decode()


def request(inner: str) -> str:
    return (f"<VMM_DRIVER_ACTION_DATA><HOST>h1</HOST><DEPLOY_ID>one-1</DEPLOY_ID>"
            f"<VM><ID>1</ID><TEMPLATE><CONTEXT>{inner}</CONTEXT></TEMPLATE></VM>"
            f"</VMM_DRIVER_ACTION_DATA>")


def test_a_text_node_over_10_mb_is_accepted_like_rexml() -> None:
    blob = "x" * (12 * 1024 * 1024)
    msg = message.decode(encoded(request(f"<DATA>{blob}</DATA>")))
    assert msg.text("VM/TEMPLATE/CONTEXT/DATA") == blob
    assert msg.element_xml("VM").count("x") == len(blob)


def test_nesting_deeper_than_libxml2_default_is_accepted_and_written_back() -> None:
    depth = 2000
    nested = "".join(f"<L{i}>" for i in range(depth)) + "v" + "".join(
        f"</L{i}>" for i in reversed(range(depth)))
    xml = request(nested)
    msg = message.decode(encoded(xml))
    # written back byte for byte (no recursion limit on the way out)
    assert msg.element_xml("VM") in xml
    assert msg.text("HOST") == "h1"


LAUGHS = ('<!DOCTYPE V [<!ENTITY a "aaaaaaaaaa">'
          + "".join(f'<!ENTITY {n} "{("&" + p + ";") * 10}">'
                    for p, n in zip("abcdefg", "bcdefgh")) + "]>")
XXE = '<!DOCTYPE V [<!ENTITY x SYSTEM "file:///etc/passwd">]>'


@pytest.mark.parametrize("xml", [LAUGHS + "<V><A>&h;</A></V>", XXE + "<V><A>&x;</A></V>"],
                         ids=["billion-laughs", "xxe"])
def test_entity_declarations_are_refused_without_expansion(xml: str) -> None:
    start = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MessageError, match="entity"):
        message.decode(encoded(xml))
    assert time.monotonic() - start < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024


def test_a_50_mb_line_costs_about_its_size() -> None:
    """Decoding a 50 MB base64 payload peaks near the payload's own size (it once
    peaked at 1.6 GB in the strictness check alone)."""
    probe = (
        "import base64, resource\n"
        "from vmm_exec import message\n"
        "xml = '<VMM_DRIVER_ACTION_DATA><HOST>h</HOST><VM><ID>1</ID><D>' + 'x' * (37 << 20)"
        " + '</D></VM></VMM_DRIVER_ACTION_DATA>'\n"
        "payload = base64.b64encode(xml.encode()).decode()\n"
        "del xml\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "message.decode(payload).text('HOST')\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    grown_mb = int(out) / 1024
    assert grown_mb < 400, f"decoding a 50 MB payload grew the peak by {grown_mb:.0f} MB"
